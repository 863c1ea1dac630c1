"""Alert delivery (router/alerts.py) against a real broker, a real STARTTLS SMTP relay and a local webhook."""

from __future__ import annotations

import asyncio
import email
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from connectors.mailbox import MailboxSettings
from contracts import AlertRaised, TransferRequested
from router.alerts import CHANNEL_KINDS, AlertDispatcher, EmailChannel, WebhookChannel, webhook_body
from router.settings import Topics
from sandboxes import SmtpSandbox
from sandboxes.smtp import RCPT_HEADER
from tests.support import produce

USER, PASSWORD = "casebridge", "alerts-relay-secret"
TOKEN = "webhook-token-synthetic-0001"
TO = ["duty-ops@council.example", "integration@council.example"]
#: every test alert has this key, so all share one partition and arrive in order
KEY = b"ns-alert-1"


@dataclass
class Webhook:
    """A tiny HTTP receiver on 127.0.0.1 (port 0): answers the scripted statuses in turn, then 200."""

    script: list[int] = field(default_factory=list)
    always: int | None = None
    requests: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = hook.always or (hook.script.pop(0) if hook.script else 200)
                hook.requests.append((status, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/casebridge"

    def accepted(self, event_id: str | None = None) -> list[dict[str, Any]]:
        return [b for s, _, b in self.requests if s == 200 and (event_id is None or b["event_id"] == event_id)]

    def tries(self, event_id: str) -> int:
        return sum(1 for _, _, b in self.requests if b["event_id"] == event_id)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpSandbox]:
    with SmtpSandbox(tmp_path / "smtp", USER, PASSWORD) as relay:
        yield relay


def mail_settings(relay: SmtpSandbox) -> MailboxSettings:
    return MailboxSettings(
        host=relay.host,
        port=relay.port,
        username=USER,
        password=SecretStr(PASSWORD),
        sender="casebridge@council.example",
        ca_file=relay.ca_file,
        timeout=10,
        mailboxes={"north-somerset": "unused@council.example"},
    )


def alert(n: int, summary: str = "dead-lettered: TargetRefused") -> AlertRaised:
    return AlertRaised(
        event_id=str(uuid.uuid4()),
        transfer_id=f"ns-{n}",
        council="north-somerset",
        severity="critical",
        rule_ids=["NS-7"],
        summary=summary,
    )


async def publish(bootstrap: str, topics: Topics, *events: AlertRaised | TransferRequested) -> None:
    for e in events:
        headers = [("event_type", e.event_type.encode())]
        await produce(bootstrap, topics.events, [(KEY, e.model_dump_json().encode())], headers=headers)


def dispatcher(
    bootstrap: str, topics: Topics, group: str, channels: dict[str, Any], relay: SmtpSandbox | None, state: Path
) -> AlertDispatcher:
    mail = mail_settings(relay) if relay is not None else None
    return AlertDispatcher(
        bootstrap, topics, group, channels, mail, state, attempts=3, initial_wait=0.05, max_wait=0.2, max_rest_seconds=1
    )


async def run_until(d: AlertDispatcher, done: Callable[[], bool], timeout: float = 60.0, linger: float = 0.0) -> None:
    """Start ``d``, run its loop until ``done()`` (then ``linger`` seconds more), stop it."""
    stopping = False
    await d.start()
    task = asyncio.create_task(d.run(0.05, lambda: stopping))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            assert loop.time() < deadline, "timed out waiting for the dispatcher"
            assert not task.done(), task
            await asyncio.sleep(0.1)
        await asyncio.sleep(linger)
    finally:
        stopping = True
        await task
        await d.stop()


def mails(relay: SmtpSandbox) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(m, policy=default_policy) for m in relay.messages()]  # type: ignore[misc]


def mails_for(relay: SmtpSandbox, event_id: str) -> int:
    return sum(1 for m in mails(relay) if m["X-Casebridge-Alert"] == event_id)


