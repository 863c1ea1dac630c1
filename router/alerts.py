"""Delivering the router's alerts to people: e-mail through the council's relay, and webhooks.

The router (and its side loops) write an ``alert`` event (``contracts.AlertRaised``) to
``<prefix>.events`` once per state change of a transfer: entered the retry tiers,
dead-lettered, recovered, NS-7 closed out of band, a later closure failed. ``AlertDispatcher``
reads the events topic with its own consumer group, picks the ``alert`` events (by their
``event_type`` header) and sends each one to every configured channel:

- ``EmailChannel``: a short plain-text mail to the channel's addresses, through the mailbox
  connector's relay settings (``connectors.mailbox.MailboxSettings``: STARTTLS required, then
  AUTH, exactly as ``MailboxConnector`` sends; ``send_via_relay``). ``Message-ID`` is stable per
  alert event id.
- ``WebhookChannel``: ``POST`` of a JSON body (``webhook_body``) with an optional bearer token
  and an ``Idempotency-Key`` header (the alert's event id).

What is sent is what the event holds and nothing more: event id, transfer id, council,
severity, rule ids, summary and time. Events carry no personal data, so alerts carry none;
logs name the channel, the event id and an error's class only (never an address, a URL or a
response body).

Delivery: once per (alert event id, channel), made durable by a sent-ledger (SQLite,
``<state_dir>/alerts-sent.sqlite3``). A send the channel accepted is recorded before the
events topic's offset is committed past its alert, so a restart, a rebalance or a re-read (a
new group on the same state dir) sends nothing twice; a crash between a channel's acceptance
and the ledger write can send that one alert once more to that channel (at least once), with
the same ``Message-ID`` / ``Idempotency-Key`` so the receiver can recognise it.

Failures: a transient one (connection refused, timeout, SMTP 4xx, HTTP 5xx / 429) is retried
with backoff (tenacity, ``attempts`` per try); still failing, the channel rests (its wait
doubles up to ``max_rest_seconds``) and the alert stays pending for it, while the other
channels and later alerts go on. The offset of a partition is committed only up to its first
alert not yet settled for every channel, so a restart re-reads it. A permanent failure (HTTP
4xx, SMTP 5xx, a relay without STARTTLS) is logged with its error class, recorded in the
ledger as failed and not tried again: it never blocks the other channels or alerts.

Wiring (``casebridge/stack.py`` shape)::

    dispatcher = AlertDispatcher(settings.connection, settings.topics, f"{settings.group_id}-alerts",
                                 channels, mail_settings, state_dir)
    await dispatcher.start()
    task = asyncio.create_task(dispatcher.run(interval, stop))
    ...
    await dispatcher.stop()

In a deployment file, ``[alerts.NAME]`` blocks name them by ``kind`` (``CHANNEL_KINDS``; casebridge/deployment.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from connectors import CasebridgeError, PermanentError, TargetRefused, TargetUnavailable
from connectors._budget import call_deadline
from connectors._feed import poll_forever
from connectors.kafka import Kafka
from connectors.mailbox import MailboxSettings, relay_tls_context, send_via_relay
from contracts import AlertRaised, parse_event, utcnow, wire

from ._reading import follower
from .settings import Topics

__all__ = [
    "CHANNEL_KINDS",
    "AlertDispatcher",
    "EmailChannel",
    "SentLedger",
    "WebhookChannel",
    "alert_mail",
    "webhook_body",
]

log = structlog.get_logger("casebridge.router.alerts")

_ADDRESS = r"^[^@\s<>,;]+@[^@\s<>,;]+$"
_LOOPBACK_NAMES = {"localhost"}


class _ChannelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class EmailChannel(_ChannelSettings):
    """Alerts by e-mail to these addresses (one mail per alert to all of them), through the mailbox relay."""

    kind: Literal["email"] = "email"
    to: list[Annotated[str, Field(pattern=_ADDRESS, max_length=254)]] = Field(min_length=1, max_length=50)


class WebhookChannel(_ChannelSettings):
    """Alerts as ``POST <url>`` with a JSON body; HTTPS, or plain HTTP to a loopback address only."""

    kind: Literal["webhook"] = "webhook"
    url: AnyHttpUrl
    #: sent as ``Authorization: Bearer <token>``; never printed
    token: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _https_unless_loopback(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        if url.scheme != "https" and not _loopback(url.host or ""):
            raise ValueError("a webhook needs https (plain http only to a loopback address)")
        if url.username or url.password:
            raise ValueError("put a webhook's credentials in its token, not in its URL")
        return url


#: the channel kinds a deployment file's ``[alerts.NAME]`` may name (``kind = ...``)
CHANNEL_KINDS: dict[str, type[EmailChannel] | type[WebhookChannel]] = {"email": EmailChannel, "webhook": WebhookChannel}


def _loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- what is sent ------------------------------------------------------------------------------


def webhook_body(alert: AlertRaised) -> dict[str, Any]:
    """The alert as a webhook's JSON body: the event's own fields, nothing added (no personal data)."""
    return {
        "type": "casebridge.alert",
        "event_id": alert.event_id,
        "transfer_id": alert.transfer_id,
        "council": alert.council.value if alert.council is not None else None,
        "severity": alert.severity,
        "rule_ids": list(alert.rule_ids),
        "summary": alert.summary,
        "occurred_at": alert.occurred_at.isoformat(),
    }


def alert_mail(alert: AlertRaised, sender: str, to: list[str]) -> EmailMessage:
    """The alert as a plain-text mail; ``Message-ID`` is stable per alert event id."""
    body = webhook_body(alert)
    council = body["council"] or "no council"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = f"[casebridge] {alert.severity} alert: {council}, transfer {alert.transfer_id or '-'}"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = f"<alert-{alert.event_id}@casebridge>"
    message["X-Casebridge-Alert"] = alert.event_id
    lines = [
        alert.summary,
        "",
        f"Severity: {alert.severity}",
        f"Council: {council}",
        f"Transfer: {alert.transfer_id or '-'}",
        f"Rules: {', '.join(alert.rule_ids) or '-'}",
        f"Raised at: {body['occurred_at']}",
        f"Alert id: {alert.event_id}",
        "",
        "See the transfer's timeline on the casebridge monitoring page.",
    ]
    message.set_content("\n".join(lines) + "\n")
    return message


# -- the sent-ledger --------------------------------------------------------------------------


class SentLedger:
    """Which (alert event id, channel) pairs are settled: ``sent``, or ``failed`` permanently. SQLite, durable."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sent (event_id TEXT NOT NULL, channel TEXT NOT NULL, outcome TEXT NOT NULL,"
            " error_class TEXT, settled_at TEXT NOT NULL, PRIMARY KEY (event_id, channel))"
        )

    def settled(self, event_id: str) -> dict[str, str]:
        """``{channel: outcome}`` for this alert."""
        rows = self._db.execute("SELECT channel, outcome FROM sent WHERE event_id = ?", (event_id,)).fetchall()
        return {str(c): str(o) for c, o in rows}

    def record(self, event_id: str, channel: str, outcome: Literal["sent", "failed"], error_class: str | None) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO sent VALUES (?, ?, ?, ?, ?)",
            (event_id, channel, outcome, error_class, utcnow().isoformat()),
        )

    def close(self) -> None:
        self._db.close()


# -- the loop -----------------------------------------------------------------------------------


@dataclass
class _Pending:
    """An alert read but not yet settled for every channel."""

    alert: AlertRaised
    channels: set[str]


@dataclass
class _Rest:
    """A channel whose last try failed transiently: not tried again before ``until`` (monotonic)."""

    until: float = 0.0
    seconds: float = 0.0


@dataclass
class _PartitionState:
    #: offset -> pending alert, in offset order
    pending: dict[int, _Pending] = field(default_factory=dict)
    #: the next offset after the last record read
    read_to: int | None = None
    committed: int | None = None


class AlertDispatcher:
    """Sends every ``alert`` event of the events topic to every channel, once per (event id, channel).

    ``group_id``: the dispatcher's own consumer group (e.g. ``<router group>-alerts``); it reads
    from the topic's beginning the first time. ``mail``: the relay for ``EmailChannel`` (required
    when one is configured). ``state_dir``: where the sent-ledger lives. ``attempts``,
    ``initial_wait``, ``max_wait``: the in-process retries of one send; ``max_rest_seconds``: the
    longest a transiently failing channel waits between tries; ``max_pending``: alerts waiting per
    partition before it is paused.
    """

    def __init__(
        self,
        kafka: Kafka,
        topics: Topics,
        group_id: str,
        channels: dict[str, EmailChannel | WebhookChannel],
        mail: MailboxSettings | None,
        state_dir: Path,
        *,
        attempts: int = 3,
        initial_wait: float = 0.5,
        max_wait: float = 5.0,
        max_rest_seconds: float = 60.0,
        max_pending: int = 1000,
    ) -> None:
        if any(isinstance(c, EmailChannel) for c in channels.values()) and mail is None:
            raise ValueError("alerts: an e-mail channel needs the mailbox relay settings (mail)")
        self.kafka = kafka
        self.topics = topics
        self.group_id = group_id
        self.channels = dict(channels)
        self.mail = mail
        self.state_dir = Path(state_dir)
        self.attempts = attempts
        self.initial_wait = initial_wait
        self.max_wait = max_wait
        self.max_rest_seconds = max_rest_seconds
        self.max_pending = max_pending
        self.consumer: AIOKafkaConsumer | None = None
        self._ledger: SentLedger | None = None
        self._http: httpx.AsyncClient | None = None
        self._tls: ssl.SSLContext | None = None
        self._partitions: dict[TopicPartition, _PartitionState] = {}
        self._rest: dict[str, _Rest] = {name: _Rest() for name in self.channels}
        self._paused: set[TopicPartition] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._ledger = SentLedger(self.state_dir / "alerts-sent.sqlite3")
        if self.mail is not None:
            self._tls = relay_tls_context(self.mail)
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._partitions.clear()
        self._paused.clear()
        self.consumer = follower(self.kafka, self.group_id, self.topics.events)
        await self.consumer.start()

    async def stop(self) -> None:
        """Stop reading; alerts read but not settled are not committed, so the next start re-reads them."""
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, "alerts")

    @property
    def ledger(self) -> SentLedger:
        if self._ledger is None:
            raise RuntimeError("AlertDispatcher used before start()")
        return self._ledger

    # -- one poll ----------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """Read what is new, send what is due, commit what is settled. Returns records read plus sends made."""
        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("AlertDispatcher used before start()")
        self._forget_revoked(consumer)
        work = 0
        for tp, records in (await consumer.getmany(timeout_ms=200, max_records=500)).items():
            state = self._partitions.setdefault(tp, _PartitionState())
            for r in records:
                work += 1
                state.read_to = r.offset + 1
                alert = self._alert_of(r)
                if alert is None:
                    continue
                settled = self.ledger.settled(alert.event_id)
                due = {name for name in self.channels if name not in settled}
                if due:
                    state.pending[r.offset] = _Pending(alert, due)
        work += await self._send_due()
        await self._commit(consumer)
        self._pause_if_full(consumer)
        return work

    def _alert_of(self, r: ConsumerRecord[bytes, bytes]) -> AlertRaised | None:
        kind = dict(r.headers or ()).get(wire.EVENT_TYPE)
        if kind is not None and kind != b"alert":
            return None
        try:
            event = parse_event(r.value or b"")
        except ValidationError:
            if kind == b"alert":
                log.warning("alert_unreadable", partition=r.partition, offset=r.offset)
            return None
        return event if isinstance(event, AlertRaised) else None

    def _forget_revoked(self, consumer: AIOKafkaConsumer) -> None:
        """Partitions no longer ours: their pending alerts are the new owner's (it re-reads from the commit)."""
        assigned = consumer.assignment()
        for tp in [tp for tp in self._partitions if tp not in assigned]:
            del self._partitions[tp]
            self._paused.discard(tp)

    async def _send_due(self) -> int:
        sent = 0
        for state in self._partitions.values():
            for offset in sorted(state.pending):
                pending = state.pending[offset]
                for name in sorted(pending.channels):
                    if time.monotonic() < self._rest[name].until:
                        continue  # resting after a transient failure: still due
                    outcome = await self._deliver(name, pending.alert)
                    if outcome != "due":
                        pending.channels.discard(name)
                    sent += outcome == "sent"
                if not pending.channels:
                    del state.pending[offset]
        return sent

    async def _deliver(self, name: str, alert: AlertRaised) -> Literal["sent", "failed", "due"]:
        """Send one alert on one channel, retrying transient failures.

        ``sent`` and ``failed`` (permanent, logged with its error class) are recorded in the ledger:
        settled. ``due``: a transient failure outlasted the retries; the channel rests, the alert stays due.
        """
        channel = self.channels[name]
        rest = self._rest[name]

        def note(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "alert_send_retrying",
                channel=name,
                event_id=alert.event_id,
                error_class=type(exc).__name__,
                attempt=state.attempt_number,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: getattr(e, "retriable", False)),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
            before_sleep=note,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._send(channel, alert)
        except CasebridgeError as exc:
            if exc.retriable:
                rest.seconds = min(self.max_rest_seconds, max(1.0, rest.seconds * 2))
                rest.until = time.monotonic() + rest.seconds
                log.warning(
                    "alert_channel_unavailable",
                    channel=name,
                    event_id=alert.event_id,
                    error_class=type(exc).__name__,
                    rest_seconds=rest.seconds,
                )
                return "due"
            self.ledger.record(alert.event_id, name, "failed", type(exc).__name__)
            log.error(
                "alert_send_failed",
                channel=name,
                event_id=alert.event_id,
                error_class=type(exc).__name__,
                status=getattr(exc, "status", None),
            )
            return "failed"
        rest.seconds, rest.until = 0.0, 0.0
        self.ledger.record(alert.event_id, name, "sent", None)
        log.info("alert_sent", channel=name, event_id=alert.event_id, severity=alert.severity)
        return "sent"

    async def _send(self, channel: EmailChannel | WebhookChannel, alert: AlertRaised) -> None:
        if isinstance(channel, EmailChannel):
            assert self.mail is not None  # checked in __init__
            message = alert_mail(alert, self.mail.sender, channel.to)
            await send_via_relay(self.mail, self._tls, message, list(channel.to))
        else:
            await self._post(channel, alert)

    async def _post(self, channel: WebhookChannel, alert: AlertRaised) -> None:
        assert self._http is not None
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert.event_id}
        if channel.token is not None:
            headers["Authorization"] = f"Bearer {channel.token.get_secret_value()}"
        deadline = call_deadline(channel.timeout)  # the whole exchange: httpx's own timeout is per read
        try:
            async with asyncio.timeout(deadline):
                response = await self._http.post(
                    str(channel.url), content=json.dumps(webhook_body(alert)), headers=headers, timeout=channel.timeout
                )
        except TimeoutError:
            raise TargetUnavailable(f"webhook: no whole answer within {deadline:.3g} s") from None
        except httpx.HTTPError as exc:  # the URL is not in the message: it may hold a key
            raise TargetUnavailable(f"webhook: no answer ({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        if status >= 500 or status in (408, 425, 429):
            raise TargetUnavailable(f"webhook: answered {status}")
        if 400 <= status < 500:
            raise TargetRefused(f"webhook: answered {status}", status=status)
        raise PermanentError(f"webhook: unexpected answer {status}")

    # -- offsets -----------------------------------------------------------------------------

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        """Each partition up to its first alert still due (or all it read): never past an unsent alert."""
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, state in self._partitions.items():
            upto = min(state.pending) if state.pending else state.read_to
            if upto is not None and upto != state.committed:
                offsets[tp] = OffsetAndMetadata(upto, "")
        if offsets:
            try:
                await consumer.commit(offsets)
            except CommitFailedError:  # a rebalance took partitions away: their new owner re-reads, the ledger dedupes
                log.warning("alert_commit_failed", partitions=len(offsets))
                return
            for tp, meta in offsets.items():
                self._partitions[tp].committed = meta.offset

    def _pause_if_full(self, consumer: AIOKafkaConsumer) -> None:
        """A partition with ``max_pending`` alerts waiting stops reading until some are sent (bounded memory)."""
        for tp, state in self._partitions.items():
            full = len(state.pending) >= self.max_pending
            if full and tp not in self._paused:
                consumer.pause(tp)
                self._paused.add(tp)
            elif not full and tp in self._paused:
                consumer.resume(tp)
                self._paused.discard(tp)
