"""The router's batch metrics (``app.Router._on_batch``), on the process's registry (``connectors._metrics``).

Labels: the topic a batch was read from (the transfers topic or a retry tier's), the outcome's state. Never a
transfer id or anything personal.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Histogram

from connectors._metrics import REGISTRY

#: records a batch (``batch_size`` at most, 500 by default)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)
#: seconds to handle a batch (a retry tier's batch waits until its records are due: minutes)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

BATCH_RECORDS = Histogram(
    "casebridge_router_batch_records",
    "Records in each batch the router handled, by the topic it read",
    ("topic",),
    buckets=SIZE_BUCKETS,
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "casebridge_router_batch_seconds",
    "Seconds the router took to handle a batch (every record's flow; the commit after is pipelined), by topic",
    ("topic",),
    buckets=SECONDS_BUCKETS,
    registry=REGISTRY,
)
OUTCOMES = Counter(
    "casebridge_router_outcomes",
    "Records the router handled, by topic and outcome state (completed, held, dead-lettered, transient: sent to"
    " a retry tier, deferred: queued behind an earlier transfer of the same child, ...)",
    ("topic", "state"),
    registry=REGISTRY,
)
RETRY_SCHEDULED = Counter(
    "casebridge_router_retry_scheduled",
    "Records the router wrote to a retry tier, by the topic read and why (transient: the target unavailable;"
    " behind-earlier: an earlier transfer of the same child waits in a tier)",
    ("topic", "reason"),
    registry=REGISTRY,
)


def batch_started() -> float:
    return time.monotonic()


def batch_handled(records: Sequence[Any], counts: Mapping[str, int], started: float) -> None:
    """One batch handled: its size, its time, its outcomes."""
    if not records:
        return
    topic = str(records[0].topic)
    BATCH_RECORDS.labels(topic).observe(len(records))
    BATCH_SECONDS.labels(topic).observe(time.monotonic() - started)
    for state, n in counts.items():
        OUTCOMES.labels(topic, state).inc(n)
    for state, reason in (("transient", "transient"), ("deferred", "behind-earlier")):
        if counts.get(state):
            RETRY_SCHEDULED.labels(topic, reason).inc(counts[state])
