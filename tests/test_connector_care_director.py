"""The Care Director connector against the real Care Director sandbox (HTTP, SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from connectors import PermanentError, Receipt, RuleRefused, TargetRefused, TargetUnavailable
from connectors.care_director import (
    ASSESSMENT_OUTCOMES,
    CareDirectorConnector,
    CareDirectorPublisher,
    load_outcomes,
    outcome_of,
)
from contracts import CaseSystem, RecordState, ServiceLevel, TransferMessage
from mappings import MappingError, Route
from router import Topics
from sandboxes import ServerHandle, create_care_director_app, serve
from sandboxes.care_director import ASSESSMENT_OUTCOMES as PICK_LIST
from tests.support import example, read

TOKEN = "cd-connector-token"
ROUTE = Route(role="default", locality=None)
RECEIPT = Receipt(CaseSystem.MAILBOX, "casebridge-ref-1", created=True, acknowledged=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve(create_care_director_app(tmp_path / "cd.sqlite3", TOKEN), "127.0.0.1", 0) as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        yield c


@pytest.fixture
async def cd(server: ServerHandle) -> AsyncIterator[CareDirectorConnector]:
    async with CareDirectorConnector(server.url, SecretStr(TOKEN)) as connector:
        yield connector


def get(client: httpx.Client, path: str) -> Any:
    """Read the sandbox directly (it serves on its own thread, so a blocking call is fine here)."""
    r = client.get(path)
    r.raise_for_status()
    return r.json()


def inject_503(client: httpx.Client) -> None:
    client.post("/_sandbox/faults", json={"status": 503, "count": 1}).raise_for_status()


def step_down(client: httpx.Client, **changes: Any) -> TransferMessage:
    """Swindon 2022's synthetic step-down, on a person created in the sandbox."""
    person = client.post(
        "/api/persons", json={"given_name": "Robin", "family_name": "Exampleton", "date_of_birth": "2016-04-09"}
    ).json()["id"]
    doc = example("swindon-2022.step-down.care-director-ehh.json")
    doc["source_record"] = {**doc["source_record"], "record_id": person}
    doc["child"]["identifiers"] = [{"system": "care-director", "id": person}]
    doc.update(changes)
    return TransferMessage.model_validate(doc)


def step_up(**changes: Any) -> TransferMessage:
    doc = example("swindon-2022.step-down.care-director-ehh.json", transfer_id="sw22-up-1", urgency="urgent")
    doc["pathway"] = {
        "direction": "step-up",
        "from_level": "early-help",
        "to_level": "child-in-need-s17",
        "from_system": "ehm",
        "to_system": "care-director",
    }
    doc["source_record"] = {"system": "ehm", "record_id": "EHM-EP-7", "state": "open"}
    doc["documents"] = [
        {"type": "early-help-assessment", "content": "Up-to-date EHA (synthetic)."},
        {"type": "taf-plan", "content": "TAF plan (synthetic)."},
    ]
    doc.update(changes)
    return TransferMessage.model_validate(doc)


async def test_sw22_10_closure_without_a_named_early_help_worker_is_a_permanent_error(
    cd: CareDirectorConnector, client: httpx.Client
) -> None:
    """Care Director refuses; the connector raises a PermanentError naming SW22-10 and the record stays open."""
    transfer = step_down(client, professionals={})
    with capture_logs() as logs, pytest.raises(TargetRefused) as refused:
        await cd.close(transfer, RECEIPT)
    assert isinstance(refused.value, PermanentError) and not refused.value.retriable
    assert ("SW22-10",) == refused.value.rule_ids
    assert "SW22-10" in str(refused.value) and "early-help worker is not named" in str(refused.value)
    assert "Robin" not in str(refused.value) + repr(logs)
    assert RecordState.OPEN == (await cd.state(transfer)).state


async def test_sw22_11_sw22_12_closure_record_names_lead_service_and_lead_professional(
    cd: CareDirectorConnector, client: httpx.Client
) -> None:
    """The closure record carries the lead service (from the outcome) and the transfer's Lead Professional."""
    transfer = step_down(client)
    record_id = await cd.close(transfer, RECEIPT)
    person = get(client, f"/api/persons/{record_id}")
    closure = person["closure"]
    lead = {"name": "Casey Hubworker", "role": "Early Help Hub worker", "organisation": "EH Hub"}
    assert "closed" == person["record_state"]
    assert "Early Help Hub" == closure["lead_service"]
    assert lead == closure["lead_professional"] == closure["early_help_worker"]
    assert ("Refer to EHH Service", transfer.transfer_id) == (closure["assessment_outcome"], closure["transfer_id"])
    assert RECEIPT.reference == closure["onward_reference"]
    state = await cd.state(transfer)
    assert (RecordState.CLOSED, transfer.transfer_id) == (state.state, state.closed_by_transfer)
    assert record_id == await cd.close(transfer, RECEIPT)  # idempotent: closed by this very transfer


async def test_sw22_12_family_support_worker_and_lead_professional_both_recorded(
    cd: CareDirectorConnector, client: httpx.Client
) -> None:
    """With a FISS worker and a school Lead Professional, both services are involved and the LP is recorded."""
    professionals = {
        "lead_professional": {"name": "Quinn Placeholder", "role": "Teacher", "organisation": "Example School"},
        "family_support_worker": {"name": "Drew Fictional", "role": "Family worker", "organisation": "FISS"},
    }
    transfer = step_down(client, professionals=professionals, assessment_outcome="Refer to FISS Service")
    await cd.close(transfer, RECEIPT)
    closure = get(client, f"/api/persons/{transfer.source_record.record_id}")["closure"]
    assert ["Example School", "FISS"] == closure["services_involved"]
    assert "Quinn Placeholder" == closure["lead_professional"]["name"]
    assert "Drew Fictional" == closure["early_help_worker"]["name"]
    assert "Family Intervention and Support Services (FISS)" == closure["lead_service"]


async def test_sw22_7_sw22_11_closure_needs_a_step_down_assessment_outcome(
    cd: CareDirectorConnector, client: httpx.Client
) -> None:
    """No outcome (or a non-step-down one) means no lead service: refused before Care Director is asked."""
    for outcome in (None, "Continue as Child in Need", "Monitoring"):
        transfer = step_down(client, assessment_outcome=outcome)
        with pytest.raises(RuleRefused) as refused:
            await cd.close(transfer, RECEIPT)
        assert ("SW22-7", "SW22-11") == refused.value.rule_ids
        assert RecordState.OPEN == (await cd.state(transfer)).state


def test_sw22_7_assessment_outcomes_are_data_matching_care_directors_pick_list() -> None:
    """Every outcome Care Director offers is in the data, with its label and the level it steps down to."""
    assert dict(PICK_LIST) == {o.code: o.label for o in ASSESSMENT_OUTCOMES.values()}
    levels = {label: o.to_level for label, o in ASSESSMENT_OUTCOMES.items() if o.step_down}
    assert {
        "TAF Lead Professional Identified / Refer to Other service": ServiceLevel.UNIVERSAL,
        "Refer to EHH Service": ServiceLevel.EARLY_HELP,
        "Refer to FISS Service": ServiceLevel.INTENSIVE_EARLY_HELP,
    } == levels
    assert outcome_of("ASO-EHH") is outcome_of("Refer to EHH Service")
    assert outcome_of("Refer to somewhere else") is None
    with pytest.raises(MappingError, match=r"care-director-outcomes\.toml: field outcome\.0\.to_level: .*\(SW22-7\)"):
        load_outcomes(
            '[[outcome]]\ncode="X"\nlabel="Y"\nrule="SW22-7"\nstep_down=true\nto_level="nowhere"\n'
            'lead_service="Z"\ntarget="mailbox"\nteam="z"\n'
        )


async def test_sw22_6_sw22_1_step_up_becomes_one_urgent_contact(
    cd: CareDirectorConnector, client: httpx.Client
) -> None:
    """The MASH's contact is created once per transfer, flagged urgent, with the EHA and TAF plan (SW22-3)."""
    transfer = step_up()
    first = await cd.deliver(transfer, ROUTE)
    again = await cd.deliver(transfer, ROUTE)
    confirmed = await cd.confirm(transfer)
    assert (True, False, True) == (first.created, again.created, confirmed.acknowledged)
    assert first.reference == again.reference == confirmed.reference
    contact = get(client, f"/api/contacts/{transfer.transfer_id}")
    assert "urgent" == contact["urgency"]
    assert ["early-help-assessment", "taf-plan"] == [d["type"] for d in contact["documents"]]


