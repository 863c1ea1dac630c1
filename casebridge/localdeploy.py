"""A council's deployment on this machine, the way a council runs one: the sandbox systems it talks to, a
deployment file for them, and ``casebridge run --config FILE`` as a process of its own.

``casebridge demo`` and the end-to-end tests use it; nothing here is wired into the router in-process: the
deployment file is the only thing that tells ``casebridge run`` what to talk to.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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

    READY = "deployment_started"

    def __init__(self, config: Path, env: Mapping[str, str], log: Path, level: str = "INFO") -> None:
        self.config = config
        self.env = {**_clean(os.environ), **env, "CASEBRIDGE_LOG_LEVEL": level}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._started_at = 0

    def start(self, timeout: float = 90.0) -> RunningDeployment:
        """Start it and wait until its stack is up (its ``deployment_started`` line); raises with the log's tail
        if it exits first."""
        self._out = self.log.open("ab")
        self._started_at = self.log.stat().st_size
        self.process = subprocess.Popen(
            [*casebridge_command(), "run", "--config", str(self.config)],
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
                raise RuntimeError(f"casebridge run exited {self.process.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.2)
        self.kill()
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
