"""Notices due when a transfer is allocated (LU-7: early help tells the social worker and manager).

The flow writes a ``PendingNotice`` to the compacted ``<prefix>.pending-notices`` topic once the
target holds the transfer. This loop reads that topic and the events topic; when an
``allocated`` event arrives for a transfer with a pending notice (from any allocation reporter,
e.g. EHM's, or an operator's recorded allocation where the target is a team mailbox: ``router/allocations.py``), it
sends the notice through the channel's Target, emits ``notice-sent`` and
tombstones the pending entry. Delivery: at least once; a notice whose channel is down stays
due and is tried again on the next poll.

An allocation read before its pending notice (or whose notice could not go yet) is made durable
before the events topic's offset is committed past it: a mark ``allocated:<transfer id>`` is
written to the same compacted topic, read back at start, and tombstoned with the notice, so a
restart between the allocation and the pending notice loses nothing. Marks never matched (most
allocations have no notice) are tombstoned after ``KEEP_MARKS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

import structlog
from aiokafka.errors import CommitFailedError

from connectors import CasebridgeError, Target
from connectors._feed import idempotent_producer, poll_forever
from contracts import CaseSystem, NoticeSent
from mappings import Route

from ._pending import PendingNotice
from ._reading import follower, replay_compacted
from .flow import event_id
from .settings import Settings

log = structlog.get_logger("casebridge.router.notices")
Recipient = Literal["social_worker", "manager"]
#: key prefix of a durable allocation mark on the pending-notices topic
MARK = "allocated:"
#: how long an allocation with no pending notice is remembered (the flow writes the notice when the target holds
#: the transfer, before anyone can allocate it, so only a crashed or lagging flow writes it later)
KEEP_MARKS = timedelta(days=30)


def _decode(raw: bytes) -> PendingNotice | datetime:
    """A pending notice, or the time of an allocation mark."""
    doc = json.loads(raw)
    if isinstance(doc, dict) and set(doc) == {"allocated_at"}:
        return datetime.fromisoformat(doc["allocated_at"])
    return PendingNotice.decode(raw)


async def read_pending_notices(bootstrap_servers: str, topic: str) -> dict[str, PendingNotice]:
    """The notices waiting for their transfer's allocation, by transfer id, as the topic stands now (no marks)."""
    entries = await replay_compacted(bootstrap_servers, topic, bytes.decode, _decode)
    return {k: v for k, v in entries.items() if isinstance(v, PendingNotice) and not k.startswith(MARK)}


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
        self.consumer = follower(
            settings.bootstrap_servers, f"{settings.group_id}-notices", topics.events, topics.pending_notices
        )
        self.producer = idempotent_producer(settings.bootstrap_servers)
        self.pending: dict[str, PendingNotice] = {}
        #: allocations read in this poll (not yet durable)
        self.allocated: set[str] = set()
        #: durable allocation marks: transfer id -> when marked
        self.marks: dict[str, datetime] = {}

    async def start(self) -> None:
        entries = await replay_compacted(
            self.settings.bootstrap_servers, self.settings.topics.pending_notices, bytes.decode, _decode
        )
        for key, value in entries.items():
            self._apply(key, value)
        await self.producer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    async def poll_once(self) -> int:
        """Read what is new; send every notice now due. Returns how many notices were sent."""
        for records in (await self.consumer.getmany(timeout_ms=200)).values():
            for r in records:
                if r.key is None:
                    continue
                if r.topic == self.settings.topics.pending_notices:
                    self._apply(r.key.decode(), None if r.value is None else _decode(r.value))
                elif dict(r.headers or ()).get("event_type") == b"allocated":
                    self.allocated.add(r.key.decode())
        sent = 0
        for tid in sorted((self.allocated | self.marks.keys()) & self.pending.keys()):
            try:
                await self._send(tid, self.pending[tid])
            except CasebridgeError as exc:  # the channel is down: the notice stays due
                log.warning("allocation_notice_failed", transfer_id=tid, error_class=type(exc).__name__)
                continue
            del self.pending[tid]
            self.allocated.discard(tid)
            if self.marks.pop(tid, None) is not None:
                await self._mark(tid, None)
            sent += 1
        # every allocation still waiting for its notice is on the broker before the offsets move past it
        now = self.clock()
        for tid in sorted(self.allocated - self.marks.keys()):
            await self._mark(tid, now)
            self.marks[tid] = now
        self.allocated.clear()
        for tid, at in sorted(self.marks.items()):
            if now - at > KEEP_MARKS and tid not in self.pending:
                await self._mark(tid, None)
                del self.marks[tid]
        try:
            await self.consumer.commit()
        except CommitFailedError:  # the group rebalanced (this member evicted): read again from the last commit,
            # where every notice still pending is, and sent once (the channel's ledger)
            log.warning("notice_commit_failed", reason="the group rebalanced; read again from the last commit")
        return sent

    def _apply(self, key: str, value: PendingNotice | datetime | None) -> None:
        """One record of the pending-notices topic: a notice or an allocation mark; None: a tombstone."""
        if key.startswith(MARK):
            tid = key.removeprefix(MARK)
            if isinstance(value, datetime):
                self.marks[tid] = value
            else:
                self.marks.pop(tid, None)
        elif isinstance(value, PendingNotice):
            self.pending[key] = value
        else:
            self.pending.pop(key, None)

    async def _mark(self, tid: str, at: datetime | None) -> None:
        value = None if at is None else json.dumps({"allocated_at": at.isoformat()}).encode()
        await self.producer.send_and_wait(self.settings.topics.pending_notices, value, key=f"{MARK}{tid}".encode())

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
            topics.events, event.model_dump_json().encode(), key=tid.encode(), headers=[("event_type", b"notice-sent")]
        )
        await self.producer.send_and_wait(topics.pending_notices, None, key=tid.encode())  # tombstone: sent
        log.info("allocation_notice_sent", transfer_id=tid, rule_ids=[p.rule])

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, "allocation-notices")
