"""Swindon 2026 step-down LCS -> EHM from the LCS sandbox's own transfer request.

The request carries what Swindon's protocol asks of it (SW26-4 Transfer Meeting and consent,
SW26-6 assessment, proposed plan and handover date, SW26-7 Lead Practitioner); the LCS
publisher of a deployment serving Swindon (``council = swindon``) maps it through
``mappings/data/lcs-stepdown.toml``. Synthetic data only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from casebridge.scenarios import EXAMPLES, EhmSandboxClient, LcsSandboxClient, swindon_request
from casebridge.stack import Stack
from connectors.ehm import EhmConnector
from connectors.lcs._publisher import transfer_id_for
from contracts import Council, TransferEvent, TransferMessage
from mappings import Facts, load_mapping, load_protocol
from router import Settings
from router.settings import RetrySettings
from sandboxes import ServerHandle, create_ehm_app, create_lcs_app, serve
from tests.support import TOKEN, Systems, transfer_events

SWINDON = load_protocol(Council.SWINDON)
LCS_STEPDOWN = load_mapping("lcs-stepdown")


@pytest.fixture
def lcs(tmp_path: Path) -> Iterator[tuple[ServerHandle, LcsSandboxClient]]:
    with serve(create_lcs_app(tmp_path / "lcs.db", TOKEN), "127.0.0.1", 0) as handle:
        client = LcsSandboxClient(handle.url, TOKEN)
        yield handle, client
        client.close()


def _mapped(lcs: tuple[ServerHandle, LcsSandboxClient], **changes: Any) -> TransferMessage:
    """A Swindon request entered on the LCS sandbox, read back over HTTP and mapped as the publisher maps it."""
    handle, client = lcs
    child_id = client.create_child(locality="North")
    request_id = client.request_stepdown(child_id, council="swindon", **changes)
    with httpx.Client(base_url=handle.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as http:
        child = http.get(f"/api/children/{child_id}").json()
        request = http.get(f"/api/stepdown-requests/{request_id}").json()
    tid = transfer_id_for(Council.SWINDON, request_id)
    envelope = {"transfer_id": tid, "message_id": f"{tid}-c1", "council": "swindon"}
    return TransferMessage.model_validate(
        LCS_STEPDOWN.apply({"child": child, "request": request, "envelope": envelope})
    )


def _violated(t: TransferMessage) -> list[str]:
    return [v.rule_id for v in SWINDON.check(t, Facts())]


# -- the LCS request and its mapping (sandbox over HTTP, no broker) -----------------------------------


def test_sw26_06_sw26_07_complete_swindon_lcs_request_maps_to_a_transfer_meeting_every_rule(
    lcs: tuple[ServerHandle, LcsSandboxClient],
) -> None:
    """Assessment, proposed plan, Lead Practitioner (with organisation) and the Transfer Meeting cross into
    the canonical message; Swindon's protocol finds nothing to hold it for."""
    t = _mapped(lcs)
    assert [] == _violated(t)
    assert {"assessment", "plan"} == {d.type.value for d in t.documents}
    lead = t.professionals.lead_professional
    assert lead is not None
    assert ("Jo Leadpractitioner", "Lead Practitioner", "Early Intervention") == (
        lead.name,
        lead.role,
        lead.organisation,
    )
    assert t.management_decision is not None and "Transfer Meeting" == t.management_decision.forum
    assert "lead-professional" == SWINDON.route(t, Facts()).role


@pytest.mark.parametrize(
    ("missing", "rules"),
    [
        ({"assessment": None}, ["SW26-6"]),
        ({"plan": None}, ["SW26-6"]),
        ({"lead_practitioner": None, "lead_practitioner_organisation": None}, ["SW26-7"]),
        ({"assessment": None, "lead_practitioner": None, "lead_practitioner_organisation": None}, ["SW26-6", "SW26-7"]),
    ],
)
def test_sw26_06_sw26_07_incomplete_swindon_lcs_request_is_held_naming_the_rule(
    lcs: tuple[ServerHandle, LcsSandboxClient], missing: dict[str, Any], rules: list[str]
) -> None:
    """Without the assessment or plan (SW26-6) or the Lead Practitioner (SW26-7) the protocol holds it."""
    assert rules == _violated(_mapped(lcs, **missing))


def test_sw26_06_handover_date_on_the_lcs_request_travels_and_is_timed_from_the_case_transfer(
    lcs: tuple[ServerHandle, LcsSandboxClient],
) -> None:
    """The LCS request's handover date travels as SW26-6's deadline; 5 or 12 days on, neither is held at request:
    the 10 days start at the case transfer (acknowledged), so the monitor times them from there."""
    soon = (datetime.now(UTC) + timedelta(days=5)).isoformat()
    late = (datetime.now(UTC) + timedelta(days=12)).isoformat()
    on_time = _mapped(lcs, handover_due=soon)
    assert ["SW26-6"] == [d.rule_id for d in on_time.deadlines]
    assert [] == _violated(on_time)
    assert [] == _violated(_mapped(lcs, handover_due=late))


