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