async def test_sw22_3_step_up_without_taf_plan_is_refused_naming_the_rule(cd: CareDirectorConnector) -> None:
    """Care Director refuses a contact without the TAF plan: permanent, SW22-3."""
    transfer = step_up(documents=[{"type": "early-help-assessment", "content": "EHA (synthetic)."}])
    with pytest.raises(TargetRefused) as refused:
        await cd.deliver(transfer, ROUTE)
    assert ("SW22-3",) == refused.value.rule_ids and not refused.value.retriable


async def test_care_director_outage_is_transient(cd: CareDirectorConnector, client: httpx.Client) -> None:
    """A 503 from Care Director is a TargetUnavailable, retried by the router."""
    transfer = step_down(client)
    inject_503(client)
    with pytest.raises(TargetUnavailable):
        await cd.close(transfer, RECEIPT)
    assert RecordState.OPEN == (await cd.state(transfer)).state


def _referral(client: httpx.Client, outcome_code: str) -> str:
    """A person, their completed assessment with the outcome, and the social worker's referral to early help."""
    body = {"given_name": "Robin", "family_name": "Exampleton", "date_of_birth": "2016-04-09"}
    person = client.post("/api/persons", json=body).json()["id"]
    assessment = client.post(
        f"/api/persons/{person}/assessments",
        json={
            "outcome_code": outcome_code,
            "analysis": "Needs can be met by intensive early help (synthetic).",
            "signed_off_by": "Morgan Testmanager",
            "rationale": "Risks reduced; family engaged.",
            "completed_on": "2026-11-01",
        },
    ).json()["assessment_id"]
    referral = {
        "assessment_id": assessment,
        "consent": {"given_by": "Parent (synthetic)", "given_on": "2026-11-02", "scope": ["recommendations"]},
        "lead_professional": {"name": "Quinn Placeholder", "role": "Teacher", "organisation": "Example School"},
        "early_help_worker": {"name": "Drew Fictional", "role": "Family worker", "organisation": "FISS"},
        "documents": [{"type": "plan", "title": "TAF plan", "content": "Weekly FISS sessions (synthetic)."}],
        "requested_by": "Sam Fictional (Social Worker)",
    }
    r = client.post(f"/api/persons/{person}/stepdown-referrals", json=referral)
    r.raise_for_status()
    return str(r.json()["referral_id"])


async def test_sw22_7_publisher_maps_referrals_and_dead_letters_a_non_step_down_outcome(
    server: ServerHandle,
    client: httpx.Client,
    cd: CareDirectorConnector,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    """FISS outcome: an intensive early help transfer that closes its record; a CIN outcome: dead letter SW22-7."""
    fiss = _referral(client, "ASO-FISS")
    _referral(client, "ASO-CIN")
    topics = Topics(topic_prefix)
    publisher = CareDirectorPublisher(
        CareDirectorConnector(server.url, SecretStr(TOKEN)),
        kafka_bootstrap,
        topics.transfers,
        topics.dead_letter,
        tmp_path / "cd.cursor",
    )
    await publisher.start()
    try:
        assert 2 == await publisher.poll_once()
        assert 0 == await publisher.poll_once()  # the cursor moved
    finally:
        await publisher.stop()
    [record] = await read(kafka_bootstrap, topics.transfers, lambda r: len(r) >= 1, timeout=30)
    [dead] = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 1, timeout=30)

    transfer = TransferMessage.model_validate_json(record.value or b"")
    assert ("swindon-2022-cd-" + fiss.lower(), ServiceLevel.INTENSIVE_EARLY_HELP, "Refer to FISS Service") == (
        transfer.transfer_id,
        transfer.pathway.to_level,
        transfer.assessment_outcome,
    )
    assert ["plan", "assessment"] == [d.type.value for d in transfer.documents]
    assert (fiss, CaseSystem.MAILBOX) == (transfer.source_record.request_id, transfer.pathway.to_system)
    headers = dict(dead.headers)
    assert (b"map", b"SW22-7") == (headers["casebridge.dlq.stage"], headers["casebridge.dlq.rule.ids"])
    assert b"'ASO-CIN'" in headers["casebridge.dlq.error.message"]  # the code that is not a step-down outcome
    await cd.close(transfer, RECEIPT)
    closure = get(client, f"/api/persons/{transfer.source_record.record_id}")["closure"]
    assert ("Family Intervention and Support Services (FISS)", "Quinn Placeholder", "Drew Fictional") == (
        closure["lead_service"],
        closure["lead_professional"]["name"],
        closure["early_help_worker"]["name"],
    )
