"""Closing a source record later (router/closures.py): LU-4 after 10 days, SW22-10 on allocation, restarts.

The broker and the router are real; Care Director and the team mailboxes are in-memory stand-ins. The
closure scheduler's clock is injected, so "10 days later" is a clock moved on, not a wait.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from casebridge.stack import Stack
from connectors import PermanentError, Receipt, Source, Target
from connectors.memory import MemoryTarget
from contracts import (
    AlertRaised,
    CaseSystem,
    FrontDoorDecided,
    MilestoneRecorded,
    Person,
    SourceClosed,
    TransferAllocated,
    TransferMessage,
    wire,
)
from mappings import DeadlineState, Unit, deadlines_for, due_at, load_deadlines, load_protocol
from router import Settings
from router._pending import NOT_KEPT, SIGNAL_MARK, PendingClosure, read_pending_closures
from router.allocations import allocate, recorded_allocation_event_id
from router.closures import ClosurePlanner, default_timings
from router.deadletters import replay
from router.settings import RetrySettings
from tests.council_data import step_down, step_up, transfer
from tests.support import (
    TOKEN,
    CareDirector,
    MailboxSource,
    Systems,
    events_of,
    events_until,
    produce,
    read,
    send_transfer,
)

WORKER = Person(name="Sam Example", role="Family Support Worker", organisation="Early Help Hub")


class Mailbox(MemoryTarget):
    """A team mailbox whose team says who it allocated (SW22-10's receiving worker)."""

    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX

    def __init__(self, worker: Person | None = WORKER) -> None:
        super().__init__()
        self.worker = worker

    async def allocated_worker(self, transfer_id: str) -> Person | None:
        return self.worker


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str, retry_settings: RetrySettings) -> Settings:
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
    )


def _stack(
    settings: Settings, systems: Systems, state: Path, parts: dict[str, Any], clock: Callable[[], datetime]
) -> Stack:
    targets: dict[CaseSystem, Target] = {CaseSystem.MAILBOX: parts["mailbox"]}
    sources: dict[CaseSystem, Source] = {
        CaseSystem.MAILBOX: parts["mailbox_source"],
        CaseSystem.CARE_DIRECTOR: parts["care_director"],
    }
    return Stack(
        settings,
        state,
        systems=systems.deployed(),
        loops=False,
        extra_targets=targets,
        extra_sources=sources,
        clock=clock,
    )


@pytest.fixture
def parts() -> dict[str, Any]:
    return {"mailbox": Mailbox(), "mailbox_source": MailboxSource(), "care_director": CareDirector()}


async def _poll_until_closed(stack: Stack, n: int = 1, tries: int = 20) -> int:
    closed = 0
    for _ in range(tries):
        closed += await stack.closures.poll_once()
        if closed >= n:
            break
    return closed


async def _pending(settings: Settings) -> dict[str, PendingClosure]:
    return await read_pending_closures(settings.bootstrap_servers, settings.topics.pending_closures)


async def _marks(settings: Settings) -> dict[str, bytes]:
    """The signal marks on the pending-closures topic now, by transfer id (tombstoned ones gone)."""
    s = settings.topics.pending_closures
    entries: dict[str, bytes | None] = {}
    for r in await read(settings.bootstrap_servers, s, lambda rs: False, timeout=3):
        if r.key is not None and r.key.startswith(SIGNAL_MARK.encode()):
            entries[r.key.decode().removeprefix(SIGNAL_MARK)] = r.value
    return {tid: v for tid, v in entries.items() if v is not None}


# -- pure: the plan, and what the monitor makes of the closure --------------------------------------


def test_lu04_closure_falls_due_when_the_lu04_deadline_does_and_the_monitor_marks_it_met() -> None:
    """The planner's due time is LU-4's deadline (deadlines.toml, _deadlines.due_at) from acceptance; a
    source-closed then meets LU-4 on the monitor."""
    accepted = datetime(2026, 12, 18, 9, 0, tzinfo=UTC)  # a Friday before Christmas
    up = transfer(step_up("luton", 1))
    planned = ClosurePlanner("t", clock=lambda: accepted).plan(up, ["LU-4"], Receipt(CaseSystem.MAILBOX, "M-1"))
    [lu4] = [d for d in load_deadlines() if d.rule_id == "LU-4"]

    assert planned is not None and ("LU-4", "due") == (planned.rule_id, planned.trigger)
    assert due_at(accepted, lu4.length, lu4.unit) == planned.due_at
    timeline = [("acknowledged", accepted), ("source-closed", planned.due_at)]
    [status] = deadlines_for([lu4], "luton", "step-up", timeline, planned.due_at + timedelta(days=1))
    assert (DeadlineState.MET, False) == (status.state, status.met_late)


