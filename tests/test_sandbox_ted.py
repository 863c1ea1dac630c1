"""The TED sandbox over real HTTP: cases, sent step-downs, closing rules, EHA episodes, referrals, faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxes import ServerHandle, create_ted_app, serve

TOKEN = "ted-test-token"
CASE = {"given_name": "Testa", "family_name": "Sandboxson", "date_of_birth": "2015-04-01", "team": "CIN"}
STEPDOWN: dict[str, Any] = {
    "purpose": "Needs met at early help level with a lead professional",
    "decided_by": {"name": "Morgan Testmanager", "role": "Team Manager"},
    "lead_professional": {"name": "Quinn Placeholder", "organisation": "Example Primary School"},
    "sent_via": "mailbox",
    "sent_reference": "casebridge-ref-1",
}
CLOSE = {"reason": "Stepped down to early help", "closed_by": "casebridge", "transfer_id": "ba-1"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve(create_ted_app(tmp_path / "ted.sqlite3", TOKEN), "127.0.0.1", 0) as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        yield c


def new_case(client: httpx.Client, **changes: Any) -> str:
    r = client.post("/api/cases", json={**CASE, **changes})
    assert 201 == r.status_code, r.text
    return str(r.json()["id"])


def test_calls_without_the_token_are_refused_401(server: ServerHandle) -> None:
    """Every route, faults included, needs the bearer token."""
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        for path in ("/api/cases/TED-1", "/api/eha/EHA-1", "/_sandbox/faults"):
            assert 401 == anon.get(path).status_code


def test_ba15_case_closes_only_after_its_step_down_was_sent(client: httpx.Client) -> None:
    """Closing before the step-down is recorded as sent is refused naming BA-15; afterwards it closes."""
    case = new_case(client)
    r = client.post(f"/api/cases/{case}/close", json=CLOSE)
    assert (409, "stepdown_not_sent", "BA-15") == (r.status_code, r.json()["error"], r.json()["rule"])
    assert "open" == client.get(f"/api/cases/{case}").json()["record_state"]

    first = client.put(f"/api/cases/{case}/stepdowns/ba-1", json=STEPDOWN)
    again = client.put(f"/api/cases/{case}/stepdowns/ba-1", json=STEPDOWN)
    assert (201, 200) == (first.status_code, again.status_code)
    other = client.post(f"/api/cases/{case}/close", json={**CLOSE, "transfer_id": "ba-other"})
    assert (409, "BA-15") == (other.status_code, other.json()["rule"])
    r = client.post(f"/api/cases/{case}/close", json=CLOSE)
    assert 200 == r.status_code
    closed = r.json()
    assert ("closed", "ba-1") == (closed["record_state"], closed["closure_transfer_id"])
    assert ["ba-1"] == [s["transfer_id"] for s in closed["stepdowns"]]


def test_ba13_disabled_child_with_direct_payment_stays_open(client: httpx.Client) -> None:
    """Closing is refused naming BA-13; keep-open records it and the case stays open to the DCT worker."""
    case = new_case(client, disabled=True, direct_payment=True, team="DCT")
    client.put(f"/api/cases/{case}/stepdowns/ba-1", json=STEPDOWN).raise_for_status()
    r = client.post(f"/api/cases/{case}/close", json=CLOSE)
    assert (409, "record_stays_open", "BA-13") == (r.status_code, r.json()["error"], r.json()["rule"])
    keep = {"rule": "BA-13", "transfer_id": "ba-1", "open_to": "DCT family support worker"}
    r = client.post(f"/api/cases/{case}/keep-open", json=keep)
    assert 200 == r.status_code
    kept = r.json()
    assert ("open", "BA-13", "ba-1") == (kept["record_state"], kept["kept_open_rule"], kept["kept_open_transfer_id"])
    plain = new_case(client)
    client.put(f"/api/cases/{plain}/stepdowns/ba-2", json=STEPDOWN).raise_for_status()
    r = client.post(f"/api/cases/{plain}/keep-open", json={**keep, "transfer_id": "ba-2"})
    assert (422, "BA-13") == (r.status_code, r.json()["rule"])


REQUEST = {
    "reason_code": "SD-EHS",
    "purpose": "needs met at early help level (synthetic)",
    "decided_by": {"name": "Morgan Testmanager", "role": "Team Manager"},
    "decided_on": "2026-10-30",
    "rationale": "Risks reduced; early help can meet the needs (synthetic).",
    "lead_professional": {"name": "Quinn Placeholder", "organisation": "Example Primary School"},
    "consent": {"given_by": "Parent (synthetic)", "given_on": "2026-10-28", "scope": ["information-sharing"]},
    "documents": [{"type": "plan", "content": "Step-down plan (synthetic)."}],
    "requested_by": "Social worker (synthetic)",
}


def test_ba05_step_down_requests_are_announced_on_a_cursor_feed_with_their_reason_code(client: httpx.Client) -> None:
    """Each request appears once on the change feed, in order, page by page; TED keeps the coded reason as given."""
    cases = [new_case(client) for _ in range(3)]
    made = [
        client.post(f"/api/cases/{c}/stepdown-requests", json={**REQUEST, "reason_code": code}).json()
        for c, code in zip(cases, ["SD-EHS", "SD-MON", "SD-ONR"], strict=True)
    ]
    first = client.get("/api/changes", params={"after": 0, "limit": 2}).json()
    rest = client.get("/api/changes", params={"after": first["last_seq"], "limit": 2}).json()
    assert (True, False) == (first["has_more"], rest["has_more"])
    seen = first["changes"] + rest["changes"]
    assert [(m["case_id"], m["request_id"]) for m in made] == [(c["case_id"], c["ref"]) for c in seen]
    assert {"stepdown_requested"} == {c["kind"] for c in seen}
    got = client.get(f"/api/stepdown-requests/{made[1]['request_id']}").json()
    assert ("SD-MON", cases[1]) == (got["reason_code"], got["case_id"])
    bad = client.post(f"/api/cases/{cases[0]}/stepdown-requests", json={**REQUEST, "reason_code": "SD-XYZ"})
    assert (422, "reason_code") == (bad.status_code, bad.json()["detail"][0]["field"])


def test_ba05_step_down_is_decided_by_a_team_manager(client: httpx.Client) -> None:
    """A step-down decided by anyone else is refused naming BA-5."""
    case = new_case(client)
    body = {**STEPDOWN, "decided_by": {"name": "Sam Fictional", "role": "Social Worker"}}
    r = client.put(f"/api/cases/{case}/stepdowns/ba-1", json=body)
    assert (422, "BA-5") == (r.status_code, r.json()["rule"])


def test_ba06_step_down_names_the_lead_professionals_organisation(client: httpx.Client) -> None:
    """Without the lead professional's organisation the step-down is refused naming BA-6."""
    case = new_case(client)
    body = {**STEPDOWN, "lead_professional": {"name": "Quinn Placeholder"}}
    r = client.put(f"/api/cases/{case}/stepdowns/ba-1", json=body)
    assert (422, "BA-6") == (r.status_code, r.json()["rule"])


