"""The TED connector against the real TED sandbox (HTTP, SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from connectors import Receipt, RuleRefused, TargetRefused, TargetUnavailable
from connectors.ted import STEP_UP_REASON, TedConnector
from contracts import CaseSystem, RecordState, TransferMessage
from mappings import Route, load_protocol
from sandboxes import ServerHandle, create_ted_app, serve
from tests.support import example

TOKEN = "ted-connector-token"
BARNSLEY = load_protocol("barnsley")
ROUTE = Route(role="default", locality=None)
SENT = Receipt(CaseSystem.MAILBOX, "casebridge-ref-1", created=True, acknowledged=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve(create_ted_app(tmp_path / "ted.sqlite3", TOKEN), "127.0.0.1", 0) as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        yield c


@pytest.fixture
async def ted(server: ServerHandle) -> AsyncIterator[TedConnector]:
    async with TedConnector(server.url, SecretStr(TOKEN)) as connector:
        yield connector


def get(client: httpx.Client, path: str) -> Any:
    """Read the sandbox directly (it serves on its own thread, so a blocking call is fine here)."""
    r = client.get(path)
    r.raise_for_status()
    return r.json()


def inject_503(client: httpx.Client) -> None:
    client.post("/_sandbox/faults", json={"status": 503, "count": 1}).raise_for_status()


def new_case(client: httpx.Client, **changes: Any) -> str:
    body = {"given_name": "Robin", "family_name": "Exampleton", "date_of_birth": "2016-04-09", **changes}
    r = client.post("/api/cases", json=body)
    r.raise_for_status()
    return str(r.json()["id"])


def step_down(client: httpx.Client, case: dict[str, Any] | None = None, **changes: Any) -> TransferMessage:
    """Barnsley's synthetic step-down, from a case created on TED."""
    case_id = new_case(client, **(case or {}))
    doc = example("barnsley.step-down.ted-eh-mailbox.json")
    doc["source_record"] = {**doc["source_record"], "record_id": case_id}
    doc["child"]["identifiers"] = [{"system": "ted", "id": case_id}]
    doc.update(changes)
    return TransferMessage.model_validate(doc)


def step_up(client: httpx.Client) -> TransferMessage:
    """Barnsley's step-up from an open EHA held on TED."""
    case_id = new_case(client)
    r = client.post(
        f"/api/cases/{case_id}/eha", json={"lead_professional": "FSW (synthetic)", "started_on": "2026-09-01"}
    )
    r.raise_for_status()
    doc = example("barnsley.step-down.ted-eh-mailbox.json", transfer_id="ba-up-1", purpose=None)
    doc["pathway"] = {
        "direction": "step-up",
        "from_level": "early-help",
        "to_level": "child-in-need-s17",
        "from_system": "ted",
        "to_system": "ted",
    }
    doc["source_record"] = {"system": "ted", "record_id": r.json()["eha_id"], "state": "open"}
    doc["documents"] = [{"type": "early-help-assessment", "content": "EHA and action plan (synthetic)."}]
    return TransferMessage.model_validate(doc)


async def test_ba15_case_closes_after_the_step_down_is_recorded_as_sent(
    ted: TedConnector, client: httpx.Client
) -> None:
    """close() records the sent step-down (channel, reference, lead professional) and only then closes; idempotent."""
    transfer = step_down(client)
    case_id = await ted.close(transfer, SENT)
    case = get(client, f"/api/cases/{case_id}")
    assert ("closed", transfer.transfer_id) == (case["record_state"], case["closure_transfer_id"])
    [sent] = case["stepdowns"]
    assert ("mailbox", "casebridge-ref-1") == (sent["sent_via"], sent["sent_reference"])
    assert {"name": "Quinn Placeholder", "organisation": "Example Primary School"} == sent["lead_professional"]
    assert case_id == await ted.close(transfer, SENT)
    state = await ted.state(transfer)
    assert (RecordState.CLOSED, transfer.transfer_id) == (state.state, state.closed_by_transfer)


async def test_ba15_close_without_an_acknowledged_receipt_is_refused(ted: TedConnector, client: httpx.Client) -> None:
    """A receipt the target has not acknowledged closes nothing and records nothing."""
    transfer = step_down(client)
    unacknowledged = Receipt(CaseSystem.MAILBOX, "casebridge-ref-1", created=True, acknowledged=False)
    with pytest.raises(RuleRefused) as refused:
        await ted.close(transfer, unacknowledged)
    assert ("BA-15",) == refused.value.rule_ids and not refused.value.retriable
    case = get(client, f"/api/cases/{transfer.source_record.record_id}")
    assert ("open", []) == (case["record_state"], case["stepdowns"])


async def test_ba13_keep_open_calls_teds_keep_open_so_ted_shows_why(ted: TedConnector, client: httpx.Client) -> None:
    """keep_open(BA-13) over HTTP: the step-down is recorded as sent and TED shows the case open to the DCT worker."""
    flags = {"disabled": True, "direct_payment": True}
    transfer = step_down(client, case={**flags, "team": "DCT"})
    transfer = transfer.model_copy(update={"child": transfer.child.model_copy(update=flags)})
    assert ["BA-13"] == BARNSLEY.keeps_open(transfer)  # the protocol decides; the connector only records it
    case_id = await ted.keep_open(transfer, SENT, ["BA-13"])
    case = get(client, f"/api/cases/{case_id}")
    kept = (case["record_state"], case["kept_open_rule"], case["kept_open_transfer_id"], case["kept_open_to"])
    assert ("open", "BA-13", transfer.transfer_id, "Disabled Children's Team family support worker") == kept
    assert [transfer.transfer_id] == [s["transfer_id"] for s in case["stepdowns"]]
    assert RecordState.OPEN == (await ted.state(transfer)).state
    assert case_id == await ted.keep_open(transfer, SENT, ["BA-13"])  # idempotent
    assert 1 == len(get(client, f"/api/cases/{case_id}")["stepdowns"])