def test_lcs_sandbox_keeps_swindon_fields_and_refuses_an_organisation_without_a_lead(
    lcs: tuple[ServerHandle, LcsSandboxClient],
) -> None:
    """The request stores the Swindon fields; a Lead Practitioner's organisation with no Lead Practitioner is a 422."""
    handle, client = lcs
    child_id = client.create_child()
    with httpx.Client(base_url=handle.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as http:
        r = http.post(f"/api/children/{child_id}/stepdown-requests", json=swindon_request())
        assert r.status_code == 201
        assert ("Jo Leadpractitioner", None) == (r.json()["lead_practitioner"], r.json()["meeting_notes"])
        r = http.post(f"/api/children/{child_id}/stepdown-requests", json=swindon_request(lead_practitioner=None))
        assert r.status_code == 422
        assert "lead_practitioner_organisation" in [d["field"] for d in r.json()["detail"]]


# -- the shipped example reaches EHM's tray (sandbox over HTTP, no broker) ---------------------------


async def test_sw26_07_shipped_swindon_2026_example_is_deliverable_to_the_ehm_tray(tmp_path: Path) -> None:
    """contracts/examples/swindon-2026...json (no meeting notes, no locality) lands in the tray for the
    Lead Practitioner, with its assessment and plan; EHM confirms it holds it."""
    transfer = TransferMessage.model_validate_json((EXAMPLES / "swindon-2026.step-down.lcs-ehm.json").read_text())
    assert [] == _violated(transfer)
    route = SWINDON.route(transfer, Facts())
    with serve(create_ehm_app(tmp_path / "ehm.db", TOKEN), "127.0.0.1", 0) as ehm:
        async with EhmConnector(ehm.url, SecretStr(TOKEN)) as connector:
            assert (await connector.deliver(transfer, route)).created
            assert (await connector.confirm(transfer)).acknowledged
        tray = EhmSandboxClient(ehm.url, TOKEN)
        [item] = tray.tray()
        tray.close()
    assert ("swindon", "lead-professional", "Jo Leadpractitioner") == (
        item["council"],
        item["assigned_to"]["role"],
        item["assigned_to"]["name"],
    )
    assert (None, None) == (item["meeting_notes"], item["child"]["locality"])
    assert ("Strengths, risk and need; outcomes achieved.", "Proposed early intervention plan.") == (
        item["assessment"],
        item["plan"],
    )


# -- end to end: the LCS sandbox, an LCS publisher for Swindon, the real broker, the EHM sandbox ------


@pytest.fixture
async def swindon_stack(
    systems: Systems, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, retry_settings: RetrySettings
) -> AsyncIterator[Stack]:
    """A deployment serving Swindon: its publishers stamp council swindon."""
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
        council=Council.SWINDON,
    )
    s = Stack(settings, tmp_path / "state", systems=systems.deployed(), loops=False)
    async with s:
        yield s


def _types(events: list[TransferEvent]) -> list[str]:
    return [e.event_type for e in events]


async def test_sw26_05_sw26_06_sw26_07_lcs_sandbox_step_down_completes_and_incomplete_one_is_held(
    swindon_stack: Stack, systems: Systems
) -> None:
    """A complete Swindon request entered on LCS reaches EHM's tray for the Lead Practitioner and LCS closes
    with "Step Down to SBC Early Help" after EHM acknowledged; one without assessment and Lead Practitioner
    is held naming SW26-6 and SW26-7, nothing in the tray, its LCS record open."""
    lcs, ehm = systems.lcs_client, systems.ehm_client
    good_child, bad_child = lcs.create_child(), lcs.create_child()
    good = lcs.request_stepdown(good_child, council="swindon")
    bad = lcs.request_stepdown(
        bad_child, council="swindon", assessment=None, lead_practitioner=None, lead_practitioner_organisation=None
    )
    assert 2 == await swindon_stack.publisher.poll_once()
    good_id, bad_id = transfer_id_for(Council.SWINDON, good), transfer_id_for(Council.SWINDON, bad)

    events = await transfer_events(swindon_stack, good_id, "source-closed")
    types = _types(events)
    assert ["requested", "validated", "delivered", "acknowledged", "source-closed"] == types
    [item] = ehm.tray()
    assert (good_id, "swindon") == (item["transfer_id"], item["council"])
    assert ("lead-professional", "Jo Leadpractitioner") == (item["assigned_to"]["role"], item["assigned_to"]["name"])
    assert item["assessment"] and item["plan"] and item["meeting_notes"] is None
    record = lcs.child(good_child)
    assert ("closed", "Step Down to SBC Early Help", good_id) == (
        record["record_state"],
        record["closure_reason"],
        record["closure_transfer_id"],
    )
    assert record["closed_at"] >= item["received_at"]

    held_events = await transfer_events(swindon_stack, bad_id, "held")
    [held] = [e for e in held_events if e.event_type == "held"]
    assert ["SW26-6", "SW26-7"] == [v.rule_id for v in held.violations]  # type: ignore[union-attr]
    assert "delivered" not in _types(held_events)
    assert [good_id] == [i["transfer_id"] for i in ehm.tray()]
    assert "open" == lcs.child(bad_child)["record_state"]
