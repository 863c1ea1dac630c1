from __future__ import annotations

import asyncio
import sqlite3
import ssl
import weakref
from pathlib import Path
from typing import ClassVar

import aiosmtplib
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from contracts import CaseSystem, TransferMessage, utcnow
from mappings import Route

from .._base import Receipt, Target
from .._budget import call_deadline
from .._errors import PermanentError, TargetRefused, TargetUnavailable
from ._message import build_message, message_reference

log = structlog.get_logger("connectors.mailbox")

Address = str


class MailboxSettings(BaseModel):
    """How to reach the SMTP relay, and which team mailbox receives what. Secrets never print (nor does any value
    in a validation error: ``hide_input_in_errors``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    username: str = Field(min_length=1)
    password: SecretStr
    sender: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="the From address, e.g. casebridge@council.example")
    #: trust anchors for the relay's certificate (PEM); None: the system's store
    ca_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0)
    #: team key -> mailbox address; keys are tried from the most specific (see ``mailbox_keys``)
    mailboxes: dict[str, Address] = Field(min_length=1)
    #: where sent transfers are remembered (sqlite); None keeps them in memory only
    ledger: Path | None = None
    #: SMTP sessions open at once (each transfer is sent on its own session)
    max_connections: int = Field(default=4, ge=1, le=64)


class InsecureChannel(PermanentError):
    """The relay does not offer STARTTLS, or its certificate is not trusted: nothing is sent in clear."""


def mailbox_keys(transfer: TransferMessage, route: Route) -> list[str]:
    """Configuration keys for the team mailbox, most specific first.

    ``<council>:<route team>`` (when the route names one), ``<council>:<role>:<locality>``,
    ``<council>:<role>``, ``<council>:<direction>:<to level>`` (e.g.
    ``swindon-2022:step-down:early-help`` for the EH Hub), ``<council>:<direction>``, ``<council>``.
    """
    c, p = transfer.council.value, transfer.pathway
    keys = []
    if route.team:
        keys.append(f"{c}:{route.team}")
    if route.role != "default":
        if route.locality:
            keys.append(f"{c}:{route.role}:{route.locality}")
        keys.append(f"{c}:{route.role}")
    keys += [f"{c}:{p.direction.value}:{p.to_level.value}", f"{c}:{p.direction.value}", c]
    return keys


class _Ledger:
    """Transfers the relay accepted, so a redelivery sends nothing twice (idempotent per transfer)."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else path, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sent (transfer_id TEXT PRIMARY KEY, reference TEXT NOT NULL,"
            " mailbox_key TEXT NOT NULL, accepted_at TEXT NOT NULL)"
        )

    def get(self, transfer_id: str) -> str | None:
        row = self._db.execute("SELECT reference FROM sent WHERE transfer_id = ?", (transfer_id,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, transfer_id: str, reference: str, key: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO sent VALUES (?, ?, ?, ?)", (transfer_id, reference, key, utcnow().isoformat())
        )

    def close(self) -> None:
        self._db.close()


class MailboxConnector(Target):
    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX

    def __init__(self, settings: MailboxSettings) -> None:
        self.settings = settings
        self._ledger: _Ledger | None = None
        self._tls: ssl.SSLContext | None = None
        #: one lock per transfer being sent, alive while anyone holds or awaits it
        self._sending: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._sessions = asyncio.Semaphore(settings.max_connections)

    async def start(self) -> None:
        self._tls = relay_tls_context(self.settings)
        self._ledger = _Ledger(self.settings.ledger)

    async def stop(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    @property
    def ledger(self) -> _Ledger:
        if self._ledger is None:
            raise RuntimeError("MailboxConnector used before start()")
        return self._ledger

    def mailbox_for(self, transfer: TransferMessage, route: Route) -> tuple[str, Address]:
        """The configured team mailbox (key, address) for this transfer and route."""
        for key in mailbox_keys(transfer, route):
            if key in self.settings.mailboxes:
                return key, self.settings.mailboxes[key]
        raise PermanentError(f"mailbox: no team mailbox is configured for council {transfer.council.value!r} (G3)")

    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        """Send the summary and documents once per transfer; a transfer already accepted is not sent again."""
        lock = self._sending.setdefault(transfer.transfer_id, asyncio.Lock())
        async with lock:  # the same transfer twice at once: one mail
            reference = self.ledger.get(transfer.transfer_id)
            if reference is not None:
                return Receipt(self.system, reference, created=False)
            key, address = self.mailbox_for(transfer, route)
            team = key.split(":", 1)[1] if ":" in key else key
            message = build_message(transfer, sender=self.settings.sender, recipient=address, team=team)
            async with self._sessions:
                await self._send(message, address)
            reference = message_reference(transfer.transfer_id)
            self.ledger.put(transfer.transfer_id, reference, key)
        log.info("mail_sent", transfer_id=transfer.transfer_id, mailbox_key=key, reference=reference)
        return Receipt(self.system, reference, created=True)

    async def confirm(self, transfer: TransferMessage) -> Receipt:
        """For mail, "holds it" means the relay accepted it for the team mailbox (250 after DATA), on record here."""
        reference = self.ledger.get(transfer.transfer_id)
        return Receipt(
            self.system,
            reference or message_reference(transfer.transfer_id),
            created=False,
            acknowledged=bool(reference),
        )

    async def _send(self, message: object, recipient: Address) -> None:
        await send_via_relay(self.settings, self._tls, message, [recipient])


def relay_tls_context(settings: MailboxSettings) -> ssl.SSLContext:
    """The TLS context for the relay: its ``ca_file`` (or the system's store), TLS 1.2 at least."""
    tls = ssl.create_default_context(cafile=settings.ca_file)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    return tls


async def send_via_relay(
    settings: MailboxSettings, tls: ssl.SSLContext | None, message: object, recipients: list[Address]
) -> None:
    """Send one message through the relay on its own session: STARTTLS required (``InsecureChannel``), then AUTH.

    Failures are translated: SMTP 4xx and connection failures are ``TargetUnavailable`` (retry), 5xx
    ``TargetRefused``; messages name the failure's class or code only, never an address or content.

    ``timeout`` bounds the whole session (connect to the last answer), however slowly the relay trickles its
    answers (aiosmtplib's own timeout is per answer), and within what the caller's retry budget has left
    (``connectors._budget.call_deadline``); over it, ``TargetUnavailable``.
    """
    s = settings
    deadline = call_deadline(s.timeout)
    smtp = aiosmtplib.SMTP(hostname=s.host, port=s.port, timeout=s.timeout, start_tls=False, tls_context=tls)
    timed_out = False
    try:
        try:
            async with asyncio.timeout(deadline):
                await smtp.connect()
                await smtp.ehlo()
                if not smtp.supports_extension("starttls"):
                    raise InsecureChannel("mailbox: the relay does not offer STARTTLS; refusing to send in clear text")
                try:
                    await smtp.starttls(tls_context=tls)
                except ssl.SSLError as exc:
                    raise InsecureChannel(f"mailbox: TLS with the relay failed ({type(exc).__name__})") from exc
                await smtp.login(s.username, s.password.get_secret_value())
                await smtp.send_message(message, sender=s.sender, recipients=recipients)  # type: ignore[arg-type]
        except TimeoutError as exc:
            timed_out = True
            raise TargetUnavailable(f"mailbox: the relay did not finish the session within {deadline:.3g} s") from exc
    except aiosmtplib.SMTPRecipientsRefused as exc:
        code = exc.recipients[0].code if exc.recipients else 550
        raise _by_code(code, "recipient refused") from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise _by_code(exc.code, type(exc).__name__) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise TargetUnavailable(f"mailbox: the relay failed ({type(exc).__name__})") from exc
    finally:
        if smtp.is_connected and timed_out:
            smtp.close()  # no QUIT: a relay that trickles its answers would hold that too
        elif smtp.is_connected:
            try:
                async with asyncio.timeout(min(5.0, s.timeout)):
                    await smtp.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()


def _by_code(code: int, what: str) -> Exception:
    """SMTP 4xx is worth retrying; 5xx (auth failed, mailbox unknown, too big) is not."""
    if 400 <= code < 500:
        return TargetUnavailable(f"mailbox: {what} ({code})")
    return TargetRefused(f"mailbox: {what} ({code})", status=code)
