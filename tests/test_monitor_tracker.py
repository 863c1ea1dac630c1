"""The flow tracker: idempotent on event id, resumable, and rebuilt from Kafka from scratch."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from contracts import (
    CaseSystem,
    Council,
    Direction,
    ServiceLevel,
    SourceClosed,
    TransferAcknowledged,
    TransferDelivered,
    TransferEvent,
    TransferHeld,
    TransferRequested,
    parse_event,
)
from contracts._events import RuleViolation, TransferDeadLettered
from mappings import DeadlineState
from monitor import Store, Tracker, Watch, deadlines, drop_store, overview, transfer_detail
from router.settings import Topics
from tests.council_data import step_down
from tests.monitor_support import router_events
from tests.support import produce

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _events(transfer_id: str, *, held: bool = False) -> list[TransferEvent]:
    base = {"transfer_id": transfer_id, "council": Council.NORTH_SOMERSET}

    def eid(kind: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{transfer_id}/{kind}"))

    requested = TransferRequested(
        event_id=eid("requested"),
        occurred_at=T0,
        direction=Direction.STEP_DOWN,
        from_level=ServiceLevel.CHILD_IN_NEED,
        to_level=ServiceLevel.EARLY_HELP,
        from_system=CaseSystem.LCS,
        to_system=CaseSystem.EHM,
        **base,
    )
    if held:
        violation = RuleViolation(rule_id="NS-6", message="no plan", fix="add the plan")
        return [
            requested,
            TransferHeld(event_id=eid("held"), occurred_at=T0 + timedelta(seconds=1), violations=[violation], **base),
            TransferDeadLettered(
                event_id=eid("dl"),
                occurred_at=T0 + timedelta(seconds=2),
                stage="protocol",
                error_class="ProtocolRuleNotMet",
                reason="protocol rules not met: NS-6",
                rule_ids=["NS-6"],
                **base,
            ),
        ]
    return [
        requested,
        TransferDelivered(
            event_id=eid("delivered"),
            occurred_at=T0 + timedelta(seconds=1),
            target_system=CaseSystem.EHM,
            target_reference="tray-1",
            **base,
        ),
        TransferAcknowledged(
            event_id=eid("ack"),
            occurred_at=T0 + timedelta(seconds=3),
            target_system=CaseSystem.EHM,
            target_reference="tray-1",
            **base,
        ),
        SourceClosed(
            event_id=eid("closed"),
            occurred_at=T0 + timedelta(seconds=4),
            source_system=CaseSystem.LCS,
            source_reference="LCS-1",
            **base,
        ),
    ]


def test_tracker_store_is_idempotent_on_event_id(tmp_path: Path) -> None:
    """Events are at-least-once: the same events twice give one timeline, one state, one latency."""
    store = Store(tmp_path / "m.sqlite3")
    events = _events("t-1")
    assert 4 == store.apply(events)
    assert 0 == store.apply(events)
    row = store.transfer("t-1")
    assert row is not None
    assert ("completed", "north-somerset", "step-down", 3.0) == (
        row["state"],
        row["council"],
        row["direction"],
        row["latency_seconds"],
    )
    assert ["requested", "delivered", "acknowledged", "source-closed"] == [
        e["event_type"] for e in store.timeline("t-1")
    ]


def test_g3_held_transfer_stays_held_when_also_dead_lettered(tmp_path: Path) -> None:
    """G3: a protocol hold is visible as held (with its dead letter counted), not lost among dead letters."""
    store = Store(tmp_path / "m.sqlite3")
    store.apply(_events("t-h", held=True))
    assert {"held": 1} == store.by_state()
    assert {"north-somerset": 1} == store.dead_letter_counts()


async def test_tracker_rebuilds_from_kafka_from_scratch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Dropping the database and reading the events topic from the beginning gives the same store."""
    topics = Topics(topic_prefix)
    events = [*_events("t-a"), *_events("t-b", held=True), *_events("t-a")]  # t-a's events delivered twice
    await produce(
        kafka_bootstrap, topics.events, [(e.transfer_id.encode(), e.model_dump_json().encode()) for e in events]
    )
    db = tmp_path / "monitor.sqlite3"

    async def track() -> tuple[dict[str, int], list[str]]:
        store = Store(db)
        tracker = Tracker(store, kafka_bootstrap, topics)
        await tracker.start()
        try:
            await tracker.catch_up(timeout=60)
            return store.by_state(), [e["event_type"] for e in store.timeline("t-a")]
        finally:
            await tracker.stop()
            store.close()

    first = await track()
    assert ({"completed": 1, "held": 1}, ["requested", "delivered", "acknowledged", "source-closed"]) == first
    assert first == await track()  # resumed from the stored positions: nothing new, nothing doubled
    drop_store(db)
    assert not db.exists()
    assert first == await track()  # rebuilt from the topic's beginning


