"""#16 fencing (router/_fencing.py): a member dropped from its group writes nothing more, not even what its producer
already held. The end-to-end case (a `casebridge run` SIGSTOPped past its session timeout) is in
tests/test_many_routers.py; these pin the parts: the membership lease, the router's gate, and the outbox's producer
failing the batches it holds once the gate refuses."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors._membership import RECHECK_SECONDS, RENEW_SECONDS, Membership
from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from router import Settings, build_router
from router._outbox import Fenced, Outbox, OutputFailed
from router._reading import read_all


class _Coordinator:
    """aiokafka's group coordinator as the lease sees it: a generation and a heartbeat."""

    def __init__(self, member: bool) -> None:
        self.member = member
        self.generation = 7
        self.heartbeats = 0

    async def _do_heartbeat(self) -> bool:
        self.heartbeats += 1
        if not self.member:  # aiokafka resets the generation on UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION
            self.generation = -1
        return self.member


class _Consumer:
    def __init__(self, member: bool = True) -> None:
        self._coordinator = _Coordinator(member)


def _stale(lease: Membership) -> None:
    lease.confirmed_at = time.monotonic() - RECHECK_SECONDS - 1  # as after a pause


async def test_a_fresh_lease_costs_no_heartbeat_and_a_stale_one_asks_the_coordinator() -> None:
    lease, consumer = Membership(session_timeout=10), _Consumer()
    assert await lease.current(consumer) and consumer._coordinator.heartbeats == 0
    _stale(lease)
    assert await lease.current(consumer) and consumer._coordinator.heartbeats == 1
    assert await lease.current(consumer) and consumer._coordinator.heartbeats == 1  # confirmed again just now


async def test_a_lease_past_its_renewal_age_is_renewed_in_the_background_and_nobody_waits_for_it() -> None:
    """Between RENEW_SECONDS and RECHECK_SECONDS the last confirmation still holds: the caller is answered at once
    while one heartbeat (slow here) is under way, and the lease is younger once it is answered."""
    answer = asyncio.Event()

    class Slow(_Coordinator):
        async def _do_heartbeat(self) -> bool:
            self.heartbeats += 1
            await answer.wait()
            return True

    lease, consumer = Membership(session_timeout=10), _Consumer()
    consumer._coordinator = Slow(True)
    aged = time.monotonic() - RENEW_SECONDS - 0.1
    lease.confirmed_at = aged
    assert await asyncio.wait_for(lease.current(consumer), 0.05), "answered at once, on the last confirmation"
    assert await asyncio.wait_for(lease.current(consumer), 0.05)
    await asyncio.sleep(0)
    assert consumer._coordinator.heartbeats == 1, "one renewal under way, not one per caller"
    answer.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert lease.confirmed_at > aged + RENEW_SECONDS, "renewed"


async def test_a_background_renewal_the_coordinator_refuses_makes_the_next_ask_wait_for_its_own_answer() -> None:
    """A renewal asked in the background that learns the member is gone is not thrown away: the next ask does not
    take the last confirmation's word, it asks (and is refused)."""
    lease, consumer = Membership(session_timeout=10), _Consumer(member=False)
    lease.confirmed_at = time.monotonic() - RENEW_SECONDS - 0.1
    assert await lease.current(consumer), "answered on the last confirmation; the renewal goes in the background"
    for _ in range(5):
        await asyncio.sleep(0)
    assert consumer._coordinator.heartbeats == 1
    assert not await lease.current(consumer), "the refusal holds: asked again, and refused"
    assert consumer._coordinator.heartbeats == 2


async def test_a_member_the_coordinator_no_longer_knows_is_not_current() -> None:
    lease, consumer = Membership(session_timeout=10), _Consumer(member=False)
    _stale(lease)
    assert not await lease.current(consumer)


async def test_the_routers_gate_fences_the_outbox_when_a_subscribers_membership_is_gone() -> None:
    router = build_router(
        Settings(bootstrap_servers="127.0.0.1:1", topic_prefix="t"),
        {CaseSystem.EHM: MemoryTarget()},
        {CaseSystem.LCS: MemorySource()},
    )
    try:
        assert router.outbox.gate is not None, "the router gates its outbox's produce requests"
        router._consumers[None] = _Consumer()
        router._consumers[0] = _Consumer(member=False)  # the first retry tier's member was dropped
        assert await router.outbox.gate() is None  # leases fresh: a clock comparison, no heartbeat
        _stale(router._members[0])
        reason = await router.outbox.gate()
        assert reason is not None and router.outbox.fenced == reason
        await router.outbox.send("t.events", b"k", b"v", [])
        assert router.outbox._queued == [], "a fenced outbox queues nothing"
    finally:
        await router.outbox.stop()


@pytest.fixture
async def events_topic(kafka_bootstrap: str) -> str:
    topic = f"t-{uuid.uuid4().hex[:12]}.events"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def test_batches_the_producer_already_holds_are_failed_not_sent_once_the_gate_refuses(
    kafka_bootstrap: str, events_topic: str
) -> None:
    """The window the fence leaves without the gate: records handed to the producer before a pause go out when the
    process resumes, before the router's own check has run. Here the outbox has handed them over (it was not fenced
    then); the gate, asked as each produce request leaves, refuses: nothing reaches the topic, and the hand-over's
    acknowledgement fails as transient (the stack's recovery rejoins the member afresh)."""
    outbox = Outbox(kafka_bootstrap, events_topic, events_topic + ".dlq", "g")
    refusing: list[str] = []
    asked = 0

    async def gate() -> str | None:
        nonlocal asked
        asked += 1
        return refusing[0] if refusing else None

    outbox.gate = gate
    await outbox.start([events_topic])
    try:
        for n in range(3):
            await outbox.send(events_topic, f"child-{n}".encode(), b"before", [])
        await outbox.flush()
        assert asked >= 1, "asked before the produce request left"

        refusing.append("dropped from the group while paused")
        for n in range(5):
            await outbox.send(events_topic, f"child-{n}".encode(), b"after", [])
        acked = await outbox.hand_over()  # handed to the producer: the outbox itself was not fenced yet
        with pytest.raises(OutputFailed) as failed:
            await asyncio.wait_for(acked, 30)
        assert failed.value.transient
        assert isinstance(failed.value.__cause__, Fenced)
        assert outbox.fenced == "dropped from the group while paused"
    finally:
        await outbox.stop()
    values: list[Any] = [r.value for r in await read_all(kafka_bootstrap, events_topic)]
    assert sorted(values) == [b"before"] * 3, "nothing the producer held was sent after the gate refused"
