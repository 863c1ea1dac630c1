"""The monitor's charts (issue #18 item 3): ``GET /api/charts`` over events and dead letters on the real broker.

Transfers per day by state and council (last 30 UTC days), the handover latency histogram per council and
pathway with the protocol deadline it runs against, deadlines not yet met falling due in the next 14 days, and
dead letters waiting by age; the waiting count agrees with the dead-letter listing's.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from contracts import (
    CaseSystem,
    Council,
    Direction,
    ServiceLevel,
    SourceClosed,
    SourceKeptOpen,
    TransferAcknowledged,
    TransferEvent,
    TransferHeld,
    TransferRequested,
)
from contracts._events import RuleViolation, TransferDeadLettered
from mappings import Unit, due_at
from monitor._views import AGE_LABELS, LATENCY_LABELS
from router.settings import Topics
from tests.monitor_support import auth, get_json, keyed, running_monitor, wait_for
from tests.support import produce


def flow(
    transfer_id: str,
    council: Council,
    requested: datetime,
    *,
    acknowledged_after: timedelta | None = None,
    closed: bool = False,
    kept_open: bool = False,
    held: bool = False,
) -> list[TransferEvent]:
    """A synthetic step-down's events (ids only): requested, then acknowledged (and its source closed or kept open),
    or held and dead-lettered."""
    base: dict[str, Any] = {"transfer_id": transfer_id, "council": council}

    def eid(kind: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"charts/{transfer_id}/{kind}"))

    events: list[TransferEvent] = [
        TransferRequested(
            event_id=eid("requested"),
            occurred_at=requested,
            requested_at=requested,
            direction=Direction.STEP_DOWN,
            from_level=ServiceLevel.CHILD_IN_NEED,
            to_level=ServiceLevel.EARLY_HELP,
            from_system=CaseSystem.LCS,
            to_system=CaseSystem.EHM,
            **base,
        )
    ]
    if held:
        violation = RuleViolation(rule_id="NS-6", message="no plan", fix="add the plan")
        at = requested + timedelta(seconds=1)
        events += [
            TransferHeld(event_id=eid("held"), occurred_at=at, violations=[violation], **base),
            TransferDeadLettered(
                event_id=eid("dl"),
                occurred_at=at,
                stage="protocol",
                error_class="ProtocolRuleNotMet",
                reason="protocol rules not met: NS-6",
                rule_ids=["NS-6"],
                **base,
            ),
        ]
    if acknowledged_after is not None:
        ack = requested + acknowledged_after
        events.append(
            TransferAcknowledged(
                event_id=eid("ack"), occurred_at=ack, target_system=CaseSystem.EHM, target_reference="tray-1", **base
            )
        )
        if kept_open:
            events.append(
                SourceKeptOpen(
                    event_id=eid("kept-open"),
                    occurred_at=ack + timedelta(seconds=10),
                    source_system=CaseSystem.LCS,
                    rule_ids=["NS-12"],
                    **base,
                )
            )
        if closed:
            events.append(
                SourceClosed(
                    event_id=eid("closed"),
                    occurred_at=ack + timedelta(seconds=10),
                    source_system=CaseSystem.LCS,
                    source_reference="LCS-1",
                    **base,
                )
            )
    return events


async def dead_letter(
    bootstrap: str, topics: Topics, transfer_id: str, failed: datetime, *, closure: bool = False
) -> None:
    """A dead letter of the transfer (a later closure's, from the pending-closures topic, with ``closure``)."""
    origin = topics.pending_closures if closure else topics.transfers
    headers = [
        ("casebridge.dlq.original.topic", origin.encode()),
        ("casebridge.dlq.transfer.id", transfer_id.encode()),
        ("casebridge.dlq.council", b"north-somerset"),
        ("casebridge.dlq.stage", b"deliver"),
        ("casebridge.dlq.error.class", b"TargetRefused"),
        ("casebridge.dlq.error.message", b"refused"),
        ("casebridge.dlq.last.failure", failed.isoformat().encode()),
    ]
    value = json.dumps({"pathway": {"direction": "step-down"}}).encode()
    await produce(bootstrap, topics.dead_letter, [(transfer_id.encode(), value)], headers)


def rows(body: dict[str, Any], key: str, by: str) -> dict[tuple[str, str], int]:
    return {(r["day"], r[by]): r["n"] for r in body["transfers"][key]}


async def test_charts_count_transfers_latencies_deadlines_and_waiting_dead_letters(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    now = datetime.now(UTC).replace(microsecond=0)
    three_days, one_day, long_ago = now - timedelta(days=3), now - timedelta(days=1), now - timedelta(days=40)
    ns, lu = Council.NORTH_SOMERSET, Council.LUTON
    events = [
        *flow("ns-a", ns, three_days, acknowledged_after=timedelta(seconds=30), closed=True),  # < 1 min
        *flow("ns-b", ns, three_days, acknowledged_after=timedelta(hours=5), kept_open=True),  # < 1 day
        *flow("ns-c", ns, one_day, held=True),
        *flow("lu-d", lu, one_day, acknowledged_after=timedelta(minutes=2), closed=True),  # < 10 min
        *flow("ns-e", ns, long_ago, acknowledged_after=timedelta(seconds=5), closed=True),  # outside the 30 days
    ]
    await produce(kafka_bootstrap, topics.events, keyed(events))
    await dead_letter(kafka_bootstrap, topics, "ns-c", now - timedelta(minutes=30))  # < 1 h
    await dead_letter(kafka_bootstrap, topics, "ns-x", now - timedelta(hours=5))  # < 1 day
    await dead_letter(kafka_bootstrap, topics, "ns-y", now - timedelta(days=3))  # < 1 week
    await dead_letter(kafka_bootstrap, topics, "ns-w", now - timedelta(days=20))  # older
    await dead_letter(kafka_bootstrap, topics, "ns-z", now - timedelta(days=10))  # replayed below: not waiting
    await dead_letter(kafka_bootstrap, topics, "ns-a", three_days)  # resolved: ns-a closed after it
    await dead_letter(kafka_bootstrap, topics, "ns-b", three_days + timedelta(hours=1))  # resolved: kept open after it
    # a later closure's dead letter is resolved by the closure only, not by the keep-open before it: < 1 week
    await dead_letter(kafka_bootstrap, topics, "ns-b", three_days + timedelta(hours=1), closure=True)
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        listed = await wait_for(f"{server.url}/api/dead-letters", lambda b: len(b["dead_letters"]) == 8)
        [replayed] = [d["id"] for d in listed["dead_letters"] if d["transfer_id"] == "ns-z"]
        await produce(kafka_bootstrap, topics.audit, [(replayed.encode(), b"{}")])
        listed = await wait_for(
            f"{server.url}/api/dead-letters",
            lambda b: b["by_status"]["replayed"] == 1 and b["by_status"]["resolved"] == 2,
        )
        body = await wait_for(
            f"{server.url}/api/charts",
            lambda b: sum(g["total"] for g in b["latency"]["groups"]) == 4 and b["dead_letters_waiting"]["counts"][1],
        )
        async with httpx.AsyncClient(timeout=30) as client:
            assert 401 == (await client.get(f"{server.url}/api/charts")).status_code
            assert 200 == (await client.get(f"{server.url}/api/charts", headers=auth())).status_code
        overview = await get_json(f"{server.url}/api/overview")

    days = body["transfers"]["days"]
    assert 30 == len(days) and now.date().isoformat() == days[-1]
    d3, d1 = three_days.date().isoformat(), one_day.date().isoformat()
    assert {(d3, "completed"): 2, (d1, "held"): 1, (d1, "completed"): 1} == rows(body, "by_state", "state")
    assert {(d3, "north-somerset"): 2, (d1, "north-somerset"): 1, (d1, "luton"): 1} == rows(
        body, "by_council", "council"
    )

    latency = body["latency"]
    assert list(LATENCY_LABELS) == latency["buckets"]
    by_group = {(g["council"], g["pathway"]): g for g in latency["groups"]}
    assert {("north-somerset", "step-down"), ("luton", "step-down")} == set(by_group)
    north, luton = by_group["north-somerset", "step-down"], by_group["luton", "step-down"]
    assert [2, 0, 0, 0, 1, 0, 0, 0, 0, 0] == north["counts"]  # ns-a, ns-e under a minute; ns-b under a day
    assert [0, 1, 0, 0, 0, 0, 0, 0, 0, 0] == luton["counts"]
    # NS-4, two weeks from the request, is the deadline the North Somerset handover runs against; Luton has none
    [ns4] = north["deadlines"]
    assert ("NS-4", 2, "weeks", 14 * 86400.0, "<2 weeks") == (
        ns4["rule_id"], ns4["length"], ns4["unit"], ns4["seconds"], latency["buckets"][ns4["bucket"]]
    )  # fmt: skip
    assert [] == luton["deadlines"]

    # NS-4 of ns-a, ns-b (requested 3 days ago) and ns-c (yesterday) falls due within 14 days; ns-e's is overdue
    due = body["due"]
    assert 14 == len(due["days"]) and now.date().isoformat() == due["days"][0]

    def due_day(start: datetime) -> str:
        return due_at(start, 2, Unit.WEEKS).astimezone(UTC).date().isoformat()

    expected_due = {(due_day(three_days), "NS-4"): 2, (due_day(one_day), "NS-4"): 1}
    assert expected_due == {(r["day"], r["rule_id"]): r["n"] for r in due["by_day"]}
    assert {"north-somerset"} == {r["council"] for r in due["by_day"]}
    assert 1 == overview["deadlines"]["overdue"]  # ns-e, not shown as due

    waiting = body["dead_letters_waiting"]
    assert list(AGE_LABELS) == waiting["buckets"]
    assert [1, 1, 2, 1] == waiting[
        "counts"
    ]  # ns-c; ns-x; ns-y, ns-b's closure; ns-w (ns-z replayed, ns-a, ns-b resolved)
    assert listed["by_status"]["waiting"] == sum(waiting["counts"])
