"""Upgrading from the version before #16 (router/_upgrade.py): the new groups start where the old ones had got to,
on a real broker. Before, each retry tier had a group of its own and the notices and closures theirs; a new
group with nothing committed read its topics from the beginning (a tier's transfers run again)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from router import Settings, build_router, topics
from router._upgrade import carry_over_offsets
from router.app import ensure_topics
from router.lifecycle import Lifecycle


async def _topic(bootstrap: str, topic: str, partitions: int = 3, per_partition: int = 10) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for p in range(partitions):
            for i in range(per_partition):
                await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k", partition=p)
    finally:
        await producer.stop()


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """What an old group had committed (as its loop would have, once it had handled those records)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


async def _committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {tp: o.offset for tp, o in (await admin.list_consumer_group_offsets(group)).items() if o.offset >= 0}
    finally:
        await admin.close()


async def test_a_tier_goes_on_where_its_old_group_was_and_only_once(kafka_bootstrap: str, topic_prefix: str) -> None:
    tier = f"{topic_prefix}.retry.0"
    await _topic(kafka_bootstrap, tier)
    old, new = f"{topic_prefix}-retry-0", topic_prefix
    await _commit(kafka_bootstrap, old, {TopicPartition(tier, 0): 4, TopicPartition(tier, 1): 7})
    assert 2 == await carry_over_offsets(kafka_bootstrap, new, {tier: [old]})
    assert {TopicPartition(tier, 0): 4, TopicPartition(tier, 1): 7} == await _committed(kafka_bootstrap, new)
    # the new group ran on (committed further): a later start leaves its positions alone
    await _commit(kafka_bootstrap, new, {TopicPartition(tier, 0): 9})
    assert 0 == await carry_over_offsets(kafka_bootstrap, new, {tier: [old]})
    assert {TopicPartition(tier, 0): 9, TopicPartition(tier, 1): 7} == await _committed(kafka_bootstrap, new)


async def test_the_lifecycle_starts_at_the_earliest_of_the_two_loops_positions(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A record the notices or the closures had not handled yet is read again; a partition one of them had not
    committed is read from the beginning; a group that never existed (a fresh deployment) carries nothing."""
    events = f"{topic_prefix}.events"
    await _topic(kafka_bootstrap, events)
    notices, closures = f"{topic_prefix}-notices", f"{topic_prefix}-closures"
    p0, p1, p2 = (TopicPartition(events, p) for p in range(3))
    await _commit(kafka_bootstrap, notices, {p0: 5, p1: 3, p2: 8})
    await _commit(kafka_bootstrap, closures, {p0: 2, p1: 6})
    lifecycle = f"{topic_prefix}-lifecycle"
    assert 2 == await carry_over_offsets(kafka_bootstrap, lifecycle, {events: [notices, closures]})
    assert {p0: 2, p1: 3} == await _committed(kafka_bootstrap, lifecycle)
    fresh = f"{topic_prefix}-fresh"
    assert 0 == await carry_over_offsets(kafka_bootstrap, fresh, {events: [f"{fresh}-notices"]})
    assert {} == await _committed(kafka_bootstrap, fresh)


async def test_nothing_is_carried_over_to_a_group_a_member_has_joined(kafka_bootstrap: str, topic_prefix: str) -> None:
    """Another process of the deployment started at the same moment and joined first: the broker refuses the
    carry-over's commit, which says so in one line and does not raise."""
    tier = f"{topic_prefix}.retry.0"
    await _topic(kafka_bootstrap, tier)
    old, new = f"{topic_prefix}-retry-0", topic_prefix
    await _commit(kafka_bootstrap, old, {TopicPartition(tier, 0): 4})
    member = AIOKafkaConsumer(tier, bootstrap_servers=kafka_bootstrap, group_id=new, enable_auto_commit=False)
    await member.start()
    try:
        while not member.assignment():
            await asyncio.sleep(0.1)
        assert 0 == await carry_over_offsets(kafka_bootstrap, new, {tier: [old]})
    finally:
        await member.stop()
    assert {} == await _committed(kafka_bootstrap, new)


async def test_a_router_upgraded_from_one_process_starts_each_tier_where_it_was(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Through the router's own start (what ``casebridge run`` calls): the old tier groups' positions are the new
    group's before it joins."""
    group = f"{topic_prefix}-router"
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=group)
    router = build_router(settings, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: MemorySource()})
    await topics.prepare(kafka_bootstrap, router.topics, len(router.tiers), settings.topic_config)
    tiers = {n: await _partitions(kafka_bootstrap, router.topics.retry(n)) for n in range(len(router.tiers))}
    old = {TopicPartition(router.topics.retry(n), p): 0 for n, ps in tiers.items() for p in ps}
    for n in tiers:
        mine = {tp: o for tp, o in old.items() if tp.topic == router.topics.retry(n)}
        await _commit(kafka_bootstrap, f"{group}-retry-{n}", mine)
    await router.start()
    try:
        committed = await _committed(kafka_bootstrap, group)
    finally:
        await router.stop()
    assert set(old) <= set(committed), "every tier partition starts where its old group was"


async def test_a_lifecycle_upgraded_from_the_two_loops_starts_where_both_had_got_to(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Through the lifecycle loop's own start: its group's first positions on the events and audit topics are the
    earlier of the old notices' and closures' groups'."""
    group = f"{topic_prefix}-router"
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=group)
    t = settings.topics
    await ensure_topics(
        kafka_bootstrap, [t.events, t.audit], compacted=[t.pending_notices, t.pending_closures, t.history]
    )
    partitions = await _partitions(kafka_bootstrap, t.events)
    events = {TopicPartition(t.events, p) for p in partitions}
    await _commit(kafka_bootstrap, f"{group}-notices", {tp: 0 for tp in events})
    await _commit(kafka_bootstrap, f"{group}-closures", {tp: 0 for tp in events})
    loop = Lifecycle(settings, {}, {})
    await loop.start()
    try:
        committed = await _committed(kafka_bootstrap, loop.group_id)
    finally:
        await loop.stop()
    assert events <= set(committed)


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return sorted(await producer.partitions_for(topic))
    finally:
        await producer.stop()
