"""Notices due when a transfer is allocated (LU-7: early help tells the social worker and manager).

The flow writes a ``PendingNotice`` to the compacted ``<prefix>.pending-notices`` topic once the
target holds the transfer. This loop reads that topic and the events topic; when an
``allocated`` event arrives for a transfer with a pending notice (from any allocation reporter,
e.g. EHM's), it sends the notice through the channel's Target, emits ``notice-sent`` and
tombstones the pending entry. Delivery: at least once; a notice whose channel is down stays
due and is tried again on the next poll.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, cast

import structlog
from aiokafka import AIOKafkaConsumer

from connectors import CasebridgeError, Target
from connectors._feed import idempotent_producer, poll_forever
from contracts import CaseSystem, NoticeSent
from mappings import Route

from ._pending import PendingNotice
from ._reading import fold_compacted, replay_compacted
from .flow import event_id
from .settings import Settings

log = structlog.get_logger("casebridge.router.notices")
Recipient = Literal["social_worker", "manager"]


class AllocationNotices:
    def __init__(self, settings: Settings, targets: dict[CaseSystem, Target]) -> None:
        self.settings = settings
        self.targets = targets
        topics = settings.topics
        self.consumer = AIOKafkaConsumer(
            topics.events,
            topics.pending_notices,
            bootstrap_servers=settings.bootstrap_servers,
            group_id=f"{settings.group_id}-notices",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.producer = idempotent_producer(settings.bootstrap_servers)
        self.pending: dict[str, PendingNotice] = {}
        self.allocated: set[str] = set()

    async def start(self) -> None:
        self.pending.update(
            await replay_compacted(
                self.settings.bootstrap_servers,
                self.settings.topics.pending_notices,
                bytes.decode,
                PendingNotice.decode,
            )
        )
        await self.producer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    async def poll_once(self) -> int:
        """Read what is new; send every notice now due. Returns how many notices were sent."""
        for records in (await self.consumer.getmany(timeout_ms=200)).values():
            for r in records:
                if r.topic == self.settings.topics.pending_notices:
                    fold_compacted(self.pending, [r], bytes.decode, PendingNotice.decode)
                elif dict(r.headers or ()).get("event_type") == b"allocated" and r.key is not None:
                    self.allocated.add(r.key.decode())
        sent = 0
        for tid in sorted(self.allocated & self.pending.keys()):
            try:
                await self._send(tid, self.pending[tid])
            except CasebridgeError as exc:  # the channel is down: the notice stays due
                log.warning("allocation_notice_failed", transfer_id=tid, error_class=type(exc).__name__)
                continue
            del self.pending[tid]
            sent += 1
        await self.consumer.commit()
        return sent

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
