"""An allocation an operator records: one mechanism for every rule that waits for one (LU-7, SW22-10, BA-9).

Where the receiving team has no case system (a team mailbox), nothing reports that it allocated the transfer, so
an operator records it, from ``casebridge allocate`` or the monitor's API. ``record_allocation`` reads both pending
topics for the transfer and serves what waits there, decided by what each entry says it waits for, not by rule id:

- a pending closure whose trigger is an allocation (``ALLOCATION_TRIGGERS``) is written back due now with the
  worker, so the closure scheduler closes the source naming that worker (and first sends the documents where the
  entry says so);
- a pending notice (every one waits for the allocation) is sent by the lifecycle's notices step on the audit
  record, once, across restarts (the lifecycle's durable marks, ``router/lifecycle.py``).

Each recorded allocation writes one audit record (operator, time, transfer, rule ids, council, organisation, the
target) to ``<prefix>.audit`` before anything else. The audit record is the signal: the notices step and the closure
scheduler follow the audit topic, and the closure scheduler (the router's principal, the only writer of the events
topic with the reporters) emits the ``allocated`` event for it. An ``allocated`` event on the events topic alone
proves nothing (anyone who can write to Kafka could have written it): it acts only once the target that holds the
transfer confirms it (``confirm_allocation``); where the target cannot say (a team mailbox), only an audit record
counts. The worker's name goes into the compacted pending closure only: never into an event, the audit record or a
log line. Refused, writing nothing, without an operator or when nothing pending is served by an allocation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, TypeVar, runtime_checkable

import structlog
from pydantic import BaseModel, ValidationError

from connectors import CasebridgeError, Target
from connectors._feed import idempotent_producer
from connectors.kafka import Kafka
from contracts import CaseSystem, MilestoneRecorded, Person, TransferAllocated

from ._pending import ALLOCATION_TRIGGERS, PendingClosure, PendingNotice, read_pending_closures, read_pending_notices
from .flow import event_id
from .settings import ALLOCATION_AUDIT_PREFIX, MILESTONE_AUDIT_PREFIX, Settings, Topics

log = structlog.get_logger("casebridge.router.allocations")
A = TypeVar("A", bound=BaseModel)


@runtime_checkable
class KnowsAllocation(Protocol):
    """A target that can say who was allocated a transfer (SW22-10: the receiving early-help worker; LU-7's notice
    and every allocation signal are confirmed with it)."""

    async def allocated_worker(self, transfer_id: str) -> Person | None: ...


def recorded_allocation_event_id(transfer_id: str) -> str:
    """The ``allocated`` event of an operator's recorded allocation (the same id each time it is recorded)."""
    return event_id(f"{transfer_id}/allocation-recorded", "allocated")


class AllocationRefused(ValueError):
    """A recorded allocation was refused: nothing was written (the message names the field and why)."""


class AllocationNotPending(AllocationRefused):
    """The transfer has nothing pending that an allocation serves: no closure and no notice waiting for one."""


class AllocationAudit(BaseModel):
    """One record of ``<prefix>.audit``: who recorded an allocation, when, for which transfer and rules.

    The worker's organisation, never the worker's name (that stays in the pending closure)."""

    action: Literal["allocation-recorded"] = "allocation-recorded"
    operator: str
    at: datetime
    transfer_id: str
    #: the first of ``rule_ids`` (the pending closure's rule where there is one)
    rule_id: str
    rule_ids: list[str]
    council: str
    organisation: str | None
    #: the target that holds the transfer, and its reference there (the ``allocated`` event names them)
    target_system: CaseSystem | None = None
    target_reference: str | None = None
    correlation_id: str | None = None

    def event(self) -> TransferAllocated:
        """The ``allocated`` event of this recorded allocation (the closure scheduler emits it)."""
        return TransferAllocated(
            event_id=recorded_allocation_event_id(self.transfer_id),
            transfer_id=self.transfer_id,
            correlation_id=self.correlation_id,
            council=self.council,
            occurred_at=self.at,
            target_system=self.target_system or CaseSystem.MAILBOX,
            target_reference=self.target_reference or self.transfer_id,
            episode_reference=self.target_reference or self.transfer_id,
        )


def _audited(model: type[A], prefix: str, key: bytes | None, value: bytes | None) -> A | None:
    """The ``model`` an audit record keyed ``prefix``... holds, or None (another kind of record, or unreadable)."""
    if key is None or value is None or not key.startswith(prefix.encode()):
        return None
    try:
        return model.model_validate_json(value)
    except ValidationError:
        log.warning("audit_record_unreadable", kind=prefix.rstrip("/"))
        return None


def recorded_allocation(key: bytes | None, value: bytes | None) -> AllocationAudit | None:
    """The recorded allocation an audit record holds, or None (a replay's or the intake's record, or unreadable)."""
    return _audited(AllocationAudit, ALLOCATION_AUDIT_PREFIX, key, value)