def requested(n: int) -> TransferRequested:
    return TransferRequested(
        event_id=str(uuid.uuid4()),
        transfer_id=f"ns-{n}",
        council="north-somerset",
        direction="step-down",
        from_level="child-in-need-s17",
        to_level="early-help",
        from_system="lcs",
        to_system="ehm",
    )


async def test_an_alert_reaches_email_and_webhook_once_also_after_a_restart_and_a_reread(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, smtp: SmtpSandbox
) -> None:
    topics, state, group = Topics(topic_prefix), tmp_path / "state", f"{topic_prefix}-alerts"
    hook = Webhook()
    channels = {
        "duty": EmailChannel(to=TO),
        "ops-hook": WebhookChannel(url=hook.url, token=SecretStr(TOKEN), timeout=5),
    }
    first, second, third = alert(1), alert(2, "transfer recovered after retry and completed"), alert(3)
    try:
        await publish(kafka_bootstrap, topics, requested(1), first)
        both = lambda a: lambda: mails_for(smtp, a.event_id) == 1 and len(hook.accepted(a.event_id)) == 1  # noqa: E731
        await run_until(dispatcher(kafka_bootstrap, topics, group, channels, smtp, state), both(first), linger=1.0)

        # the mail: to every address of the channel, STARTTLS + AUTH (the sandbox accepts nothing else)
        [mail] = mails(smtp)
        assert {a.strip() for a in mail[RCPT_HEADER].split(",")} == set(TO)
        assert mail["Message-ID"] == f"<alert-{first.event_id}@casebridge>"
        assert "critical" in mail["Subject"] and "ns-1" in mail["Subject"]
        assert first.summary in mail.get_content() and "NS-7" in mail.get_content()
        # the webhook: the event's fields and nothing more, with the bearer token and an idempotency key
        [(status, headers, body)] = hook.requests
        assert status == 200
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert headers["idempotency-key"] == first.event_id
        assert body == webhook_body(first)
        assert set(body) == {"type", "event_id", "transfer_id", "council", "severity", "rule_ids", "summary",
                             "occurred_at"}  # fmt: skip
        assert (body["transfer_id"], body["council"], body["rule_ids"]) == ("ns-1", "north-somerset", ["NS-7"])

        # stopped and started again on the same state dir and group: the next alert only
        await publish(kafka_bootstrap, topics, second)
        await run_until(dispatcher(kafka_bootstrap, topics, group, channels, smtp, state), both(second), linger=1.0)
        # a new group on the same state dir re-reads the whole topic: the ledger sends only the new alert
        await publish(kafka_bootstrap, topics, third)
        regroup = f"{group}-reread"
        await run_until(dispatcher(kafka_bootstrap, topics, regroup, channels, smtp, state), both(third), linger=1.0)

        for a in (first, second, third):
            assert mails_for(smtp, a.event_id) == 1, a.summary
            assert hook.tries(a.event_id) == 1, a.summary
        assert len(mails(smtp)) == 3 and len(hook.requests) == 3  # the "requested" event sent nothing
    finally:
        hook.close()


async def test_a_webhook_answering_503_twice_then_200_gets_the_alert_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics, hook = Topics(topic_prefix), Webhook(script=[503, 503])
    a, b = alert(1), alert(2)
    try:
        await publish(kafka_bootstrap, topics, a, b)
        d = dispatcher(kafka_bootstrap, topics, f"{topic_prefix}-alerts", {"hook": WebhookChannel(url=hook.url)},
                       None, tmp_path / "state")  # fmt: skip
        await run_until(d, lambda: len(hook.accepted()) == 2, linger=1.0)
        assert [s for s, _, body in hook.requests if body["event_id"] == a.event_id] == [503, 503, 200]
        assert hook.tries(b.event_id) == 1
    finally:
        hook.close()


