"""TED, Care Director and the team mailbox wired into the real router on the real broker, with a real SMTP server.

Swindon 2022's protocol here is a minimal test file, Barnsley's the shipped one (BA-5 is the
protocol's decision, not the TED connector's); what is proven is the connectors' part: the mail
goes out once over STARTTLS before the source record is touched (BA-15), a step-down the protocol
holds or the source refuses is dead-lettered naming its rule (BA-5, SW22-10).
"""

from __future__ import annotations

import asyncio
import email
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from connectors.care_director import CareDirectorConnector
from connectors.mailbox import MailboxConnector, MailboxSettings
from connectors.ted import TedConnector
from contracts import CaseSystem, Council, TransferMessage
from mappings import load_protocol
from router import Settings, Topics, build_router
from sandboxes import ServerHandle, create_care_director_app, create_ted_app, serve
from tests.conftest import free_port
from tests.support import events_of, example, produce, read

TOKEN = "other-systems-token"
USER, PASSWORD = "casebridge", "e2e-mail-secret"
PROTOCOL = """
id = "{council}-test"
council = "{council}"
seed = "test"

[[rule]]
id = "G1"
check = "consent"
message = "consent is missing"
fix = "record the family's consent"

[[rule]]
id = "G2"
check = "management-decision"
message = "the management decision is missing"
fix = "record the manager's decision"
"""


@dataclass
class Inbox:
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert session.ssl is not None
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.original_content or b"")))
        return "250 OK"


def _auth(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@dataclass
class World:
    inbox: Inbox
    mailbox: MailboxConnector
    ted: TedConnector
    cd: CareDirectorConnector
    ted_http: httpx.Client
    cd_http: httpx.Client


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    with (
        serve(create_ted_app(tmp_path / "ted.db", TOKEN), "127.0.0.1", 0) as ted,
        serve(create_care_director_app(tmp_path / "cd.db", TOKEN), "127.0.0.1", 0) as cd,
    ):
        yield ted, cd


@pytest.fixture
async def world(tmp_path: Path, servers: tuple[ServerHandle, ServerHandle]) -> AsyncIterator[World]:
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
        mailboxes={
            "barnsley:step-down:early-help": "earlyhelp@barnsley.example",
            "swindon-2022:step-down:early-help": "ehhub@swindon.example",
        },
        ledger=tmp_path / "mail-ledger.db",
    )
    ted_url, cd_url = servers[0].url, servers[1].url
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        MailboxConnector(settings) as mailbox,
        TedConnector(ted_url, SecretStr(TOKEN)) as ted,
        CareDirectorConnector(cd_url, SecretStr(TOKEN)) as cd,
    ):
        with httpx.Client(base_url=ted_url, headers=headers) as t, httpx.Client(base_url=cd_url, headers=headers) as c:
            yield World(inbox, mailbox, ted, cd, t, c)
    controller.stop()


def _protocols(tmp_path: Path) -> dict[Council, Any]:
    found = {Council.BARNSLEY: load_protocol(Council.BARNSLEY)}
    for council in (Council.SWINDON_2022,):
        path = tmp_path / f"{council.value}.toml"
        path.write_text(PROTOCOL.format(council=council.value))
        found[council] = load_protocol(path)
    return found


def _barnsley(w: World, n: int, **changes: Any) -> TransferMessage:
    body = {"given_name": "Robin", "family_name": "Exampleton", "date_of_birth": "2016-04-09"}
    case_id = w.ted_http.post("/api/cases", json=body).json()["id"]
    doc = example("barnsley.step-down.ted-eh-mailbox.json", transfer_id=f"ba-e2e-{n}", correlation_id=f"ba-e2e-{n}")
    doc["source_record"] = {**doc["source_record"], "record_id": case_id}
    doc["child"]["identifiers"] = [{"system": "ted", "id": case_id}]
    doc.update(changes)
    return TransferMessage.model_validate(doc)


