"""A TED step-down starts from TED: its request feed -> TedPublisher -> the real broker -> the router under the
shipped Barnsley protocol -> the early-help team mailbox (a real STARTTLS SMTP server) -> TED closed or kept open."""

from __future__ import annotations

import asyncio
import email
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from operator import itemgetter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from pydantic import SecretStr
from typer.testing import CliRunner

from casebridge.cli import app as cli_app
from connectors.mailbox import MailboxConnector, MailboxSettings
from connectors.ted import TedConnector, TedPublisher, transfer_id_for
from contracts import CaseSystem, Council, Person, Purpose, TransferEvent, TransferMessage
from mappings import load_protocol
from router import Settings, Topics, build_router
from router.closures import AllocationNotPending, record_allocation
from router.deadletters import replayed_ids
from router.lifecycle import Lifecycle
from sandboxes import ServerHandle, create_ted_app, serve
from tests.conftest import free_port
from tests.support import count_type, events_of, read
from tests.test_connector_e2e_other_systems import PASSWORD, USER, Inbox, _auth

TOKEN = "ted-feed-token"
WORKER = Person(name="Alex Placeholder", role="Family Support Worker", organisation="Example Family Centre")
EARLY_HELP = "earlyhelp@barnsley.example"
REQUEST = {
    "reason_code": "SD-EHS",
    "purpose": "needs met at early help level with a lead professional (synthetic)",
    "to_level": "early-help",
    "decided_by": {"name": "Morgan Testmanager", "role": "Team Manager"},
    "decided_on": "2026-10-30",
    "rationale": "Risks reduced; early help can meet the needs (synthetic).",
    "lead_professional": {"name": "Quinn Placeholder", "organisation": "Example Primary School"},
    "consent": {
        "given_by": "Parent (synthetic)",
        "given_on": "2026-10-28",
        "scope": ["referral", "information-sharing"],
        "signed": True,
    },
    "documents": [
        {"type": "closure-summary", "content": "Closing assessment summary (synthetic)."},
        {"type": "plan", "content": "Step-down plan (synthetic)."},
        {"type": "consent-form", "content": "Consent (synthetic)."},
    ],
    "requested_by": "Social worker (synthetic)",
}


@dataclass
class World:
    inbox: Inbox
    mailbox: MailboxConnector
    ted: TedConnector
    ted_url: str
    http: httpx.Client


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve(create_ted_app(tmp_path / "ted.db", TOKEN), "127.0.0.1", 0) as handle:
        yield handle


@pytest.fixture
async def world(tmp_path: Path, server: ServerHandle) -> AsyncIterator[World]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=_auth,
    )
    controller.start()
    settings = MailboxSettings(
        host="127.0.0.1",
        port=controller.port,
        username=USER,
        password=SecretStr(PASSWORD),
        sender="casebridge@council.example",
        ca_file=ca_file,
        mailboxes={"barnsley:step-down:early-help": EARLY_HELP},
        ledger=tmp_path / "mail-ledger.db",
    )
    try:
        async with MailboxConnector(settings) as mailbox, TedConnector(server.url, SecretStr(TOKEN)) as ted:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                yield World(inbox, mailbox, ted, server.url, http)
    finally:
        controller.stop()


def _request(w: World, case: dict[str, Any] | None = None, **changes: Any) -> tuple[str, str]:
    """A TED case and its step-down request: (case id, request id)."""
    body = {"given_name": "Robin", "family_name": "Exampleton", "date_of_birth": "2016-04-09", **(case or {})}
    case_id = w.http.post("/api/cases", json=body).raise_for_status().json()["id"]
    r = w.http.post(f"/api/cases/{case_id}/stepdown-requests", json={**REQUEST, **changes}).raise_for_status()
    return str(case_id), str(r.json()["request_id"])


def _kinds(events: list[TransferEvent], transfer_id: str) -> list[str]:
    return [e.event_type for e in events if e.transfer_id == transfer_id]