async def confirm_allocation(target: Target | None, transfer_id: str) -> Person | bool | None:
    """Whether the target that holds the transfer says it is allocated: the worker it names; False when it says
    nobody is, or cannot say (a team mailbox: only an operator's audit record counts there); None when it cannot be
    asked now (unavailable: ask again later)."""
    if not isinstance(target, KnowsAllocation):
        return False
    try:
        worker = await target.allocated_worker(transfer_id)
    except CasebridgeError as exc:
        if getattr(exc, "retriable", False):
            log.warning("allocation_unconfirmed_yet", transfer_id=transfer_id, error_class=type(exc).__name__)
            return None
        return False
    return worker if worker is not None else False


class MilestoneAudit(BaseModel):
    """One record of ``<prefix>.audit`` keyed ``MILESTONE_AUDIT_PREFIX`` + transfer id + ``/`` + milestone: an operator
    recorded a step no router event marks (e.g. NS-4's meeting held) on the monitor. Like a recorded allocation it is
    the signal: the closure scheduler emits the ``milestone`` event for it (the monitor's principal writes no events),
    and the audit names who recorded it (the monitor token's name); the event names the step only."""

    action: Literal["milestone-recorded"] = "milestone-recorded"
    operator: str
    at: datetime
    transfer_id: str
    milestone: str
    council: str
    rule_ids: list[str]

    @property
    def key(self) -> bytes:
        return f"{MILESTONE_AUDIT_PREFIX}{self.transfer_id}/{self.milestone}".encode()

    def event(self) -> MilestoneRecorded:
        return MilestoneRecorded(
            event_id=event_id(f"{self.transfer_id}/{self.milestone}", "milestone-recorded"),
            transfer_id=self.transfer_id,
            council=self.council,
            occurred_at=self.at,
            milestone=self.milestone,
            rule_ids=self.rule_ids,
        )


def recorded_milestone(key: bytes | None, value: bytes | None) -> MilestoneAudit | None:
    """The recorded milestone an audit record holds, or None (another kind of record, or unreadable)."""
    return _audited(MilestoneAudit, MILESTONE_AUDIT_PREFIX, key, value)


@dataclass(frozen=True)
class RecordedAllocation:
    """What a recorded allocation served: the closure now due (with the worker), and whether a notice waits."""

    transfer_id: str
    rule_ids: list[str]
    closure: PendingClosure | None
    notice: PendingNotice | None


async def allocate(
    kafka: Kafka,
    topics: Topics,
    transfer_id: str,
    worker: Person,
    operator: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RecordedAllocation:
    """Record that the receiving team allocated ``worker`` to the transfer (see the module's docstring)."""
    if not operator.strip():
        raise AllocationRefused("operator: required, every recorded allocation is audited (--operator)")
    if not worker.organisation:
        raise AllocationRefused("worker.organisation: required, the closure record names the worker's organisation")
    closures = await read_pending_closures(kafka, topics.pending_closures)
    closure = closures.get(transfer_id)
    if closure is not None and closure.trigger not in ALLOCATION_TRIGGERS:
        closure = None
    notice = (await read_pending_notices(kafka, topics.pending_notices)).get(transfer_id)
    if closure is None and notice is None:
        raise AllocationNotPending(
            f"transfer_id: {transfer_id!r} has nothing pending that an allocation serves (no closure or notice "
            "waiting for one)"
        )
    rule_ids = list(dict.fromkeys([*([closure.rule_id] if closure else []), *([notice.rule] if notice else [])]))
    now = clock()
    due = closure.model_copy(update={"due_at": now, "worker": worker}) if closure else None
    if closure is not None:
        council, target_system, target_reference = closure.council, closure.target_system, closure.target_reference
        correlation_id = closure.correlation_id
    else:
        assert notice is not None
        # a pending notice keeps no target receipt: the team mailbox holds the transfer under its id
        council, target_system, target_reference = notice.notice.council, notice.channel, transfer_id
        correlation_id = notice.notice.correlation_id
    audit = AllocationAudit(
        operator=operator.strip(),
        at=now,
        transfer_id=transfer_id,
        rule_id=rule_ids[0],
        rule_ids=rule_ids,
        council=council.value,
        organisation=worker.organisation,
        target_system=target_system,
        target_reference=target_reference,
        correlation_id=correlation_id,
    )
    producer = idempotent_producer(kafka)
    await producer.start()
    try:
        # the audit record first: nothing is recorded that was not audited (a failure after it leaves an audited
        # attempt: record it again). It is the signal: the notices step sends on it, and the closure scheduler emits
        # the ``allocated`` event for it. Nothing is written to the events topic from here.
        await producer.send_and_wait(
            topics.audit, audit.model_dump_json().encode(), key=f"{ALLOCATION_AUDIT_PREFIX}{transfer_id}".encode()
        )
        if due is not None:
            await producer.send_and_wait(topics.pending_closures, due.encode(), key=transfer_id.encode())
    finally:
        await producer.stop()
    log.info("allocation_recorded", transfer_id=transfer_id, rule_ids=rule_ids, closure=due is not None)
    return RecordedAllocation(transfer_id, rule_ids, due, notice)


async def record_allocation(
    settings: Settings,
    transfer_id: str,
    worker: Person,
    operator: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RecordedAllocation:
    """``allocate`` on the deployment ``settings`` name (``casebridge allocate``)."""
    return await allocate(settings.connection, settings.topics, transfer_id, worker, operator, clock)