def test_lu04_the_monitor_shows_lu04_overdue_while_kept_open_and_met_once_the_scheduler_closes(tmp_path: Path) -> None:
    """On the monitor's own store: kept open past its 10 days is overdue; the scheduler's source-closed meets it."""
    from contracts import SourceKeptOpen, TransferAcknowledged, TransferRequested
    from monitor import Store
    from monitor._views import deadlines

    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    base: dict[str, Any] = {"transfer_id": "luton-su-9", "council": "luton"}
    store = Store(tmp_path / "monitor.sqlite3")
    store.apply(
        [
            TransferRequested(
                event_id="e1",
                occurred_at=at,
                direction="step-up",
                from_level="early-help",
                to_level="child-in-need-s17",
                from_system="mailbox",
                to_system="mailbox",
                **base,
            ),
            TransferAcknowledged(
                event_id="e2", occurred_at=at, target_system="mailbox", target_reference="M-9", **base
            ),
            SourceKeptOpen(event_id="e3", occurred_at=at, source_system="mailbox", rule_ids=["LU-4"], **base),
        ]
    )
    [(_, open_)] = [(t, d) for t, d in deadlines(store, at + timedelta(days=11)) if d.rule_id == "LU-4"]
    store.apply(
        [
            SourceClosed(
                event_id="e4",
                occurred_at=at + timedelta(days=10),
                source_system="mailbox",
                source_reference="EH-9",
                rule_ids=["LU-4"],
                **base,
            )
        ]
    )
    [(_, closed)] = [(t, d) for t, d in deadlines(store, at + timedelta(days=11)) if d.rule_id == "LU-4"]
    store.close()
    assert (DeadlineState.OVERDUE, DeadlineState.MET, False) == (open_.state, closed.state, closed.met_late)


def test_lu04_working_days_come_from_the_deadline_arithmetic_with_bank_holidays() -> None:
    """Were LU-4 counted in working days, the closure would skip weekends and England's bank holidays."""
    [lu4] = [d for d in load_deadlines() if d.rule_id == "LU-4"]
    timings = default_timings()
    timings["LU-4"] = type(timings["LU-4"])("due", lu4.model_copy(update={"unit": Unit.WORKING_DAYS}))
    accepted = datetime(2026, 12, 18, 9, 0, tzinfo=UTC)
    planned = ClosurePlanner("t", timings, clock=lambda: accepted).plan(
        transfer(step_up("luton", 1)), ["LU-4"], Receipt(CaseSystem.MAILBOX, "M-1")
    )
    # 10 working days from Fri 18 Dec 2026: Christmas Day, the Boxing Day substitute (Mon 28) and New Year's Day
    # are skipped (10 calendar days would be Mon 28 Dec)
    assert planned is not None and datetime(2027, 1, 6, 9, 0, tzinfo=UTC) == planned.due_at


def test_ba09_ba13_sw26_03_records_kept_open_for_good_get_no_pending_closure() -> None:
    """BA-9: the documents must go first once a worker is allocated (BA-15), so its closure waits for an operator's
    recorded allocation, never for a time or an event; BA-13 and SW26-3 keep the record open with no end; a rule
    with no timing never closes."""
    planner = ClosurePlanner("t")
    receipt = Receipt(CaseSystem.MAILBOX, "M-1")
    down = transfer(step_down("barnsley", 1))
    ba9 = planner.plan(down, ["BA-9"], receipt)
    assert ba9 is not None and ("recorded", None, True, None) == (
        ba9.trigger,
        ba9.due_at,
        ba9.send_documents,
        ba9.worker,
    )
    assert (None, None) == (
        planner.plan(down, ["BA-13"], receipt),
        planner.plan(transfer(step_up("swindon", 1)), ["SW26-3"], receipt),
    )
    assert planner.plan(transfer(step_up("luton", 1)), ["LU-4", "BA-13"], receipt) is None


def test_pending_closure_keeps_no_personal_data() -> None:
    """The pending entry holds ids, times and the closure wording: no child, no documents, no names."""
    doc = step_up("luton", 1)
    planned = ClosurePlanner("t").plan(transfer(doc), ["LU-4"], Receipt(CaseSystem.MAILBOX, "M-1"))
    assert planned is not None
    raw = planned.encode().decode()
    child = doc["child"]
    for value in (child["given_name"], child["family_name"], child["date_of_birth"], child.get("nhs_number")):
        assert not value or value not in raw
    closing = planned.closing_transfer()
    assert (NOT_KEPT, [], planned.source_record) == (closing.child.given_name, closing.documents, closing.source_record)


# -- on the real broker ------------------------------------------------------------------------------