def test_ba03_eha_closes_with_its_reason(client: httpx.Client) -> None:
    """An open EHA held on TED closes with the reason given, once."""
    case = new_case(client)
    eha = client.post(f"/api/cases/{case}/eha", json={"lead_professional": "FSW", "started_on": "2026-09-01"}).json()
    body = {"reason": "step up to social care", "closed_by": "casebridge", "transfer_id": "ba-up-1"}
    r = client.post(f"/api/eha/{eha['eha_id']}/close", json=body)
    assert ("closed", "step up to social care") == (r.json()["status"], r.json()["closure_reason"])
    assert 409 == client.post(f"/api/eha/{eha['eha_id']}/close", json=body).status_code


def test_referral_is_idempotent_on_transfer_id(client: httpx.Client) -> None:
    """The same step-up twice is one referral."""
    body = {
        "child": {"given_name": "T", "family_name": "S", "date_of_birth": "2015-04-01", "source_reference": "EHA-1"},
        "urgency": "routine",
        "summary": "Escalating needs (synthetic).",
        "received_from": "ted",
    }
    first, again = client.put("/api/referrals/up-1", json=body), client.put("/api/referrals/up-1", json=body)
    assert (201, 200) == (first.status_code, again.status_code)
    assert first.json()["referral_id"] == again.json()["referral_id"]
    assert "received" == client.get("/api/referrals/up-1").json()["status"]


def test_faults_answer_the_injected_status(client: httpx.Client) -> None:
    """Fault injection like the other sandboxes."""
    client.post("/_sandbox/faults", json={"status": 500, "count": 1}).raise_for_status()
    assert 500 == client.get("/api/cases/TED-1").status_code
    assert 404 == client.get("/api/cases/TED-1").status_code
