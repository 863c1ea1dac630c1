"""The one registry of connector kinds: what a ``[systems.NAME]`` block of a deployment file may say, and
what casebridge builds for it (target and source connectors, feed publishers and reporters).

Adding a case system is one connector package plus one entry here: a settings model (its block in the
deployment file) and a ``build`` that turns it into connectors and loops. Nothing else names a system: the
composition root (``casebridge/stack.py``) builds whatever the deployment file lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from connectors import Source, Target
from connectors._feed import Remap
from connectors.care_director import CareDirectorConnector, CareDirectorPublisher
from connectors.ehm import AllocationReporter, EhmConnector, StepUpPublisher
from connectors.intake import STORE_NAME, IntakeCaller, IntakeServer, IntakeSettings, IntakeSource
from connectors.kafka import Kafka
from connectors.lcs import DecisionReporter, LcsConnector, LcsPublisher
from connectors.mailbox import MailboxConnector, MailboxSettings
from connectors.ted import TedConnector, TedPublisher
from contracts import CaseSystem, Council
from router.settings import Topics

from .secrets import SecretRef


class Loop(Protocol):
    """A side loop of a deployment (a feed publisher, a reporter, an intake server)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = ...) -> None: ...


@dataclass(frozen=True)
class Wiring:
    """What every kind's ``build`` is given: where Kafka is, the topics, the state folder, the council."""

    kafka: Kafka
    topics: Topics
    state_dir: Path
    #: the council whose requests this system's feeds publish (the block's ``council``, else the deployment's)
    council: Council
    #: the system's name in the deployment file (cursor files are named after it)
    name: str


@dataclass
class Built:
    """What one system of the deployment file becomes."""

    targets: dict[CaseSystem, Target] = field(default_factory=dict)
    sources: dict[CaseSystem, Source] = field(default_factory=dict)
    loops: list[Any] = field(default_factory=list)


class SystemConfig(BaseModel):
    """The settings every ``[systems.NAME]`` block shares."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    kind: str
    #: the council whose requests this system's feeds carry; default: the deployment's one council
    council: Council | None = None


class HttpSystem(SystemConfig):
    """A case system reached over HTTPS by URL and bearer token (LCS, EHM, TED, Care Director)."""

    url: str = Field(pattern=r"^https?://[^\s]+$", description="the system's API base URL")
    token: SecretRef
    #: run this system's feed publishers and reporters (false: the connector only, e.g. a second deployment
    #: that only delivers to it)
    feeds: bool = True


class LcsSystem(HttpSystem):
    kind: Literal["lcs"] = "lcs"


class EhmSystem(HttpSystem):
    kind: Literal["ehm"] = "ehm"


class TedSystem(HttpSystem):
    kind: Literal["ted"] = "ted"


class CareDirectorSystem(HttpSystem):
    kind: Literal["care-director"] = "care-director"


class MailboxSystem(SystemConfig):
    """Team mailboxes over an SMTP relay (STARTTLS and AUTH required); keys as the README's mailbox table."""

    kind: Literal["mailbox"] = "mailbox"
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    username: str = Field(min_length=1)
    password: SecretRef
    sender: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    #: the relay's CA (PEM); absent: the system's trust store
    ca_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0)
    mailboxes: dict[str, str] = Field(min_length=1)
    max_connections: int = Field(default=4, ge=1, le=64)

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = value if value.is_absolute() else Path((info.context or {}).get("base", ".")) / value
        if not path.is_file():
            raise PydanticCustomError("file_missing", "no such file: {path}", {"path": str(path)})
        return path

    def mail_settings(self, state_dir: Path | None) -> MailboxSettings:
        return MailboxSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password.value,
            sender=self.sender,
            ca_file=self.ca_file,
            timeout=self.timeout,
            mailboxes=self.mailboxes,
            ledger=None if state_dir is None else state_dir / "mailbox-sent.sqlite3",
            max_connections=self.max_connections,
        )


class IntakeCallerConfig(BaseModel):
    """One team (or e-mail-to-form tool) that may post to the intake, for one council."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@\-]*$")
    token: SecretRef
    council: Council
    #: the source systems it posts for (default: the team mailbox)
    sources: list[CaseSystem] = Field(default_factory=lambda: [CaseSystem.MAILBOX], min_length=1)


class IntakeSystem(SystemConfig):
    """The intake: an authenticated HTTP endpoint where a team with no case system posts its transfers, and
    the team mailbox as the router's source (its record's state and closure kept in the intake's store)."""

    kind: Literal["intake"] = "intake"
    host: str = "127.0.0.1"
    port: int = Field(default=8110, ge=0, le=65535)
    callers: list[IntakeCallerConfig] = Field(min_length=1)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    def intake_settings(self) -> IntakeSettings:
        callers = [IntakeCaller(name=c.name, token=c.token.value, council=c.council, sources=frozenset(c.sources))
                   for c in self.callers]  # fmt: skip
        return IntakeSettings(host=self.host, port=self.port, callers=callers, max_body_bytes=self.max_body_bytes)


