"""A hung case system holds a transfer's call no longer than the retry budget the settings give it
(issue #19 item 2): every attempt's HTTP deadline ends with the budget at the latest (connectors/_budget.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from casebridge.localdeploy import free_port
from connectors import TargetUnavailable
from connectors._budget import budget_ends, call_deadline, end_budget
from connectors._http import HttpClient
from router.flow import TransferFlow
from router.settings import RetrySettings


@pytest.fixture
async def hung_url() -> AsyncIterator[str]:
    """A server that accepts connections and reads requests, and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)
        await asyncio.sleep(3600)

    port = free_port()
    server = await asyncio.start_server(hold, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for w in held:
            w.close()
        server.close()


def test_the_deadline_is_the_connectors_own_outside_a_budget_and_what_is_left_inside() -> None:
    assert 10.0 == call_deadline(10.0)
    token = budget_ends(time.monotonic() + 2.0)
    try:
        assert 1.5 < call_deadline(10.0) <= 2.0
        assert 0.5 == call_deadline(0.5)  # the connector's own, when shorter
    finally:
        end_budget(token)
    spent = budget_ends(time.monotonic() - 1.0)
    try:
        assert 0.05 == call_deadline(10.0)  # spent: the attempt times out at once (retriable), it is not refused
    finally:
        end_budget(spent)


async def test_a_hung_system_holds_a_call_no_longer_than_its_retry_budget(hung_url: str) -> None:
    """The connector's own deadline is 10 s; the deployment's retry budget is 1.5 s: the call gives up (transient,
    for the retry tiers) after about 1.5 s, not after 10 s or 5 x 10 s."""
    retry = RetrySettings(attempts=5, initial_seconds=0.05, max_seconds=0.2, total_seconds=1.5)
    flow: Any = SimpleNamespace(retry=retry)
    flow._retrying_within = lambda call, started: TransferFlow._retrying_within(flow, call, started)
    http = HttpClient("ehm", hung_url, SecretStr("t" * 32), timeout=10.0)
    calls = 0

    async def call() -> object:
        nonlocal calls
        calls += 1
        return await http.request("GET", "/api/stepdown-tray/T-1")

    began = time.monotonic()
    try:
        with pytest.raises(TargetUnavailable, match=r"did not answer within"):
            await TransferFlow._retrying(flow, call)
    finally:
        await http.aclose()
    took = time.monotonic() - began
    print(f"hung system: gave up after {took:.2f} s and {calls} attempt(s) (budget 1.5 s, connector deadline 10 s)")
    assert took < 2.5 and calls >= 1


def _trickling(first: bytes) -> Any:
    """A server that answers every connection with ``first`` and then one byte every second, never finishing."""
    held: list[asyncio.StreamWriter] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        try:
            if first.startswith(b"HTTP"):
                await reader.readuntil(b"\r\n\r\n")  # the request's head: then the answer starts
            writer.write(first)
            while True:
                await writer.drain()
                await asyncio.sleep(1.0)
                writer.write(b"a")
        except (OSError, asyncio.IncompleteReadError):
            return

    class Server:
        async def __aenter__(self) -> int:
            self.port = free_port()
            self.server = await asyncio.start_server(trickle, "127.0.0.1", self.port)
            return self.port

        async def __aexit__(self, *exc: object) -> None:
            for w in held:
                w.close()
            self.server.close()

    return Server()


async def test_a_system_that_trickles_its_answer_is_given_up_on_at_the_clients_whole_deadline() -> None:
    """One byte every second never trips httpx's per-read timeout; the HTTP client's whole-request deadline (2 s)
    ends the call, transient."""
    async with _trickling(b"HTTP/1.1 200 OK\r\nX-Slow: ") as port:
        http = HttpClient("ehm", f"http://127.0.0.1:{port}", SecretStr("t" * 32), timeout=2.0)
        began = time.monotonic()
        try:
            with pytest.raises(TargetUnavailable, match=r"did not answer within 2 s"):
                await asyncio.wait_for(http.request("GET", "/api/stepdown-tray/T-1"), 10)
        finally:
            await http.aclose()
    assert time.monotonic() - began < 3.5


async def test_an_smtp_relay_that_trickles_its_answers_holds_a_send_no_longer_than_the_retry_budget() -> None:
    """The relay's per-answer timeout is 30 s and it trickles its greeting one byte a second: the session gives up
    when the caller's retry budget (2 s) ends, transient, and is closed without waiting for a QUIT."""
    from email.message import EmailMessage

    from connectors.mailbox import MailboxSettings, send_via_relay

    async with _trickling(b"220-") as port:
        mail = MailboxSettings(
            host="127.0.0.1", port=port, username="casebridge", password=SecretStr("p" * 16),
            sender="casebridge@council.example", timeout=30, mailboxes={"north-somerset": "team@council.example"},
        )  # fmt: skip
        token = budget_ends(time.monotonic() + 2.0)
        began = time.monotonic()
        try:
            with pytest.raises(TargetUnavailable, match=r"did not finish the session within 2 s"):
                await asyncio.wait_for(send_via_relay(mail, None, EmailMessage(), ["team@council.example"]), 10)
        finally:
            end_budget(token)
    assert time.monotonic() - began < 3.5


async def test_an_alert_webhook_that_trickles_its_answer_is_given_up_on_at_its_timeout(tmp_path: Any) -> None:
    """The webhook channel's timeout (2 s) bounds the whole POST, not each read: a receiver that answers one byte
    every second leaves the alert due (transient), after about 2 s."""
    import httpx

    from contracts import AlertRaised
    from router import Topics
    from router.alerts import AlertDispatcher, WebhookChannel

    async with _trickling(b"HTTP/1.1 200 OK\r\nX-Slow: ") as port:
        channel = WebhookChannel(url=f"http://127.0.0.1:{port}/alerts", timeout=2.0)  # type: ignore[arg-type]
        alerts = AlertDispatcher("127.0.0.1:1", Topics("t"), "g", {"hook": channel}, None, tmp_path)
        alerts._http = httpx.AsyncClient(trust_env=False)
        event = AlertRaised(event_id="a-1", transfer_id="ns-1", council="north-somerset", severity="critical",
                            summary="dead-lettered")  # fmt: skip
        began = time.monotonic()
        try:
            with pytest.raises(TargetUnavailable, match=r"webhook: no whole answer within 2 s"):
                await asyncio.wait_for(alerts._post(channel, event), 10)
        finally:
            await alerts._http.aclose()
    assert time.monotonic() - began < 3.5
