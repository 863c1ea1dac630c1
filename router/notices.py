"""Notices due when a transfer is allocated (LU-7: early help tells the social worker and manager).

The flow writes a ``PendingNotice`` to the compacted ``<prefix>.pending-notices`` topic once the
target holds the transfer. This step reads that topic, the events topic and the audit topic; when a transfer with a
pending notice is allocated it sends the notice through the channel's Target, emits ``notice-sent`` and tombstones
the pending entry. Allocated means: an operator's recorded allocation (its audit record, ``router/allocations.py``:
where the target is a team mailbox), or an ``allocated`` event from an allocation reporter (e.g. EHM's) that the
target confirms (``confirm_allocation``: the event alone proves nothing, anyone who can write to Kafka could have
written it). An event the target does not confirm sends nothing and raises a critical alert. Delivery: at least
once; a notice whose channel is down stays due and is tried again on the next round.

A step of the lifecycle loop (``router/lifecycle.py``), which reads the topics, restores the pending notices of
the partitions this process is assigned, writes and commits. An allocation read before its pending notice (or
whose notice could not go yet) is made durable the loop's one way before the offsets move past it: a mark
``allocated:<transfer id>`` on this topic, on the transfer's partition (an operator's audit record is not keyed
by transfer id), read back on restore, and tombstoned with the notice, or after ``KEEP_MARKS`` (most allocations
have no notice).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, cast

import structlog
from aiokafka.structs import ConsumerRecord

from connectors import CasebridgeError, Target
from contracts import AlertRaised, CaseSystem, NoticeSent, TransferAllocated, wire
from mappings import Route

from ._pending import MARK, Mark, PendingNotice, decode_notice_entry, encode_notice_mark
from .allocations import confirm_allocation, recorded_allocation, recorded_allocation_event_id
from .flow import event_id
from .lifecycle import Marks, Step

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

log = structlog.get_logger("casebridge.router.notices")
Recipient = Literal["social_worker", "manager"]


class AllocationNotices(Step):
    """The notices step: pending notices and allocation marks of the pending-notices partitions held."""

    name = "notices"

    def __init__(self, host: Lifecycle, targets: dict[CaseSystem, Target]) -> None:
        super().__init__(host, host.settings.topics.pending_notices)
        self.targets = targets
        self.pending: dict[str, PendingNotice] = {}
        #: allocations read in this round (not yet durable): transfer id -> the target that must confirm it (None:
        #: an operator's audit record, confirmed)
        self.allocated: dict[str, CaseSystem | None] = {}
        #: durable allocation marks: transfer id -> when marked, and the target that must confirm it
        self.marks: Marks[Mark] = Marks(self, MARK, encode_notice_mark)

    def drop(self, partitions: Collection[int]) -> None:
        for tid in [t for t in self.pending if self.partition(t) in partitions]:
            del self.pending[tid]
        self.marks.drop(partitions)

    def apply(self, r: ConsumerRecord[bytes, bytes]) -> None:
        if r.key is not None:
            self._apply(r.key.decode(), None if r.value is None else decode_notice_entry(r.value))

    def read(self, r: ConsumerRecord[bytes, bytes]) -> None:
        if r.key is None:
            return
        if r.topic == self.settings.topics.audit:
            audit = recorded_allocation(r.key, r.value)
            if audit is not None:
                self.allocated[audit.transfer_id] = None
        elif dict(r.headers or ()).get(wire.EVENT_TYPE) == b"allocated":
            self._read_allocated(r.key.decode(), r.value)

    async def act(self, now: datetime) -> int:
        """Send every notice now due; returns how many were sent."""
        sent = 0
        for tid in sorted((self.allocated.keys() | self.marks.keys()) & self.pending.keys()):
            pending, mark = self.pending.get(tid), self.marks.get(tid)
            if pending is None or not self.owns(tid):  # its partition was revoked meanwhile: its new owner sends it
                continue
            system = self.allocated[tid] if tid in self.allocated else mark[1] if mark is not None else None
            if system is not None:
                confirmed = await confirm_allocation(self.targets.get(system), tid)
                if confirmed is None:
                    continue  # the target cannot be asked now: the allocation stays, asked again next round
                if confirmed is False:
                    await self._unconfirmed(tid, pending, system)
                    continue
            try:
                await self._send(tid, pending)
            except CasebridgeError as exc:  # the channel is down: the notice stays due
                log.warning("allocation_notice_failed", transfer_id=tid, error_class=type(exc).__name__)
                continue
            self.pending.pop(tid, None)
            self.allocated.pop(tid, None)
            if tid in self.marks:
                await self.marks.tombstone(tid)
            sent += 1
        # every allocation still waiting for its notice is on the broker before the offsets move past it
        for tid, system in sorted(self.allocated.items()):
            if tid not in self.marks:
                await self.marks.write(tid, (now, system))  # kept here only if this process holds its notice
        self.allocated.clear()
        await self.marks.expire(now, lambda tid: tid in self.pending)
        return sent

    def _read_allocated(self, tid: str, value: bytes | None) -> None:
        """An ``allocated`` event: an allocation to confirm with the target it names. An operator's recorded
        allocation's own event is not the signal (its audit record is, read on the audit topic)."""
        try:
            event = TransferAllocated.model_validate_json(value or b"")
        except ValueError:
            log.warning("allocated_event_unreadable", transfer_id=tid)
            return
        if event.event_id != recorded_allocation_event_id(tid):
            self.allocated.setdefault(tid, event.target_system)

    async def _unconfirmed(self, tid: str, p: PendingNotice, system: CaseSystem) -> None:
        """An allocation the target does not confirm: nothing is sent, the allocation is forgotten, an alert."""
        self.allocated.pop(tid, None)
        if tid in self.marks:
            await self.marks.tombstone(tid)
        log.warning("signal_not_confirmed", transfer_id=tid, rule_ids=[p.rule], system=system.value)
        alert = AlertRaised(
            event_id=event_id(f"{tid}/allocation-unconfirmed", "alert"),
            transfer_id=tid,
            correlation_id=p.notice.correlation_id,
            council=p.notice.council,
            occurred_at=self.clock(),
            severity="critical",
            rule_ids=[p.rule],
            summary=f"an allocated event that {system.value} does not confirm was ignored: no notice was sent;"
            " check who can write the events topic",
        )
        await self.producer.send_and_wait(
            self.settings.topics.events,
            alert.model_dump_json().encode(),
            key=wire.event_key(alert),
            headers=wire.event_headers(alert.event_type),
        )

    def _apply(self, key: str, value: PendingNotice | Mark | None) -> None:
        """One record of the pending-notices topic: a notice or an allocation mark; None: a tombstone."""
        if key.startswith(MARK):
            self.marks.apply(key.removeprefix(MARK), value if isinstance(value, tuple) else None)
        elif isinstance(value, PendingNotice):
            self.pending[key] = value
        else:
            self.pending.pop(key, None)

    async def _send(self, tid: str, p: PendingNotice) -> None:
        target = self.targets[p.channel]
        notice = p.notice.model_copy(update={"transfer_id": f"{tid}-notice-allocation"})
        sw = notice.professionals.social_worker  # to the sending team's mailbox
        team = sw.organisation if sw else None
        await target.deliver(notice, Route(role="notice-allocation", locality=None, rule_ids=[p.rule], team=team))
        event = NoticeSent(
            event_id=event_id(f"{tid}/allocation", "notice-sent"),
            transfer_id=tid,
            correlation_id=p.notice.correlation_id,
            council=p.notice.council,
            occurred_at=datetime.now(UTC),
            notice="allocation",
            channel=p.channel,
            recipients=cast(list[Recipient], p.to),
            rule_ids=[p.rule],
        )
        topics = self.settings.topics
        await self.producer.send_and_wait(
            topics.events,
            event.model_dump_json().encode(),
            key=wire.event_key(event),
            headers=wire.event_headers(event.event_type),
        )
        await self.producer.send_and_wait(topics.pending_notices, None, key=tid.encode())  # tombstone: sent
        log.info("allocation_notice_sent", transfer_id=tid, rule_ids=[p.rule])
