"""Transient failures on a real broker: delayed retry tiers, per-child order, alerts once per state change."""

from __future__ import annotations

import json

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from router import Topics
from router.settings import RetrySettings
from tests.support import events_of, ns_transfer, produce, read, running_router

QUICK = RetrySettings(attempts=2, initial_seconds=0.02, max_seconds=0.05, total_seconds=1.0, tiers=[2.0, 4.0])


def _same_child(n: int, sibling_of: int) -> dict[str, object]:
    """Another transfer of child ``sibling_of`` (same key, its own transfer and record)."""
    doc = ns_transfer(n)
    doc["child"]["identifiers"] = [{"system": "lcs", "id": f"LCS-{sibling_of}"}]  # type: ignore[index]
    return doc


async def test_per_child_order_holds_across_a_retry_and_other_children_keep_flowing(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A1 waits in a retry tier; A2 (same child) queues behind it; B1 (another child) is not held up."""
    topics = Topics(topic_prefix)
    target = MemoryTarget(unavailable={"ns-1": 3})  # main: 2 attempts fail; tier 0: 1 fails, then delivered
    a1, a2, b1 = ns_transfer(1), _same_child(2, sibling_of=1), ns_transfer(3)
    items = [(b"lcs:LCS-1", json.dumps(a1).encode()), (b"lcs:LCS-1", json.dumps(a2).encode())]
    items.append((b"lcs:LCS-3", json.dumps(b1).encode()))
    async with running_router(
        kafka_bootstrap, topic_prefix, {CaseSystem.EHM: target}, {CaseSystem.LCS: MemorySource()}, retry=QUICK
    ):
        await produce(kafka_bootstrap, topics.transfers, items)
        records = await read(
            kafka_bootstrap,
            topics.events,
            lambda r: sum(1 for e in events_of(r) if e.event_type == "source-closed") >= 3,
            timeout=60,
        )

    assert ["ns-3", "ns-1", "ns-2"] == target.order
    events = events_of(records)
    scheduled = [e for e in events if e.event_type == "retry-scheduled"]
    assert [("ns-1", 0, False), ("ns-2", 0, True)] == [
        (e.transfer_id, e.tier, e.behind_earlier_transfer)  # type: ignore[union-attr]
        for e in scheduled
    ]
    alerts = [(e.transfer_id, e.severity) for e in events if e.event_type == "alert"]  # type: ignore[union-attr]
    assert [("ns-1", "warning"), ("ns-1", "info")] == alerts


async def test_target_unavailable_through_every_tier_is_dead_lettered_once_with_attempts(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """After the last tier the transfer is dead-lettered (once), with all attempts counted and a critical alert."""
    topics = Topics(topic_prefix)
    target = MemoryTarget(unavailable={"ns-1": 100})
    original = [("trace", b"\x00\x01")]
    async with running_router(
        kafka_bootstrap, topic_prefix, {CaseSystem.EHM: target}, {CaseSystem.LCS: MemorySource()}, retry=QUICK
    ):
        await produce(
            kafka_bootstrap, topics.transfers, [(b"lcs:LCS-1", json.dumps(ns_transfer(1)).encode())], original
        )
        dead = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 1, timeout=60)
        records = await read(
            kafka_bootstrap,
            topics.events,
            lambda r: any(
                e.event_type == "alert" and e.severity == "critical"
                for e in events_of(r)  # type: ignore[union-attr]
            ),
            timeout=30,
        )

    [letter] = dead
    headers = dict(letter.headers)
    assert original == list(letter.headers[:1])
    assert not any(k.startswith("casebridge.retry.") for k, _ in letter.headers)
    assert (topics.transfers.encode(), b"6", b"TargetUnavailable") == (
        headers["casebridge.dlq.original.topic"],
        headers["casebridge.dlq.attempts"],
        headers["casebridge.dlq.error.class"],
    )
    alerts = [e.severity for e in events_of(records) if e.event_type == "alert"]  # type: ignore[union-attr]
    assert ["warning", "critical"] == alerts
