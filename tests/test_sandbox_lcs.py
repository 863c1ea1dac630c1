"""The LCS sandbox over real HTTP: auth, records, step-down requests, feed, faults."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxes import ServerHandle, create_lcs_app, serve

TOKEN = "lcs-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# Synthetic child: invented name, NHS number from the 999 test range.
CHILD: dict[str, Any] = {
    "given_name": "Testa",
    "family_name": "Sandboxson",
    "date_of_birth": "2015-04-01",
    "gender": "female",
    "nhs_number": "9990000018",
    "upn": "A123456789012",
    "locality": "North",
    "postcode": "ZZ99 9ZZ",
}

STEPDOWN: dict[str, Any] = {
    "meeting_notes": "Step-down meeting held; family agree.",
    "plan": "Family support plan v1",
    "support_leader": "Avery Support-North",
    "family_support_worker": None,
    "target_level": "early_help",
    "consent": {
        "given_by": "Parent One",
        "given_on": "2025-01-10",
        "scope": ["referral", "information_sharing"],
    },
    "management_decision": {
        "decided_by": "Morgan Manager-North",
        "role": "Team Manager",
        "forum": "Step-down panel",
        "rationale": "Needs met at early help level.",
        "decided_on": "2025-01-09",
    },
    "requested_by": "SW-TEST-1",
}


def start(db: Path) -> ServerHandle:
    return serve(create_lcs_app(db, TOKEN), "127.0.0.1", 0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "lcs.sqlite3"


@pytest.fixture
def server(db_path: Path) -> Iterator[ServerHandle]:
    handle = start(db_path)
    yield handle
    handle.stop()


@pytest.fixture
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        yield c


def new_child(client: httpx.Client, **overrides: Any) -> str:
    r = client.post("/api/children", json={**CHILD, **overrides})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_serve_binds_a_real_port_when_asked_for_port_zero(server: ServerHandle) -> None:
    """serve(app, host, 0) returns a running handle whose url carries the bound port."""
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.running


def test_calls_without_or_with_a_wrong_token_are_refused_401(server: ServerHandle) -> None:
    """API and faults endpoints answer 401 with a JSON error unless the token is right."""
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        for path in ("/api/children/LCS-1", "/api/changes", "/_sandbox/faults"):
            r = anon.get(path)
            assert r.status_code == 401
            assert r.json()["error"] == "unauthorized"
            assert r.headers["WWW-Authenticate"] == "Bearer"
        r = anon.post("/api/children", json=CHILD, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        assert r.json() == {"error": "unauthorized", "reason": "invalid_bearer_token"}
        r = anon.get("/api/changes", headers={"Authorization": TOKEN})
        assert r.status_code == 401


def test_created_child_reads_back_open(client: httpx.Client) -> None:
    """A created child gets an LCS-<n> id and reads back open with its fields."""
    r = client.post("/api/children", json=CHILD)
    assert r.status_code == 201
    child = r.json()
    assert child["id"].startswith("LCS-")
    assert child["record_state"] == "open"
    assert child["disabled"] is False and child["direct_payment"] is False
    got = client.get(f"/api/children/{child['id']}").json()
    assert got == child
    assert got["closure_reason"] is None and got["closed_at"] is None
    assert client.get("/api/children/LCS-999").status_code == 404
    assert client.get("/api/children/nonsense").json()["error"] == "child_not_found"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"nhs_number": "12345"}, "nhs_number"),
        ({"upn": "SHORT"}, "upn"),
        ({"gender": "robot"}, "gender"),
        ({"date_of_birth": "not-a-date"}, "date_of_birth"),
        ({"favourite_colour": "blue"}, "favourite_colour"),
        ({"given_name": "  "}, "given_name"),
    ],
)
def test_bad_child_body_is_422_naming_the_field(client: httpx.Client, patch: dict[str, Any], field: str) -> None:
    """A bad or unknown field in a child body is a 422 that names that field."""
    r = client.post("/api/children", json={**CHILD, **patch})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_error"
    assert field in [d["field"] for d in body["detail"]]


def test_close_then_reopen_and_their_conflicts(client: httpx.Client) -> None:
    """Close/reopen flip record_state; closing a closed or reopening an open one is 409."""
    cid = new_child(client)
    close = {"reason": "Case closed", "closed_by": "SW-TEST-1", "transfer_id": None}
    r = client.post(f"/api/children/{cid}/close", json=close)
    assert r.status_code == 200
    assert r.json()["record_state"] == "closed"
    assert r.json()["closure_reason"] == "Case closed"
    assert r.json()["closed_at"] is not None
    r = client.post(f"/api/children/{cid}/close", json=close)
    assert r.status_code == 409
    assert r.json()["error"] == "record_already_closed"
    r = client.post(f"/api/children/{cid}/reopen", json={"reopened_by": "TM-TEST-1"})
    assert r.status_code == 200
    assert r.json()["record_state"] == "open" and r.json()["closed_at"] is None
    r = client.post(f"/api/children/{cid}/reopen", json={"reopened_by": "TM-TEST-1"})
    assert r.status_code == 409


def test_stepdown_request_is_created_pending(client: httpx.Client) -> None:
    """A step-down request on an open record is 201 SDR-<n>, pending, readable by id."""
    cid = new_child(client)
    r = client.post(f"/api/children/{cid}/stepdown-requests", json=STEPDOWN)
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["request_id"].startswith("SDR-")
    assert req["status"] == "pending"
    assert req["child_id"] == cid
    assert req["family_hub_universal"] is False
    got = client.get(f"/api/stepdown-requests/{req['request_id']}").json()
    assert got == req
    assert got["consent"]["scope"] == ["referral", "information_sharing"]
    listed = client.get(f"/api/children/{cid}/stepdown-requests").json()
    assert listed["requests"] == [req]


def test_family_hub_universal_needs_target_level_universal(client: httpx.Client) -> None:
    """family_hub_universal (NS-14) is refused 422 unless target_level is universal."""
    cid = new_child(client)
    body = {**STEPDOWN, "family_hub_universal": True}
    r = client.post(f"/api/children/{cid}/stepdown-requests", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "family_hub_universal"
    body["target_level"] = "universal"
    r = client.post(f"/api/children/{cid}/stepdown-requests", json=body)
    assert r.status_code == 201


def test_ns07_closed_lcs_record_cannot_be_stepped_down(client: httpx.Client) -> None:
    """NS-7: a step-down request on a closed LCS record is refused 409 record_closed."""
    cid = new_child(client)
    client.post(f"/api/children/{cid}/close", json={"reason": "Closed", "closed_by": "SW-TEST-1"}).raise_for_status()
    r = client.post(f"/api/children/{cid}/stepdown-requests", json=STEPDOWN)
    assert r.status_code == 409
    assert r.json()["error"] == "record_closed"
    assert r.json()["rule"] == "NS-7"
    kinds = [c["kind"] for c in client.get("/api/changes").json()["changes"]]
    assert "stepdown_requested" not in kinds


def test_complete_is_idempotent_on_transfer_id(client: httpx.Client) -> None:
    """Completing twice with one transfer id is 200 both times; another id is 409."""
    cid = new_child(client)
    rid = client.post(f"/api/children/{cid}/stepdown-requests", json=STEPDOWN).json()["request_id"]
    done = {"transfer_id": "TR-1", "ehm_reference": "TRAY-1"}
    first = client.post(f"/api/stepdown-requests/{rid}/complete", json=done)
    assert first.status_code == 200
    assert first.json()["status"] == "completed"
    assert first.json()["transfer_id"] == "TR-1"
    again = client.post(f"/api/stepdown-requests/{rid}/complete", json=done)
    assert again.status_code == 200
    assert again.json() == first.json()
    other = client.post(
        f"/api/stepdown-requests/{rid}/complete",
        json={"transfer_id": "TR-2", "ehm_reference": "TRAY-2"},
    )
    assert other.status_code == 409
    kinds = [c["kind"] for c in client.get("/api/changes").json()["changes"]]
    assert kinds.count("stepdown_completed") == 1


def test_ns07_completion_refused_after_out_of_band_close(client: httpx.Client) -> None:
    """NS-7: a record closed out of band before completion refuses the completion."""
    cid = new_child(client)
    rid = client.post(f"/api/children/{cid}/stepdown-requests", json=STEPDOWN).json()["request_id"]
    client.post(f"/api/children/{cid}/close", json={"reason": "Closed", "closed_by": "SW-X"}).raise_for_status()
    r = client.post(
        f"/api/stepdown-requests/{rid}/complete",
        json={"transfer_id": "TR-9", "ehm_reference": "TRAY-9"},
    )
    assert r.status_code == 409
    assert r.json()["rule"] == "NS-7"
    assert client.get(f"/api/stepdown-requests/{rid}").json()["status"] == "pending"


def test_cancelled_request_cannot_be_completed(client: httpx.Client) -> None:
    """A cancelled step-down request stays cancelled; completing it is 409."""
    cid = new_child(client)
    rid = client.post(f"/api/children/{cid}/stepdown-requests", json=STEPDOWN).json()["request_id"]
    r = client.post(
        f"/api/stepdown-requests/{rid}/cancel",
        json={"cancelled_by": "SW-TEST-1", "reason": "Family moved"},
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = client.post(
        f"/api/stepdown-requests/{rid}/complete",
        json={"transfer_id": "TR-1", "ehm_reference": "TRAY-1"},
    )
    assert r.status_code == 409
    assert r.json()["error"] == "stepdown_cancelled"


def test_change_feed_is_ordered_and_resumes_from_a_cursor(client: httpx.Client) -> None:
    """The change feed is seq-ordered, pages by limit, and resumes after a cursor."""
    a = new_child(client)
    b = new_child(client, given_name="Other")
    rid = client.post(f"/api/children/{a}/stepdown-requests", json=STEPDOWN).json()["request_id"]
    client.post(f"/api/children/{b}/close", json={"reason": "Closed", "closed_by": "SW"}).raise_for_status()
    client.post(f"/api/children/{b}/reopen", json={"reopened_by": "TM"}).raise_for_status()

    everything = client.get("/api/changes").json()
    seqs = [c["seq"] for c in everything["changes"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [(c["kind"], c["child_id"], c["request_id"]) for c in everything["changes"]] == [
        ("child_created", a, None),
        ("child_created", b, None),
        ("stepdown_requested", a, rid),
        ("record_closed", b, None),
        ("record_reopened", b, None),
    ]
    assert everything["last_seq"] == seqs[-1]
    assert everything["has_more"] is False

    page = client.get("/api/changes", params={"after": 0, "limit": 2}).json()
    assert [c["seq"] for c in page["changes"]] == seqs[:2]
    assert page["has_more"] is True
    rest = client.get("/api/changes", params={"after": page["last_seq"]}).json()
    assert [c["seq"] for c in rest["changes"]] == seqs[2:]

    tail = client.get("/api/changes", params={"after": seqs[-1]}).json()
    assert tail == {"changes": [], "last_seq": seqs[-1], "has_more": False}
    assert client.get("/api/changes", params={"limit": 1001}).status_code == 422
    assert client.get("/api/changes", params={"after": -1}).status_code == 422


def test_records_and_feed_persist_across_a_restart(db_path: Path) -> None:
    """A restarted server on the same db file keeps records, requests and the feed."""
    first = start(db_path)
    try:
        with httpx.Client(base_url=first.url, headers=AUTH, timeout=10) as c:
            cid = new_child(c)
            rid = c.post(f"/api/children/{cid}/stepdown-requests", json=STEPDOWN).json()["request_id"]
            cursor = c.get("/api/changes").json()["last_seq"]
    finally:
        first.stop()
    assert not first.running

    second = start(db_path)
    try:
        with httpx.Client(base_url=second.url, headers=AUTH, timeout=10) as c:
            assert c.get(f"/api/children/{cid}").json()["given_name"] == "Testa"
            assert c.get(f"/api/stepdown-requests/{rid}").json()["status"] == "pending"
            assert c.get("/api/changes", params={"after": cursor}).json()["changes"] == []
            c.post(f"/api/children/{cid}/close", json={"reason": "Done", "closed_by": "SW"}).raise_for_status()
            resumed = c.get("/api/changes", params={"after": cursor}).json()["changes"]
            assert [(x["kind"], x["seq"] > cursor) for x in resumed] == [("record_closed", True)]
            assert new_child(c) != cid
    finally:
        second.stop()


def test_fault_503_for_two_calls_then_ok_with_retry_after(client: httpx.Client) -> None:
    """An injected 503 x2 answers the next two calls with Retry-After, then recovers."""
    cid = new_child(client)
    r = client.post("/_sandbox/faults", json={"status": 503, "count": 2, "retry_after": 7})
    assert r.status_code == 201
    assert r.json()["remaining"] == 2
    for _ in range(2):
        r = client.get(f"/api/children/{cid}")
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "7"
        assert r.json() == {"error": "injected_fault", "status": 503}
    assert client.get(f"/api/children/{cid}").status_code == 200
    assert client.get("/_sandbox/faults").json() == {"faults": []}


def test_fault_path_prefix_seconds_delay_and_clear(client: httpx.Client) -> None:
    """Faults honour path_prefix, seconds and delay_ms, skip /_sandbox, and DELETE clears."""
    cid = new_child(client)
    client.post("/_sandbox/faults", json={"status": 500, "path_prefix": "/api/changes"}).raise_for_status()
    assert client.get("/api/changes").status_code == 500
    assert client.get(f"/api/children/{cid}").status_code == 200
    listed = client.get("/_sandbox/faults").json()["faults"]
    assert len(listed) == 1 and listed[0]["path_prefix"] == "/api/changes"
    assert client.delete("/_sandbox/faults").json() == {"cleared": 1}
    assert client.get("/api/changes").status_code == 200

    client.post("/_sandbox/faults", json={"status": 502, "seconds": 1.0}).raise_for_status()
    assert client.get(f"/api/children/{cid}").status_code == 502
    assert client.get("/_sandbox/faults").status_code == 200  # never faulted
    time.sleep(1.1)
    assert client.get(f"/api/children/{cid}").status_code == 200

    client.post("/_sandbox/faults", json={"status": None, "delay_ms": 300, "count": 1}).raise_for_status()
    started = time.monotonic()
    assert client.get(f"/api/children/{cid}").status_code == 200
    assert time.monotonic() - started >= 0.3

    bad = client.post("/_sandbox/faults", json={"status": None, "delay_ms": 0})
    assert bad.status_code == 422
    bad = client.post("/_sandbox/faults", json={"status": 503, "colour": "red"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "colour"
