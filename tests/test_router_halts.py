"""If the router cannot write an outcome (the dead-letter write itself failed), it stops and commits nothing."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem, TransferEvent
from router import Settings, build_router
from router._outbox import Failure, OutputFailed
from router.app import RouterHalted
from tests.support import as_assigned, ns_transfer


class BrokerRefusingOutbox:
    """Stands in for the outbox when the broker refuses every write."""

    #: an outbox of a member dropped from its group refuses writes (``router._outbox.Outbox.fence``)
    fenced: str | None = None

    def fence(self, reason: str) -> None:
        self.fenced = reason

    def __init__(self) -> None:
        self.writes = 0

    async def emit(self, event: TransferEvent) -> None:
        self.writes += 1

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], failure: Failure) -> None:
        self.writes += 1

    async def send(self, *args: Any) -> None:
        self.writes += 1

    async def hand_over(self) -> asyncio.Task[None]:
        async def refused() -> None:
            raise OutputFailed(f"{self.writes} writes were not acknowledged: KafkaTimeoutError")

        return asyncio.ensure_future(refused())


@dataclass
class Consumer:
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        self.commits.append(dict(offsets or {}))


@dataclass
class Batch:
    raw_message: tuple[ConsumerRecord[bytes, bytes], ...]
    consumer: Consumer = field(default_factory=Consumer)


def _record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t.transfers", 0, offset, 0, 0, b"k", value, None, len(b"k"), len(value), [])


async def test_output_failure_halts_the_router_without_committing() -> None:
    """A batch whose outputs the broker did not acknowledge is not committed; later batches are refused too."""
    router = build_router(
        Settings(bootstrap_servers="127.0.0.1:1", topic_prefix="t"),
        {CaseSystem.EHM: MemoryTarget()},
        {CaseSystem.LCS: MemorySource()},
    )
    await router.outbox.stop()  # the real one is never started here
    router.outbox = BrokerRefusingOutbox()  # type: ignore[assignment]
    as_assigned(router, "t.transfers", [0])
    batch = Batch((_record(0, b"{not json"), _record(1, json.dumps(ns_transfer(1)).encode())))

    await router._on_batch(batch, None)  # type: ignore[arg-type]  # processed; it settles in the background
    with pytest.raises(OutputFailed):
        await router.settled()
    assert (True, True, []) == (router.halted, router.stopped.is_set(), batch.consumer.commits)
    with pytest.raises(RouterHalted):
        await router._on_batch(Batch((_record(2, b"{}"),)), None)  # type: ignore[arg-type]
