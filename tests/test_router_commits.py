"""G3 nothing lost: a batch's offsets are committed, exactly, only once its outputs are acknowledged.

The router settles batches k and k+1 (outputs acknowledged, then offsets committed, in batch order) while
it processes batch k+2; these tests hold the broker's acknowledgement in their hand.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord, TopicPartition
from structlog.testing import capture_logs

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem, TransferEvent
from router import Router, Settings, build_router
from router._outbox import Failure, OutputFailed
from router.app import next_offsets
from tests.support import as_assigned, ns_transfer


class HeldOutbox:
    """Stands in for the outbox: each hand-over's acknowledgement is a future the test resolves."""

    #: an outbox of a member dropped from its group refuses writes (``router._outbox.Outbox.fence``)
    fenced: str | None = None

    def fence(self, reason: str) -> None:
        self.fenced = reason

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[None]] = []
        self.writes = 0

    async def emit(self, event: TransferEvent) -> None:
        self.writes += 1

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        self.writes += 1

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], failure: Failure) -> None:
        self.writes += 1

    async def send(self, *args: Any) -> None:
        self.writes += 1

    async def hand_over(self) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack


@dataclass
class Consumer:
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    refuse: bool = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse:
            raise CommitFailedError("the group rebalanced")
        self.commits.append(dict(offsets))


@dataclass
class Batch:
    raw_message: tuple[ConsumerRecord[bytes, bytes], ...]
    consumer: Consumer


def _record(partition: int, offset: int, n: int) -> ConsumerRecord[bytes, bytes]:
    value = json.dumps(ns_transfer(n)).encode()
    key = f"lcs:LCS-{n}".encode()
    return ConsumerRecord("t.transfers", partition, offset, 0, 0, key, value, None, len(key), len(value), [])


async def _router() -> tuple[Router, HeldOutbox]:
    router = build_router(
        Settings(bootstrap_servers="127.0.0.1:1", topic_prefix="t"),
        {CaseSystem.EHM: MemoryTarget()},
        {CaseSystem.LCS: MemorySource()},
    )
    await router.outbox.stop()  # the real one is never started here
    held = HeldOutbox()
    router.outbox = held  # type: ignore[assignment]
    as_assigned(router, "t.transfers", range(3))
    return router, held


async def _spin() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_g3_next_offsets_are_one_past_the_last_record_of_each_partition() -> None:
    """What a batch commits: per partition, the offset after its last record (records may come in any order)."""
    records = [_record(0, 7, 1), _record(1, 3, 2), _record(0, 5, 3), _record(0, 8, 4)]
    assert {TopicPartition("t.transfers", 0): 9, TopicPartition("t.transfers", 1): 4} == next_offsets(records)


async def test_g3_offsets_are_committed_only_after_the_batch_outputs_are_acknowledged() -> None:
    """The handler returns with the batch processed; its exact offsets are committed once the broker acknowledged."""
    router, outbox = await _router()
    consumer = Consumer()
    await router._on_batch(Batch((_record(0, 10, 1), _record(1, 4, 2), _record(0, 11, 3)), consumer), None)  # type: ignore[arg-type]
    await _spin()
    assert ([], 1) == (consumer.commits, len(outbox.acks))
    assert {"completed": 3} == dict(router.outcomes)

    outbox.acks[0].set_result(None)
    await router.settled()
    assert [{TopicPartition("t.transfers", 0): 12, TopicPartition("t.transfers", 1): 5}] == consumer.commits


async def test_g3_two_batches_settle_while_the_next_is_handled_and_commits_stay_in_order() -> None:
    """Batches 2 and 3 are processed while batch 1 waits for the broker; batch 3 is handed over only once batch 1
    settled (two batches settling at most), and the commits are in batch order even when batch 2's
    acknowledgement comes first."""
    router, outbox = await _router()
    consumer = Consumer()
    await router._on_batch(Batch((_record(0, 0, 1),), consumer), None)  # type: ignore[arg-type]
    await router._on_batch(Batch((_record(0, 1, 2),), consumer), None)  # type: ignore[arg-type]
    third = asyncio.ensure_future(router._on_batch(Batch((_record(0, 2, 3),), consumer), None))  # type: ignore[arg-type]
    await _spin()
    assert (False, 2, {"completed": 3}) == (third.done(), len(outbox.acks), dict(router.outcomes))

    outbox.acks[1].set_result(None)  # batch 2 acknowledged first: it waits for batch 1's commit
    await _spin()
    assert ([], False) == (consumer.commits, third.done())
    outbox.acks[0].set_result(None)
    await third
    await _spin()
    assert [{TopicPartition("t.transfers", 0): 1}, {TopicPartition("t.transfers", 0): 2}] == consumer.commits
    outbox.acks[2].set_result(None)
    await router.settled()
    assert [
        {TopicPartition("t.transfers", 0): 1},
        {TopicPartition("t.transfers", 0): 2},
        {TopicPartition("t.transfers", 0): 3},
    ] == consumer.commits


async def test_g3_a_failed_batch_is_settled_only_after_the_batch_before_committed() -> None:
    """Batch 2's outputs fail while batch 1 is still committing: waiting for the router to settle ends only once
    batch 1's commit ended, and then raises batch 2's failure (nothing of batch 2 committed)."""
    router, outbox = await _router()
    committing = asyncio.Event()

    class SlowCommits(Consumer):
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            await committing.wait()
            await super().commit(offsets)

    consumer = SlowCommits()
    await router._on_batch(Batch((_record(0, 0, 1),), consumer), None)  # type: ignore[arg-type]
    await router._on_batch(Batch((_record(0, 1, 2),), consumer), None)  # type: ignore[arg-type]
    outbox.acks[0].set_result(None)  # batch 1: acknowledged, its commit under way
    outbox.acks[1].set_exception(OutputFailed("1 of 1 writes were not acknowledged: RecordTooLarge"))
    settled = asyncio.ensure_future(router.settled())
    await _spin()
    assert not settled.done(), "batch 1's commit is still under way"
    committing.set()
    with pytest.raises(OutputFailed):
        await settled
    assert ([{TopicPartition("t.transfers", 0): 1}], True) == (consumer.commits, router.halted)


async def test_g3_a_refused_commit_is_logged_and_the_router_goes_on() -> None:
    """A commit the group refuses (rebalanced) only means the batch is read again: logged, not a halt."""
    router, outbox = await _router()
    consumer = Consumer(refuse=True)
    with capture_logs() as logs:
        await router._on_batch(Batch((_record(0, 0, 1),), consumer), None)  # type: ignore[arg-type]
        outbox.acks[0].set_result(None)
        await router.settled()
    assert not router.halted
    assert [("offsets_not_committed", "CommitFailedError", 1)] == [
        (e["event"], e["error_class"], e["records"]) for e in logs if e["event"] == "offsets_not_committed"
    ]


async def test_g3_while_stopping_a_batch_settles_before_its_handler_returns() -> None:
    """Once stop() began, nothing is left in flight: the handler itself waits for the acknowledgement and commit."""
    router, outbox = await _router()
    consumer = Consumer()
    router._closing = True
    handler = asyncio.ensure_future(router._on_batch(Batch((_record(2, 40, 1),), consumer), None))  # type: ignore[arg-type]
    await _spin()
    assert (False, []) == (handler.done(), consumer.commits)
    outbox.acks[0].set_result(None)
    await handler
    assert [{TopicPartition("t.transfers", 2): 41}] == consumer.commits
