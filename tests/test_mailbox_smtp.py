"""The secure team-mailbox connector against a real SMTP server (aiosmtpd) on 127.0.0.1 with STARTTLS."""

from __future__ import annotations

import email
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr
from structlog.testing import capture_logs

from connectors import PermanentError, TargetRefused, TargetUnavailable
from connectors.mailbox import InsecureChannel, MailboxConnector, MailboxSettings, mailbox_keys, message_id
from contracts import TransferMessage
from mappings import Route
from sandboxes import SmtpSandbox
from sandboxes.smtp import RCPT_HEADER
from tests.conftest import free_port
from tests.support import example

USER, PASSWORD = "casebridge", "mail-test-secret"
MAILBOXES = {
    "barnsley:step-down:early-help": "earlyhelp@barnsley.example",
    "swindon-2022:step-down:early-help": "ehhub@swindon.example",
    "swindon-2022:step-down:intensive-early-help": "fiss@swindon.example",
    "swindon-2022:step-up": "mash@swindon.example",
    "luton": "early-help@luton.example",
}
DEFAULT_ROUTE = Route(role="default", locality=None)
# Synthetic documents, one with non-ASCII text, to prove the bytes arrive unchanged.
DOCUMENTS = [
    {"type": "consent-form", "content": "Consent to share, signed 28/10 (synthetic)."},
    {
        "type": "closure-summary",
        "content": "Closing assessment summary: progress at school, café visits ✓ (synthetic).",
    },
    {"type": "plan", "content": "Step-down plan\n- weekly visits\n- TAF review in 6 weeks\n"},
]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool


@dataclass
class Handler:
    received: list[Received] = field(default_factory=list)
    auth_attempts: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(raw), session.ssl is not None)
        )
        return "250 Message accepted for delivery"


def _authenticator(handler: Handler) -> Any:
    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        handler.auth_attempts += 1
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    return check


@dataclass
class SmtpServer:
    handler: Handler
    port: int
    ca_file: Path


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _serve(handler: Handler, tls_context: ssl.SSLContext | None) -> Controller:
    kwargs: dict[str, Any] = {"auth_required": True, "authenticator": _authenticator(handler)}
    if tls_context is not None:
        kwargs.update(tls_context=tls_context, require_starttls=True)
    else:
        kwargs.update(auth_require_tls=True)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller


@pytest.fixture
def smtp(ca: trustme.CA, ca_file: Path) -> Iterator[SmtpServer]:
    """A real SMTP server on loopback that offers STARTTLS with a certificate from a test CA and requires AUTH."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    handler = Handler()
    controller = _serve(handler, context)
    yield SmtpServer(handler, controller.port, ca_file)
    controller.stop()


@pytest.fixture
def plain_smtp(ca_file: Path) -> Iterator[SmtpServer]:
    """A real SMTP server that does not offer STARTTLS."""
    handler = Handler()
    controller = _serve(handler, None)
    yield SmtpServer(handler, controller.port, ca_file)
    controller.stop()


def settings(server: SmtpServer, **changes: Any) -> MailboxSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "username": USER,
        "password": SecretStr(PASSWORD),
        "sender": "casebridge@council.example",
        "ca_file": server.ca_file,
        "timeout": 10,
        "mailboxes": MAILBOXES,
    }
    values.update(changes)
    return MailboxSettings(**values)


def barnsley(**changes: Any) -> TransferMessage:
    doc = example("barnsley.step-down.ted-eh-mailbox.json", documents=DOCUMENTS)
    doc.update(changes)
    return TransferMessage.model_validate(doc)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


async def test_ba07_g4_summary_and_documents_reach_the_team_mailbox_over_starttls(smtp: SmtpServer) -> None:
    """BA-7: consent, closing summary and plan arrive together, attached byte for byte, over STARTTLS."""
    transfer = barnsley()
    async with MailboxConnector(settings(smtp)) as mailbox:
        receipt = await mailbox.deliver(transfer, DEFAULT_ROUTE)
        confirmed = await mailbox.confirm(transfer)

    assert 1 == len(smtp.handler.received)
    got = smtp.handler.received[0]
    assert got.tls
    assert ["earlyhelp@barnsley.example"] == got.rcpt_tos
    message = parse(got.data)
    assert message_id("ba-5001", "council.example") == message["Message-ID"]
    assert "ba-5001" == message["X-Casebridge-Transfer-Id"]
    attachments = list(message.iter_attachments())
    sent = [d.content.encode("utf-8") for d in transfer.documents if d.content is not None]
    assert 3 == len(sent)
    assert sent == [a.get_payload(decode=True) for a in attachments]
    assert ["01-consent-form.txt", "02-closure-summary.txt", "03-plan.txt"] == [a.get_filename() for a in attachments]
    # G4: the subject carries no personal data; the body names the child but not their NHS number or UPN.
    assert "Robin" not in message["Subject"] and "Exampleton" not in message["Subject"]
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Robin Exampleton" in text and "2016-04-09" in text
    assert "Quinn Placeholder, Lead Professional, Example Primary School" in text
    assert transfer.child.nhs_number not in text and transfer.child.upn not in text
    assert receipt.created and confirmed.acknowledged and receipt.reference == confirmed.reference


async def test_mailbox_is_idempotent_per_transfer_across_restarts(smtp: SmtpServer, tmp_path: Path) -> None:
    """The same transfer delivered again, even by a restarted connector, sends no second mail."""
    transfer = barnsley()
    ledger = tmp_path / "mail-ledger.sqlite3"
    async with MailboxConnector(settings(smtp, ledger=ledger)) as mailbox:
        first = await mailbox.deliver(transfer, DEFAULT_ROUTE)
        again = await mailbox.deliver(transfer, DEFAULT_ROUTE)
    async with MailboxConnector(settings(smtp, ledger=ledger)) as restarted:
        after_restart = await restarted.deliver(transfer, DEFAULT_ROUTE)
        assert (await restarted.confirm(transfer)).acknowledged

    assert 1 == len(smtp.handler.received)
    assert (True, False, False) == (first.created, again.created, after_restart.created)
    assert first.reference == again.reference == after_restart.reference


async def test_concurrent_deliveries_send_one_mail_per_transfer(smtp: SmtpServer) -> None:
    """40 transfers, each delivered three times at once: 40 mails, one per transfer."""
    import asyncio

    transfers = [barnsley(transfer_id=f"ba-c{n}") for n in range(40)]
    async with MailboxConnector(settings(smtp, max_connections=4)) as mailbox:
        receipts = await asyncio.gather(*(mailbox.deliver(t, DEFAULT_ROUTE) for t in transfers * 3))
    assert 40 == len(smtp.handler.received) == sum(r.created for r in receipts)
    ids = sorted(parse(m.data)["X-Casebridge-Transfer-Id"] for m in smtp.handler.received)
    assert sorted(t.transfer_id for t in transfers) == ids


async def test_unsent_transfer_is_not_confirmed(smtp: SmtpServer) -> None:
    """confirm() is true only once the relay accepted the mail for the mailbox."""
    async with MailboxConnector(settings(smtp)) as mailbox:
        assert not (await mailbox.confirm(barnsley())).acknowledged


async def test_g4_plain_text_server_is_refused_and_nothing_is_sent(plain_smtp: SmtpServer) -> None:
    """A relay without STARTTLS gets neither the credentials nor the mail: a permanent InsecureChannel error."""
    async with MailboxConnector(settings(plain_smtp)) as mailbox:
        with pytest.raises(InsecureChannel) as caught:
            await mailbox.deliver(barnsley(), DEFAULT_ROUTE)
        assert not (await mailbox.confirm(barnsley())).acknowledged
    assert not caught.value.retriable
    assert [] == plain_smtp.handler.received
    assert 0 == plain_smtp.handler.auth_attempts


async def test_g4_untrusted_certificate_is_refused(smtp: SmtpServer, tmp_path: Path) -> None:
    """A certificate from a CA the connector does not trust ends the conversation before AUTH."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with MailboxConnector(settings(smtp, ca_file=other)) as mailbox:
        with pytest.raises(InsecureChannel):
            await mailbox.deliver(barnsley(), DEFAULT_ROUTE)
    assert [] == smtp.handler.received
    assert 0 == smtp.handler.auth_attempts


async def test_wrong_password_is_permanent_and_relay_down_is_transient(smtp: SmtpServer) -> None:
    """535 from the relay is dead-lettered at once; a relay that does not answer is retried."""
    async with MailboxConnector(settings(smtp, password=SecretStr("wrong"))) as mailbox:
        with pytest.raises(TargetRefused) as refused:
            await mailbox.deliver(barnsley(), DEFAULT_ROUTE)
    assert 535 == refused.value.status and not refused.value.retriable
    async with MailboxConnector(settings(smtp, port=free_port(), timeout=2)) as mailbox:
        with pytest.raises(TargetUnavailable) as unavailable:
            await mailbox.deliver(barnsley(), DEFAULT_ROUTE)
    assert unavailable.value.retriable
    assert [] == smtp.handler.received


async def test_g4_no_personal_data_in_logs_or_errors(smtp: SmtpServer, plain_smtp: SmtpServer) -> None:
    """Sending logs ids only; errors name no child, no address, no password."""
    transfer = barnsley()
    with capture_logs() as logs:
        async with MailboxConnector(settings(smtp)) as mailbox:
            await mailbox.deliver(transfer, DEFAULT_ROUTE)
        async with MailboxConnector(settings(plain_smtp)) as insecure:
            with pytest.raises(InsecureChannel) as caught:
                await insecure.deliver(barnsley(transfer_id="ba-5002"), DEFAULT_ROUTE)
    assert [{"mail_sent"}] == [{e["event"]} for e in logs if e["event"] == "mail_sent"]
    text = repr(logs) + str(caught.value)
    child = transfer.child
    for personal in (child.given_name, child.family_name, "2016-04-09", child.nhs_number, child.upn, PASSWORD):
        assert personal is not None and personal not in text
    assert "earlyhelp@" not in text
    assert PASSWORD not in repr(settings(smtp))


