"""LU-7's allocation notice across a router restart (router/notices.py), on the real broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest

from connectors.memory import MemoryTarget
from contracts import CaseSystem, NoticeSent, TransferAllocated
from router import Settings
from router._pending import PendingNotice
from router._reading import replay_compacted
from router.notices import MARK, AllocationNotices
from tests.council_data import step_down, transfer
from tests.support import events_of, produce, read


class Mailbox(MemoryTarget):
    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Settings:
    return Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=f"{topic_prefix}-router")


async def _allocate(settings: Settings, tid: str) -> None:
    event = TransferAllocated(
        event_id=f"alloc-{tid}",
        transfer_id=tid,
        target_system=CaseSystem.MAILBOX,
        target_reference="EH-TEAM-1",
        episode_reference="EH-EP-1",
    )
    await produce(
        settings.bootstrap_servers,
        settings.topics.events,
        [(tid.encode(), event.model_dump_json().encode())],
        headers=[("event_type", b"allocated")],
    )


async def _pend(settings: Settings, tid: str) -> None:
    message = transfer(step_down("luton", 7)).model_copy(update={"transfer_id": tid, "documents": []})
    pending = PendingNotice("LU-7", CaseSystem.MAILBOX, ["social_worker", "manager"], message)
    await produce(settings.bootstrap_servers, settings.topics.pending_notices, [(tid.encode(), pending.encode())])


async def _poll(notices: AllocationNotices, times: int = 15) -> int:
    return sum([await notices.poll_once() for _ in range(times)])


async def test_lu07_allocation_read_before_its_pending_notice_survives_a_restart_and_the_notice_goes_once(
    settings: Settings,
) -> None:
    """The allocation arrives (and its offset is committed) before the pending notice; the notices loop restarts;
    the pending notice then arrives: the notice is sent exactly once, and the mark is tombstoned."""
    tid = "LU7-RESTART-1"
    mailbox = Mailbox()
    first = AllocationNotices(settings, {CaseSystem.MAILBOX: mailbox})
    await first.start()
    try:
        await _allocate(settings, tid)
        assert 0 == await _poll(first)  # nothing pending yet: the allocation is marked, offsets committed past it
        assert tid in first.marks
    finally:
        await first.stop()

    await _pend(settings, tid)
    second = AllocationNotices(settings, {CaseSystem.MAILBOX: mailbox})  # a new process: nothing in memory
    await second.start()
    try:
        assert tid in second.marks  # read back from the topic
        sent = 0
        for _ in range(40):
            sent += await second.poll_once()
            if sent:
                break
        assert 1 == sent
        assert 0 == await _poll(second, 5)  # and not again
    finally:
        await second.stop()

    third = AllocationNotices(settings, {CaseSystem.MAILBOX: mailbox})  # restarted again: nothing left to send
    await third.start()
    try:
        assert ({}, {}) == (third.pending, third.marks)
        assert 0 == await _poll(third, 5)
    finally:
        await third.stop()
    assert [f"{tid}-notice-allocation"] == mailbox.order
    records = await read(settings.bootstrap_servers, settings.topics.events, lambda rs: len(rs) >= 2, timeout=10)
    [notice] = [e for e in events_of(records) if isinstance(e, NoticeSent)]
    assert ("allocation", ["LU-7"]) == (notice.notice, notice.rule_ids)
    left = await replay_compacted(settings.bootstrap_servers, settings.topics.pending_notices, bytes.decode, bytes)
    assert {} == left


async def test_lu07_an_allocation_with_no_notice_is_forgotten_after_the_keep_time(settings: Settings) -> None:
    """Most allocations have no notice: their marks are tombstoned once older than KEEP_MARKS."""
    now = datetime.now(UTC)
    notices = AllocationNotices(settings, {CaseSystem.MAILBOX: Mailbox()}, clock=lambda: now)
    await notices.start()
    try:
        await _allocate(settings, "LU7-NONE-1")
        await _poll(notices)
        assert "LU7-NONE-1" in notices.marks
        now += timedelta(days=31)
        await _poll(notices, 3)
        assert {} == notices.marks
    finally:
        await notices.stop()
    left = await replay_compacted(settings.bootstrap_servers, settings.topics.pending_notices, bytes.decode, bytes)
    assert f"{MARK}LU7-NONE-1" not in left
