"""Wiring the flow to Kafka: consume in batches, outcome first, offsets after.

Commit scheme (what makes "nothing is lost" true):
- The subscriber uses FastStream's MANUAL ack policy with auto-commit off. FastStream's
  ACK and REJECT_ON_ERROR would commit even when a handler failed; NACK_ON_ERROR would
  redeliver in a tight loop.
- A batch (up to ``batch_size`` records) is processed; different children's messages run
  concurrently, one child's messages strictly in order (records are keyed by child).
- Every output of the batch (events, dead letters) is acknowledged by the broker
  (idempotent producer, acks=all) before the batch's offsets are committed, once.
- A message whose handling fails for any reason is dead-lettered; the flow never raises.
  If an output cannot be written (the dead-letter write itself failed), the router halts
  without committing: on restart the batch is read again and, every step being
  idempotent on transfer id, completes without duplicates in the target.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, KafkaMessage

from connectors import Source, Target
from contracts import CaseSystem, Council
from mappings import Protocol, load_protocol

from ._outbox import Failure, Outbox, OutputFailed
from .flow import Outcome, TransferFlow
from .settings import Settings

log = structlog.get_logger("casebridge.router")


class RouterHalted(RuntimeError):
    """Raised for every batch after an output failed: nothing more is committed."""


async def ensure_topics(bootstrap_servers: str, names: Sequence[str], partitions: int = 3) -> None:
    """Create the topics if they do not exist (single-node default: replication factor 1)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def _raw_body(msg: Any) -> Any:
    """Hand the handler raw bytes: decoding is the contract's job, so bad JSON reaches the flow."""
    return msg.body


class Router:
    def __init__(self, settings: Settings, flow: TransferFlow) -> None:
        self.settings = settings
        self.flow = flow
        self.topics = settings.topics
        self.halted = False
        self.stopped = asyncio.Event()
        self.outcomes: dict[str, int] = defaultdict(int)
        self.outbox = Outbox(settings.bootstrap_servers, self.topics.events, self.topics.dead_letter, settings.group_id)
        self.broker = KafkaBroker(settings.bootstrap_servers, logger=None)
        self.app = FastStream(self.broker)
        self._gate = asyncio.Semaphore(settings.concurrency)
        subscriber = self.broker.subscriber(
            self.topics.transfers,
            group_id=settings.group_id,
            batch=True,
            max_records=settings.batch_size,
            batch_timeout_ms=50,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            decoder=_raw_body,
        )
        subscriber(self._on_batch)

    async def _on_batch(self, body: list[bytes], msg: KafkaMessage) -> None:
        if self.halted:
            raise RouterHalted("the router halted after an output failure; restart it")
        records: tuple[ConsumerRecord[bytes, bytes], ...] = tuple(msg.raw_message)
        by_child: dict[bytes | None, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        for record in records:
            by_child[record.key].append(record)
        await asyncio.gather(*(self._in_order(group) for group in by_child.values()))
        try:
            await self.outbox.flush()
        except OutputFailed as exc:
            self.halted = True
            log.critical("router_halted", reason=str(exc), records=len(records))
            self.stopped.set()
            raise
        await msg.ack()

    async def _in_order(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        async with self._gate:
            for record in records:
                outcome = await self._one(record)
                self.outcomes[outcome.state] += 1

    async def _one(self, record: ConsumerRecord[bytes, bytes]) -> Outcome:
        try:
            return await self.flow.run(record, self.outbox)
        except Exception as exc:  # a bug must not lose the message: dead-letter it and go on
            log.exception("transfer_internal_error", error_class=type(exc).__name__)
            await self.outbox.dead_letter(
                record,
                Failure(stage="internal", error_class=type(exc).__name__, message="internal error in the router"),
            )
            return Outcome("dead-lettered")

    async def start(self) -> None:
        await ensure_topics(
            self.settings.bootstrap_servers, [self.topics.transfers, self.topics.events, self.topics.dead_letter]
        )
        for connector in [*self.flow.targets.values(), *self.flow.sources.values()]:
            await connector.start()
        await self.outbox.start()
        await self.broker.start()
        log.info("router_started", topic=self.topics.transfers, group_id=self.settings.group_id)

    async def stop(self) -> None:
        await self.broker.stop()
        await self.outbox.stop()
        for connector in [*self.flow.targets.values(), *self.flow.sources.values()]:
            await connector.stop()
        log.info("router_stopped", outcomes=dict(self.outcomes))

    async def run_until_stopped(self) -> None:
        await self.start()
        try:
            await self.stopped.wait()
        finally:
            await self.stop()


def build_router(
    settings: Settings,
    targets: dict[CaseSystem, Target],
    sources: dict[CaseSystem, Source],
    protocols: dict[Council, Protocol] | None = None,
) -> Router:
    """A router for the given connectors; by default with every council protocol shipped in ``mappings``."""
    if protocols is None:
        protocols = {Council.NORTH_SOMERSET: load_protocol(Council.NORTH_SOMERSET)}
    flow = TransferFlow(protocols, targets, sources, settings.retry, settings.group_id)
    return Router(settings, flow)
