"""LCS -> EHM step-down end to end: real Kafka, real sandbox LCS and EHM over HTTP (North Somerset)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from casebridge.stack import Stack
from contracts import TransferEvent
from tests.support import TOKEN, Systems, read, transfer_events


def _types(events: list[TransferEvent]) -> list[str]:
    return [e.event_type for e in events]


async def test_valid_step_down_lands_once_in_tray_and_lcs_closes_only_after_ehm_acknowledged(
    stack: Stack, systems: Systems
) -> None:
    """The headline flow: one tray item, LCS closed, and the close comes after EHM's acknowledgement."""
    child = systems.lcs_client.create_child(locality="North")
    request = systems.lcs_client.request_stepdown(child)
    assert 1 == await stack.publisher.poll_once()
    transfer_id = f"north-somerset-lcs-{request}".lower()
    events = await transfer_events(stack, transfer_id, "source-closed")

    types = _types(events)
    assert ["requested", "validated", "delivered", "acknowledged", "source-closed"] == types
    assert types.index("acknowledged") < types.index("source-closed")
    [item] = systems.ehm_client.tray()
    assert (transfer_id, "in_tray") == (item["transfer_id"], item["status"])
    lcs_child = systems.lcs_client.child(child)
    assert ("closed", transfer_id) == (lcs_child["record_state"], lcs_child["closure_transfer_id"])
    assert lcs_child["closed_at"] >= item["received_at"]


@pytest.mark.parametrize("missing", ["meeting_notes", "plan"])
async def test_ns06_ns08_missing_notes_or_plan_is_held_nothing_in_tray_lcs_open(
    stack: Stack, systems: Systems, missing: str
) -> None:
    """NS-6 / NS-8: without notes or plan the step-down is held with both rule ids; EHM gets nothing; LCS stays open."""
    child = systems.lcs_client.create_child()
    request = systems.lcs_client.request_stepdown(child, **{missing: None})
    await stack.publisher.poll_once()
    events = await transfer_events(stack, f"north-somerset-lcs-{request}".lower(), "held")

    [held] = [e for e in events if e.event_type == "held"]
    assert ["NS-6", "NS-8"] == [v.rule_id for v in held.violations]  # type: ignore[union-attr]
    assert "delivered" not in _types(events)
    assert [] == systems.ehm_client.tray()
    assert "open" == systems.lcs_client.child(child)["record_state"]


async def test_ns07_closed_out_of_band_is_held_with_alert_then_completes_once_reopened(
    stack: Stack, systems: Systems
) -> None:
    """NS-7: a record closed before its transfer is held with an alert, not lost; reopening completes it."""
    child = systems.lcs_client.create_child()
    request = systems.lcs_client.request_stepdown(child)
    systems.lcs_client.close_record(child)
    transfer_id = f"north-somerset-lcs-{request}".lower()
    await stack.publisher.poll_once()
    held = await transfer_events(stack, transfer_id, ("alert", "dead-lettered"))
    assert {"held", "alert", "dead-lettered"} <= set(_types(held))
    alert = next(e for e in held if e.event_type == "alert")
    assert ["NS-7"] == alert.rule_ids  # type: ignore[union-attr]
    assert [] == systems.ehm_client.tray()

    systems.lcs_client.reopen(child)
    assert 1 == await stack.publisher.poll_once()
    events = await transfer_events(stack, transfer_id, "source-closed")
    assert 1 == len(systems.ehm_client.tray())
    assert "closed" == systems.lcs_client.child(child)["record_state"]
    assert _types(events).index("acknowledged") < _types(events).index("source-closed")


async def test_same_transfer_published_twice_is_one_tray_item(stack: Stack, systems: Systems, tmp_path: Path) -> None:
    """Idempotency: a publisher that lost its cursor publishes again; EHM still holds one item."""
    child = systems.lcs_client.create_child()
    request = systems.lcs_client.request_stepdown(child)
    transfer_id = f"north-somerset-lcs-{request}".lower()
    await stack.publisher.poll_once()
    await transfer_events(stack, transfer_id, "source-closed")
    stack.publisher.cursor.save(0)  # as if the publisher restarted without its cursor
    await stack.publisher.poll_once()
    events = await transfer_events(stack, transfer_id, "validated", n=2)

    assert 2 == _types(events).count("validated")
    assert [transfer_id] == [i["transfer_id"] for i in systems.ehm_client.tray()]


