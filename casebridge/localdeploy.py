"""A council's deployment on this machine, the way a council runs one: the sandbox systems it talks to, a
deployment file for them, and ``casebridge run --config FILE`` as a process of its own.

``casebridge demo`` and the end-to-end tests use it; nothing here is wired into the router in-process: the
deployment file is the only thing that tells ``casebridge run`` what to talk to.
"""

from __future__ import annotations

import asyncio
import email
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import IO, Any

import httpx
from aiokafka import AIOKafkaConsumer

from connectors import kafka as clients
from connectors.kafka import Kafka
from contracts import TransferEvent, parse_event
from sandboxes import (
    SmtpSandbox,
    create_care_director_app,
    create_ehm_app,
    create_lcs_app,
    create_ted_app,
    serve,
)

#: the systems each seed council's deployment names (examples/ has the same, for a council's own hosts)
COUNCIL_SYSTEMS: dict[str, tuple[str, ...]] = {
    "north-somerset": ("lcs", "ehm"),
    "swindon": ("lcs", "ehm"),
    "swindon-2022": ("care-director", "mailbox", "intake"),
    "luton": ("intake", "mailbox"),
    "barnsley": ("ted", "mailbox", "intake"),
}
#: which source systems the intake's caller posts for: a team mailbox (Luton), or step-ups from a case
#: system that has no step-up feed (Care Director, TED)
INTAKE_SOURCES: dict[str, tuple[str, ...]] = {
    "swindon-2022": ("care-director",),
    "luton": ("mailbox",),
    "barnsley": ("ted",),
}
#: synthetic team mailboxes, keyed as the README's mailbox table
MAILBOXES: dict[str, dict[str, str]] = {
    "swindon-2022": {
        "swindon-2022:Early Help Hub": "ehhub@swindon.example",
        "swindon-2022:FISS": "fiss@swindon.example",
        "swindon-2022:MASH": "mash@swindon.example",
        "swindon-2022:step-down": "earlyhelp@swindon.example",
    },
    "luton": {
        "luton:Early Help Team": "earlyhelp-team@luton.example",
        "luton:Family Safeguarding Team": "family-safeguarding@luton.example",
        "luton:MASH": "mash@luton.example",
    },
    "barnsley": {
        "barnsley:Family Centre Development Team": "earlyhelp@barnsley.example",
        "barnsley:step-down": "earlyhelp@barnsley.example",
    },
}
_APPS = {"lcs": create_lcs_app, "ehm": create_ehm_app, "ted": create_ted_app, "care-director": create_care_director_app}