def _cursor(w: Wiring, feed: str) -> Path:
    return w.state_dir / f"{w.name}-{feed}-cursor.json"


def _remap(w: Wiring, feed: str) -> Remap:
    """Where a feed publisher follows the replayed map-stage dead letters (its own consumer group)."""
    t = w.topics
    return Remap(t.remap, t.parking, t.events, f"{t.prefix}-remap-{w.name}-{feed}", t.audit)


def _lcs(c: LcsSystem, w: Wiring) -> Built:
    # one connector (one HTTP client) per use: each is started and stopped by its user
    def new() -> LcsConnector:
        return LcsConnector(c.url, c.token.value)

    loops: list[Any] = []
    if c.feeds:
        loops = [
            LcsPublisher(new(), w.kafka, w.topics.transfers, w.topics.dead_letter,
                         _cursor(w, "stepdowns"), council=w.council, remap=_remap(w, "stepdowns")),
            DecisionReporter(new(), w.kafka, w.topics.events, _cursor(w, "decisions")),
        ]  # fmt: skip
    return Built({CaseSystem.LCS: new()}, {CaseSystem.LCS: new()}, loops)


def _ehm(c: EhmSystem, w: Wiring) -> Built:
    def new() -> EhmConnector:
        return EhmConnector(c.url, c.token.value)

    loops: list[Any] = []
    if c.feeds:
        loops = [
            StepUpPublisher(new(), w.kafka, w.topics.transfers, w.topics.dead_letter,
                            _cursor(w, "stepups"), council=w.council, remap=_remap(w, "stepups")),
            AllocationReporter(new(), w.kafka, w.topics.events, _cursor(w, "allocations")),
        ]  # fmt: skip
    return Built({CaseSystem.EHM: new()}, {CaseSystem.EHM: new()}, loops)


def _ted(c: TedSystem, w: Wiring) -> Built:
    def new() -> TedConnector:
        return TedConnector(c.url, c.token.value)

    loops: list[Any] = []
    if c.feeds:
        loops = [TedPublisher(new(), w.kafka, w.topics.transfers, w.topics.dead_letter,
                              _cursor(w, "stepdowns"), council=w.council, remap=_remap(w, "stepdowns"))]  # fmt: skip
    return Built({CaseSystem.TED: new()}, {CaseSystem.TED: new()}, loops)


def _care_director(c: CareDirectorSystem, w: Wiring) -> Built:
    def new() -> CareDirectorConnector:
        return CareDirectorConnector(c.url, c.token.value)

    loops: list[Any] = []
    if c.feeds:
        loops = [CareDirectorPublisher(new(), w.kafka, w.topics.transfers, w.topics.dead_letter,
                                       _cursor(w, "stepdowns"), council=w.council,
                                       remap=_remap(w, "stepdowns"))]  # fmt: skip
    return Built({CaseSystem.CARE_DIRECTOR: new()}, {CaseSystem.CARE_DIRECTOR: new()}, loops)


def _mailbox(c: MailboxSystem, w: Wiring) -> Built:
    return Built({CaseSystem.MAILBOX: MailboxConnector(c.mail_settings(w.state_dir))})


def _intake(c: IntakeSystem, w: Wiring) -> Built:
    store = w.state_dir / STORE_NAME
    server = IntakeServer(c.intake_settings(), w.kafka, w.topics, store)
    return Built(sources={CaseSystem.MAILBOX: IntakeSource(store)}, loops=[server])


@dataclass(frozen=True)
class Kind:
    """One kind of system a deployment file can name."""

    name: str
    config: type[SystemConfig]
    build: Callable[[Any, Wiring], Built]
    #: what it serves, for ``casebridge config check`` and the pathway check (before anything is built)
    targets: tuple[CaseSystem, ...] = ()
    sources: tuple[CaseSystem, ...] = ()
    #: a one-line description of its loops, for ``config check``
    loops: str = ""

    @property
    def publishes(self) -> bool:
        """Whether its feeds publish transfers for one council (so the block needs a council where the
        deployment serves several); the intake's callers each name their own."""
        return bool(self.loops) and self.name != "intake"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("lcs", LcsSystem, _lcs, (CaseSystem.LCS,), (CaseSystem.LCS,),
             "step-down request feed, Front Door decision feed"),
        Kind("ehm", EhmSystem, _ehm, (CaseSystem.EHM,), (CaseSystem.EHM,), "step-up request feed, allocation feed"),
        Kind("ted", TedSystem, _ted, (CaseSystem.TED,), (CaseSystem.TED,), "step-down request feed"),
        Kind("care-director", CareDirectorSystem, _care_director, (CaseSystem.CARE_DIRECTOR,),
             (CaseSystem.CARE_DIRECTOR,), "step-down referral feed"),
        Kind("mailbox", MailboxSystem, _mailbox, (CaseSystem.MAILBOX,), ()),
        Kind("intake", IntakeSystem, _intake, (), (CaseSystem.MAILBOX,), "HTTP intake of transfers"),
    )
}  # fmt: skip
