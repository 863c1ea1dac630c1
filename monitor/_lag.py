"""Consumer lag per consumer group on one deployment's topics, and the dead letters' summary, cached."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka.structs import TopicPartition

from connectors import kafka as clients
from connectors.kafka import Kafka
from router.deadletters import (
    DeadLetter,
    Outcomes,
    Status,
    expired_ids,
    list_dead_letters,
    outcomes_from_topics,
)
from router.settings import Topics

from ._index import DeadLetterIndex, letters_of
from ._store import Store
from ._tracker import Tracker

log = structlog.get_logger("casebridge.monitor")
TRACKER_GROUP = "casebridge-monitor (tracker)"
#: dead letters that still need a person (their reasons are the page's "top reasons")
OPEN_STATUSES = (Status.WAITING, Status.PARKED, Status.EXPIRED)


async def group_lag(kafka: Kafka, topics: Topics, groups: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Every consumer group (or those ``groups`` keeps, by id) with committed offsets on ``<prefix>.*`` topics: lag
    per group and topic."""
    admin = clients.admin(kafka)
    consumer = clients.consumer(kafka, group_id=None)
    try:  # closed whatever happens: a round that cannot reach Kafka must not leak its clients
        await admin.start()
        await consumer.start()
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in await admin.list_consumer_groups():
            if groups is not None and not groups(str(group[0])):
                continue
            offsets = await admin.list_consumer_group_offsets(group[0])
            mine = {tp: m.offset for tp, m in offsets.items() if tp.topic.startswith(topics.prefix + ".")}
            if mine:
                committed[str(group[0])] = mine
        every = sorted({tp for c in committed.values() for tp in c})
        ends = await consumer.end_offsets(every) if every else {}
    finally:
        await consumer.stop()
        await admin.close()
    rows = []
    for group, offsets in sorted(committed.items()):
        by_topic: Counter[str] = Counter()
        for tp, offset in offsets.items():
            by_topic[tp.topic] += max(0, ends.get(tp, 0) - max(offset, 0))
        rows += [{"group": group, "topic": t, "lag": n} for t, n in sorted(by_topic.items())]
    return rows


class Watch:
    """What the monitor reads from Kafka besides events: lag and dead letters, refreshed in the background."""

    def __init__(
        self,
        kafka: Kafka,
        topics: Topics,
        tracker: Tracker,
        interval: float = 5.0,
        index: DeadLetterIndex | None = None,
    ) -> None:
        self.kafka = kafka
        #: the dead letters, replays and parkings indexed in the store (None: read the topics whole each round)
        self.index = index
        self.topics = topics
        self.tracker = tracker
        self.interval = interval
        self.lag: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.refreshed_at = 0.0
        #: Kafka as the last round found it: None before the first, else reachable or not (and since when)
        self.kafka_reachable: bool | None = None
        self.kafka_error: str | None = None
        self.kafka_failing_since: float | None = None
        self.kafka_checked_at: float | None = None

    async def refresh(self) -> None:
        """Lag first (cheap), then the dead letters: with an index, only what arrived on the dead-letter, audit
        and parking topics since the last round (the listing built on a reader thread); without, the topics read
        whole, like ``casebridge dlq list``.

        A round that cannot reach Kafka in time (two intervals, at least 10 s) marks Kafka unreachable
        and keeps the last figures; the tracker's own lag is asked here too, so it stays current.
        """
        try:
            async with asyncio.timeout(max(10.0, 2 * self.interval)):
                rows = await group_lag(self.kafka, self.topics)
                tracker_lag = await self.tracker.lag()
        except Exception as exc:
            self._kafka_failed(exc)
            raise
        self._kafka_ok()
        rows.append({"group": TRACKER_GROUP, "topic": self.topics.events, "lag": sum(tracker_lag.values())})
        self.lag = rows
        store = self.tracker.store
        if self.index is None:
            letters = await list_dead_letters(self.kafka, self.topics)
            # the completions from the tracker's store of events (as far as it has read the events topic)
            completions = await store.read(store.completions, [d.transfer_id for d in letters if d.transfer_id])
            outcomes = await outcomes_from_topics(self.kafka, self.topics, letters, completions)
            self.dead_letters = [d.listed(outcomes) for d in letters]
        else:  # only what arrived since the last round is read from Kafka; the listing is built off the loop
            await self.index.catch_up()
            letters = await store.read(lambda: letters_of(store.indexed_dead_letters()))
            expired = await expired_ids(self.kafka, letters)  # by reference only: metadata, no records
            self.dead_letters = await store.read(_listed, store, letters, frozenset(expired))
        self.refreshed_at = time.time()

    def _kafka_failed(self, exc: BaseException) -> None:
        now = time.time()
        self.kafka_checked_at = now
        self.kafka_error = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
        if self.kafka_reachable is not False:
            self.kafka_failing_since = now
            log.warning("monitor_kafka_unreachable", bootstrap=clients.servers(self.kafka), error=self.kafka_error)
        self.kafka_reachable = False

    def _kafka_ok(self) -> None:
        now = time.time()
        if self.kafka_reachable is False and self.kafka_failing_since is not None:
            log.info("monitor_kafka_reachable", seconds=round(now - self.kafka_failing_since, 1))
        self.kafka_reachable, self.kafka_error, self.kafka_failing_since = True, None, None
        self.kafka_checked_at = now

    def health(self) -> dict[str, Any]:
        """Kafka as the last round found it (from memory)."""
        return {
            "reachable": self.kafka_reachable,
            "error": self.kafka_error,
            "failing_since": _iso(self.kafka_failing_since),
            "checked_at": _iso(self.kafka_checked_at),
            "lag_refreshed_at": _iso(self.refreshed_at or None),
        }

    def by_status(self) -> dict[str, int]:
        """How many dead letters are in each status (every status named, 0 included)."""
        counts = Counter(d["status"] for d in self.dead_letters)
        return {s.value: counts[s.value] for s in Status}

    def top_reasons(self, n: int = 5) -> list[dict[str, Any]]:
        """The commonest reasons among dead letters that still need a person (``OPEN_STATUSES``: waiting, parked,
        expired), by error class and rule ids, no personal data."""
        reasons: Counter[str] = Counter()
        for d in self.dead_letters:
            if d["status"] in OPEN_STATUSES:
                rules = ", ".join(d["rule_ids"])
                reasons[f"{d['error_class']}{' (' + rules + ')' if rules else ''}: {d['reason']}"] += 1
        return [{"reason": r, "count": c} for r, c in reasons.most_common(n)]

    async def run(self, stopped: asyncio.Event) -> None:
        failing: str | None = None
        while not stopped.is_set():
            try:
                await self.refresh()
                failing = None
            except Exception as exc:  # keep the last figures; try again next round (one line per kind of failure)
                if failing != type(exc).__name__:
                    failing = type(exc).__name__
                    log.warning("monitor_refresh_failed", error_class=failing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), self.interval)


def _listed(store: Store, letters: list[DeadLetter], expired: frozenset[str]) -> list[dict[str, Any]]:
    """The dead letters as listed, with their statuses from the store's index and events (on a reader thread)."""
    completions = store.completions(d.transfer_id for d in letters if d.transfer_id)
    outcomes = Outcomes(
        frozenset(store.indexed_ids("replayed")), frozenset(store.indexed_ids("parked")), completions, expired
    )
    return [d.listed(outcomes) for d in letters]


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
