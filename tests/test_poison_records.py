"""A record of about 1 MiB on the transfers topic does not stop the deployment: with the dead-letter headers it
would pass Kafka's 1 MiB limits, so it is dead-lettered by reference (where it is, how big, why) and the router
goes on with the next record."""

from __future__ import annotations

import json

from aiokafka import AIOKafkaProducer

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from router import Topics
from router.deadletters import replay
from tests.support import count_type, events_of, ns_transfer, produce, read, running_router


async def test_g3_an_oversized_record_is_dead_lettered_by_reference_and_the_router_goes_on(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = Topics(topic_prefix)
    huge = ns_transfer(1)
    huge["documents"][0]["content"] = "x" * 1_046_000  # with its dead-letter headers, over 1 MiB
    value = json.dumps(huge).encode()
    assert 1_040_000 < len(value) < 1_048_000
    good = json.dumps(ns_transfer(2)).encode()
    target = MemoryTarget()
    async with running_router(
        kafka_bootstrap, topic_prefix, {CaseSystem.EHM: target}, {CaseSystem.LCS: MemorySource()}
    ):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=1_100_000)
        await producer.start()
        try:
            await producer.send_and_wait(topics.transfers, value, key=b"lcs:LCS-1")
            await producer.send_and_wait(topics.transfers, good, key=b"lcs:LCS-2")
        finally:
            await producer.stop()
        events = events_of(await read(kafka_bootstrap, topics.events, count_type("source-closed", 1), timeout=60))
        [dead] = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 1, timeout=30)
    assert ["ns-2"] == [e.transfer_id for e in events if e.event_type == "source-closed"]  # the next one went on
    headers = {k: v.decode() for k, v in dead.headers}
    assert dead.value is None and "true" == headers["casebridge.dlq.by.reference"]
    assert (topics.transfers, "ns-1") == (
        headers["casebridge.dlq.original.topic"],
        headers["casebridge.dlq.transfer.id"],
    )
    assert int(headers["casebridge.dlq.original.size"]) > 1_040_000
    assert ["ns-2"] == target.order  # the oversized one was refused by the contract, the next delivered
    report = await replay(kafka_bootstrap, topics, operator="duty-operator", dry_run=True)
    assert ([f"{dead.partition}:{dead.offset}"], []) == (report.by_reference, report.selected)  # never replayed empty


async def test_a_transfer_with_no_key_or_another_childs_key_is_dead_lettered_with_that_reason(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Per-child order (and the retry tiers' queue per child) holds only for records keyed by their child: a
    keyless transfer, or one keyed by another child, is refused and dead-lettered naming the key rule."""
    topics = Topics(topic_prefix)
    target = MemoryTarget()
    systems = ({CaseSystem.EHM: target}, {CaseSystem.LCS: MemorySource()})
    items = [
        (None, json.dumps(ns_transfer(1)).encode()),
        (b"lcs:LCS-999", json.dumps(ns_transfer(2)).encode()),
        (b"lcs:LCS-3", json.dumps(ns_transfer(3)).encode()),
    ]
    async with running_router(kafka_bootstrap, topic_prefix, *systems):
        await produce(kafka_bootstrap, topics.transfers, items)
        await read(kafka_bootstrap, topics.events, count_type("source-closed", 1), timeout=60)
        dead = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 2, timeout=30)
    found = sorted(
        (h["casebridge.dlq.transfer.id"], h["casebridge.dlq.error.class"], h["casebridge.dlq.stage"])
        for h in ({k: v.decode() for k, v in d.headers} for d in dead)
    )
    assert [("ns-1", "MissingKey", "validate"), ("ns-2", "KeyMismatch", "validate")] == found
    assert ["ns-3"] == target.order


async def test_a_valid_record_of_about_1_mib_that_needs_a_retry_is_dead_lettered_by_reference_not_retried(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A record the contract accepts but another producer padded to about 1 MiB, whose target is unavailable: it is
    never written to a retry tier (with the retry headers the producer would refuse it, and the router halt on it
    at every restart); it is dead-lettered by reference naming its size, and the router goes on."""
    from connectors import Source, Target
    from contracts import TransferRetryScheduled
    from router.settings import RetrySettings

    topics = Topics(topic_prefix)
    big = ns_transfer(1)
    big["documents"][0]["content"] = "x" * 650_000
    value = b"{" + b" " * 380_000 + json.dumps(big).encode()[1:]  # JSON all the same: whitespace between tokens
    assert 1_020_000 < len(value) < 1_040_000
    target = MemoryTarget(unavailable={"ns-1": 1, "ns-2": 1})  # both need a retry; ns-2 waits in tier 0
    quick = RetrySettings(attempts=1, initial_seconds=0.02, max_seconds=0.05, total_seconds=1.0, tiers=[1.0])
    targets: dict[CaseSystem, Target] = {CaseSystem.EHM: target}
    sources: dict[CaseSystem, Source] = {CaseSystem.LCS: MemorySource()}
    async with running_router(kafka_bootstrap, topic_prefix, targets, sources, retry=quick) as router:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=1_100_000)
        await producer.start()
        try:
            await producer.send_and_wait(topics.transfers, value, key=b"lcs:LCS-1")
            await producer.send_and_wait(topics.transfers, json.dumps(ns_transfer(2)).encode(), key=b"lcs:LCS-2")
        finally:
            await producer.stop()
        events = events_of(await read(kafka_bootstrap, topics.events, count_type("source-closed", 1), timeout=60))
        [dead] = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 1, timeout=30)
        assert not router.halted
    assert ["ns-2"] == [e.transfer_id for e in events if e.event_type == "source-closed"]  # retried, delivered
    scheduled = [e for e in events if isinstance(e, TransferRetryScheduled)]
    assert [("ns-2", 0)] == [(e.transfer_id, e.tier) for e in scheduled]
    headers = {k: v.decode() for k, v in dead.headers}
    assert (None, "true", "ns-1") == (
        dead.value,
        headers["casebridge.dlq.by.reference"],
        headers["casebridge.dlq.transfer.id"],
    )
    assert ("retry", "RecordTooLarge") == (headers["casebridge.dlq.stage"], headers["casebridge.dlq.error.class"])
    assert "too big for retry tier 0" in headers["casebridge.dlq.error.message"]
    assert int(headers["casebridge.dlq.original.size"]) > 1_020_000
    retried = await read(kafka_bootstrap, topics.retry(0), lambda r: len(r) >= 1, timeout=10)
    assert [b"lcs:LCS-2"] == [r.key for r in retried]  # the big one was never written to a tier
