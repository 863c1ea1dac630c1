"""The Care Director sandbox over real HTTP: auth, persons, assessments, the closure record, contacts, feed, faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxes import ServerHandle, create_care_director_app, serve
from sandboxes.care_director import ASSESSMENT_OUTCOMES

TOKEN = "cd-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = {"given_name": "Testa", "family_name": "Sandboxson", "date_of_birth": "2015-04-01", "nhs_number": "9990000018"}
WORKER = {"name": "Casey Hubworker", "role": "Early Help Hub worker", "organisation": "EH Hub"}
CLOSURE: dict[str, Any] = {
    "reason": "Step down to Early Help Hub",
    "closed_by": "casebridge",
    "transfer_id": "sw22-1",
    "assessment_outcome": "Refer to EHH Service",
    "lead_service": "Early Help Hub",
    "lead_professional": WORKER,
    "early_help_worker": WORKER,
    "services_involved": ["EH Hub"],
}
CONTACT: dict[str, Any] = {
    "person": {
        "given_name": "Testa",
        "family_name": "Sandboxson",
        "date_of_birth": "2015-04-01",
        "source_reference": "EH-1",
    },
    "urgency": "urgent",
    "summary": "Escalating concerns despite FISS support (synthetic).",
    "received_from": "ehm",
    "documents": [
        {"type": "early-help-assessment", "content": "EHA (synthetic)"},
        {"type": "taf-plan", "content": "TAF plan (synthetic)"},
    ],
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve(create_care_director_app(tmp_path / "cd.sqlite3", TOKEN), "127.0.0.1", 0) as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        yield c


def new_person(client: httpx.Client) -> str:
    r = client.post("/api/persons", json=PERSON)
    assert 201 == r.status_code, r.text
    return str(r.json()["id"])


def test_calls_without_the_token_are_refused_401(server: ServerHandle) -> None:
    """Every route, faults included, needs the bearer token."""
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        for path in ("/api/persons/CD-1", "/api/changes", "/_sandbox/faults"):
            assert 401 == anon.get(path).status_code
        assert 401 == anon.get("/api/changes", headers={"Authorization": "Bearer nope"}).status_code


def test_sw22_7_assessment_outcome_must_come_from_the_pick_list(client: httpx.Client) -> None:
    """An assessment records one of Care Director's outcome codes; anything else is refused naming SW22-7."""
    person = new_person(client)
    listed = client.get("/api/reference/assessment-outcomes").json()["outcomes"]
    assert dict(ASSESSMENT_OUTCOMES) == {o["code"]: o["label"] for o in listed}
    body = {
        "outcome_code": "ASO-EHH",
        "analysis": "Needs can be met by the EH Hub (synthetic).",
        "signed_off_by": "Morgan Testmanager",
        "rationale": "Risks reduced.",
        "completed_on": "2026-11-01",
    }
    r = client.post(f"/api/persons/{person}/assessments", json=body)
    assert 201 == r.status_code
    assert "Refer to EHH Service" == r.json()["outcome_label"]
    bad = client.post(f"/api/persons/{person}/assessments", json={**body, "outcome_code": "MONITOR"})
    assert (422, "SW22-7", "MONITOR") == (bad.status_code, bad.json()["rule"], bad.json()["code"])
    assert [r.json()] == client.get(f"/api/persons/{person}/assessments").json()["assessments"]


def test_sw22_10_closure_is_refused_until_the_early_help_worker_is_named(client: httpx.Client) -> None:
    """Without the receiving early-help worker the record stays open; with them it closes with the record."""
    person = new_person(client)
    r = client.post(f"/api/persons/{person}/close", json={**CLOSURE, "early_help_worker": None})
    assert 422 == r.status_code
    assert {"error": "early_help_worker_not_named", "field": "early_help_worker", "rule": "SW22-10"} == r.json()
    assert "open" == client.get(f"/api/persons/{person}").json()["record_state"]

    r = client.post(f"/api/persons/{person}/close", json=CLOSURE)
    assert 200 == r.status_code
    closed = r.json()
    assert "closed" == closed["record_state"]
    assert "Early Help Hub" == closed["closure"]["lead_service"]
    assert WORKER == closed["closure"]["early_help_worker"]
    again = client.post(f"/api/persons/{person}/close", json=CLOSURE)
    assert (409, "record_already_closed") == (again.status_code, again.json()["error"])


def test_sw22_11_closure_record_without_lead_service_is_refused(client: httpx.Client) -> None:
    """The closure record must name the lead service."""
    person = new_person(client)
    body = {k: v for k, v in CLOSURE.items() if k != "lead_service"}
    r = client.post(f"/api/persons/{person}/close", json=body)
    assert (422, "SW22-11") == (r.status_code, r.json()["rule"])
    assert "lead_service" in [d["field"] for d in r.json()["detail"]]


def test_sw22_12_more_than_one_service_needs_a_lead_professional(client: httpx.Client) -> None:
    """Two services involved and no Lead Professional: refused; with one named: closed."""
    person = new_person(client)
    two = {**CLOSURE, "lead_professional": None, "services_involved": ["EH Hub", "School"]}
    r = client.post(f"/api/persons/{person}/close", json=two)
    assert (422, "SW22-12") == (r.status_code, r.json()["rule"])
    r = client.post(f"/api/persons/{person}/close", json={**two, "lead_professional": WORKER})
    assert 200 == r.status_code
    assert WORKER == r.json()["closure"]["lead_professional"]


def test_sw22_3_step_up_contact_needs_eha_and_taf_plan_and_is_idempotent(client: httpx.Client) -> None:
    """A contact without the EHA or TAF plan is refused; the same transfer twice is one contact."""
    bad = client.put("/api/contacts/up-1", json={**CONTACT, "documents": CONTACT["documents"][:1]})
    assert (422, "SW22-3", ["taf-plan"]) == (bad.status_code, bad.json()["rule"], bad.json()["missing"])
    first = client.put("/api/contacts/up-1", json=CONTACT)
    second = client.put("/api/contacts/up-1", json=CONTACT)
    assert (201, 200) == (first.status_code, second.status_code)
    assert first.json()["contact_id"] == second.json()["contact_id"]
    contact = client.get("/api/contacts/up-1").json()
    assert ("urgent", "new") == (contact["urgency"], contact["status"])
    assert 404 == client.get("/api/contacts/up-2").status_code


def test_change_feed_lists_assessments_closures_and_contacts_in_order(client: httpx.Client) -> None:
    """The feed resumes from a cursor."""
    person = new_person(client)
    client.post(f"/api/persons/{person}/close", json=CLOSURE)
    client.put("/api/contacts/up-9", json=CONTACT)
    feed = client.get("/api/changes", params={"after": 0}).json()
    assert ["person_created", "record_closed", "contact_created"] == [c["kind"] for c in feed["changes"]]
    later = client.get("/api/changes", params={"after": feed["changes"][0]["seq"]}).json()
    assert 2 == len(later["changes"]) and feed["last_seq"] == later["last_seq"]


def test_faults_answer_the_injected_status_then_clear(client: httpx.Client) -> None:
    """Fault injection like the other sandboxes: a 503 for N calls."""
    client.post("/_sandbox/faults", json={"status": 503, "count": 1, "path_prefix": "/api/persons"}).raise_for_status()
    assert 503 == client.get("/api/persons/CD-1").status_code
    assert 404 == client.get("/api/persons/CD-1").status_code
