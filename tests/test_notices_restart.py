"""LU-7's allocation notice across a router restart (router/notices.py, a step of router/lifecycle.py), on the real
broker; and an ``allocated`` event that the target does not confirm sends nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest

from connectors import Target
from connectors.memory import MemoryTarget
from contracts import AlertRaised, CaseSystem, NoticeSent, Person, TransferAllocated
from router import Settings
from router._pending import PendingNotice
from router._reading import replay_compacted
from router.allocations import AllocationAudit
from router.app import ensure_topics
from router.lifecycle import Lifecycle
from router.notices import MARK, AllocationNotices
from router.settings import ALLOCATION_AUDIT_PREFIX
from tests.council_data import step_down, transfer
from tests.support import events_of, produce, read

Clock = Callable[[], datetime]


class Mailbox(MemoryTarget):
    """A team mailbox: it cannot say whom its team allocated (only an operator's recorded allocation counts)."""

    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX


class Ehm(MemoryTarget):
    """A target that says whom it allocated each transfer to (as EHM's tray does)."""

    system: ClassVar[CaseSystem] = CaseSystem.EHM

    def __init__(self) -> None:
        super().__init__()
        self.allocated_to: dict[str, Person] = {}

    async def allocated_worker(self, transfer_id: str) -> Person | None:
        return self.allocated_to.get(transfer_id)


@pytest.fixture
async def settings(kafka_bootstrap: str, topic_prefix: str) -> Settings:
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=f"{topic_prefix}-router")
    t = settings.topics
    await ensure_topics(
        kafka_bootstrap, [t.events, t.audit], compacted=[t.pending_notices, t.pending_closures, t.history]
    )
    return settings


def _notices(settings: Settings, targets: dict[CaseSystem, Target], clock: Clock | None = None) -> AllocationNotices:
    """The notices step of a new lifecycle loop (a new process: nothing in memory); start and stop it by its host."""
    return Lifecycle(settings, {}, targets, clock).notices


async def _allocate(settings: Settings, tid: str) -> None:
    """An operator's recorded allocation (``casebridge allocate`` writes this audit record)."""
    audit = AllocationAudit(
        operator="ops-test",
        at=datetime.now(UTC),
        transfer_id=tid,
        rule_id="LU-7",
        rule_ids=["LU-7"],
        council="luton",
        organisation="Example Early Help Team",
        target_system=CaseSystem.MAILBOX,
        target_reference=tid,
    )
    key = f"{ALLOCATION_AUDIT_PREFIX}{tid}".encode()
    await produce(settings.bootstrap_servers, settings.topics.audit, [(key, audit.model_dump_json().encode())])


async def _reported(settings: Settings, tid: str, system: CaseSystem) -> None:
    """An ``allocated`` event as an allocation reporter writes it (or anyone who can write the events topic)."""
    event = TransferAllocated(
        event_id=f"alloc-{tid}",
        transfer_id=tid,
        target_system=system,
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
    first = _notices(settings, {CaseSystem.MAILBOX: mailbox})
    await first.host.start()
    try:
        await _allocate(settings, tid)
        assert 0 == await _poll(first)  # nothing pending yet: the allocation is marked, offsets committed past it
        assert tid in first.marks
    finally:
        await first.host.stop()

    await _pend(settings, tid)
    second = _notices(settings, {CaseSystem.MAILBOX: mailbox})  # a new process: nothing in memory
    await second.host.start()
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
        await second.host.stop()

    third = _notices(settings, {CaseSystem.MAILBOX: mailbox})  # restarted again: nothing left to send
    await third.host.start()
    try:
        assert ({}, {}) == (third.pending, third.marks)
        assert 0 == await _poll(third, 5)
    finally:
        await third.host.stop()
    assert [f"{tid}-notice-allocation"] == mailbox.order
    records = await read(settings.bootstrap_servers, settings.topics.events, lambda rs: len(rs) >= 1, timeout=10)
    [notice] = [e for e in events_of(records) if isinstance(e, NoticeSent)]
    assert ("allocation", ["LU-7"]) == (notice.notice, notice.rule_ids)
    left = await replay_compacted(settings.bootstrap_servers, settings.topics.pending_notices, bytes.decode, bytes)
    assert {} == left


async def test_lu07_an_allocation_with_no_notice_is_forgotten_after_the_keep_time(settings: Settings) -> None:
    """Most allocations have no notice: their marks are tombstoned once older than KEEP_MARKS."""
    now = datetime.now(UTC)
    notices = _notices(settings, {CaseSystem.MAILBOX: Mailbox()}, lambda: now)
    await notices.host.start()
    try:
        await _allocate(settings, "LU7-NONE-1")
        await _poll(notices)
        assert "LU7-NONE-1" in notices.marks
        now += timedelta(days=31)
        await _poll(notices, 3)
        assert {} == notices.marks
    finally:
        await notices.host.stop()
    left = await replay_compacted(settings.bootstrap_servers, settings.topics.pending_notices, bytes.decode, bytes)
    assert f"{MARK}LU7-NONE-1" not in left


async def test_lu07_an_allocated_event_acts_only_once_the_target_confirms_it(settings: Settings) -> None:
    """Two ``allocated`` events for transfers with a pending notice, written raw to the events topic as a reporter
    (or anyone who can reach the broker) would: the one the target confirms sends its notice; the forged one (the
    target says nobody is allocated) sends nothing, is forgotten, and raises a critical alert naming LU-7. A forged
    event naming a team mailbox (which cannot confirm) sends nothing either."""
    ehm, mailbox = Ehm(), Mailbox()
    real, forged, via_mailbox = "LU7-REAL-1", "LU7-FORGED-1", "LU7-FORGED-2"
    ehm.allocated_to[real] = Person(name="Sam Madeup", role="Family Support Worker")
    for tid in (real, forged, via_mailbox):
        await _pend(settings, tid)
    notices = _notices(settings, {CaseSystem.EHM: ehm, CaseSystem.MAILBOX: mailbox})
    await notices.host.start()
    try:
        await _reported(settings, real, CaseSystem.EHM)
        await _reported(settings, forged, CaseSystem.EHM)
        await _reported(settings, via_mailbox, CaseSystem.MAILBOX)
        sent = 0
        for _ in range(40):
            sent += await notices.poll_once()
            if sent and not notices.marks:
                break
        assert 0 == await _poll(notices, 5)  # and nothing later
        assert (1, {}) == (sent, notices.marks)
        assert {forged, via_mailbox} == set(notices.pending)  # still waiting for a real allocation
    finally:
        await notices.host.stop()
    assert [f"{real}-notice-allocation"] == mailbox.order
    records = await read(settings.bootstrap_servers, settings.topics.events, lambda rs: len(rs) >= 6, timeout=10)
    alerts = {e.transfer_id: e for e in events_of(records) if isinstance(e, AlertRaised)}
    assert {forged, via_mailbox} == set(alerts)
    assert ("critical", ["LU-7"]) == (alerts[forged].severity, alerts[forged].rule_ids)
    assert "does not confirm" in alerts[forged].summary
    assert [real] == [e.transfer_id for e in events_of(records) if isinstance(e, NoticeSent)]