def _sw22_requested(transfer_id: str, requested_at: datetime | None, handled: datetime) -> TransferRequested:
    return TransferRequested(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{transfer_id}/requested")),
        transfer_id=transfer_id,
        council=Council.SWINDON_2022,
        occurred_at=handled,
        direction=Direction.STEP_DOWN,
        from_level=ServiceLevel.CHILD_IN_NEED,
        to_level=ServiceLevel.EARLY_HELP,
        from_system=CaseSystem.CARE_DIRECTOR,
        to_system=CaseSystem.MAILBOX,
        requested_at=requested_at,
    )


def test_sw22_15_backlog_transfer_is_overdue_from_its_request_not_from_when_the_router_read_it() -> None:
    """SW22-15: a step-down requested Mon 21 Dec 2026 and read by the router on 25 Jan 2027 (a backlog) was due
    on 7 Jan (10 working days, Christmas and New Year skipped): the monitor shows it overdue from that day, on the
    page's overdue list, not due until February from the router's clock. An event written before ``requested_at``
    existed (no such field) still parses, and its deadline falls back to the event's time."""
    requested = datetime(2026, 12, 21, 10, 15, tzinfo=UTC)
    handled = datetime(2027, 1, 25, 9, 0, tzinfo=UTC)
    now = handled + timedelta(hours=1)
    store = Store(":memory:")
    old = json.loads(_sw22_requested("t-old", None, handled).model_dump_json())
    del old["requested_at"]  # the shape of the events topic's history
    store.apply([_sw22_requested("t-late", requested, handled), parse_event(json.dumps(old))])
    timed = {(t["transfer_id"], s.rule_id): s for t, s in deadlines(store, now)}
    late, legacy = timed[("t-late", "SW22-15")], timed[("t-old", "SW22-15")]
    assert (requested, datetime(2027, 1, 7, 10, 15, tzinfo=UTC), DeadlineState.OVERDUE) == (
        late.started_at,
        late.due_at,
        late.state,
    )
    assert (handled, datetime(2027, 2, 8, 9, 0, tzinfo=UTC), DeadlineState.DUE) == (
        legacy.started_at,
        legacy.due_at,
        legacy.state,
    )
    watch = Watch("127.0.0.1:1", Topics("t"), cast(Any, None))  # never refreshed: no Kafka
    assert [("t-late", "SW22-15", "2027-01-07T10:15:00Z")] == [
        (o["transfer_id"], o["rule_id"], o["due_at"]) for o in overview(store, watch, now)["overdue"]
    ]
    detail = transfer_detail(store, watch, "t-late", now)
    assert detail is not None
    assert [("SW22-15", "overdue")] == [(d["rule_id"], d["state"]) for d in detail["deadlines"]]
    # the router's own latency still runs from when it handled the request, not from the request
    assert handled.isoformat() == (store.transfer("t-late") or {})["requested_at"]


async def test_ns04_tracker_reads_a_late_handled_step_down_off_the_events_topic_overdue_from_its_request(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """NS-4 on the real broker: the router's events for a North Somerset step-down requested on 1 Dec 2026 and
    handled five weeks later, read off the events topic by the tracker: the step-down meeting was due two weeks
    after the request (15 Dec) and shows overdue, not due two weeks after the router read it."""
    requested = datetime(2026, 12, 1, 10, 15, tzinfo=UTC)
    handled = requested + timedelta(weeks=5)
    doc = step_down("north-somerset", requested_at=requested.isoformat())
    topics = Topics(topic_prefix)
    await produce(kafka_bootstrap, topics.events, await router_events(doc, handled, monkeypatch))
    store = Store(tmp_path / "monitor.sqlite3")
    tracker = Tracker(store, kafka_bootstrap, topics)
    await tracker.start()
    try:
        await tracker.catch_up(timeout=60)
    finally:
        await tracker.stop()
    [status] = [s for t, s in deadlines(store, handled + timedelta(hours=1)) if s.rule_id == "NS-4"]
    store.close()
    assert (requested, datetime(2026, 12, 15, 10, 15, tzinfo=UTC), DeadlineState.OVERDUE) == (
        status.started_at,
        status.due_at,
        status.state,
    )
