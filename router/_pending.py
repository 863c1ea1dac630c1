"""Work waiting for an event: a notice (LU-7, on allocation) and a closure (LU-4 after 10 days, SW22-10 on
allocation, NS-12 on the front door's acceptance), and the marks of signals read before their pending entry.

Both state topics are compacted and keyed by transfer id; a mark is keyed by a prefix and the transfer id and
written to the transfer's own partition (``router/lifecycle.py``), so it is restored with the pending entries of
that partition."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from connectors.kafka import Kafka
from contracts import (
    CaseSystem,
    Child,
    ClosureRecord,
    Council,
    Pathway,
    Person,
    Professionals,
    SourceRecord,
    SystemIdentifier,
    TransferMessage,
    wire,
)
from contracts._common import AwareDatetime, Identifier, RuleId

from ._reading import replay_compacted


@dataclass(frozen=True)
class PendingNotice:
    rule: str
    channel: CaseSystem
    to: list[str]
    #: the notice itself: who it is about and to whom, no case documents (G4)
    notice: TransferMessage

    def encode(self) -> bytes:
        return json.dumps(
            {
                "rule": self.rule,
                "channel": self.channel.value,
                "to": self.to,
                "notice": self.notice.model_dump(mode="json"),
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PendingNotice:
        doc = json.loads(raw)
        return cls(
            doc["rule"], CaseSystem(doc["channel"]), list(doc["to"]), TransferMessage.model_validate(doc["notice"])
        )


#: what makes a pending closure due: a time (LU-4), the allocation (SW22-10), the Front Door's acceptance (NS-12),
#: an allocation an operator records with the worker's name (BA-9: ``casebridge allocate``)
Trigger = Literal["due", "allocated", "accepted", "recorded"]
#: the triggers that wait for the transfer's allocation: an operator's recorded allocation (``router/allocations.py``)
#: makes such a closure due with the worker it names ("allocated": reported by the target, or recorded where the
#: target cannot say, e.g. a team mailbox; "recorded": only ever recorded)
ALLOCATION_TRIGGERS: frozenset[Trigger] = frozenset({"allocated", "recorded"})


class PendingClosure(BaseModel):
    """A source record the flow kept open, to be closed later (LU-4, SW22-10, NS-12).

    Ids, the council, the pathway, the protocol's closure wording, times and hashed child keys: no child
    data and no documents. Staff names only: the closure record's lead professional and the worker an operator
    recorded as allocated (``router/allocations.py``); without a recorded worker, the worker an ``allocated``
    closure names (SW22-10) is asked of the target at close time, not kept.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    transfer_id: Identifier
    correlation_id: Identifier
    council: Council
    #: the rule that keeps the record open until the closure, and times it
    rule_id: RuleId
    trigger: Trigger
    #: when the record closes: set at once for "due", on the signal for the others
    due_at: AwareDatetime | None = None
    requested_at: AwareDatetime
    pathway: Pathway
    source_record: SourceRecord
    closure: ClosureRecord | None = None
    target_system: CaseSystem
    target_reference: Identifier
    #: SW22-11: Care Director's closure record names the lead service from the assessment outcome (a pick-list label)
    assessment_outcome: str | None = None
    #: LU-4: the child's keys (SHA-256 of ``system:id``, as ``router/_history.py`` keys children) when a step-down
    #: of the same child before the closure falls due cancels it; empty: nothing cancels it
    cancel_on_step_down: list[str] = []
    #: BA-9: the withheld documents go to the target before the close (fetched again from the source at close time)
    send_documents: bool = False
    #: the worker an operator recorded as allocated (a member of staff, not the family): the receiving worker the
    #: closure record names (SW22-10), or the lead professional TED records the step-down with (BA-9); set with the
    #: due time, never logged
    worker: Person | None = None

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes) -> PendingClosure:
        return cls.model_validate_json(raw)

    def closing_transfer(self, worker: Person | None = None) -> TransferMessage:
        """The transfer as ``Source.close`` reads it: the source record, the closure, the transfer id, the receiving
        worker (SW22-10); the child is the source record's id with fixed non-personal stand-ins (``Source.close``
        never reads the child; nothing personal was kept to give it)."""
        return TransferMessage(
            transfer_id=self.transfer_id,
            message_id=f"{self.transfer_id}-closure",
            correlation_id=self.correlation_id,
            council=self.council,
            requested_at=self.requested_at,
            pathway=self.pathway,
            child=Child(
                identifiers=[SystemIdentifier(system=self.source_record.system, id=self.source_record.record_id)],
                given_name=NOT_KEPT,
                family_name=NOT_KEPT,
                date_of_birth=date(1900, 1, 1),
            ),
            professionals=Professionals(family_support_worker=worker),
            source_record=self.source_record,
            assessment_outcome=self.assessment_outcome,
            closure=self.closure,
        )


#: the stand-in for personal fields a pending closure does not keep
NOT_KEPT = "not-kept"


#: key prefix of a durable allocation mark on the pending-notices topic
MARK = wire.ALLOCATION_MARK_PREFIX


#: an allocation mark: when it was read, and the target that must confirm it (None: an operator's audit record)
Mark = tuple[datetime, CaseSystem | None]


def encode_notice_mark(mark: Mark) -> bytes:
    at, system = mark
    return json.dumps({"allocated_at": at.isoformat(), "confirm_with": system and system.value}).encode()


def decode_notice_entry(raw: bytes) -> PendingNotice | Mark:
    """A pending notice, or an allocation mark."""
    doc = json.loads(raw)
    if isinstance(doc, dict) and "allocated_at" in doc and set(doc) <= {"allocated_at", "confirm_with"}:
        system = doc.get("confirm_with")
        return datetime.fromisoformat(doc["allocated_at"]), CaseSystem(system) if system else None
    return PendingNotice.decode(raw)


async def read_pending_notices(kafka: Kafka, topic: str) -> dict[str, PendingNotice]:
    """The notices waiting for their transfer's allocation, by transfer id, as the topic stands now (no marks)."""
    entries = await replay_compacted(kafka, topic, bytes.decode, decode_notice_entry)
    return {k: v for k, v in entries.items() if isinstance(v, PendingNotice) and not k.startswith(MARK)}


#: key prefix of a durable signal mark on the pending-closures topic
SIGNAL_MARK = wire.SIGNAL_MARK_PREFIX


#: a signal mark: when it was read, the trigger it is ("allocated", "accepted") and whether it says go (the front
#: door accepted: True; not accepted: False; an allocation: True)
SignalMark = tuple[datetime, Trigger, bool]


def encode_signal_mark(mark: SignalMark) -> bytes:
    at, trigger, go = mark
    return json.dumps({"signal": trigger, "go": go, "read_at": at.isoformat()}).encode()


def decode_signal_mark(raw: bytes) -> SignalMark:
    doc = json.loads(raw)
    return datetime.fromisoformat(doc["read_at"]), doc["signal"], bool(doc["go"])


async def read_pending_closures(kafka: Kafka, topic: str) -> dict[str, PendingClosure]:
    """The closures waiting, by transfer id, as the topic stands now (no signal marks)."""
    entries = await replay_compacted(kafka, topic, bytes.decode, bytes)  # decoded once the marks are set aside
    return {k: PendingClosure.decode(v) for k, v in entries.items() if not k.startswith(SIGNAL_MARK)}
