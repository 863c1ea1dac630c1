"""The router on a real Kafka broker: throughput of the happy path, dead letters, no loss."""

from __future__ import annotations

import json

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from router import Topics
from tests.support import count_type, events_of, ns_transfer, produce, read, running_router

N = 1000


async def test_router_validates_1000_transfers_and_keeps_consuming_past_bad_ones(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """1,000 transfers in, 1,000 validated and completed; malformed and invalid ones dead-lettered in between."""
    topics = Topics(topic_prefix)
    good = [(f"lcs:LCS-{n}".encode(), json.dumps(ns_transfer(n)).encode()) for n in range(N)]
    bad = [(b"lcs:bad-1", b"{not json"), (b"lcs:bad-2", json.dumps(ns_transfer(99_999, surprise=1)).encode())]
    items = good[:500] + bad + good[500:]
    target, source = MemoryTarget(), MemorySource()
    async with running_router(kafka_bootstrap, topic_prefix, {CaseSystem.EHM: target}, {CaseSystem.LCS: source}):
        await produce(kafka_bootstrap, topics.transfers, items)
        records = await read(kafka_bootstrap, topics.events, count_type("source-closed", N), timeout=120)
        dead = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 2, timeout=30)

    events = events_of(records)
    validated = {e.transfer_id for e in events if e.event_type == "validated"}
    assert {f"ns-{n}" for n in range(N)} == validated
    assert N == len({e.transfer_id for e in events if e.event_type == "source-closed"})
    assert N == len(target.items)
    assert 2 == sum(1 for e in events if e.event_type == "rejected")
    reasons = {d.value: dict(d.headers) for d in dead}
    assert b"MalformedJson" == reasons[b"{not json"]["casebridge.dlq.error.class"]
    invalid = next(h for v, h in reasons.items() if v != b"{not json")
    assert (b"ContractViolation", b"surprise: extra_forbidden") == (
        invalid["casebridge.dlq.error.class"],
        invalid["casebridge.dlq.error.message"],
    )


async def test_dead_letter_keeps_key_value_and_headers_byte_for_byte(kafka_bootstrap: str, topic_prefix: str) -> None:
    """A dead letter is the original record unchanged, plus context headers saying where it came from and why."""
    topics = Topics(topic_prefix)
    value = b"\xff\xfe not json at all \x00"
    original_headers = [("trace", b"\x00\x01\x02"), ("source", b"lcs")]
    async with running_router(
        kafka_bootstrap, topic_prefix, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: MemorySource()}
    ):
        await produce(kafka_bootstrap, topics.transfers, [(b"\x01key", value)], headers=original_headers)
        dead = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 1)

    [letter] = dead
    headers = dict(letter.headers)
    assert (b"\x01key", value) == (letter.key, letter.value)
    assert original_headers == list(letter.headers[:2])
    assert topics.transfers.encode() == headers["casebridge.dlq.original.topic"]
    assert f"{topic_prefix}-router".encode() == headers["casebridge.dlq.consumer.group"]
    assert (b"validate", b"1") == (headers["casebridge.dlq.stage"], headers["casebridge.dlq.attempts"])
    assert {"original.partition", "original.offset", "first.failure", "last.failure", "version"} <= {
        k.removeprefix("casebridge.dlq.") for k in headers
    }
