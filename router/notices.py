"""Notices due when a transfer is allocated (LU-7: early help tells the social worker and manager).

The flow writes a ``PendingNotice`` to the compacted ``<prefix>.pending-notices`` topic once the
target holds the transfer. This loop reads that topic, the events topic and the audit topic; when a transfer with a
pending notice is allocated it sends the notice through the channel's Target, emits ``notice-sent`` and tombstones
the pending entry. Allocated means: an operator's recorded allocation (its audit record, ``router/allocations.py``:
where the target is a team mailbox), or an ``allocated`` event from an allocation reporter (e.g. EHM's) that the
target confirms (``confirm_allocation``: the event alone proves nothing, anyone who can write to Kafka could have
written it). An event the target does not confirm sends nothing and raises a critical alert. Delivery: at least
once; a notice whose channel is down stays due and is tried again on the next poll.

An allocation read before its pending notice (or whose notice could not go yet) is made durable
before the events topic's offset is committed past it: a mark ``allocated:<transfer id>`` is
written to the same compacted topic, read back at start, and tombstoned with the notice, so a
restart between the allocation and the pending notice loses nothing. Marks never matched (most
allocations have no notice) are tombstoned after ``KEEP_MARKS``.

Many processes: the loop's group co-partitions the events, pending-notices and audit topics
(``router/_assignor.py``); a process holds (and acts on) the pending notices and marks of exactly the
pending-notices partitions it is assigned, restored from the topic when assigned and forgotten when revoked.
A notice, its allocation event and its mark are all on the partition of the transfer id (the mark is written
there explicitly), so the process that holds a notice is the one that reads its allocation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from connectors import CasebridgeError, Target
from connectors._feed import idempotent_producer, poll_forever, renew_producer
from contracts import AlertRaised, CaseSystem, NoticeSent, TransferAllocated, wire
from mappings import Route

from ._pending import MARK, Mark, PendingNotice, decode_notice_entry
from ._reading import first_assignment as _first_assignment
from ._reading import owned_follower, partition_for, read_partitions
from .allocations import confirm_allocation, recorded_allocation, recorded_allocation_event_id
from .flow import event_id
from .settings import Settings

log = structlog.get_logger("casebridge.router.notices")
#: a commit refused because the group rebalanced meanwhile (not a failure of the loop)
_REBALANCED = (CommitFailedError, IllegalStateError, RebalanceInProgressError)
Recipient = Literal["social_worker", "manager"]
#: how long an allocation with no pending notice is remembered (the flow writes the notice when the target holds
#: the transfer, before anyone can allocate it, so only a crashed or lagging flow writes it later)
KEEP_MARKS = timedelta(days=30)


class _OwnPending(ConsumerRebalanceListener):  # type: ignore[misc]
    """Pending notices held for exactly the pending-notices partitions assigned."""

    def __init__(self, loop: AllocationNotices) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        topic = self.loop.settings.topics.pending_notices
        self.loop._drop({tp.partition for tp in revoked if tp.topic == topic})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        topic = self.loop.settings.topics.pending_notices
        await self.loop._restore({tp.partition for tp in assigned if tp.topic == topic})


class AllocationNotices:
    def __init__(
        self,
        settings: Settings,
        targets: dict[CaseSystem, Target],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.targets = targets
        topics = settings.topics
        self.consumer = owned_follower(
            settings.connection,
            f"{settings.group_id}-notices",
            [topics.events, topics.pending_notices, topics.audit],
            _OwnPending(self),
        )
        #: the pending-notices partitions this process holds (restored), and how many the topic has
        self.owned: set[int] = set()
        self.partitions = 0
        #: set once the group first assigned this process its partitions (and their entries were restored)
        self.assigned = asyncio.Event()
        self.producer = idempotent_producer(settings.connection)
        self.pending: dict[str, PendingNotice] = {}
        #: allocations read in this poll (not yet durable): transfer id -> the target that must confirm it (None:
        #: an operator's audit record, confirmed)
        self.allocated: dict[str, CaseSystem | None] = {}
        #: durable allocation marks: transfer id -> when marked, and the target that must confirm it
        self.marks: dict[str, Mark] = {}

    async def start(self) -> None:
        """Connect; the pending notices are restored per partition as the group assigns them (``_restore``)."""
        await self.producer.start()
        self.partitions = len(await self.producer.partitions_for(self.settings.topics.pending_notices))
        await self.consumer.start()
        await _first_assignment(self.assigned, type(self).__name__)

    def _partition(self, tid: str) -> int:
        return partition_for(tid.encode(), self.partitions or 1)

    async def _restore(self, partitions: set[int]) -> None:
        """The pending notices and marks of newly assigned partitions, read to their end before they are acted on;
        the group's position on them moves to that end (what is older was just read)."""
        topic = self.settings.topics.pending_notices
        self._drop(partitions)
        ends: dict[int, int] = {}

        def apply(records: list[Any]) -> None:
            for r in records:
                if r.key is not None:
                    self._apply(r.key.decode(), None if r.value is None else decode_notice_entry(r.value))

        await read_partitions(self.settings.connection, topic, partitions, apply, ends=ends)
        for p, end in ends.items():
            self.consumer.seek(TopicPartition(topic, p), end)
        self.assigned.set()
        self.owned |= partitions

    def _drop(self, partitions: set[int]) -> None:
        self.owned -= partitions
        for tid in [t for t in self.pending if self._partition(t) in partitions]:
            del self.pending[tid]
        for tid in [t for t in self.marks if self._partition(t) in partitions]:
            del self.marks[tid]

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    async def poll_once(self) -> int:
        """Read what is new; send every notice now due. Returns how many notices were sent."""
        topics = self.settings.topics
        for records in (await self.consumer.getmany(timeout_ms=200)).values():
            for r in records:
                if r.key is None:
                    continue
                if r.topic == topics.pending_notices:
                    self._apply(r.key.decode(), None if r.value is None else decode_notice_entry(r.value))
                elif r.topic == topics.audit:
                    audit = recorded_allocation(r.key, r.value)
                    if audit is not None:
                        self.allocated[audit.transfer_id] = None
                elif dict(r.headers or ()).get(wire.EVENT_TYPE) == b"allocated":
                    self._read_allocated(r.key.decode(), r.value)
        sent = 0
        for tid in sorted((self.allocated.keys() | self.marks.keys()) & self.pending.keys()):
            pending = self.pending[tid]
            system = self.allocated[tid] if tid in self.allocated else self.marks[tid][1]
            if system is not None:
                confirmed = await confirm_allocation(self.targets.get(system), tid)
                if confirmed is None:
                    continue  # the target cannot be asked now: the allocation stays, asked again next poll
                if confirmed is False:
                    await self._unconfirmed(tid, pending, system)
                    continue
            try:
                await self._send(tid, pending)
            except CasebridgeError as exc:  # the channel is down: the notice stays due
                log.warning("allocation_notice_failed", transfer_id=tid, error_class=type(exc).__name__)
                continue
            del self.pending[tid]
            self.allocated.pop(tid, None)
            if self.marks.pop(tid, None) is not None:
                await self._mark(tid, None)
            sent += 1
        # every allocation still waiting for its notice is on the broker before the offsets move past it
        now = self.clock()
        for tid, system in sorted(self.allocated.items()):
            if tid not in self.marks:
                await self._mark(tid, (now, system))
                if self._partition(tid) in self.owned:  # else the process holding its notice reads the mark
                    self.marks[tid] = (now, system)
        self.allocated.clear()
        for tid, (at, _) in sorted(self.marks.items()):
            if now - at > KEEP_MARKS and tid not in self.pending:
                await self._mark(tid, None)
                del self.marks[tid]
        try:
            await self.consumer.commit()
        except _REBALANCED:  # the group rebalanced (this member evicted, or its partitions moved): read again from
            # the last commit by whoever owns them, where every notice still pending is, and sent once (the ledger)
            log.warning("notice_commit_failed", reason="the group rebalanced; read again from the last commit")
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
        if self.marks.pop(tid, None) is not None:
            await self._mark(tid, None)
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
            tid = key.removeprefix(MARK)
            if isinstance(value, tuple):
                self.marks[tid] = value
            else:
                self.marks.pop(tid, None)
        elif isinstance(value, PendingNotice):
            self.pending[key] = value
        else:
            self.pending.pop(key, None)

    async def _mark(self, tid: str, mark: Mark | None) -> None:
        value = None
        if mark is not None:
            at, system = mark
            value = json.dumps({"allocated_at": at.isoformat(), "confirm_with": system and system.value}).encode()
        # on the transfer's own partition (not its key's): restored with the notice, by the process holding it
        await self.producer.send_and_wait(
            self.settings.topics.pending_notices, value, key=f"{MARK}{tid}".encode(), partition=self._partition(tid)
        )

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

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, "allocation-notices", reset=lambda: renew_producer(self))
