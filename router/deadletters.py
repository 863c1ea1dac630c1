"""Operators' view of the dead-letter topic: list, inspect, replay.

A dead letter is the original record (key, value, headers) plus ``casebridge.dlq.*``
context headers. Replay puts the original back on the transfers topic, so it goes through
every check again, with ``casebridge.replay.*`` headers naming the operator and the dead
letter. Each replay is audited (an audit record keyed by the dead letter, and a
``replayed`` event). Replay is idempotent: a dead letter already replayed is skipped, and
delivery itself is idempotent on transfer id. A replayed message that fails again goes to
the parking topic, not back to the dead-letter topic, so nothing loops.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel, ConfigDict, Field

from contracts import TransferReplayed

from ._outbox import DLQ_PREFIX
from ._reading import read_all
from ._retry import H_REPLAY_OF, H_REPLAY_OPERATOR
from .settings import ALLOCATION_AUDIT_PREFIX, Topics


class ReplayRefused(ValueError):
    """A replay was asked for without what it needs (an operator identity)."""


@dataclass(frozen=True)
class DeadLetter:
    id: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    context: dict[str, str]
    pathway: str | None = None

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        headers = [(k, bytes(v)) for k, v in (record.headers or ())]
        context = {
            k.removeprefix(DLQ_PREFIX): v.decode(errors="replace") for k, v in headers if k.startswith(DLQ_PREFIX)
        }
        return cls(
            f"{record.partition}:{record.offset}", record.key, record.value, headers, context, _pathway(record.value)
        )

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_PREFIX)]

    @property
    def rule_ids(self) -> list[str]:
        return [r for r in self.context.get("rule.ids", "").split(",") if r]

    @property
    def last_failure(self) -> datetime | None:
        value = self.context.get("last.failure")
        return datetime.fromisoformat(value) if value else None

    def summary(self) -> dict[str, Any]:
        """What an operator list shows: no personal data (ids, council, pathway, reason)."""
        return {
            "id": self.id,
            "last_failure": self.context.get("last.failure", ""),
            "council": self.context.get("council", ""),
            "pathway": self.pathway or "",
            "transfer_id": self.context.get("transfer.id", ""),
            "stage": self.context.get("stage", ""),
            "error_class": self.context.get("error.class", ""),
            "rule_ids": self.rule_ids,
            "attempts": int(self.context.get("attempts", "0") or 0),
            "reason": self.context.get("error.message", ""),
        }


def _pathway(value: bytes | None) -> str | None:
    try:
        doc = json.loads(value or b"")
        return str(doc["pathway"]["direction"])
    except (ValueError, KeyError, TypeError):
        return None


class Filters(BaseModel):
    """Which dead letters an operator means. Every given filter must match."""

    model_config = ConfigDict(extra="forbid")

    council: str | None = None
    pathway: str | None = Field(default=None, description="step-up or step-down")
    rule_id: str | None = None
    error_class: str | None = None
    transfer_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, d: DeadLetter) -> bool:
        s = d.summary()
        checks = [
            self.council is None or s["council"] == self.council,
            self.pathway is None or s["pathway"] == self.pathway,
            self.rule_id is None or self.rule_id in d.rule_ids,
            self.error_class is None or s["error_class"] == self.error_class,
            self.transfer_id is None or s["transfer_id"] == self.transfer_id,
            self.since is None or (d.last_failure is not None and d.last_failure >= _aware(self.since)),
            self.until is None or (d.last_failure is not None and d.last_failure <= _aware(self.until)),
        ]
        return all(checks)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def list_dead_letters(bootstrap_servers: str, topics: Topics, filters: Filters | None = None) -> list[DeadLetter]:
    letters = [DeadLetter.of(r) for r in await read_all(bootstrap_servers, topics.dead_letter)]
    return [d for d in letters if filters is None or filters.matches(d)]


async def replayed_ids(bootstrap_servers: str, topics: Topics) -> set[str]:
    """The dead letters replayed so far: the keys of the audit topic's replay records (not its allocations')."""
    keys = {r.key.decode() for r in await read_all(bootstrap_servers, topics.audit) if r.key is not None}
    return {k for k in keys if not k.startswith(ALLOCATION_AUDIT_PREFIX)}


@dataclass
class ReplayReport:
    selected: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    already_replayed: list[str] = field(default_factory=list)
    #: dead letters that hold their record by reference only (too big to dead-letter whole): not replayable
    by_reference: list[str] = field(default_factory=list)
    dry_run: bool = False


async def replay(
    bootstrap_servers: str,
    topics: Topics,
    *,
    operator: str | None,
    filters: Filters | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    rate_per_second: float = 50.0,
) -> ReplayReport:
    """Replay matching dead letters once each; audited; ``dry_run`` only reports what it would do."""
    if not operator or not operator.strip():
        raise ReplayRefused("replay needs an operator identity (--operator): every replay is audited")
    done = await replayed_ids(bootstrap_servers, topics)
    report = ReplayReport(dry_run=dry_run)
    for d in await list_dead_letters(bootstrap_servers, topics, filters):
        if d.id in done:
            report.already_replayed.append(d.id)
        elif d.context.get("by.reference") == "true":
            report.by_reference.append(d.id)
        elif limit is None or len(report.selected) < limit:
            report.selected.append(d.id)
    if dry_run or not report.selected:
        return report
    chosen = {d.id: d for d in await list_dead_letters(bootstrap_servers, topics) if d.id in set(report.selected)}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for dl_id in report.selected:
            d = chosen[dl_id]
            now = datetime.now(UTC)
            headers = [*d.original_headers, (H_REPLAY_OF, dl_id.encode()), (H_REPLAY_OPERATOR, operator.encode())]
            # a later closure (router/closures.py) goes back to the pending closures; everything else is a transfer
            closure = d.context.get("original.topic") == topics.pending_closures
            await producer.send_and_wait(
                topics.pending_closures if closure else topics.transfers, value=d.value, key=d.key, headers=headers
            )
            audit = {"operator": operator, "at": now.isoformat(), "dead_letter": dl_id, **d.summary()}
            await producer.send_and_wait(topics.audit, value=json.dumps(audit).encode(), key=dl_id.encode())
            transfer_id = d.context.get("transfer.id") or None
            event = TransferReplayed(
                event_id=str(uuid.uuid4()),
                transfer_id=transfer_id,
                operator=operator,
                dead_letter_offset=int(dl_id.split(":")[1]),
            )
            await producer.send_and_wait(
                topics.events,
                value=event.model_dump_json().encode(),
                key=(transfer_id or event.event_id).encode(),
                headers=[("event_type", b"replayed")],
            )
            report.replayed.append(dl_id)
            await asyncio.sleep(1.0 / rate_per_second)
    finally:
        await producer.stop()
    return report