async def test_lu04_step_up_keeps_early_help_open_and_closes_it_10_days_after_acceptance(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """Luton step-up: early help stays open (co-working), nothing closes on day 9, it closes on day 10 with
    source-closed naming LU-4, and the pending entry is tombstoned."""
    clock = Clock()
    up = step_up("luton", 41)
    async with _stack(settings, systems, tmp_path / "state", parts, clock) as stack:
        await send_transfer(settings, up)
        events = await events_until(settings, up["transfer_id"], "source-kept-open")
        assert ["LU-4"] == next(e for e in events if e.event_type == "source-kept-open").rule_ids  # type: ignore[union-attr]
        clock.offset = timedelta(days=9)
        assert 0 == await _poll_until_closed(stack, tries=5)
        assert {} == parts["mailbox_source"].closed
        clock.offset = timedelta(days=10, minutes=1)
        assert 1 == await _poll_until_closed(stack)
    record_id = up["source_record"]["record_id"]
    assert record_id in parts["mailbox_source"].closed
    events = await events_until(settings, up["transfer_id"], "source-closed")
    closed = [e for e in events if isinstance(e, SourceClosed)]
    assert [(["LU-4"], CaseSystem.MAILBOX)] == [(e.rule_ids, e.source_system) for e in closed]
    assert up["transfer_id"] not in await _pending(settings)


class Broken(MailboxSource):
    """A source whose close fails with an unexpected error (a bug) for one record, its message holding data."""

    def __init__(self, broken_record: str) -> None:
        super().__init__()
        self.broken_record = broken_record

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        if transfer.source_record.record_id == self.broken_record:
            raise ValueError(f"cannot close the record of {transfer.child.given_name}")
        return await super().close(transfer, receipt)


async def test_lu04_an_unexpected_error_closing_one_record_dead_letters_it_and_the_others_still_close(
    settings: Settings, systems: Systems, tmp_path: Path
) -> None:
    """One due closure fails with a bug: it is dead-lettered (its reason names the error class, not the message,
    which may hold record data) and the scheduler goes on to close the other due record."""
    clock = Clock()
    bad, good = step_up("luton", 45), step_up("luton", 46)
    parts = {
        "mailbox": Mailbox(),
        "mailbox_source": Broken(bad["source_record"]["record_id"]),
        "care_director": CareDirector(),
    }
    async with _stack(settings, systems, tmp_path / "state", parts, clock) as stack:
        for up in (bad, good):
            await send_transfer(settings, up)
            await events_until(settings, up["transfer_id"], "source-kept-open")
        clock.offset = timedelta(days=10, minutes=1)
        assert 1 == await _poll_until_closed(stack)
    assert [good["source_record"]["record_id"]] == list(parts["mailbox_source"].closed)
    [dead] = [
        e for e in await events_until(settings, bad["transfer_id"], "dead-lettered") if e.event_type == "dead-lettered"
    ]
    assert "ValueError" in dead.reason and bad["child"]["given_name"] not in dead.reason  # type: ignore[union-attr]
    assert bad["transfer_id"] not in await _pending(settings)


async def test_lu04_pending_closure_survives_a_restart_and_closes_once(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """A new process reads the pending closure back and closes when due; a re-run close is a no-op (one event)."""
    clock = Clock()
    up = step_up("luton", 42)
    async with _stack(settings, systems, tmp_path / "state", parts, clock) as stack:
        await send_transfer(settings, up)
        await events_until(settings, up["transfer_id"], "source-kept-open")
        assert 0 == await _poll_until_closed(stack, tries=3)
    clock.offset = timedelta(days=11)
    async with _stack(settings, systems, tmp_path / "state", parts, clock) as stack:  # a new router process
        assert up["transfer_id"] in stack.closures.pending
        assert 1 == await _poll_until_closed(stack)
        assert 0 == await _poll_until_closed(stack, tries=3)
    events = await events_until(settings, up["transfer_id"], "source-closed")
    assert 1 == sum(1 for e in events if e.event_type == "source-closed")


async def test_sw22_10_sw22_11_closure_waits_for_the_allocation_and_names_the_worker(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """Swindon 2022 step-down with no worker named: Care Director stays open (SW22-10); on the allocation the
    record closes with the SW22-11 closure wording and the receiving worker the team allocated."""
    down = step_down("swindon-2022", 43)
    down["professionals"] = {}
    async with _stack(settings, systems, tmp_path / "state", parts, Clock()) as stack:
        await send_transfer(settings, down)
        events = await events_until(settings, down["transfer_id"], "source-kept-open")
        assert ["SW22-10"] == next(e for e in events if e.event_type == "source-kept-open").rule_ids  # type: ignore[union-attr]
        assert 0 == await _poll_until_closed(stack, tries=3)  # not allocated: still open
        allocated = TransferAllocated(
            event_id="sw22-alloc-1",
            transfer_id=down["transfer_id"],
            target_system=CaseSystem.MAILBOX,
            target_reference="EHH-1",
            episode_reference="EHH-EP-1",
        )
        await produce(
            settings.bootstrap_servers,
            settings.topics.events,
            [(down["transfer_id"].encode(), allocated.model_dump_json().encode())],
            headers=[("event_type", b"allocated")],
        )
        assert 1 == await _poll_until_closed(stack)
    given = parts["care_director"].given[down["source_record"]["record_id"]]
    assert given.closure is not None and ["SW22-11"] == given.closure.rule_ids
    assert WORKER == given.professionals.family_support_worker
    closed = next(
        e for e in await events_until(settings, down["transfer_id"], "source-closed") if isinstance(e, SourceClosed)
    )
    assert ["SW22-10"] == closed.rule_ids


async def test_sw22_10_an_allocation_read_before_its_pending_closure_survives_a_restart(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """The lifecycle reads an allocation with nothing pending yet (the flow lagging) and stops, its offsets
    committed past it; the pending closure is written later. The allocation was marked on the transfer's partition
    of the pending-closures topic before the commit, so the next process restores it and closes, once; the mark is
    then tombstoned."""
    down = step_down("swindon-2022", 44)
    down["professionals"] = {}
    tid = down["transfer_id"]
    allocated = TransferAllocated(
        event_id="sw22-alloc-early",
        transfer_id=tid,
        target_system=CaseSystem.MAILBOX,
        target_reference="EHH-2",
        episode_reference="EHH-EP-2",
    )
    async with _stack(settings, systems, tmp_path / "state", parts, Clock()) as stack:
        await produce(
            settings.bootstrap_servers,
            settings.topics.events,
            [(tid.encode(), allocated.model_dump_json().encode())],
            headers=[("event_type", b"allocated")],
        )
        for _ in range(20):
            await stack.closures.poll_once()  # reads, marks, commits
            if tid in stack.closures.marks:
                break
        assert tid in stack.closures.signals and tid not in stack.closures.pending
        assert {tid} == set(await _marks(settings))
    async with _stack(settings, systems, tmp_path / "state", parts, Clock()) as stack:  # a new process
        assert ("allocated", True) == stack.closures.signals[tid]  # restored from the mark, not read again
        await send_transfer(settings, down)
        await events_until(settings, tid, "source-kept-open")
        assert 1 == await _poll_until_closed(stack, tries=40)
        assert 0 == await _poll_until_closed(stack, tries=3)
        assert {} == stack.closures.marks
    assert 1 == sum(1 for e in await events_until(settings, tid, "source-closed") if e.event_type == "source-closed")
    assert {} == await _marks(settings)


async def test_a_signal_with_nothing_pending_is_forgotten_after_the_keep_time(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """Most allocations have no pending closure: their marks are tombstoned once older than KEEP_MARKS, in memory
    and on the topic, so a restart restores nothing."""
    clock = Clock()
    tid = "no-closure-1"
    allocated = TransferAllocated(
        event_id="alloc-no-closure-1",
        transfer_id=tid,
        target_system=CaseSystem.MAILBOX,
        target_reference="EHH-9",
        episode_reference="EHH-EP-9",
    )
    async with _stack(settings, systems, tmp_path / "state", parts, clock) as stack:
        headers = [("event_type", b"allocated")]
        await produce(settings.bootstrap_servers, settings.topics.events,
                      [(tid.encode(), allocated.model_dump_json().encode())], headers=headers)  # fmt: skip
        for _ in range(20):
            await stack.closures.poll_once()
            if tid in stack.closures.marks:
                break
        assert tid in stack.closures.marks
        clock.offset = timedelta(days=31)
        await _poll_until_closed(stack, tries=3)
        assert ({}, {}) == (stack.closures.marks, stack.closures.signals)
    assert {} == await _marks(settings)
    async with _stack(settings, systems, tmp_path / "state", parts, clock) as stack:
        assert ({}, {}) == (stack.closures.marks, stack.closures.signals)


async def test_sw22_10_an_allocated_event_the_team_does_not_confirm_closes_nothing_until_an_operator_records_it(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """An ``allocated`` event written raw to the events topic (anyone who can reach the broker could) for a team
    that says nobody is allocated: nothing closes, nothing is dead-lettered, a critical alert names SW22-10, and
    the pending closure keeps waiting. Once an operator records the allocation (``casebridge allocate``: audited),
    the record closes naming that worker, and the ``allocated`` event is the scheduler's own."""
    parts["mailbox"] = Mailbox(worker=None)
    down = step_down("swindon-2022", 44)
    down["professionals"] = {}
    tid = down["transfer_id"]
    async with _stack(settings, systems, tmp_path / "state", parts, Clock()) as stack:
        await send_transfer(settings, down)
        await events_until(settings, tid, "source-kept-open")
        forged = TransferAllocated(
            event_id="sw22-alloc-forged",
            transfer_id=tid,
            target_system=CaseSystem.MAILBOX,
            target_reference="EHH-2",
            episode_reference="EHH-EP-2",
        )
        await produce(
            settings.bootstrap_servers,
            settings.topics.events,
            [(tid.encode(), forged.model_dump_json().encode())],
            headers=[("event_type", b"allocated")],
        )
        with capture_logs() as logs:
            for _ in range(40):
                await stack.closures.poll_once()
                if any(e["event"] == "signal_not_confirmed" for e in logs):
                    break
        assert 0 == await _poll_until_closed(stack, tries=3)
        events = await events_until(settings, tid, "alert")
        [alert] = [e for e in events if isinstance(e, AlertRaised)]
        assert ("critical", ["SW22-10"], True) == (alert.severity, alert.rule_ids, "does not confirm" in alert.summary)
        assert not [e for e in events if e.event_type == "dead-lettered"]
        assert ({}, True) == (parts["care_director"].closed, tid in stack.closures.pending)

        await allocate(settings.bootstrap_servers, settings.topics, tid, WORKER, "ops-test")
        assert 1 == await _poll_until_closed(stack)
    given = parts["care_director"].given[down["source_record"]["record_id"]]
    assert WORKER == given.professionals.family_support_worker
    allocated = [e for e in await events_until(settings, tid, "source-closed") if e.event_type == "allocated"]
    assert [recorded_allocation_event_id(tid)] == [e.event_id for e in allocated if e.event_id != forged.event_id]


async def test_a_source_closed_event_the_source_does_not_confirm_keeps_the_closure_pending(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """A ``source-closed`` event written raw for a record still open (forged, or about another record) would have
    dropped the pending closure, leaving the record open for good: Care Director is asked first, says open, so the
    closure stays pending, a critical alert names SW22-10, and the later allocation still closes the record."""
    down = step_down("swindon-2022", 49)
    down["professionals"] = {}
    tid = down["transfer_id"]
    async with _stack(settings, systems, tmp_path / "state", parts, Clock()) as stack:
        await send_transfer(settings, down)
        await events_until(settings, tid, "source-kept-open")
        forged = SourceClosed(
            event_id="forged-closed-1",
            transfer_id=tid,
            source_system=CaseSystem.CARE_DIRECTOR,
            source_reference=down["source_record"]["record_id"],
        )
        await produce(
            settings.bootstrap_servers,
            settings.topics.events,
            [(tid.encode(), forged.model_dump_json().encode())],
            headers=[("event_type", b"source-closed")],
        )
        with capture_logs() as logs:
            for _ in range(40):
                await stack.closures.poll_once()
                if any(e["event"] == "signal_not_confirmed" for e in logs):
                    break
        assert not any(e["event"] == "closure_not_needed" for e in logs)
        assert tid in stack.closures.pending
        [alert] = [e for e in await events_until(settings, tid, "alert") if isinstance(e, AlertRaised)]
        assert ("critical", ["SW22-10"], True) == (alert.severity, alert.rule_ids, "does not confirm" in alert.summary)
        await allocate(settings.bootstrap_servers, settings.topics, tid, WORKER, "ops-test")
        assert 1 == await _poll_until_closed(stack)
    assert down["source_record"]["record_id"] in parts["care_director"].closed


async def test_sw22_10_a_close_the_source_refuses_is_dead_lettered_and_closes_once_replayed(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """Care Director refuses the later close (a permanent error): the pending closure goes to the dead-letter topic
    with SW22-10 and an alert, and the record stays open. Once the cause is fixed, an operator's replay puts it back
    among the pending closures (not the transfers) and it closes, once."""
    refusing = parts["care_director"]
    refusals = [PermanentError("Care Director refused the closure record")]
    original_close = refusing.close

    async def close(transfer: TransferMessage, receipt: Receipt) -> str:
        if refusals:
            raise refusals.pop()
        return str(await original_close(transfer, receipt))

    refusing.close = close
    down = step_down("swindon-2022", 48)
    down["professionals"] = {}
    tid = down["transfer_id"]
    async with _stack(settings, systems, tmp_path / "state", parts, Clock()) as stack:
        await send_transfer(settings, down)
        await events_until(settings, tid, "source-kept-open")
        await allocate(settings.bootstrap_servers, settings.topics, tid, WORKER, "ops-test")
        with capture_logs() as logs:
            for _ in range(40):
                await stack.closures.poll_once()
                if any(e["event"] == "closure_dead_lettered" for e in logs):
                    break
        events = await events_until(settings, tid, "dead-lettered", "alert")
        dead = next(e for e in events if e.event_type == "dead-lettered")
        assert ("close-later", "PermanentError", ["SW22-10"]) == (dead.stage, dead.error_class, dead.rule_ids)  # type: ignore[union-attr]
        assert {} == refusing.closed
        dlq = await read(settings.bootstrap_servers, settings.topics.dead_letter, lambda rs: len(rs) >= 1, timeout=30)
        headers = dict(dlq[0].headers)
        assert (b"close-later", b"SW22-10") == (headers["casebridge.dlq.stage"], headers["casebridge.dlq.rule.ids"])

        report = await replay(settings.bootstrap_servers, settings.topics, operator="ops-test")
        assert 1 == len(report.replayed)
        assert 1 == await _poll_until_closed(stack)
        assert 0 == await _poll_until_closed(stack, tries=3)
    # the scheduler, not the operator's replay, wrote the ``replayed`` event (once) when it read the closure back
    replayed = [e for e in await events_until(settings, tid, "replayed", "source-closed") if e.event_type == "replayed"]
    assert [("ops-test", tid)] == [(e.operator, e.transfer_id) for e in replayed]  # type: ignore[union-attr]
    given = refusing.given[down["source_record"]["record_id"]]
    assert WORKER == given.professionals.family_support_worker


async def test_sw22_10_a_pending_closure_with_forged_replay_headers_gets_an_alert_not_a_replayed_event(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """A raw producer writes a pending closure back with replay headers naming a dead letter and an operator no
    audit record names: the closure scheduler writes no ``replayed`` event naming that operator but a critical
    alert "replay without audit record"; the closure itself stays pending, as any pending closure (nothing closes
    without its allocation)."""
    down = step_down("swindon-2022", 49)
    down["professionals"] = {}  # no worker named: the closure waits for the allocation (SW22-10)
    tid = down["transfer_id"]
    async with _stack(settings, systems, tmp_path / "state", parts, Clock()) as stack:
        await send_transfer(settings, down)
        await events_until(settings, tid, "source-kept-open")
        pending = (await _pending(settings))[tid]
        forged = [(wire.REPLAY_OF, b"0:7"), (wire.REPLAY_OPERATOR, b"Director-of-Childrens-Services")]
        await produce(settings.bootstrap_servers, settings.topics.pending_closures, [(tid.encode(), pending.encode())],
                      headers=forged)  # fmt: skip
        for _ in range(10):
            await stack.closures.poll_once()
        events = await events_until(settings, tid, "alert")
        assert {} == parts["care_director"].closed
    assert [] == [e for e in events if e.event_type == "replayed"]
    alerts = [e for e in events if isinstance(e, AlertRaised) and e.summary.startswith("replay without audit record")]
    assert [("critical", tid)] == [(a.severity, a.transfer_id) for a in alerts]


# -- NS-12: the Front Door's decision, recorded on LCS -------------------------------------------------


def test_ns12_lcs_records_one_front_door_decision_per_contact_and_feeds_it(systems: Systems) -> None:
    """The Front Door decides once (the same decision again is a no-op, another is refused 409 naming NS-12);
    the decision feed carries ids and the decision, not the manager's name."""
    lcs = systems.lcs_client
    doc = step_up("north-somerset", 45)
    contact = {
        "child": {"given_name": "Ada", "family_name": "Example", "date_of_birth": "2015-01-01", "source_id": "EH-45"},
        "stage": "contact",
        "source_reference": "EH-45",
        "received_from": "ehm",
    }
    lcs.http.put(f"/api/contacts/{doc['transfer_id']}", json=contact).raise_for_status()
    assert lcs.contact(doc["transfer_id"])["decision"] is None
    accept = {"decision": "accepted", "decided_by": "A Manager"}
    for _ in range(2):
        lcs.http.post(f"/api/contacts/{doc['transfer_id']}/decision", json=accept).raise_for_status()
    other = lcs.http.post(f"/api/contacts/{doc['transfer_id']}/decision", json={**accept, "decision": "not-accepted"})
    assert (409, "NS-12") == (other.status_code, other.json()["rule"])
    feed = lcs.http.get("/api/front-door-decisions", params={"after": 0}).json()
    [entry] = feed["decisions"]
    assert (doc["transfer_id"], "accepted", entry["seq"]) == (entry["transfer_id"], entry["decision"], feed["last_seq"])
    assert "A Manager" not in json.dumps(feed)


async def test_ns12_a_step_up_the_front_door_does_not_accept_leaves_the_ehm_episode_open(
    stack: Stack, systems: Systems
) -> None:
    """LCS holding the contact is not acceptance: the episode stays open; a "not accepted" decision cancels the
    pending closure (guidance goes back to the referrer) and nothing is closed."""
    ehm, lcs = systems.ehm_client, systems.lcs_client
    episode = ehm.open_episode()
    stepup = ehm.request_stepup(episode)
    assert 1 == await stack.stepups.poll_once()
    tid = f"north-somerset-ehm-{stepup}".lower()
    events = await events_until(stack.settings, tid, "source-kept-open")
    assert ["NS-12"] == next(e for e in events if e.event_type == "source-kept-open").rule_ids  # type: ignore[union-attr]
    lcs.http.post(
        f"/api/contacts/{tid}/decision", json={"decision": "not-accepted", "decided_by": "A Manager"}
    ).raise_for_status()
    assert 1 == await stack.decisions.poll_once()
    with capture_logs() as logs:
        for _ in range(30):
            assert 0 == await stack.closures.poll_once()
            if any(e["event"] == "closure_cancelled" for e in logs):
                break
    assert [(tid, ["NS-12"])] == [(e["transfer_id"], e["rule_ids"]) for e in logs if e["event"] == "closure_cancelled"]

    def tombstoned(records: list[Any]) -> bool:
        return any(r.key == tid.encode() and r.value is None for r in records)

    s = stack.settings
    written = await read(s.bootstrap_servers, s.topics.pending_closures, tombstoned, timeout=30)
    assert [True, False] == [r.value is not None for r in written if r.key == tid.encode()]  # pending, then cancelled
    assert "open" == ehm.episode(episode)["status"]
    decisions = await events_until(stack.settings, tid, "front-door-decision")
    decided = [e for e in decisions if e.event_type == "front-door-decision"]
    assert ["not-accepted"] == [e.decision for e in decided]  # type: ignore[union-attr]


async def test_sw22_10_a_rerun_naming_the_worker_closes_at_once_and_the_pending_closure_is_dropped(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """Care Director publishes the step-down again with the worker named: the flow closes the record itself, the
    scheduler drops its pending closure, and a later allocation closes nothing twice."""
    down = step_down("swindon-2022", 46)
    named = json.loads(json.dumps(down))
    named["message_id"] = f"{down['message_id']}-again"
    down["professionals"] = {}
    async with _stack(settings, systems, tmp_path / "state", parts, Clock()) as stack:
        await send_transfer(settings, down)
        await events_until(settings, down["transfer_id"], "source-kept-open")
        await send_transfer(settings, named)
        await events_until(settings, down["transfer_id"], "source-closed")
        with capture_logs() as logs:
            for _ in range(30):
                await stack.closures.poll_once()
                if any(e["event"] == "closure_not_needed" for e in logs):
                    break
        assert down["transfer_id"] not in stack.closures.pending
        await produce(
            settings.bootstrap_servers,
            settings.topics.events,
            [
                (
                    down["transfer_id"].encode(),
                    TransferAllocated(
                        event_id="sw22-alloc-3",
                        transfer_id=down["transfer_id"],
                        target_system=CaseSystem.MAILBOX,
                        target_reference="EHH-3",
                        episode_reference="EHH-EP-3",
                    )
                    .model_dump_json()
                    .encode(),
                )
            ],
            headers=[("event_type", b"allocated")],
        )
        assert 0 == await _poll_until_closed(stack, tries=5)
    events = await events_until(settings, down["transfer_id"], "source-closed")
    assert [[]] == [e.rule_ids for e in events if isinstance(e, SourceClosed)]  # the flow's close, not a later one


async def test_sw22_10_sw22_11_the_real_care_director_closes_from_a_pending_closure_naming_the_worker(
    tmp_path: Path,
) -> None:
    """What the scheduler hands Care Director (no child data kept) is enough for its closure record: the lead
    service from the outcome (SW22-11) and the receiving worker (SW22-10); without the worker it refuses."""
    from connectors import TargetRefused
    from connectors.care_director import CareDirectorConnector
    from sandboxes import create_care_director_app, serve

    with serve(create_care_director_app(tmp_path / "cd.sqlite3", TOKEN), "127.0.0.1", 0) as server:
        async with CareDirectorConnector(server.url, SecretStr(TOKEN)) as cd:
            person = (
                await cd.http.request(
                    "POST",
                    "/api/persons",
                    json={"given_name": "Ada", "family_name": "Example", "date_of_birth": "2015-01-01"},
                )
            ).json()["id"]
            doc = step_down("swindon-2022", 47)
            doc["professionals"] = {}
            doc["child"]["identifiers"] = [{"system": "care-director", "id": person}]
            doc["source_record"]["record_id"] = person
            t = transfer(doc)
            kept = t.model_copy(update={"closure": load_protocol(t.council).closure(t)})  # as the flow has it
            planned = ClosurePlanner("t").plan(kept, ["SW22-10"], Receipt(CaseSystem.MAILBOX, "EHH-47"))
            assert planned is not None
            receipt = Receipt(CaseSystem.MAILBOX, "EHH-47", acknowledged=True)
            with pytest.raises(TargetRefused) as refused:
                await cd.close(planned.closing_transfer(None), receipt)
            assert ("SW22-10",) == refused.value.rule_ids
            assert person == await cd.close(planned.closing_transfer(WORKER), receipt)
            record = await cd.person(person)
    closure = record["closure"]
    assert ("closed", "Early Help Hub", WORKER.name) == (
        record["record_state"],
        closure["lead_service"],
        closure["early_help_worker"]["name"],
    )
    assert kept.closure is not None and ["SW22-11"] == kept.closure.rule_ids


async def test_sw22_10_ehm_says_whom_it_allocated_a_tray_item(stack: Stack, systems: Systems) -> None:
    """EHM as a target can name the receiving worker for a closure record (KnowsAllocation); before allocation,
    nobody."""
    from connectors.ehm import EhmConnector
    from router.closures import KnowsAllocation

    lcs, ehm = systems.lcs_client, systems.ehm_client
    child = lcs.create_child(locality="North")
    request = lcs.request_stepdown(child)
    assert 1 == await stack.publisher.poll_once()
    tid = f"north-somerset-lcs-{request}".lower()
    await events_until(stack.settings, tid, "source-closed")
    async with EhmConnector(systems.ehm.url, SecretStr(TOKEN)) as connector:
        assert isinstance(connector, KnowsAllocation)
        before = await connector.allocated_worker(tid)
        ehm.allocate(tid, "Kit Supportworker")
        after = await connector.allocated_worker(tid)
    assert (None, "Kit Supportworker") == (before, after.name if after else None)


async def test_ns12_a_step_up_published_again_after_its_episode_closed_plans_no_second_closure(
    stack: Stack, systems: Systems
) -> None:
    """At-least-once publication: the same step-up again (a new message id, the same content) after the Front Door
    accepted it and EHM closed is a duplicate (router/_lifecycle.py): not run again, no second close, no new
    pending closure."""
    ehm, lcs = systems.ehm_client, systems.lcs_client
    episode = ehm.open_episode()
    doc = step_up("north-somerset", 48)
    doc["child"]["identifiers"] = [{"system": "ehm", "id": episode}]
    doc["source_record"]["record_id"] = episode
    tid = doc["transfer_id"]
    await send_transfer(stack.settings, doc)
    await events_until(stack.settings, tid, "source-kept-open")
    lcs.http.post(f"/api/contacts/{tid}/decision", json={"decision": "accepted", "decided_by": "A Manager"})
    assert 1 == await stack.decisions.poll_once()
    assert 1 == await _poll_until_closed(stack)
    assert "closed" == ehm.episode(episode)["status"]

    await send_transfer(stack.settings, {**doc, "message_id": f"{doc['message_id']}-again"})

    def duplicate(records: list[Any]) -> bool:
        return any(e.transfer_id == tid and e.event_type == "duplicate" for e in events_of(records))

    records = await read(stack.settings.bootstrap_servers, stack.settings.topics.events, duplicate, timeout=60)
    mine = [e for e in events_of(records) if e.transfer_id == tid]
    closes = [e for e in mine if isinstance(e, SourceClosed)]
    assert [["NS-12"]] == [e.rule_ids for e in closes]  # the scheduler's close only: the copy closes nothing
    assert 1 == sum(e.event_type == "delivered" for e in mine)
    copy = next(e for e in mine if e.event_type == "duplicate")
    assert (f"{doc['message_id']}-again", doc["message_id"]) == (copy.message_id, copy.first_message_id)
    assert tid not in await _pending(stack.settings)
    assert 1 == len(ehm.episode(episode)["case_notes"])


async def test_lu04_a_step_down_of_the_same_child_within_the_10_days_cancels_the_closure(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """Seed 002: the case is co-worked for 10 days, then early help closes or the case steps down. An earlier
    step-down of the child does not cancel the pending LU-4 closure; a step-down agreed within the 10 days does
    (tombstone + a closure-cancelled milestone naming LU-4), and on day 11 nothing closes."""
    clock = Clock()
    now = datetime.now(UTC)
    earlier = step_down("luton", 47, requested_at=(now - timedelta(days=40)).isoformat())
    up = step_up("luton", 48, requested_at=(now - timedelta(days=2)).isoformat())
    down = step_down("luton", 49, requested_at=(now - timedelta(hours=1)).isoformat())
    earlier["child"]["identifiers"] = down["child"]["identifiers"] = up["child"]["identifiers"]  # one child
    tid = up["transfer_id"]
    async with _stack(settings, systems, tmp_path / "state", parts, clock) as stack:
        await send_transfer(settings, earlier)
        await events_until(settings, earlier["transfer_id"], "delivered")
        await send_transfer(settings, up)
        await events_until(settings, tid, "source-kept-open")
        assert 0 == await _poll_until_closed(stack, tries=5)
        assert tid in stack.closures.pending  # the step-down before the step-up cancels nothing
        await send_transfer(settings, down)
        await events_until(settings, down["transfer_id"], "delivered")
        for _ in range(40):
            await stack.closures.poll_once()
            if tid not in stack.closures.pending:
                break
        assert tid not in stack.closures.pending
        clock.offset = timedelta(days=11)
        assert 0 == await _poll_until_closed(stack, tries=3)
    assert up["source_record"]["record_id"] not in parts["mailbox_source"].closed
    events = await events_until(settings, tid, "milestone")
    assert not [e for e in events if e.event_type == "source-closed"]
    [cancelled] = [e for e in events if isinstance(e, MilestoneRecorded)]
    assert ("closure-cancelled", ["LU-4"], "connector") == (
        cancelled.milestone,
        cancelled.rule_ids,
        cancelled.recorded_via,
    )
    assert tid not in await _pending(settings)


def test_lu04_the_pending_closure_keeps_the_child_keys_hashed_only() -> None:
    """LU-4's cancellation needs the child's keys; the pending entry holds their SHA-256, not the identifiers."""
    doc = step_up("luton", 50)
    doc["child"]["identifiers"].append({"system": "ehm", "id": "EHM-50-X"})
    planned = ClosurePlanner("t").plan(transfer(doc), ["LU-4"], Receipt(CaseSystem.MAILBOX, "M-1"))
    assert planned is not None and len(planned.cancel_on_step_down) == len(doc["child"]["identifiers"])
    assert "EHM-50-X" not in planned.encode().decode()
    sw = ClosurePlanner("t").plan(transfer(doc), ["SW22-10"], Receipt(CaseSystem.MAILBOX, "M-1"))
    assert sw is not None and [] == sw.cancel_on_step_down


async def test_ns12_a_forged_front_door_decision_closes_nothing_and_raises_an_alert(
    stack: Stack, systems: Systems
) -> None:
    """Anyone who can write the events topic could write "accepted": the scheduler asks LCS first. A forged
    decision (LCS has none) leaves the EHM episode open and raises one alert; the real one on LCS then closes it."""
    ehm, lcs = systems.ehm_client, systems.lcs_client
    episode = ehm.open_episode()
    stepup = ehm.request_stepup(episode)
    assert 1 == await stack.stepups.poll_once()
    tid = f"north-somerset-ehm-{stepup}".lower()
    await events_until(stack.settings, tid, "source-kept-open")
    forged = FrontDoorDecided(
        event_id="forged-1", transfer_id=tid, target_system=CaseSystem.LCS, target_reference="C-1", decision="accepted"
    )
    headers = [("event_type", b"front-door-decision")]
    await produce(stack.settings.bootstrap_servers, stack.settings.topics.events,
                  [(tid.encode(), forged.model_dump_json().encode())], headers=headers)  # fmt: skip
    for _ in range(10):
        assert 0 == await stack.closures.poll_once()
    alerts = [e for e in await events_until(stack.settings, tid, "alert") if e.event_type == "alert"]
    assert 1 == len(alerts) and "does not confirm" in alerts[0].summary  # type: ignore[union-attr]
    assert "open" == ehm.episode(episode)["status"]
    assert "source-closed" not in [e.event_type for e in await events_until(stack.settings, tid, "alert")]
    # the Front Door's real decision, on LCS, read from LCS's feed: now the episode closes
    decision = {"decision": "accepted", "decided_by": "A Manager"}
    lcs.http.post(f"/api/contacts/{tid}/decision", json=decision).raise_for_status()
    assert 1 == await stack.decisions.poll_once()
    assert 1 == await _poll_until_closed(stack)
    assert "closed" == ehm.episode(episode)["status"]
