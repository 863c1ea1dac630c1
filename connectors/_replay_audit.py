"""Whether a replayed record's ``casebridge.replay.*`` headers are an operator's audited replay.

Anyone who may write the transfers, remap or pending-closures topics can put ``casebridge.replay.of`` and
``casebridge.replay.operator`` headers on a record. The ``replayed`` event names an operator, so it is written only
when the audit topic (written by the operator and monitor principals alone, README "Deploying securely") holds the
replay's audit record: keyed by the dead letter id the ``of`` header names, naming the operator the header names.
``casebridge replay`` writes that audit record before the message (router/deadletters.py), so it is there when the
message is read. Otherwise (``replayed_event``) no ``replayed`` event, and a critical alert "replay without audit
record"; the record itself is handled as any record of its topic (a transfer goes through every check again, as a
publisher's would: writing it needs no more rights than publishing one).

The audit topic is read from where the last look-up stopped, only when a dead letter id is not yet known: a replay
costs one incremental read; a forged header costs its writer one read of what is new.
"""

from __future__ import annotations

import asyncio
import json
import re

import structlog
from aiokafka.structs import TopicPartition

from contracts import AlertRaised, TransferEvent, TransferReplayed, wire

from . import kafka as clients
from .kafka import Kafka

log = structlog.get_logger("casebridge.replay_audit")

#: a replay's audit record is keyed by its dead letter id (allocations' and milestones' by ``<kind>/<transfer id>``)
_DEAD_LETTER_ID = re.compile(r"\d+:\d+")
#: the alert's summary, as the monitor and the alert channels show it
UNAUDITED = (
    "replay without audit record: a record carried replay headers that no operator's audit record confirms;"
    " no replayed event written, the record handled as any other; check who can write the transfers, remap and"
    " pending-closures topics"
)


class ReplayAudits:
    """The replays the audit topic records (dead letter id -> operator), read incrementally on demand."""

    def __init__(self, kafka: Kafka, topic: str, timeout: float = 30.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.timeout = timeout
        self._operators: dict[str, str] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()

    def remember(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the audit topic: a replay's audit record is kept (its operator by dead letter id)."""
        dl_id = (key or b"").decode(errors="replace")
        if not _DEAD_LETTER_ID.fullmatch(dl_id):
            return
        try:
            doc = json.loads(value or b"")
            operator, named = doc["operator"], doc["dead_letter"]
        except (ValueError, KeyError, TypeError):
            return
        if isinstance(operator, str) and operator and named == dl_id:
            self._operators.setdefault(dl_id, operator)

    async def operator(self, dl_id: str) -> str | None:
        """The operator the audit record of the replay of ``dl_id`` names, None if the audit topic has none."""
        if dl_id not in self._operators:
            async with self._lock:
                if dl_id not in self._operators:
                    await self._read_new()
        return self._operators.get(dl_id)

    async def _read_new(self) -> None:
        consumer = clients.consumer(self.kafka, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in sorted(await _partitions(self.kafka, self.topic))]
            if not partitions:
                return
            consumer.assign(partitions)
            first = await consumer.beginning_offsets(partitions)
            end = await consumer.end_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(self._positions.get(tp, 0), first[tp]))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]] and loop.time() < deadline:
                for tp, records in (await consumer.getmany(*partitions, timeout_ms=500)).items():
                    for r in records:
                        self.remember(r.key, r.value)
                    if records:
                        self._positions[tp] = records[-1].offset + 1
        finally:
            await consumer.stop()


async def _partitions(kafka: Kafka, topic: str) -> set[int]:
    """The topic's partitions (a metadata request for every topic: naming an absent one might create it)."""
    client = clients.client(kafka)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        return set(cluster.partitions_for_topic(topic) or ())
    finally:
        await client.close()


async def replayed_event(audits: ReplayAudits | None, of: str, operator: str, transfer_id: str | None) -> TransferEvent:
    """The event a record replayed as the dead letter ``of`` by ``operator`` (its headers) gets: ``replayed`` if the
    audit topic records that replay by that operator (or no audit topic is followed: a flow driven by hand), else
    a critical alert "replay without audit record" (the module's docstring)."""
    _, _, offset = of.partition(":")
    audited = operator if audits is None else await audits.operator(of)
    if audited is not None and audited == operator:
        return TransferReplayed(
            event_id=wire.event_id(of, "replayed"),
            transfer_id=transfer_id,
            operator=operator,
            dead_letter_offset=int(offset) if offset.isdigit() else 0,
        )
    log.warning("replay_not_audited", dead_letter=of, transfer_id=transfer_id, audited=audited is not None)
    return AlertRaised(
        event_id=wire.event_id(f"{of}/{operator}", "replay-unaudited"), transfer_id=transfer_id, severity="critical",
        summary=UNAUDITED,
    )  # fmt: skip