async def test_ba15_ba05_ba13_ted_step_down_requests_start_from_teds_feed_on_the_real_broker(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, world: World
) -> None:
    """TED's request feed drives the Barnsley step-down: mailed, then TED closed (BA-15); coded "monitoring"
    held by the protocol (BA-5); a disabled child with a direct payment kept open on TED, which shows why (BA-13)."""
    w = world
    good_case, good = _request(w)
    held_case, held = _request(w, reason_code="SD-MON", purpose="the school will keep in touch (synthetic)")
    kept_case, kept = _request(w, case={"disabled": True, "direct_payment": True, "team": "DCT"})
    ids = {
        name: transfer_id_for(Council.BARNSLEY, ref) for name, ref in (("good", good), ("held", held), ("kept", kept))
    }

    topics = Topics(topic_prefix)
    publisher = TedPublisher(
        TedConnector(w.ted_url, SecretStr(TOKEN)), kafka_bootstrap, topics.transfers, topics.dead_letter, tmp_path / "c"
    )
    await publisher.start()
    try:
        assert 3 == await publisher.poll_once()
        assert 0 == await publisher.poll_once()  # the cursor moved past the three requests
    finally:
        await publisher.stop()
    published = {
        t.transfer_id: t
        for t in (
            TransferMessage.model_validate_json(r.value or b"")
            for r in await read(kafka_bootstrap, topics.transfers, lambda r: len(r) >= 3, timeout=30)
        )
    }
    assert (Purpose.SUPPORT, Purpose.MONITORING) == (
        published[ids["good"]].purpose_code,
        published[ids["held"]].purpose_code,
    )

    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=f"{topic_prefix}-r")
    router = build_router(
        settings,
        {CaseSystem.MAILBOX: w.mailbox},
        {CaseSystem.TED: w.ted},
        {Council.BARNSLEY: load_protocol("barnsley")},
    )
    task = asyncio.create_task(router.run_until_stopped())
    try:

        def finished(records: list[Any]) -> bool:
            ends = ("source-closed", "source-kept-open", "dead-lettered")
            return {e.transfer_id for e in events_of(records) if e.event_type in ends} >= set(ids.values())

        events = events_of(await read(kafka_bootstrap, topics.events, finished, timeout=90))
    finally:
        router.stopped.set()
        await task

    # BA-15: the mail went (delivered, acknowledged) before TED closed; TED records the sent step-down first
    kinds = _kinds(events, ids["good"])
    assert kinds.index("delivered") < kinds.index("acknowledged") < kinds.index("source-closed")
    case = w.http.get(f"/api/cases/{good_case}").json()
    [sent] = case["stepdowns"]
    assert ("closed", ids["good"], "mailbox") == (case["record_state"], case["closure_transfer_id"], sent["sent_via"])
    assert datetime.fromisoformat(sent["sent_at"]) <= datetime.fromisoformat(case["closed_at"])

    # BA-5: the coded reason is refused by the protocol (not by TED, not by the connector): held, nothing mailed
    assert "delivered" not in _kinds(events, ids["held"])
    [held_event] = [e for e in events if e.transfer_id == ids["held"] and e.event_type == "held"]
    assert ["BA-5"] == [v.rule_id for v in held_event.violations]  # type: ignore[union-attr]
    case = w.http.get(f"/api/cases/{held_case}").json()
    assert ("open", []) == (case["record_state"], case["stepdowns"])

    # BA-13: mailed, then kept open; TED's keep-open shows why
    kinds = _kinds(events, ids["kept"])
    assert kinds.index("acknowledged") < kinds.index("source-kept-open") and "source-closed" not in kinds
    case = w.http.get(f"/api/cases/{kept_case}").json()
    assert ("open", "BA-13", ids["kept"]) == (
        case["record_state"],
        case["kept_open_rule"],
        case["kept_open_transfer_id"],
    )
    assert [ids["kept"]] == [s["transfer_id"] for s in case["stepdowns"]]

    mailed = []
    for recipients, raw in w.inbox.messages:
        message = email.message_from_bytes(raw, policy=default_policy)
        assert isinstance(message, EmailMessage) and [EARLY_HELP] == recipients
        mailed.append(message["X-Casebridge-Transfer-Id"])
    assert sorted([ids["good"], ids["kept"]]) == sorted(mailed)


async def test_g3_a_ted_request_the_contract_refuses_is_dead_lettered_at_the_map_stage_naming_the_field(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, world: World
) -> None:
    """G3: a request TED accepts but the contract does not (consent with no scope) is kept as a dead letter with the
    field and the rule, no personal data in the reason; the cursor moves on and the next request is published."""
    w = world
    _request(w, consent={**REQUEST["consent"], "scope": []})
    _, fine = _request(w)
    topics = Topics(topic_prefix)
    publisher = TedPublisher(
        TedConnector(w.ted_url, SecretStr(TOKEN)), kafka_bootstrap, topics.transfers, topics.dead_letter, tmp_path / "c"
    )
    await publisher.start()
    try:
        assert 2 == await publisher.poll_once()
    finally:
        await publisher.stop()
    [dead] = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 1, timeout=30)
    [sent] = await read(kafka_bootstrap, topics.transfers, lambda r: len(r) >= 1, timeout=30)
    headers = {k: bytes(v).decode() for k, v in dead.headers}
    assert ("map", "ContractViolation") == (headers["casebridge.dlq.stage"], headers["casebridge.dlq.error.class"])
    assert "consent.scope" in headers["casebridge.dlq.error.message"]
    assert "Exampleton" not in headers["casebridge.dlq.error.message"]
    assert transfer_id_for(Council.BARNSLEY, fine) == TransferMessage.model_validate_json(sent.value or b"").transfer_id