async def test_ba13_ba09_keep_open_for_other_rules_records_nothing_on_ted(
    ted: TedConnector, client: httpx.Client
) -> None:
    """BA-9 (no lead professional yet) keeps the case open too, but TED has no place for it: nothing is written."""
    transfer = step_down(client, professionals={})
    assert None is await ted.keep_open(transfer, SENT, ["BA-9"])
    assert None is await ted.keep_open(transfer, SENT, ["BA-9", "BA-13"])
    case = get(client, f"/api/cases/{transfer.source_record.record_id}")
    assert ("open", None, []) == (case["record_state"], case["kept_open_rule"], case["stepdowns"])


async def test_ba13_ted_is_the_authority_on_the_direct_payment(ted: TedConnector, client: httpx.Client) -> None:
    """TED says direct payment but the protocol closes: TED refuses (409, BA-13). The reverse: keep-open refused."""
    flags = {"disabled": True, "direct_payment": True}
    ted_says = step_down(client, case=flags)
    with pytest.raises(TargetRefused) as refused:
        await ted.close(ted_says, SENT)
    assert (("BA-13",), 409) == (refused.value.rule_ids, refused.value.status)
    assert "open" == get(client, f"/api/cases/{ted_says.source_record.record_id}")["record_state"]

    transfer_says = step_down(client, transfer_id="ba-5002")
    transfer_says = transfer_says.model_copy(update={"child": transfer_says.child.model_copy(update=flags)})
    with pytest.raises(TargetRefused) as refused:
        await ted.keep_open(transfer_says, SENT, ["BA-13"])
    assert (("BA-13",), 422) == (refused.value.rule_ids, refused.value.status)
    case = get(client, f"/api/cases/{transfer_says.source_record.record_id}")
    assert ("open", None) == (case["record_state"], case["kept_open_rule"])


async def test_ba05_ted_connector_leaves_the_monitoring_decision_to_the_protocol(
    ted: TedConnector, client: httpx.Client
) -> None:
    """state() only reads TED: a "for monitoring" step-down is the protocol's to hold (BA-5), not a connector error."""
    transfer = step_down(client, purpose="Monitoring (note XJ-1)")
    assert RecordState.OPEN == (await ted.state(transfer)).state
    assert ["BA-5"] == [v.rule_id for v in BARNSLEY.check(transfer)]


async def test_ba05_step_down_not_decided_by_a_team_manager_is_refused_by_ted(
    ted: TedConnector, client: httpx.Client
) -> None:
    """TED's own refusal reaches the router as a TargetRefused naming BA-5."""
    transfer = step_down(client)
    decision = transfer.management_decision
    assert decision is not None
    worker = decision.decided_by.model_copy(update={"role": "Social Worker"})
    transfer = transfer.model_copy(update={"management_decision": decision.model_copy(update={"decided_by": worker})})
    with pytest.raises(TargetRefused) as refused:
        await ted.close(transfer, SENT)
    assert (("BA-5",), 422) == (refused.value.rule_ids, refused.value.status)
    assert "open" == get(client, f"/api/cases/{transfer.source_record.record_id}")["record_state"]


async def test_ba06_lead_professional_without_organisation_is_refused(ted: TedConnector, client: httpx.Client) -> None:
    """The step-down must name the lead professional's organisation."""
    transfer = step_down(client, professionals={"lead_professional": {"name": "Quinn Placeholder", "role": "LP"}})
    with pytest.raises(RuleRefused) as refused:
        await ted.close(transfer, SENT)
    assert ("BA-6",) == refused.value.rule_ids
    assert "professionals.lead_professional.organisation" in str(refused.value)


async def test_ba03_step_up_closes_the_open_eha_with_step_up_to_social_care(
    ted: TedConnector, client: httpx.Client
) -> None:
    """The open EHA TED holds closes with the reason "step up to social care", once."""
    transfer = step_up(client)
    assert RecordState.OPEN == (await ted.state(transfer)).state
    referral = await ted.deliver(transfer, ROUTE)
    confirmed = await ted.confirm(transfer)
    assert confirmed.acknowledged and referral.reference == confirmed.reference
    eha_id = await ted.close(transfer, confirmed)
    eha = get(client, f"/api/eha/{eha_id}")
    assert ("closed", STEP_UP_REASON, "step up to social care") == (
        eha["status"],
        eha["closure_reason"],
        STEP_UP_REASON,
    )
    assert eha_id == await ted.close(transfer, confirmed)
    state = await ted.state(transfer)
    assert (RecordState.CLOSED, transfer.transfer_id) == (state.state, state.closed_by_transfer)
    again = await ted.deliver(transfer, ROUTE)
    assert (True, False) == (referral.created, again.created)


async def test_ted_outage_is_transient(ted: TedConnector, client: httpx.Client) -> None:
    """A 503 from TED is a TargetUnavailable; nothing is half-closed."""
    transfer = step_down(client)
    inject_503(client)
    with pytest.raises(TargetUnavailable):
        await ted.close(transfer, SENT)
    assert "open" == get(client, f"/api/cases/{transfer.source_record.record_id}")["record_state"]
