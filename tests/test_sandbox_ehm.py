"""The EHM sandbox over real HTTP: staff directory, Step-Down tray, allocations, faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxes import ServerHandle, create_ehm_app, serve

TOKEN = "ehm-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tray_body(**overrides: Any) -> dict[str, Any]:
    """A synthetic Step-Down tray item (invented names, 999-range NHS number)."""
    body: dict[str, Any] = {
        "child": {
            "given_name": "Testa",
            "family_name": "Sandboxson",
            "date_of_birth": "2015-04-01",
            "lcs_id": "LCS-1",
            "nhs_number": "9990000018",
            "locality": "North",
        },
        "assigned_to": {
            "id": "STAFF-SL-N1",
            "name": "Avery Support-North",
            "role": "support_leader",
        },
        "meeting_notes": "Step-down meeting held; family agree.",
        "plan": "Family support plan v1",
        "support_leader": "Avery Support-North",
        "family_support_worker": None,
        "source_reference": "SDR-1",
        "received_from": "casebridge",
    }
    body.update(overrides)
    return body


def start(db: Path) -> ServerHandle:
    return serve(create_ehm_app(db, TOKEN), "127.0.0.1", 0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ehm.sqlite3"


@pytest.fixture
def server(db_path: Path) -> Iterator[ServerHandle]:
    handle = start(db_path)
    yield handle
    handle.stop()


@pytest.fixture
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        yield c


def test_calls_without_or_with_a_wrong_token_are_refused_401(server: ServerHandle) -> None:
    """API and faults endpoints answer 401 with a JSON error unless the token is right."""
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        assert anon.get("/api/localities/North/staff").status_code == 401
        r = anon.put("/api/stepdown-tray/TR-1", json=tray_body())
        assert r.status_code == 401
        assert r.json() == {"error": "unauthorized", "reason": "missing_bearer_token"}
        r = anon.get("/_sandbox/faults", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert r.json()["reason"] == "invalid_bearer_token"
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        assert c.get("/api/stepdown-tray").json() == {"items": []}


def test_localities_are_seeded_with_a_staff_directory(client: httpx.Client) -> None:
    """North, East and South have a Support Leader (not away) and a team manager."""
    assert client.get("/api/localities").json() == {"localities": ["East", "North", "South"]}
    for locality in ("North", "East", "South"):
        staff = client.get(f"/api/localities/{locality}/staff").json()
        assert staff["locality"] == locality
        assert staff["support_leader"]["away"] is False
        assert locality in staff["support_leader"]["name"]
        assert set(staff["team_manager"]) == {"id", "name"}
    r = client.get("/api/localities/Atlantis/staff")
    assert r.status_code == 404
    assert r.json()["error"] == "locality_not_found"


def test_support_leader_away_toggle_persists(db_path: Path) -> None:
    """Marking a Support Leader away shows in the directory and survives a restart."""
    first = start(db_path)
    try:
        with httpx.Client(base_url=first.url, headers=AUTH, timeout=10) as c:
            r = c.put("/api/localities/East/support-leader/away", json={"away": True})
            assert r.status_code == 200
            assert r.json()["support_leader"]["away"] is True
            north = c.get("/api/localities/North/staff").json()
            assert north["support_leader"]["away"] is False
            bad = c.put("/api/localities/East/support-leader/away", json={"away": "x"})
            assert bad.status_code == 422
            missing = c.put("/api/localities/Nowhere/support-leader/away", json={"away": True})
            assert missing.status_code == 404
    finally:
        first.stop()
    second = start(db_path)
    try:
        with httpx.Client(base_url=second.url, headers=AUTH, timeout=10) as c:
            east = c.get("/api/localities/East/staff").json()
            assert east["support_leader"]["away"] is True
            r = c.put("/api/localities/East/support-leader/away", json={"away": False})
            assert r.json()["support_leader"]["away"] is False
    finally:
        second.stop()


def test_tray_is_idempotent_on_transfer_id(client: httpx.Client) -> None:
    """The same transfer put in the tray twice is one item: 201 created, then 200."""
    first = client.put("/api/stepdown-tray/TR-100", json=tray_body())
    assert first.status_code == 201
    assert first.json()["created"] is True
    assert first.json()["status"] == "in_tray"
    assert first.json()["tray_item_id"].startswith("TRAY-")
    again = client.put("/api/stepdown-tray/TR-100", json=tray_body())
    assert again.status_code == 200
    assert again.json() == {**first.json(), "created": False}
    items = client.get("/api/stepdown-tray").json()["items"]
    assert [i["transfer_id"] for i in items] == ["TR-100"]
    item = client.get("/api/stepdown-tray/TR-100").json()
    assert item["tray_item_id"] == first.json()["tray_item_id"]
    assert item["meeting_notes"] == "Step-down meeting held; family agree."
    assert item["episode_id"] is None
    assert client.get("/api/stepdown-tray/TR-404").status_code == 404


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"meeting_notes": None}, "meeting_notes"),
        ({"meeting_notes": "   "}, "meeting_notes"),
        ({"plan": ""}, "plan"),
    ],
)
def test_ns08_tray_refuses_item_without_notes_or_plan(client: httpx.Client, patch: dict[str, Any], field: str) -> None:
    """NS-8: an item without meeting notes or plan is refused 422 naming the field."""
    r = client.put("/api/stepdown-tray/TR-8", json=tray_body(**patch))
    assert r.status_code == 422
    body = r.json()
    assert body["rule"] == "NS-8"
    assert field in [d["field"] for d in body["detail"]]
    assert client.get("/api/stepdown-tray").json() == {"items": []}


def test_ns08_tray_refuses_item_with_notes_and_plan_left_out(client: httpx.Client) -> None:
    """NS-8: a body that omits meeting_notes and plan names both fields in the 422."""
    body = tray_body()
    del body["meeting_notes"], body["plan"]
    r = client.put("/api/stepdown-tray/TR-8", json=body)
    assert r.status_code == 422
    assert {d["field"] for d in r.json()["detail"]} == {"meeting_notes", "plan"}
    assert r.json()["rule"] == "NS-8"


def test_other_bad_tray_fields_are_422_without_ns08(client: httpx.Client) -> None:
    """An unknown or malformed tray field is a 422 naming it, not tagged NS-8."""
    r = client.put("/api/stepdown-tray/TR-9", json=tray_body(extra_field=1))
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "extra_field"
    assert "rule" not in r.json()
    child = {**tray_body()["child"], "date_of_birth": "31/02/2015"}
    r = client.put("/api/stepdown-tray/TR-9", json=tray_body(child=child))
    assert r.json()["detail"][0]["field"] == "child.date_of_birth"


def swindon_tray_body(**overrides: Any) -> dict[str, Any]:
    """A Swindon 2026 tray item as casebridge delivers it: assessment and plan, the Lead Practitioner,
    no meeting notes, no locality, no request id (the contract and SW26-6 / SW26-7 ask for none)."""
    body = tray_body(
        council="swindon",
        assigned_to={"id": "LEAD-PRACTITIONER", "name": "Jo Leadpractitioner", "role": "lead-professional"},
        assessment="Strengths, risk and need; outcomes achieved (synthetic).",
        plan="Proposed early intervention plan (synthetic).",
        lead_professional="Jo Leadpractitioner",
        support_leader=None,
    )
    del body["meeting_notes"], body["source_reference"], body["child"]["locality"]
    body.update(overrides)
    return body


def test_ns08_only_for_north_somerset_sw26_06_swindon_item_without_notes_or_locality_is_accepted(
    client: httpx.Client,
) -> None:
    """NS-8 is North Somerset's: a Swindon item with assessment and plan but no meeting notes, locality
    or request id is taken into the tray as it came; a North Somerset one without a plan is still refused."""
    r = client.put("/api/stepdown-tray/SW-1", json=swindon_tray_body())
    assert r.status_code == 201, r.text
    item = client.get("/api/stepdown-tray/SW-1").json()
    assert ("swindon", "in_tray") == (item["council"], item["status"])
    assert (None, None, None) == (item["meeting_notes"], item["child"]["locality"], item["source_reference"])
    assert item["assessment"].startswith("Strengths, risk and need")
    assert ("lead-professional", "Jo Leadpractitioner") == (item["assigned_to"]["role"], item["lead_professional"])
    # blank notes from another council are absent notes, not an NS-8 refusal
    r = client.put("/api/stepdown-tray/SW-2", json=swindon_tray_body(meeting_notes="   ", plan=None))
    assert r.status_code == 201, r.text
    assert client.get("/api/stepdown-tray/SW-2").json()["meeting_notes"] is None

    for council in ({"council": "north-somerset"}, {}):  # an item naming no council is North Somerset's
        body = {**tray_body(plan=None), **council}
        r = client.put("/api/stepdown-tray/NS-1", json=body)
        assert r.status_code == 422
        assert "NS-8" == r.json()["rule"]
        assert ["plan"] == [d["field"] for d in r.json()["detail"]]
    assert {"SW-1", "SW-2"} == {i["transfer_id"] for i in client.get("/api/stepdown-tray").json()["items"]}


def test_allocation_opens_an_episode_and_feeds_allocations(client: httpx.Client) -> None:
    """Allocating a tray item opens an EHM-EP episode and appends to the allocation feed."""
    for tid in ("TR-A", "TR-B", "TR-C"):
        client.put(f"/api/stepdown-tray/{tid}", json=tray_body()).raise_for_status()
    assert client.get("/api/allocations").json() == {
        "allocations": [],
        "last_seq": 0,
        "has_more": False,
    }
    r = client.post("/api/stepdown-tray/TR-B/allocate", json={"family_support_worker": "FSW-1"})
    assert r.status_code == 200
    item = r.json()
    assert item["status"] == "allocated"
    assert item["allocated_to"] == "FSW-1"
    episode_id = item["episode_id"]
    assert episode_id.startswith("EHM-EP-")
    again = client.post("/api/stepdown-tray/TR-B/allocate", json={"family_support_worker": "FSW-1"})
    assert again.status_code == 200 and again.json() == item
    other = client.post("/api/stepdown-tray/TR-B/allocate", json={"family_support_worker": "FSW-2"})
    assert other.status_code == 409

    episode = client.get(f"/api/episodes/{episode_id}").json()
    assert episode["status"] == "open"
    assert episode["child"]["lcs_id"] == "LCS-1"
    assert episode["transfer_id"] == "TR-B"

    feed = client.get("/api/allocations").json()
    assert len(feed["allocations"]) == 1
    entry = feed["allocations"][0]
    assert set(entry) == {"seq", "transfer_id", "tray_item_id", "episode_id", "at"}
    assert (entry["transfer_id"], entry["episode_id"]) == ("TR-B", episode_id)
    cursor = feed["last_seq"]

    client.post("/api/stepdown-tray/TR-A/allocate", json={"family_support_worker": "FSW-3"}).raise_for_status()
    resumed = client.get("/api/allocations", params={"after": cursor}).json()
    assert [a["transfer_id"] for a in resumed["allocations"]] == ["TR-A"]
    assert resumed["allocations"][0]["seq"] > cursor
    waiting = client.get("/api/stepdown-tray", params={"status": "in_tray"}).json()
    assert [i["transfer_id"] for i in waiting["items"]] == ["TR-C"]


def test_case_notes_on_an_episode_and_closure(client: httpx.Client) -> None:
    """Case notes are added 201 to an open episode; a closed episode refuses them 409."""
    client.put("/api/stepdown-tray/TR-N", json=tray_body()).raise_for_status()
    ep = client.post("/api/stepdown-tray/TR-N/allocate", json={"family_support_worker": "FSW-1"}).json()["episode_id"]
    r = client.post(f"/api/episodes/{ep}/case-notes", json={"text": "Home visit done.", "author": "FSW-1"})
    assert r.status_code == 201
    assert r.json()["note_id"].startswith("NOTE-")
    assert r.json()["episode_id"] == ep
    notes = client.get(f"/api/episodes/{ep}").json()["case_notes"]
    assert [n["text"] for n in notes] == ["Home visit done."]
    closed = client.post(f"/api/episodes/{ep}/close", json={"closed_by": "TM-1", "reason": "Stepped up"})
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    r = client.post(f"/api/episodes/{ep}/case-notes", json={"text": "x", "author": "FSW-1"})
    assert r.status_code == 409
    assert client.get("/api/episodes/EHM-EP-999").status_code == 404


def test_tray_and_feed_persist_across_a_restart(db_path: Path) -> None:
    """A restarted EHM on the same db file keeps tray items, episodes and the feed."""
    first = start(db_path)
    try:
        with httpx.Client(base_url=first.url, headers=AUTH, timeout=10) as c:
            tray_id = c.put("/api/stepdown-tray/TR-P", json=tray_body()).json()["tray_item_id"]
            c.post("/api/stepdown-tray/TR-P/allocate", json={"family_support_worker": "FSW-1"}).raise_for_status()
    finally:
        first.stop()
    second = start(db_path)
    try:
        with httpx.Client(base_url=second.url, headers=AUTH, timeout=10) as c:
            again = c.put("/api/stepdown-tray/TR-P", json=tray_body())
            assert again.status_code == 200
            assert again.json()["tray_item_id"] == tray_id
            assert again.json()["status"] == "allocated"
            assert len(c.get("/api/allocations").json()["allocations"]) == 1
    finally:
        second.stop()


def test_fault_503_for_two_calls_then_ok_with_retry_after(client: httpx.Client) -> None:
    """An injected 503 x2 on the tray path answers twice with Retry-After, then recovers."""
    r = client.post(
        "/_sandbox/faults",
        json={
            "status": 503,
            "count": 2,
            "path_prefix": "/api/stepdown-tray",
            "retry_after": 3,
            "delay_ms": 0,
            "seconds": None,
        },
    )
    assert r.status_code == 201
    assert client.get("/api/localities/North/staff").status_code == 200
    for _ in range(2):
        r = client.put("/api/stepdown-tray/TR-F", json=tray_body())
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "3"
    r = client.put("/api/stepdown-tray/TR-F", json=tray_body())
    assert r.status_code == 201
    assert client.get("/_sandbox/faults").json() == {"faults": []}
