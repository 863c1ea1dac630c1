"""A council deployed as a council deploys it: its sandboxes, a deployment file, and ``casebridge run --config``
as a subprocess (``casebridge/localdeploy.py``); the test drives the systems and the CLI only."""

from __future__ import annotations

import email
import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from casebridge.localdeploy import (
    COUNCIL_SYSTEMS,
    RunningDeployment,
    Sandboxes,
    casebridge_command,
    deployment_file,
    free_port,
    sandboxes,
)
from contracts import TransferEvent
from tests.support import events_of, read

QUICK_RETRY = {"attempts": 2, "initial_seconds": 0.05, "max_seconds": 0.2, "total_seconds": 2.0, "tiers": [3.0, 6.0]}


@dataclass
class Deployed:
    council: str
    systems: Sandboxes
    bootstrap: str
    prefix: str
    config: Path
    env: dict[str, str]
    log: Path
    run: RunningDeployment

    def restart(self) -> None:
        """Stop ``casebridge run`` (SIGTERM, exit 0 expected) and start it again on the same file and state."""
        code = self.run.stop()
        assert 0 == code, self.run.output()[-2000:]
        self.run = RunningDeployment(self.config, self.env, self.log).start()

    async def events(self, until: dict[str, str], timeout: float = 90.0) -> dict[str, list[TransferEvent]]:
        """Each transfer's events, read until every transfer in ``until`` has its event type."""

        def done(records: list[Any]) -> bool:
            seen = {(e.transfer_id, e.event_type) for e in events_of(records)}
            return all((tid, kind) in seen for tid, kind in until.items())

        records = await read(self.bootstrap, f"{self.prefix}.events", done, timeout=timeout)
        by: dict[str, list[TransferEvent]] = {}
        for e in events_of(records):
            by.setdefault(e.transfer_id or "", []).append(e)
        missing = {t: k for t, k in until.items() if k not in [e.event_type for e in by.get(t, [])]}
        assert not missing, f"no {missing} in {timeout:.0f} s; events {_types(by)}\n{self.run.output()[-3000:]}"
        return by

    async def dead_letters(self, n: int, timeout: float = 30.0) -> list[dict[str, str]]:
        records = await read(self.bootstrap, f"{self.prefix}.dlq", lambda r: len(r) >= n, timeout=timeout)
        return [{k: v.decode() for k, v in r.headers} for r in records]

    def mails(self) -> list[EmailMessage]:
        relay = self.systems.relay
        assert relay is not None
        found = [email.message_from_bytes(m, policy=default_policy) for m in relay.messages()]
        return [m for m in found if isinstance(m, EmailMessage)]

    def post(self, doc: dict[str, Any]) -> httpx.Response:
        """A team's form posting a transfer to the intake."""
        url = f"http://127.0.0.1:{self.systems.intake_port}/api/transfers"
        headers = {"Authorization": f"Bearer {self.systems.intake_token}"}
        return httpx.post(url, json=doc, headers=headers, timeout=30)

    def post_status(self, transfer_id: str) -> dict[str, Any]:
        """What the intake tells the team about a transfer it posted."""
        url = f"http://127.0.0.1:{self.systems.intake_port}/api/transfers/{transfer_id}"
        answer = httpx.get(url, headers={"Authorization": f"Bearer {self.systems.intake_token}"}, timeout=30)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``casebridge`` command run as an operator runs it (Kafka and the prefix from the environment)."""
        env = {**self.run.env, "CASEBRIDGE_BOOTSTRAP_SERVERS": self.bootstrap, "CASEBRIDGE_TOPIC_PREFIX": self.prefix}
        return subprocess.run(
            [*casebridge_command(), *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )


@contextmanager
def deployed(
    council: str,
    work: Path,
    bootstrap: str,
    prefix: str,
    alerts: str = "",
    env: dict[str, str] | None = None,
) -> Iterator[Deployed]:
    """The council's sandboxes, its deployment file, and ``casebridge run --config`` on it; on leaving, the run is
    stopped with SIGTERM and must exit 0."""
    with sandboxes(work / "systems", COUNCIL_SYSTEMS[council]) as systems:
        text, secrets = deployment_file(
            council, systems, bootstrap=bootstrap, prefix=prefix, state_dir=work / "state", retry=QUICK_RETRY,
            alerts=alerts,
        )  # fmt: skip
        config = work / f"{council}.toml"
        config.write_text(text)
        log = work / "casebridge-run.log"
        secrets.update(env or {})
        run = RunningDeployment(config, secrets, log).start()
        d = Deployed(council, systems, bootstrap, prefix, config, secrets, log, run)
        try:
            yield d
        finally:
            if d.run.process is not None and d.run.process.poll() is None:
                code = d.run.stop()
                assert 0 == code, d.run.output()[-3000:]


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


def _types(by: dict[str, list[TransferEvent]]) -> dict[str, list[str]]:
    return {t: [e.event_type for e in es] for t, es in by.items()}


def types(events: list[TransferEvent]) -> list[str]:
    return [e.event_type for e in events]