async def test_ba09_ba15_documents_go_once_an_operator_records_the_allocated_worker_then_ted_closes(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, world: World
) -> None:
    """BA-9: no lead professional: a targeted-support request is mailed without documents and TED stays open;
    nothing closes until an operator records the allocated family support worker (``casebridge allocate``);
    then the consent, closing summary and plan are mailed to the early-help mailbox, and only then does TED
    record the step-down as sent (the worker as lead professional) and close (BA-15)."""
    w = world
    case_id, ref = _request(w, lead_professional=None)
    tid = transfer_id_for(Council.BARNSLEY, ref)
    topics = Topics(topic_prefix)
    publisher = TedPublisher(
        TedConnector(w.ted_url, SecretStr(TOKEN)), kafka_bootstrap, topics.transfers, topics.dead_letter, tmp_path / "c"
    )
    await publisher.start()
    try:
        assert 1 == await publisher.poll_once()
    finally:
        await publisher.stop()
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=f"{topic_prefix}-r")
    router = build_router(
        settings,
        {CaseSystem.MAILBOX: w.mailbox},
        {CaseSystem.TED: w.ted},
        {Council.BARNSLEY: load_protocol("barnsley")},
    )
    task = asyncio.create_task(router.run_until_stopped())  # the router closes the connectors when it stops
    lifecycle = Lifecycle(settings, {CaseSystem.TED: w.ted}, {CaseSystem.MAILBOX: w.mailbox})
    scheduler = lifecycle.closures
    try:
        kept = events_of(await read(kafka_bootstrap, topics.events, count_type("source-kept-open", 1), timeout=60))
        assert ["BA-9"] == next(e for e in kept if e.event_type == "source-kept-open").rule_ids  # type: ignore[union-attr]
        await lifecycle.start()
        assert tid in scheduler.pending and 0 == sum([await scheduler.poll_once() for _ in range(3)])
        assert "open" == w.http.get(f"/api/cases/{case_id}").json()["record_state"]
        with pytest.raises(AllocationNotPending, match="transfer_id"):
            await record_allocation(settings, "barnsley-ted-unknown", WORKER, "ops-tester")
        # the operator's command: refused without an operator (nothing written), then recorded and audited
        where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix]
        allocate = ["allocate", tid, "--worker", WORKER.name, "--organisation", str(WORKER.organisation), *where]
        refused = await asyncio.to_thread(CliRunner().invoke, cli_app, allocate)
        assert (2, True) == (refused.exit_code, "--operator must name who records the allocation" in refused.output)
        assert 0 == sum([await scheduler.poll_once() for _ in range(3)])  # still waiting for the allocation
        recorded = await asyncio.to_thread(CliRunner().invoke, cli_app, [*allocate, "--operator", "ops-tester"])
        said = recorded.stdout.strip().splitlines()[-1]
        assert (0, f"recorded: {tid} (BA-9)") == (recorded.exit_code, said.split(";")[0])
        closed = 0
        for _ in range(30):
            closed += await scheduler.poll_once()
            if closed:
                break
        assert 1 == closed
        assert 0 == sum([await scheduler.poll_once() for _ in range(3)])  # once
    finally:
        await lifecycle.stop()
        router.stopped.set()
        await task

    [audit] = await read(kafka_bootstrap, topics.audit, lambda records: len(records) >= 1, timeout=30)
    assert audit.key == f"allocation/{tid}".encode() and WORKER.name.encode() not in (audit.value or b"")
    assert ("ops-tester", tid, "BA-9", WORKER.organisation) == itemgetter(
        "operator", "transfer_id", "rule_id", "organisation"
    )(json.loads(audit.value or b""))
    assert set() == await replayed_ids(kafka_bootstrap, topics)  # an allocation is not a replayed dead letter
    case = w.http.get(f"/api/cases/{case_id}").json()
    [sent] = case["stepdowns"]
    assert ("closed", tid, "mailbox") == (case["record_state"], case["closure_transfer_id"], sent["sent_via"])
    assert (WORKER.name, WORKER.organisation) == (
        sent["lead_professional"]["name"],
        sent["lead_professional"]["organisation"],
    )
    assert datetime.fromisoformat(sent["sent_at"]) <= datetime.fromisoformat(case["closed_at"])
    mails = {}
    for _, raw in w.inbox.messages:
        message = email.message_from_bytes(raw, policy=default_policy)
        assert isinstance(message, EmailMessage)
        mails[message["X-Casebridge-Transfer-Id"]] = message
    assert [tid, f"{tid}-documents"] == sorted(mails)
    assert [] == list(mails[tid].iter_attachments())  # BA-9 / G4: the first request carries no documents
    attached = sorted(a.get_filename() or "" for a in mails[f"{tid}-documents"].iter_attachments())
    assert 3 == len(attached), attached
    events = events_of(await read(kafka_bootstrap, topics.events, count_type("source-closed", 1), timeout=30))
    kinds = _kinds(events, tid)
    assert kinds.index("allocated") < kinds.index("milestone") < kinds.index("source-closed")
    [closed_event] = [e for e in events if e.transfer_id == tid and e.event_type == "source-closed"]
    assert ["BA-9"] == closed_event.rule_ids  # type: ignore[union-attr]
    assert (
        WORKER.name
        not in b"".join(
            r.value or b"" for r in await read(kafka_bootstrap, topics.events, lambda r: False, timeout=3)
        ).decode()
    )
