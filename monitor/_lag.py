"""Consumer lag per consumer group on one deployment's topics, and the dead letters' summary, cached."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import structlog
from aiokafka.structs import TopicPartition

from connectors import kafka as clients
from connectors.kafka import Kafka
from router.deadletters import Status, list_dead_letters, outcomes_from_topics
from router.settings import Topics

from ._tracker import Tracker

log = structlog.get_logger("casebridge.monitor")
TRACKER_GROUP = "casebridge-monitor (tracker)"
#: dead letters that still need a person (their reasons are the page's "top reasons")
OPEN_STATUSES = (Status.WAITING, Status.PARKED, Status.EXPIRED)


async def group_lag(kafka: Kafka, topics: Topics) -> list[dict[str, Any]]:
    """Every consumer group with committed offsets on ``<prefix>.*`` topics: lag per group and topic."""
    admin = clients.admin(kafka)
    consumer = clients.consumer(kafka, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in await admin.list_consumer_groups():
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

    def __init__(self, kafka: Kafka, topics: Topics, tracker: Tracker, interval: float = 5.0) -> None:
        self.kafka = kafka
        self.topics = topics
        self.tracker = tracker
        self.interval = interval
        self.lag: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.refreshed_at = 0.0

    async def refresh(self) -> None:
        """Lag first (cheap), then the dead-letter and audit topics (read whole, like ``casebridge dlq list``)."""
        rows = await group_lag(self.kafka, self.topics)
        tracker_lag = await self.tracker.lag()
        rows.append({"group": TRACKER_GROUP, "topic": self.topics.events, "lag": sum(tracker_lag.values())})
        self.lag = rows
        letters = await list_dead_letters(self.kafka, self.topics)
        # the completions from the tracker's store of events (as far as it has read the events topic)
        completions = self.tracker.store.completions(d.transfer_id for d in letters if d.transfer_id)
        outcomes = await outcomes_from_topics(self.kafka, self.topics, letters, completions)
        self.dead_letters = [d.listed(outcomes) for d in letters]
        self.refreshed_at = time.time()

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
        while not stopped.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # keep the last figures; try again next round
                log.warning("monitor_refresh_failed", error_class=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), self.interval)