def _swindon(w: World, n: int, **changes: Any) -> TransferMessage:
    body = {"given_name": "Robin", "family_name": "Exampleton", "date_of_birth": "2016-04-09"}
    person = w.cd_http.post("/api/persons", json=body).json()["id"]
    doc = example("swindon-2022.step-down.care-director-ehh.json", transfer_id=f"sw22-e2e-{n}")
    doc["source_record"] = {**doc["source_record"], "record_id": person}
    doc["child"]["identifiers"] = [{"system": "care-director", "id": person}]
    doc.update(changes)
    return TransferMessage.model_validate(doc)


def _get(client: httpx.Client, path: str) -> Any:
    return client.get(path).json()


async def test_ba15_ba05_sw22_10_step_downs_through_the_router_on_the_real_broker(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, world: World
) -> None:
    """Barnsley: mail then TED closed; "monitoring" never sent. Swindon: mail then closure record; no worker held."""
    w = world
    good_ba = _barnsley(w, 1)
    monitoring = _barnsley(w, 2, purpose="monitoring")
    good_sw = _swindon(w, 1)
    no_worker = _swindon(w, 2, professionals={})
    transfers = [good_ba, monitoring, good_sw, no_worker]

    topics = Topics(topic_prefix)
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=f"{topic_prefix}-r")
    router = build_router(
        settings,
        {CaseSystem.MAILBOX: w.mailbox},
        {CaseSystem.TED: w.ted, CaseSystem.CARE_DIRECTOR: w.cd},
        _protocols(tmp_path),
    )
    task = asyncio.create_task(router.run_until_stopped())
    try:
        await produce(
            kafka_bootstrap, topics.transfers, [(t.child_key.encode(), t.model_dump_json().encode()) for t in transfers]
        )

        def finished(records: list[Any]) -> bool:
            done = {e.transfer_id for e in events_of(records) if e.event_type in ("source-closed", "dead-lettered")}
            return done >= {t.transfer_id for t in transfers}

        events = events_of(await read(kafka_bootstrap, topics.events, finished, timeout=90))
        dead = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 2, timeout=30)
    finally:
        router.stopped.set()
        await task

    by_transfer: dict[str, list[str]] = {}
    for e in events:
        by_transfer.setdefault(e.transfer_id, []).append(e.event_type)
    # BA-15: delivered and acknowledged (the mail accepted) before the source record is closed
    for good in (good_ba, good_sw):
        kinds = by_transfer[good.transfer_id]
        assert kinds.index("delivered") < kinds.index("acknowledged") < kinds.index("source-closed")
    rules = {dict(d.headers)["casebridge.dlq.transfer.id"]: dict(d.headers)["casebridge.dlq.rule.ids"] for d in dead}
    assert {b"ba-e2e-2": b"BA-5", b"sw22-e2e-2": b"SW22-10"} == rules

    # three mails: the good Barnsley one and both Swindon ones (SW22-10 holds the closure, not the handover)
    recipients = sorted(r[0] for r, _ in w.inbox.messages)
    assert ["earlyhelp@barnsley.example", "ehhub@swindon.example", "ehhub@swindon.example"] == recipients
    sent_ids = set()
    for _, raw in w.inbox.messages:
        message = email.message_from_bytes(raw, policy=default_policy)
        assert isinstance(message, EmailMessage)
        sent_ids.add(message["X-Casebridge-Transfer-Id"])
    assert {good_ba.transfer_id, good_sw.transfer_id, no_worker.transfer_id} == sent_ids  # never the "monitoring" one

    assert "closed" == _get(w.ted_http, f"/api/cases/{good_ba.source_record.record_id}")["record_state"]
    held = _get(w.ted_http, f"/api/cases/{monitoring.source_record.record_id}")
    assert ("open", []) == (held["record_state"], held["stepdowns"])
    closure = _get(w.cd_http, f"/api/persons/{good_sw.source_record.record_id}")["closure"]
    assert ("Early Help Hub", "Casey Hubworker") == (closure["lead_service"], closure["lead_professional"]["name"])
    assert "open" == _get(w.cd_http, f"/api/persons/{no_worker.source_record.record_id}")["record_state"]
    assert json.loads(dead[0].value or b"{}")["transfer_id"] in {"ba-e2e-2", "sw22-e2e-2"}
