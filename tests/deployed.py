"""A council deployed as a council deploys it (``casebridge/localdeploy.py``: its sandboxes, a deployment file,
``casebridge run --config`` as a subprocess); the test drives the systems and the CLI only."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from casebridge.localdeploy import LocalDeployment, casebridge_command, free_port
from casebridge.localdeploy import deployed as local
from casebridge.localkafka import LocalKafka
from contracts import TransferEvent

QUICK_RETRY = {"attempts": 2, "initial_seconds": 0.05, "max_seconds": 0.2, "total_seconds": 2.0, "tiers": [3.0, 6.0]}


@asynccontextmanager
async def deployed(
    council: str,
    work: Path,
    bootstrap: str,
    prefix: str,
    alerts: str = "",
    env: dict[str, str] | None = None,
    level: str = "INFO",
) -> AsyncIterator[LocalDeployment]:
    """The council deployed (``casebridge.localdeploy.deployed``) with quick retries; SIGTERM must end it with 0."""
    async with local(council, work, bootstrap, prefix, retry=QUICK_RETRY, alerts=alerts, env=env, level=level) as d:
        yield d


@dataclass
class Webhook:
    """A local webhook receiver: what each POST carried."""

    port: int
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"


@contextmanager
def webhook() -> Iterator[Webhook]:
    hook = Webhook(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hook.bodies.append(json.loads(body))
            hook.headers.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", hook.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def types(events: list[TransferEvent]) -> list[str]:
    return [e.event_type for e in events]


def secured_cli(broker: LocalKafka, prefix: str, principal: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A ``casebridge`` command as an operator runs it against the secured local broker, with ``principal``'s
    credentials in CASEBRIDGE_KAFKA__* (the password by file) and no other CASEBRIDGE_ setting of this process."""
    files = broker.secure_files
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASEBRIDGE_")}
    env.update(
        CASEBRIDGE_BOOTSTRAP_SERVERS=broker.bootstrap,
        CASEBRIDGE_TOPIC_PREFIX=prefix,
        CASEBRIDGE_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        CASEBRIDGE_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        CASEBRIDGE_KAFKA__USERNAME=principal,
        CASEBRIDGE_KAFKA__PASSWORD_FILE=str(files.password_file(principal)),
        CASEBRIDGE_KAFKA__CA_FILE=str(files.ca_file),
    )
    return subprocess.run(
        [*casebridge_command(), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )
