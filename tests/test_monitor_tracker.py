"""The flow tracker: idempotent on event id, resumable, and rebuilt from Kafka from scratch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
)
from contracts._events import RuleViolation, TransferDeadLettered
from monitor import Store, Tracker, drop_store
from router.settings import Topics
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