async def test_publisher_restart_misses_no_request(stack: Stack, systems: Systems) -> None:
    """A request made while the publisher was down is published by the next one, from the saved cursor."""
    first = systems.lcs_client.request_stepdown(systems.lcs_client.create_child())
    await stack.publisher.poll_once()
    second = systems.lcs_client.request_stepdown(systems.lcs_client.create_child())
    from connectors.lcs import LcsConnector, LcsPublisher

    restarted = LcsPublisher(
        LcsConnector(systems.lcs.url, SecretStr(TOKEN)),
        stack.settings.bootstrap_servers,
        stack.settings.topics.transfers,
        stack.settings.topics.dead_letter,
        cursor=stack.publisher.cursor.path,
    )
    await restarted.start()
    try:
        assert 1 == await restarted.poll_once()
    finally:
        await restarted.stop()
    await transfer_events(stack, f"north-somerset-lcs-{second}".lower(), "source-closed")
    assert {f"north-somerset-lcs-{r}".lower() for r in (first, second)} == {
        i["transfer_id"] for i in systems.ehm_client.tray()
    }


async def test_ns02_routes_to_locality_support_leader_and_team_manager_when_away(
    stack: Stack, systems: Systems
) -> None:
    """NS-2: East goes to East's Support Leader; South, whose leader is away, to South's team manager."""
    systems.ehm_client.set_away("South", True)
    east = systems.lcs_client.request_stepdown(systems.lcs_client.create_child(locality="East"))
    south = systems.lcs_client.request_stepdown(systems.lcs_client.create_child(locality="South"))
    await stack.publisher.poll_once()
    await transfer_events(stack, f"north-somerset-lcs-{south}".lower(), "source-closed")
    await transfer_events(stack, f"north-somerset-lcs-{east}".lower(), "source-closed")

    assigned = {i["transfer_id"]: i["assigned_to"]["id"] for i in systems.ehm_client.tray()}
    assert systems.ehm_client.staff("East")["support_leader"]["id"] == assigned[f"north-somerset-lcs-{east}".lower()]
    assert systems.ehm_client.staff("South")["team_manager"]["id"] == assigned[f"north-somerset-lcs-{south}".lower()]


async def test_ns14_family_hub_universal_step_down_sends_no_record_to_ehm(stack: Stack, systems: Systems) -> None:
    """NS-14: a supported step-down to universal in a Family Hub completes with nothing in the EHM tray."""
    child = systems.lcs_client.create_child()
    request = systems.lcs_client.request_stepdown(
        child, target_level="universal", family_hub_universal=True, meeting_notes=None, plan=None, support_leader=None
    )
    await stack.publisher.poll_once()
    events = await transfer_events(stack, f"north-somerset-lcs-{request}".lower(), "source-closed")
    assert "completed-no-record" in _types(events) and "delivered" not in _types(events)
    assert [] == systems.ehm_client.tray()


async def test_ns05_allocation_in_ehm_is_reported_back_as_an_event(stack: Stack, systems: Systems) -> None:
    """NS-5: the item waits in the tray until a family support worker is allocated; the allocation is reported."""
    request = systems.lcs_client.request_stepdown(systems.lcs_client.create_child())
    transfer_id = f"north-somerset-lcs-{request}".lower()
    await stack.publisher.poll_once()
    await transfer_events(stack, transfer_id, "source-closed")
    assert "in_tray" == systems.ehm_client.tray()[0]["status"]
    systems.ehm_client.allocate(transfer_id)
    assert 1 == await stack.reporter.poll_once()
    events = await transfer_events(stack, transfer_id, "allocated")
    assert "allocated" == _types(events)[-1]
    await asyncio.sleep(0)


async def test_lcs_request_that_breaks_the_contract_is_dead_lettered_by_the_connector(
    stack: Stack, systems: Systems
) -> None:
    """A request LCS accepts but the contract refuses (a malformed UPN) reaches the dead-letter topic, named."""
    request = systems.lcs_client.request_stepdown(systems.lcs_client.create_child(upn="abc1234567890"))
    await stack.publisher.poll_once()
    dead = await read(stack.settings.bootstrap_servers, stack.settings.topics.dead_letter, lambda r: len(r) >= 1)

    [letter] = dead
    headers = dict(letter.headers)
    assert (b"map", b"ContractViolation", b"child.upn: string_pattern_mismatch") == (
        headers["casebridge.dlq.stage"],
        headers["casebridge.dlq.error.class"],
        headers["casebridge.dlq.error.message"],
    )
    assert f"north-somerset-lcs-{request}".lower().encode() == headers["casebridge.dlq.transfer.id"]
