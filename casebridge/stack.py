"""One casebridge deployment in a process: the router, the allocation notices (LU-7), the closure scheduler
(LU-4, SW22-10, NS-12, BA-9), and for each system the deployment file names (``casebridge/registry.py``) its
connectors and its feed publishers and reporters.

Used by ``casebridge run --config`` (with loops) and by the end-to-end tests (polling by hand, to control
timing). The case systems are reached by URL; nothing is required but what the deployment names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from connectors import CasebridgeError, Source, Target
from connectors.ehm import AllocationReporter, StepUpPublisher
from connectors.lcs import DecisionReporter, LcsPublisher
from contracts import CaseSystem, Council
from mappings import load_protocols
from router import Router, Settings, build_router
from router.alerts import AlertDispatcher
from router.closures import ClosureScheduler, utc_now
from router.notices import AllocationNotices

from .registry import KINDS, MailboxSystem, SystemConfig, Wiring

if TYPE_CHECKING:
    from .deployment import Deployment

T = TypeVar("T")

log = structlog.get_logger("casebridge.stack")


class _Loop(Protocol):
    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = ...) -> None: ...


def stack_from_deployment(deployment: Deployment, state_dir: Path | None = None, **kwargs: Any) -> Stack:
    """The stack ``casebridge run --config FILE`` runs: every system the deployment file names, nothing else."""
    return Stack(
        deployment.settings,
        state_dir or deployment.state_dir,
        systems=deployment.systems,
        councils=deployment.councils,
        alerts=deployment.alerts,
        **kwargs,
    )


@dataclass
class Stack:
    settings: Settings
    state_dir: Path
    #: the case systems and channels by name, as a deployment file's ``[systems.NAME]`` blocks (the registry
    #: builds each one's connectors and loops)
    systems: Mapping[str, SystemConfig] = field(default_factory=dict)
    #: the councils served (their protocols are loaded); None: every protocol shipped (tests)
    councils: tuple[Council, ...] | None = None
    #: alert channels by name (``[alerts.NAME]``)
    alerts: Mapping[str, Any] = field(default_factory=dict)
    loops: bool = True
    poll_interval: float = 0.3
    #: connectors and loops handed in by the caller (tests' in-memory systems); they win over the systems'
    extra_targets: dict[CaseSystem, Target] = field(default_factory=dict)
    extra_sources: dict[CaseSystem, Source] = field(default_factory=dict)
    extra_publishers: list[Any] = field(default_factory=list)
    #: the closure scheduler's clock (tests move it on to see LU-4's 10 days pass)
    clock: Callable[[], datetime] = utc_now
    router: Router = field(init=False)
    notices: AllocationNotices = field(init=False)
    closures: ClosureScheduler = field(init=False)
    #: the systems' feed publishers, reporters and servers, then the caller's
    feeds: list[Any] = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    #: the loop that died, if one did (``casebridge run`` then exits 4)
    failed: str | None = field(default=None, init=False)
    #: why it died, in casebridge's own words (no values), or the error class
    failure: str | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        topics = self.settings.topics
        targets: dict[CaseSystem, Target] = {}
        sources: dict[CaseSystem, Source] = {}
        feeds: list[Any] = []
        default_council = self.councils[0] if self.councils else self.settings.council
        for name, config in self.systems.items():
            wiring = Wiring(
                kafka=self.settings.connection,
                topics=topics,
                state_dir=self.state_dir,
                council=config.council or default_council,
                name=name,
            )
            built = KINDS[config.kind].build(config, wiring)
            targets.update(built.targets)
            sources.update(built.sources)
            feeds += built.loops
        protocols = load_protocols()
        if self.councils is not None:
            protocols = {c: p for c, p in protocols.items() if c in self.councils}
        self.router = build_router(
            self.settings,
            targets={**targets, **self.extra_targets},
            sources={**sources, **self.extra_sources},
            protocols=protocols,
        )
        if self.alerts:
            mail = next((c for c in self.systems.values() if isinstance(c, MailboxSystem)), None)
            feeds.append(
                AlertDispatcher(
                    self.settings.connection,
                    topics,
                    f"{self.settings.group_id}-alerts",
                    dict(self.alerts),
                    mail.mail_settings(None) if mail is not None else None,
                    self.state_dir,
                )
            )
        self.feeds = [*feeds, *self.extra_publishers]
        self.notices = AllocationNotices(self.settings, self.router.flow.targets)
        self.closures = ClosureScheduler(self.settings, self.router.flow.sources, self.router.flow.targets, self.clock)

    def feed(self, kind: type[T]) -> T:
        """The one loop of this type (e.g. ``stack.feed(LcsPublisher)``)."""
        found = [f for f in self.feeds if isinstance(f, kind)]
        if len(found) != 1:
            raise LookupError(f"{len(found)} loops of type {kind.__name__} in this stack")
        return found[0]

    @property
    def publisher(self) -> LcsPublisher:
        return self.feed(LcsPublisher)

    @property
    def stepups(self) -> StepUpPublisher:
        return self.feed(StepUpPublisher)

    @property
    def reporter(self) -> AllocationReporter:
        return self.feed(AllocationReporter)

    @property
    def decisions(self) -> DecisionReporter:
        return self.feed(DecisionReporter)

    async def start(self) -> None:
        await self.router.start()
        await self.notices.start()
        for feed in self.feeds:
            await feed.start()
        await self.closures.start()
        if self.loops:
            stop = lambda: self._stopping  # noqa: E731
            parts: list[_Loop] = [self.notices, self.closures, *self.feeds]
            for part in parts:
                task = asyncio.create_task(part.run(self.poll_interval, stop), name=type(part).__name__)
                task.add_done_callback(self._loop_ended)
                self._tasks.append(task)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """A loop that dies (not stopped) stops the whole stack, so ``casebridge run`` exits non-zero and its
        supervisor restarts it; every loop resumes from its durable cursor or committed offsets."""
        if task.cancelled() or task.exception() is None or self._stopping:
            return
        exc = task.exception()
        # an HTTP boundary error names the system, the call (ids blanked) and the status; any other may hold data
        reason = str(exc) if isinstance(exc, CasebridgeError) and exc.templated else None
        log.error("loop_failed", loop=task.get_name(), error_class=type(exc).__name__, reason=reason)
        self.failed = task.get_name()
        self.failure = reason or type(exc).__name__
        self.router.stopped.set()

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for feed in reversed(self.feeds):
            await feed.stop()
        await self.closures.stop()
        await self.notices.stop()
        await self.router.stop()

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # what did start is stopped again (no client left open)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
