"""Prometheus metrics, collected from the tracker's store and the watch at each scrape.

Computed from the store rather than counted in memory, so the figures survive a restart
and a rebuild gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ._lag import Watch
from ._store import STORE_ERRORS, Store
from ._views import deadlines

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600)


class HealthCollector(Collector):
    """The monitor's own state, from memory: answers even when the store cannot be read."""

    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        h = self.health()
        tracker, kafka = h["tracker"], h["kafka"]
        yield GaugeMetricFamily(
            "casebridge_monitor_tracker_storing",
            "1 while the tracker stores what it reads; 0 while the store fails (locked, disk full) and it retries",
            value=1 if tracker["storing"] else 0,
        )
        yield GaugeMetricFamily(
            "casebridge_monitor_tracker_lag",
            "Events on the events topic the monitor's store does not hold yet (-1 before Kafka was first asked)",
            value=-1 if tracker["lag"] is None else tracker["lag"],
        )
        yield CounterMetricFamily(
            "casebridge_monitor_store_failures",
            "Attempts to store a batch of events that failed (each retried, none skipped)",
            value=tracker["store_failures"],
        )
        yield GaugeMetricFamily(
            "casebridge_monitor_kafka_reachable",
            "1 when the monitor's last round reached Kafka, 0 when it did not (-1 before the first round)",
            value=-1 if kafka["reachable"] is None else int(kafka["reachable"]),
        )


class StoreCollector(Collector):
    def __init__(self, store: Store, watch: Watch) -> None:
        self.store = store
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        """The store's figures; a store that cannot be read now gives ``casebridge_monitor_store_readable 0``
        and none of them (never figures half from before)."""
        try:
            metrics = list(self._collect())
        except STORE_ERRORS:
            metrics = []
        yield GaugeMetricFamily(
            "casebridge_monitor_store_readable",
            "1 when this scrape could read the monitor's store, 0 when it could not (its figures are then absent)",
            value=1 if metrics else 0,
        )
        yield from metrics

    def _collect(self) -> Iterator[Metric]:
        transfers = GaugeMetricFamily(
            "casebridge_transfers", "Transfers by council, pathway and state", labels=["council", "pathway", "state"]
        )
        for row in self.store.counts():
            transfers.add_metric([row["council"], row["pathway"], row["state"]], row["n"])
        yield transfers

        latencies = sorted(self.store.latencies())
        buckets = [(str(float(b)), float(sum(1 for v in latencies if v <= b))) for b in LATENCY_BUCKETS]
        buckets.append(("+Inf", float(len(latencies))))
        yield HistogramMetricFamily(
            "casebridge_handover_latency_seconds",
            "From requested to acknowledged by the target (or completed with no record to send)",
            buckets=buckets,
            sum_value=sum(latencies),
        )

        yield CounterMetricFamily(
            "casebridge_retries", "Transfers scheduled into a delayed retry tier", value=self.store.retry_count()
        )
        dead = CounterMetricFamily("casebridge_dead_letters", "Transfers dead-lettered, by council", labels=["council"])
        for council, n in sorted(self.store.dead_letter_counts().items()):
            dead.add_metric([council], n)
        yield dead
        by_status = self.watch.by_status()
        yield GaugeMetricFamily(
            "casebridge_dead_letters_waiting",
            "Messages on the dead-letter topic with nothing done since (not replayed, their transfer not completed)",
            value=by_status["waiting"],
        )
        statuses = GaugeMetricFamily(
            "casebridge_dead_letters_by_status",
            "Messages on the dead-letter topic by status: waiting, replayed, parked, resolved, expired",
            labels=["status"],
        )
        for name, n in by_status.items():
            statuses.add_metric([name], n)
        yield statuses

        lag = GaugeMetricFamily("casebridge_consumer_lag", "Messages not yet consumed", labels=["group", "topic"])
        for row in self.watch.lag:
            lag.add_metric([row["group"], row["topic"]], row["lag"])
        yield lag

        states: dict[tuple[str, str], int] = {}
        for _, status in deadlines(self.store):
            key = (status.rule_id, str(status.state))
            states[key] = states.get(key, 0) + 1
        timed = GaugeMetricFamily(
            "casebridge_deadlines", "Protocol deadlines by rule and state", labels=["rule_id", "state"]
        )
        for (rule_id, state), n in sorted(states.items()):
            timed.add_metric([rule_id, state], n)
        yield timed


def registry_for(store: Store, watch: Watch, health: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(health))
    registry.register(StoreCollector(store, watch))
    return registry
