"""Helpers for the monitor's tests: a monitor web server on a free port, tokens, polling its API."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from aiokafka.structs import ConsumerRecord

import router.flow
from casebridge.localdeploy import free_port
from contracts import CaseSystem, Council, Direction, ServiceLevel, TransferEvent, TransferMessage, TransferRequested
from mappings import load_protocols
from monitor import Monitor, MonitorSettings, TokenGrant, create_app
from router.flow import TransferFlow
from router.settings import RetrySettings, Topics
from sandboxes import ServerHandle, serve

VIEWER_TOKEN = "viewer-token-synthetic-0001-0123456789abcdefgh"
OPERATOR_TOKEN = "operator-token-synthetic-0001-0123456789abcdefgh"
OPERATOR_NAME = "ops-duty-1"


def monitor_settings(db: Path) -> MonitorSettings:
    tokens = [
        {"token": VIEWER_TOKEN, "name": "viewer-1", "role": "viewer"},
        {"token": OPERATOR_TOKEN, "name": OPERATOR_NAME, "role": "operator"},
    ]
    return MonitorSettings(db=db, tokens=[TokenGrant.model_validate(t) for t in tokens], lag_interval_seconds=1.0)


@contextmanager
def running_monitor(bootstrap: str, prefix: str, db: Path) -> Iterator[tuple[ServerHandle, Monitor]]:
    """The monitor web app (tracker and watch included) on a free port, in its own thread."""
    monitor = Monitor(monitor_settings(db), bootstrap, Topics(prefix))
    handle = serve(create_app(monitor), "127.0.0.1", 0)
    try:
        yield handle, monitor
    finally:
        handle.stop()


def auth(token: str = VIEWER_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_json(url: str, token: str = VIEWER_TOKEN) -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(url, headers=auth(token))
        r.raise_for_status()
        return r.json()


async def wait_for(url: str, ok: Callable[[Any], bool], timeout: float = 90.0, token: str = VIEWER_TOKEN) -> Any:
    """Poll a JSON endpoint until ``ok(body)``; fail with the last body seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body: Any = None
    while loop.time() < deadline:
        body = await get_json(url, token)
        if ok(body):
            return body
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting on {url}: {json.dumps(body)[:2000]}")


# -- `casebridge monitor` as a process of its own (the fault suite) ---------------------------


def requested_events(prefix: str, n: int) -> list[TransferEvent]:
    """``n`` synthetic ``requested`` events, one transfer each (ids only: no personal data)."""
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    return [
        TransferRequested(
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}/{i}/requested")),
            transfer_id=f"{prefix}-{i:05d}",
            council=Council.NORTH_SOMERSET,
            occurred_at=at + timedelta(seconds=i),
            direction=Direction.STEP_DOWN,
            from_level=ServiceLevel.CHILD_IN_NEED,
            to_level=ServiceLevel.EARLY_HELP,
            from_system=CaseSystem.LCS,
            to_system=CaseSystem.EHM,
        )
        for i in range(n)
    ]


def keyed(events: list[TransferEvent]) -> list[tuple[bytes | None, bytes]]:
    return [((e.transfer_id or "").encode(), e.model_dump_json().encode()) for e in events]


def stored_event_ids(db: Path) -> list[str]:
    """Every event id in the monitor's store, read with a connection of its own (WAL: never waits on the writer)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [r[0] for r in con.execute("SELECT event_id FROM events")]
    finally:
        con.close()


@dataclass
class MonitorProcess:
    url: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def monitor_process(
    bootstrap: str, prefix: str, db: Path, workdir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[MonitorProcess]:
    """``casebridge monitor`` on a free port as a subprocess, its output in ``workdir/monitor.log``; stopped after."""
    port = free_port()
    tokens = [
        {"token": VIEWER_TOKEN, "name": "viewer-1", "role": "viewer"},
        {"token": OPERATOR_TOKEN, "name": OPERATOR_NAME, "role": "operator"},
    ]
    env = {
        **os.environ,
        "CASEBRIDGE_BOOTSTRAP_SERVERS": bootstrap,
        "CASEBRIDGE_TOPIC_PREFIX": prefix,
        "CASEBRIDGE_MONITOR__TOKENS": json.dumps(tokens),
        "CASEBRIDGE_MONITOR__DB": str(db),
        "CASEBRIDGE_MONITOR__LAG_INTERVAL_SECONDS": "0.5",
        **(extra_env or {}),
    }
    log = workdir / "monitor.log"
    command = [sys.executable, "-m", "casebridge", "monitor", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None, f"casebridge monitor exited: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "casebridge monitor did not start in 60 s"
                time.sleep(0.3)
        yield MonitorProcess(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class _Events:
    """A flow's sink that keeps the events it emits as the events topic holds them: (key, value)."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    async def emit(self, event: Any) -> None:
        self.records.append((str(event.transfer_id).encode(), event.model_dump_json().encode()))

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        self.records.append((transfer_id.encode(), value))

    async def dead_letter(self, record: Any, failure: Any) -> None:
        return None

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        return None


async def router_events(doc: dict[str, Any], handled: datetime, monkeypatch: Any) -> list[tuple[bytes, bytes]]:
    """The events the router writes when it handles transfer ``doc`` at ``handled`` (its clock set there), with no
    connectors (the request is all it gets to): each as the events topic's (key, value)."""
    micros = (handled - datetime.fromtimestamp(0, handled.tzinfo)) // timedelta(microseconds=1)
    clock = SimpleNamespace(time_ns=lambda: micros * 1000, monotonic=time.monotonic)
    monkeypatch.setattr(router.flow, "time", clock)
    flow = TransferFlow(load_protocols(), {}, {}, RetrySettings(), "g")
    raw = TransferMessage.model_validate(doc).model_dump_json().encode()
    sink = _Events()
    await flow.run(ConsumerRecord("t", 0, 0, 0, 0, b"k", raw, None, 1, len(raw), []), sink)
    return sink.records
