"""The sandbox systems' step-up side: LCS Front Door contacts and EHM Step-Up requests, over HTTP."""

from __future__ import annotations

from typing import Any

from tests.support import Systems


def _contact(n: int, urgent: bool = False) -> dict[str, Any]:
    return {
        "child": {
            "given_name": "Robin",
            "family_name": f"Exampleton-{n}",
            "date_of_birth": "2016-04-09",
            "source_id": f"EHM-EP-{n}",
        },
        "stage": "contact",
        "urgent": urgent,
        "documents": {"step-up-form": "form (synthetic)", "case-notes": "notes (synthetic)"},
        "source_reference": f"EHM-EP-{n}",
        "received_from": "Liquidlogic EHM (via casebridge)",
    }


def test_lcs_contact_put_is_idempotent_per_transfer(systems: Systems) -> None:
    """The same step-up delivered twice is one contact (PUT keyed by transfer id)."""
    http = systems.lcs_client.http
    first = http.put("/api/contacts/t-1", json=_contact(1))
    again = http.put("/api/contacts/t-1", json=_contact(1))
    assert (201, 200) == (first.status_code, again.status_code)
    assert (True, False, first.json()["contact_id"]) == (
        first.json()["created"],
        again.json()["created"],
        again.json()["contact_id"],
    )
    assert 1 == len(systems.lcs_client.contacts())


def test_sw22_01_front_door_queue_lists_urgent_contacts_first(systems: Systems) -> None:
    """SW22-1: the Front Door's queue puts an urgent contact ahead of earlier routine ones."""
    http = systems.lcs_client.http
    for n, urgent in ((1, False), (2, False), (3, True)):
        http.put(f"/api/contacts/t-{n}", json=_contact(n, urgent)).raise_for_status()
    assert ["t-3", "t-1", "t-2"] == [c["transfer_id"] for c in systems.lcs_client.contacts()]


def test_ns09_ehm_step_up_request_feed_and_closed_episode_refused(systems: Systems) -> None:
    """NS-9: Step-Up requests are read from a resumable feed; a closed episode cannot be stepped up."""
    ehm = systems.ehm_client
    episode = ehm.open_episode()
    request = ehm.request_stepup(episode)
    feed = ehm.http.get("/api/stepup-requests", params={"after": 0}).json()
    assert ([request], episode) == ([r["request_id"] for r in feed["requests"]], feed["requests"][0]["episode_id"])
    assert [] == ehm.http.get("/api/stepup-requests", params={"after": feed["last_seq"]}).json()["requests"]
    ehm.http.post(
        f"/api/episodes/{episode}/close", json={"closed_by": "a manager", "reason": "ended"}
    ).raise_for_status()
    refused = ehm.http.post(
        f"/api/episodes/{episode}/stepup-requests", json={"to_level": "child_in_need", "requested_by": "x"}
    )
    assert 409 == refused.status_code


def test_ns12_case_note_and_close_are_idempotent_per_transfer(systems: Systems) -> None:
    """NS-12: the closing case note and the close, repeated for the same transfer, happen once."""
    ehm = systems.ehm_client
    episode = ehm.open_episode()
    note = {"text": "Stepped up: recording continues on LCS.", "author": "casebridge", "transfer_id": "t-9"}
    close = {"closed_by": "casebridge", "reason": "Stepped up", "transfer_id": "t-9"}
    for _ in range(2):
        ehm.http.post(f"/api/episodes/{episode}/case-notes", json=note).raise_for_status()
        ehm.http.post(f"/api/episodes/{episode}/close", json=close).raise_for_status()
    state = ehm.episode(episode)
    assert ("closed", "t-9", 1) == (state["status"], state["closure_transfer_id"], len(state["case_notes"]))
    other = ehm.http.post(f"/api/episodes/{episode}/close", json={**close, "transfer_id": "t-10"})
    assert 409 == other.status_code