def test_sw22_7_team_mailbox_follows_the_route_and_the_pathway(ca_file: Path) -> None:
    """Swindon's EH Hub and FISS step-downs and its MASH step-ups reach their own configured mailboxes."""
    server = SmtpServer(Handler(), 25, ca_file)
    mailbox = MailboxConnector(settings(server))
    ehh = TransferMessage.model_validate(example("swindon-2022.step-down.care-director-ehh.json"))
    fiss_doc = example("swindon-2022.step-down.care-director-ehh.json", assessment_outcome="Refer to FISS Service")
    fiss_doc["pathway"]["to_level"] = "intensive-early-help"
    fiss = TransferMessage.model_validate(fiss_doc)
    up_doc = example("swindon-2022.step-down.care-director-ehh.json")
    up_doc["pathway"] = {**up_doc["pathway"], "direction": "step-up", "from_level": "early-help"}
    up_doc["pathway"]["to_level"] = "child-in-need-s17"
    step_up = TransferMessage.model_validate(up_doc)

    assert "ehhub@swindon.example" == mailbox.mailbox_for(ehh, DEFAULT_ROUTE)[1]
    assert "fiss@swindon.example" == mailbox.mailbox_for(fiss, DEFAULT_ROUTE)[1]
    assert "mash@swindon.example" == mailbox.mailbox_for(step_up, DEFAULT_ROUTE)[1]
    team_route = Route(role="team-manager", locality="North")
    assert ["swindon-2022:team-manager:North", "swindon-2022:team-manager"] == mailbox_keys(ehh, team_route)[:2]
    luton = TransferMessage.model_validate(example("luton.step-down.fst-eh.json"))
    assert "early-help@luton.example" == mailbox.mailbox_for(luton, DEFAULT_ROUTE)[1]
    unknown = TransferMessage.model_validate(example())
    with pytest.raises(PermanentError, match="no team mailbox is configured"):
        mailbox.mailbox_for(unknown, DEFAULT_ROUTE)


async def test_smtp_sandbox_keeps_the_mail_byte_for_byte_and_refuses_clear_text(tmp_path: Path) -> None:
    """`casebridge sandbox smtp`'s relay: STARTTLS and AUTH required, the accepted mail kept in its Maildir."""
    import smtplib

    transfer = barnsley()
    with SmtpSandbox(tmp_path / "relay", USER, PASSWORD) as relay:
        server = SmtpServer(Handler(), relay.port, relay.ca_file)
        async with MailboxConnector(settings(server)) as mailbox:
            await mailbox.deliver(transfer, DEFAULT_ROUTE)
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as clear:
            clear.ehlo()
            code, _ = clear.mail("casebridge@council.example")
        [raw] = relay.messages()
    assert 530 == code  # nothing but STARTTLS before TLS
    message = parse(raw)
    assert "earlyhelp@barnsley.example" == message[RCPT_HEADER]
    sent = [d.content.encode("utf-8") for d in transfer.documents if d.content is not None]
    assert sent == [a.get_payload(decode=True) for a in message.iter_attachments()]


def test_g1_g4_summary_states_the_s47_exemption_and_documents_left_on_the_source() -> None:
    """A step-up without consent says who decided the s.47 exemption; documents held by reference are listed."""
    from connectors.mailbox import build_message, summary

    doc = example("swindon-2022.step-down.care-director-ehh.json", consent=None, urgency="urgent")
    doc["pathway"] = {**doc["pathway"], "direction": "step-up", "from_level": "early-help"}
    doc["pathway"]["to_level"] = "child-protection-s47"
    doc["consent_exemption"] = {
        "reason": "significant-harm-s47",
        "decided_by": {"name": "Jo Dutymanager", "role": "MASH Manager"},
        "decided_on": "2026-11-03",
    }
    doc["documents"] = [
        {"type": "early-help-assessment", "content": "EHA (synthetic)."},
        {"type": "taf-plan", "reference": "CD-DOC-77"},
    ]
    transfer = TransferMessage.model_validate(doc)
    text = summary(transfer, "mash")
    assert "Consent: not sought (significant-harm-s47), decided by Jo Dutymanager, MASH Manager on 2026-11-03" in text
    assert "Urgency: urgent" in text
    assert "attached: 01-early-help-assessment.txt" in text
    assert "held on care-director, not attached: taf-plan ref CD-DOC-77" in text
    message = build_message(transfer, sender="cb@council.example", recipient="mash@swindon.example", team="mash")
    assert 1 == len(list(message.iter_attachments()))
