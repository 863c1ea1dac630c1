"""An allocation an operator records: one mechanism for every rule that waits for one (LU-7, SW22-10, BA-9).

Where the receiving team has no case system (a team mailbox), nothing reports that it allocated the transfer, so
an operator records it, from ``casebridge allocate`` or the monitor's API. ``record_allocation`` reads both pending
topics for the transfer and serves what waits there, decided by what each entry says it waits for, not by rule id:

- a pending closure whose trigger is an allocation (``ALLOCATION_TRIGGERS``) is written back due now with the
  worker, so the closure scheduler closes the source naming that worker (and first sends the documents where the
  entry says so);
- a pending notice (every one waits for the allocation) is sent by the notices loop on the ``allocated`` event
  this emits, once, across restarts (``router/notices.py``'s durable marks).

Each recorded allocation writes one audit record (operator, time, transfer, rule ids, council, organisation) to
``<prefix>.audit`` before anything else. The worker's name goes into the compacted pending closure only: never into
an event, the audit record or a log line. Refused, writing nothing, without an operator or when nothing pending is
served by an allocation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog
from pydantic import BaseModel

from connectors._feed import idempotent_producer
from connectors.kafka import Kafka
from contracts import Person, TransferAllocated

from ._pending import ALLOCATION_TRIGGERS, PendingClosure, PendingNotice
from ._reading import replay_compacted
from .flow import event_id
from .notices import read_pending_notices
from .settings import ALLOCATION_AUDIT_PREFIX, Settings, Topics

log = structlog.get_logger("casebridge.router.allocations")


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
    closures = await replay_compacted(kafka, topics.pending_closures, bytes.decode, PendingClosure.decode)
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
    event = TransferAllocated(
        event_id=recorded_allocation_event_id(transfer_id),
        transfer_id=transfer_id,
        correlation_id=correlation_id,
        council=council,
        occurred_at=now,
        target_system=target_system,
        target_reference=target_reference,
        episode_reference=target_reference,
    )
    audit = AllocationAudit(
        operator=operator.strip(),
        at=now,
        transfer_id=transfer_id,
        rule_id=rule_ids[0],
        rule_ids=rule_ids,
        council=council.value,
        organisation=worker.organisation,
    )
    producer = idempotent_producer(kafka)
    await producer.start()
    try:
        # the audit first: nothing is recorded that was not audited (a failure after it leaves an audited attempt);
        # the closure before the event, so the closure scheduler need not act on the event (it is not its signal)
        await producer.send_and_wait(
            topics.audit, audit.model_dump_json().encode(), key=f"{ALLOCATION_AUDIT_PREFIX}{transfer_id}".encode()
        )
        if due is not None:
            await producer.send_and_wait(topics.pending_closures, due.encode(), key=transfer_id.encode())
        await producer.send_and_wait(
            topics.events,
            event.model_dump_json().encode(),
            key=transfer_id.encode(),
            headers=[("event_type", b"allocated")],
        )
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