def free_port() -> int:
    """A free local port outside Linux's ephemeral range (32768-60999), where no outgoing socket lands."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


@dataclass
class Sandboxes:
    """The sandbox systems of one deployment, served from this process (HTTP threads and the SMTP relay)."""

    work: Path
    token: str
    urls: dict[str, str] = field(default_factory=dict)
    relay: SmtpSandbox | None = None
    intake_port: int = 0
    #: the intake's caller token (a team's form), at least 32 characters
    intake_token: str = ""


@contextmanager
def sandboxes(work: Path, systems: Sequence[str], token: str | None = None) -> Iterator[Sandboxes]:
    """Start the sandboxes ``systems`` names (``lcs``, ``ehm``, ``ted``, ``care-director``, ``mailbox`` for the
    SMTP relay; ``intake`` is casebridge's own and only gets a port)."""
    token = token or secrets.token_urlsafe(16)
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        found = Sandboxes(work, token)
        for kind in systems:
            if kind in _APPS:
                server = stack.enter_context(serve(_APPS[kind](work / f"{kind}.db", token), "127.0.0.1", 0))
                found.urls[kind] = server.url
            elif kind == "mailbox":
                found.relay = stack.enter_context(SmtpSandbox(work / "smtp", "casebridge", token))
            elif kind == "intake":
                found.intake_port = free_port()
                found.intake_token = secrets.token_urlsafe(32)
        yield found


def deployment_file(
    council: str,
    sandboxes: Sandboxes,
    *,
    bootstrap: str,
    prefix: str,
    state_dir: Path,
    retry: Mapping[str, Any] | None = None,
    alerts: str = "",
) -> tuple[str, dict[str, str]]:
    """The deployment file for ``council`` on ``sandboxes`` and the environment holding its secrets (the file
    only names them)."""
    env: dict[str, str] = {}
    lines = [
        f"# {council} on the local sandboxes (written by casebridge/localdeploy.py)",
        f'councils = ["{council}"]',
        "local_development = true  # this machine's sandboxes and local broker",
        f'bootstrap_servers = "{bootstrap}"',
        f'topic_prefix = "{prefix}"',
        f'state_dir = "{state_dir}"',
    ]
    if retry:
        lines += ["", "[retry]", *(f"{k} = {_toml(v)}" for k, v in retry.items())]
    for kind in COUNCIL_SYSTEMS[council]:
        variable = f"CB_LOCAL_{kind.upper().replace('-', '_')}_SECRET"
        if kind in _APPS:
            env[variable] = sandboxes.token
            lines += ["", f"[systems.{kind}]", f'kind = "{kind}"', f'url = "{sandboxes.urls[kind]}"',
                      f'token = {{ env = "{variable}" }}']  # fmt: skip
        elif kind == "mailbox":
            relay = sandboxes.relay
            assert relay is not None, "start the mailbox sandbox (the SMTP relay) first"
            env[variable] = sandboxes.token
            lines += ["", "[systems.mail]", 'kind = "mailbox"', 'host = "127.0.0.1"', f"port = {relay.port}",
                      'username = "casebridge"', f'password = {{ env = "{variable}" }}',
                      f'sender = "casebridge@{council}.example"', f'ca_file = "{relay.ca_file}"',
                      "", "[systems.mail.mailboxes]",
                      *(f'"{k}" = "{v}"' for k, v in MAILBOXES[council].items())]  # fmt: skip
        elif kind == "intake":
            env[variable] = sandboxes.intake_token
            lines += ["", "[systems.intake]", 'kind = "intake"', f"port = {sandboxes.intake_port}",
                      "", "[[systems.intake.callers]]", f'name = "{council}-team"', f'council = "{council}"',
                      f'token = {{ env = "{variable}" }}',
                      f"sources = {_toml(list(INTAKE_SOURCES[council]))}"]  # fmt: skip
    if alerts:
        lines += ["", alerts.strip()]
    return "\n".join(lines) + "\n", env


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def casebridge_command() -> list[str]:
    """The ``casebridge`` command of this installation (the script beside this Python, else ``-m``)."""
    script = Path(sys.executable).parent / "casebridge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "casebridge"]


class RunningDeployment:
    """``casebridge run --config FILE`` as a process of its own, its log in a file."""

    #: what ``casebridge run`` prints on stdout once its stack is up, at any log level
    READY = "casebridge run: started"

    def __init__(
        self, config: Path, env: Mapping[str, str], log: Path, level: str = "INFO", args: Sequence[str] = ()
    ) -> None:
        self.config = config
        #: more arguments of ``casebridge run`` (e.g. ``--state-dir``: one per process of a deployment)
        self.args = list(args)
        self.env = {**_clean(os.environ), **env, "CASEBRIDGE_LOG_LEVEL": level}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._started_at = 0

    def start(self, timeout: float = 90.0) -> RunningDeployment:
        """Start it and wait until its stack is up (its ``casebridge run: started`` line); raises with the log's tail
        if it exits first."""
        self._out = self.log.open("ab")
        self._started_at = self.log.stat().st_size
        self.process = subprocess.Popen(
            [*casebridge_command(), "run", "--config", str(self.config), *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.READY in self.output():
                return self
            if self.process.poll() is not None:
                self._out.close()
                raise RuntimeError(f"casebridge run exited {self.process.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.2)
        self.kill()
        self._out.close()
        raise TimeoutError(f"casebridge run did not start in {timeout:.0f} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        """What this run wrote to its log (since ``start``)."""
        with self.log.open("rb") as f:
            f.seek(self._started_at)
            return f.read().decode(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as a supervisor stops it; its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            if self._out is not None:
                self._out.close()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> RunningDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()


def _clean(environ: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its own ``CASEBRIDGE_*`` settings (the file says everything)."""
    return {k: v for k, v in environ.items() if not k.startswith("CASEBRIDGE_")}


class Events:
    """The deployment's events topic, read from the beginning into per-transfer timelines."""

    def __init__(self, bootstrap: Kafka, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.by_transfer: dict[str, list[TransferEvent]] = {}
        self._consumer: AIOKafkaConsumer | None = None

    async def until(self, wanted: Mapping[str, str], timeout: float = 90.0) -> dict[str, list[TransferEvent]]:
        """Read until every transfer in ``wanted`` has an event of its type (or the timeout); the timelines."""
        if self._consumer is None:
            self._consumer = clients.consumer(self.bootstrap, self.topic, auto_offset_reset="earliest", group_id=None)
            await self._consumer.start()
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.has(wanted) and asyncio.get_running_loop().time() < deadline:
            for records in (await self._consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    if r.value is not None:
                        e = parse_event(r.value)
                        self.by_transfer.setdefault(e.transfer_id or "", []).append(e)
        return self.by_transfer

    def has(self, wanted: Mapping[str, str]) -> bool:
        return all(kind in [e.event_type for e in self.by_transfer.get(t, [])] for t, kind in wanted.items())

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


@dataclass
class LocalDeployment:
    """One council deployed on this machine: its sandboxes, its deployment file, ``casebridge run`` on it, and
    the ways a person reaches it (the intake a team posts to, the SMTP relay's Maildir, the ``casebridge`` CLI)."""

    council: str
    systems: Sandboxes
    bootstrap: str
    prefix: str
    config: Path
    env: dict[str, str]
    log: Path
    run: RunningDeployment
    events: Events

    async def wait(self, until: Mapping[str, str], timeout: float = 90.0) -> dict[str, list[TransferEvent]]:
        """Each transfer's events, read until every transfer in ``until`` has its event type; TimeoutError (with
        what arrived and the run's log) if one does not in ``timeout`` seconds."""
        by = await self.events.until(until, timeout)
        missing = {t: k for t, k in until.items() if k not in [e.event_type for e in by.get(t, [])]}
        if missing:
            seen = {t: [e.event_type for e in es] for t, es in by.items()}
            raise TimeoutError(f"no {missing} in {timeout:.0f} s; events {seen}\n{self.run.output()[-3000:]}")
        return by

    async def dead_letters(self, n: int, timeout: float = 30.0) -> list[dict[str, str]]:
        """The context headers of the first ``n`` dead letters (fewer if the timeout passes first)."""
        consumer = clients.consumer(self.bootstrap, f"{self.prefix}.dlq", auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        found: list[dict[str, str]] = []
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while len(found) < n and asyncio.get_running_loop().time() < deadline:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    found += [{k: v.decode(errors="replace") for k, v in r.headers} for r in records]
        finally:
            await consumer.stop()
        return found

    def restart(self) -> None:
        """Stop ``casebridge run`` (SIGTERM; it must exit 0) and start it again on the same file and state."""
        code = self.run.stop()
        if code != 0:
            raise RuntimeError(f"casebridge run exited {code}:\n{self.run.output()[-2000:]}")
        self.run = RunningDeployment(
            self.config, self.env, self.log, level=self.run.env["CASEBRIDGE_LOG_LEVEL"]
        ).start()

    def mails(self) -> list[EmailMessage]:
        """Every mail the relay accepted for the team mailboxes, in the order it accepted them."""
        if self.systems.relay is None:
            return []
        found = [email.message_from_bytes(m, policy=default_policy) for m in self.systems.relay.messages()]
        return [m for m in found if isinstance(m, EmailMessage)]

    def post(self, doc: Mapping[str, Any]) -> httpx.Response:
        """A team's form posting a transfer to the intake."""
        url = f"http://127.0.0.1:{self.systems.intake_port}/api/transfers"
        headers = {"Authorization": f"Bearer {self.systems.intake_token}"}
        return httpx.post(url, json=dict(doc), headers=headers, timeout=30)

    def post_status(self, transfer_id: str) -> dict[str, Any]:
        """What the intake tells the team about a transfer it posted."""
        url = f"http://127.0.0.1:{self.systems.intake_port}/api/transfers/{transfer_id}"
        answer = httpx.get(url, headers={"Authorization": f"Bearer {self.systems.intake_token}"}, timeout=30)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``casebridge`` command, run as an operator runs it (Kafka and the prefix from the environment)."""
        env = {**self.run.env, "CASEBRIDGE_BOOTSTRAP_SERVERS": self.bootstrap, "CASEBRIDGE_TOPIC_PREFIX": self.prefix}
        return subprocess.run(
            [*casebridge_command(), *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )


@asynccontextmanager
async def deployed(
    council: str,
    work: Path,
    bootstrap: str,
    prefix: str,
    *,
    retry: Mapping[str, Any] | None = None,
    alerts: str = "",
    env: Mapping[str, str] | None = None,
    level: str = "INFO",
) -> AsyncIterator[LocalDeployment]:
    """The council's sandboxes, its deployment file, and ``casebridge run --config`` on it; on leaving, the run
    is stopped with SIGTERM (an exit other than 0 is an error)."""
    with sandboxes(work / "systems", COUNCIL_SYSTEMS[council]) as systems:
        text, secrets_env = deployment_file(
            council, systems, bootstrap=bootstrap, prefix=prefix, state_dir=work / "state", retry=retry, alerts=alerts
        )
        config = work / f"{council}.toml"
        config.write_text(text)
        secrets_env.update(env or {})
        log = work / "casebridge-run.log"
        run = RunningDeployment(config, secrets_env, log, level=level).start()
        d = LocalDeployment(council, systems, bootstrap, prefix, config, secrets_env, log, run,
                            Events(bootstrap, f"{prefix}.events"))  # fmt: skip
        try:
            yield d
        finally:
            await d.events.stop()
            if d.run.process is not None and d.run.process.poll() is None:
                code = d.run.stop()
                if code != 0:
                    raise RuntimeError(f"casebridge run exited {code}:\n{d.run.output()[-3000:]}")