async def test_the_offset_is_not_committed_past_an_alert_a_channel_has_not_taken(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, smtp: SmtpSandbox
) -> None:
    """The webhook is down (503) for the whole first run: the mail goes, the alert stays due; after a restart
    on the same group and state dir the webhook gets it once and the mail is not sent again."""
    topics, state, group = Topics(topic_prefix), tmp_path / "state", f"{topic_prefix}-alerts"
    hook = Webhook(always=503)
    channels = {"duty": EmailChannel(to=TO[:1]), "hook": WebhookChannel(url=hook.url)}
    a = alert(1)
    try:
        await publish(kafka_bootstrap, topics, a)
        await run_until(
            dispatcher(kafka_bootstrap, topics, group, channels, smtp, state),
            lambda: mails_for(smtp, a.event_id) == 1 and hook.tries(a.event_id) >= 6,  # rested and tried again
        )
        assert not hook.accepted()
        hook.always = None
        await run_until(
            dispatcher(kafka_bootstrap, topics, group, channels, smtp, state), lambda: bool(hook.accepted()), linger=1.0
        )
        assert len(hook.accepted(a.event_id)) == 1
        assert mails_for(smtp, a.event_id) == 1
    finally:
        hook.close()


async def test_a_channel_failing_for_good_is_logged_once_and_blocks_no_one(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A 4xx webhook is tried once per alert (no retry), logged by error class, and the other channel gets all."""
    topics, bad, good = Topics(topic_prefix), Webhook(always=404), Webhook()
    a, b = alert(1), alert(2)
    channels = {"bad": WebhookChannel(url=bad.url, token=SecretStr(TOKEN)), "good": WebhookChannel(url=good.url)}
    try:
        await publish(kafka_bootstrap, topics, a, b)
        with capture_logs() as logs:
            d = dispatcher(kafka_bootstrap, topics, f"{topic_prefix}-alerts", channels, None, tmp_path / "s")
            await run_until(d, lambda: len(good.accepted()) == 2, linger=1.0)
            # the same group again: the permanent failure is settled, nothing is retried
            d = dispatcher(kafka_bootstrap, topics, f"{topic_prefix}-alerts", channels, None, tmp_path / "s")
            await run_until(d, lambda: True, linger=3.0)
        assert (bad.tries(a.event_id), bad.tries(b.event_id)) == (1, 1)
        assert (good.tries(a.event_id), good.tries(b.event_id)) == (1, 1)
        failed = [e for e in logs if e["event"] == "alert_send_failed"]
        assert [(e["channel"], e["error_class"], e["status"]) for e in failed] == [("bad", "TargetRefused", 404)] * 2
        printed = json.dumps(logs, default=str)
        assert TOKEN not in printed and a.summary not in printed and bad.url not in printed
    finally:
        bad.close()
        good.close()


# -- settings ------------------------------------------------------------------------------------


def test_channel_settings_are_strict_and_hide_their_input() -> None:
    duty = CHANNEL_KINDS["email"].model_validate({"kind": "email", "to": TO})
    hook = CHANNEL_KINDS["webhook"].model_validate({"kind": "webhook", "url": "https://hooks.example/x"})
    assert isinstance(duty, EmailChannel) and isinstance(hook, WebhookChannel)
    with pytest.raises(ValidationError) as plain_http:
        WebhookChannel.model_validate({"url": "http://hooks.example/x", "token": TOKEN})
    assert "https" in str(plain_http.value) and TOKEN not in str(plain_http.value)
    with pytest.raises(ValidationError) as extra:
        WebhookChannel.model_validate({"url": "https://hooks.example/x", "secret": TOKEN})
    assert TOKEN not in str(extra.value)
    with pytest.raises(ValidationError) as bad_address:
        EmailChannel.model_validate({"to": ["not an address, Jane Doe"]})
    assert "Jane Doe" not in str(bad_address.value)
    assert TOKEN not in repr(WebhookChannel(url="https://hooks.example/x", token=SecretStr(TOKEN)))
    with pytest.raises(ValueError, match="relay"):
        AlertDispatcher("localhost:9", Topics("x"), "g", {"duty": EmailChannel(to=TO)}, None, Path("."))
