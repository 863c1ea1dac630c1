"""Helpers for the monitor's tests: a monitor web server on a free port, tokens, polling its API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from monitor import Monitor, MonitorSettings, TokenGrant, create_app
from router.settings import Topics
from sandboxes import ServerHandle, serve

VIEWER_TOKEN = "viewer-token-synthetic-0001-0123456789"
OPERATOR_TOKEN = "operator-token-synthetic-0001-0123456789"
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
