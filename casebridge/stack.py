"""One casebridge deployment in a process: router, LCS publisher, EHM step-up publisher, allocation reporter,
allocation notices (LU-7), the closure scheduler (LU-4, SW22-10, NS-12) and, where the settings name them,
the TED and Care Director connectors and change-feed publishers.

Used by ``casebridge run`` and ``casebridge demo`` (with loops) and by the end-to-end
tests (polling by hand, to control timing). The case systems are reached by URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog
from pydantic import SecretStr

from connectors import FeedPublisher, Source, Target
from connectors.care_director import CareDirectorConnector, CareDirectorPublisher
from connectors.ehm import AllocationReporter, EhmConnector, StepUpPublisher
from connectors.lcs import DecisionReporter, LcsConnector, LcsPublisher
from connectors.ted import TedConnector, TedPublisher
from contracts import CaseSystem
from router import Router, Settings, build_router
from router.closures import ClosureScheduler, utc_now
from router.notices import AllocationNotices

log = structlog.get_logger("casebridge.stack")


class _Loop(Protocol):
    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = ...) -> None: ...


def stack_from_settings(settings: Settings, state_dir: Path) -> Stack:
    """The stack ``casebridge run`` runs: LCS and EHM (required), TED and Care Director where the settings name them."""
    if settings.lcs is None or settings.ehm is None:
        raise ValueError("CASEBRIDGE_LCS__URL/__TOKEN and CASEBRIDGE_EHM__URL/__TOKEN are required")
    return Stack(settings, settings.lcs.url, settings.lcs.token, settings.ehm.url, settings.ehm.token, state_dir)


@dataclass
class Stack:
    settings: Settings
    lcs_url: str
    lcs_token: SecretStr
    ehm_url: str
    ehm_token: SecretStr
    state_dir: Path
    loops: bool = True
    poll_interval: float = 0.3
    #: connectors for the other case systems and channels (Care Director, TED, team mailboxes)
    extra_targets: dict[CaseSystem, Target] = field(default_factory=dict)
    extra_sources: dict[CaseSystem, Source] = field(default_factory=dict)
    #: change-feed publishers of the other case systems (TED's step-down requests), run beside LCS's
    extra_publishers: list[FeedPublisher] = field(default_factory=list)
    #: the closure scheduler's clock (the demo and tests move it on to see LU-4's 10 days pass)
    clock: Callable[[], datetime] = utc_now
    router: Router = field(init=False)
    publisher: LcsPublisher = field(init=False)
    reporter: AllocationReporter = field(init=False)
    stepups: StepUpPublisher = field(init=False)
    decisions: DecisionReporter = field(init=False)
    notices: AllocationNotices = field(init=False)
    closures: ClosureScheduler = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    #: the loop that died, if one did (``casebridge run`` then exits 4)
    failed: str | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        topics = self.settings.topics
        self._configured_systems()
        # LCS and EHM each serve both directions: step-downs LCS -> EHM, step-ups EHM -> LCS (Front Door)
        self.router = build_router(
            self.settings,
            targets={
                CaseSystem.EHM: EhmConnector(self.ehm_url, self.ehm_token),
                CaseSystem.LCS: LcsConnector(self.lcs_url, self.lcs_token),
                **self.extra_targets,
            },
            sources={
                CaseSystem.LCS: LcsConnector(self.lcs_url, self.lcs_token),
                CaseSystem.EHM: EhmConnector(self.ehm_url, self.ehm_token),
                **self.extra_sources,
            },
        )
        self.publisher = LcsPublisher(
            LcsConnector(self.lcs_url, self.lcs_token),
            self.settings.bootstrap_servers,
            topics.transfers,
            topics.dead_letter,
            cursor=self.state_dir / "lcs-cursor.json",
            council=self.settings.council,
        )
        self.decisions = DecisionReporter(
            LcsConnector(self.lcs_url, self.lcs_token),
            self.settings.bootstrap_servers,
            topics.events,
            cursor=self.state_dir / "lcs-decisions-cursor.json",
        )
        self.notices = AllocationNotices(self.settings, self.router.flow.targets)
        self.closures = ClosureScheduler(self.settings, self.router.flow.sources, self.router.flow.targets, self.clock)
        self.stepups = StepUpPublisher(
            EhmConnector(self.ehm_url, self.ehm_token),
            self.settings.bootstrap_servers,
            topics.transfers,
            topics.dead_letter,
            cursor=self.state_dir / "ehm-stepups-cursor.json",
            council=self.settings.council,
        )
        self.reporter = AllocationReporter(
            EhmConnector(self.ehm_url, self.ehm_token),
            self.settings.bootstrap_servers,
            topics.events,
            cursor=self.state_dir / "ehm-allocations-cursor.json",
        )

    def _configured_systems(self) -> None:
        """TED and Care Director named in the settings (``CASEBRIDGE_TED__URL`` ...): their connector as source and
        target, and their change-feed publisher; a connector or publisher passed in explicitly wins (the demo)."""
        topics, state = self.settings.topics, self.state_dir
        publishers: list[FeedPublisher] = []
        # one connector (one HTTP client) per use, as for LCS and EHM: each is started and stopped by its user
        ted, cd = self.settings.ted, self.settings.care_director
        if ted is not None:
            self.extra_targets = {CaseSystem.TED: TedConnector(ted.url, ted.token), **self.extra_targets}
            self.extra_sources = {CaseSystem.TED: TedConnector(ted.url, ted.token), **self.extra_sources}
            if not any(isinstance(p, TedPublisher) for p in self.extra_publishers):
                cursor = state / "ted-cursor.json"
                publishers.append(TedPublisher(TedConnector(ted.url, ted.token), self.settings.bootstrap_servers,
                                               topics.transfers, topics.dead_letter, cursor))  # fmt: skip
        if cd is not None:
            self.extra_targets = {
                CaseSystem.CARE_DIRECTOR: CareDirectorConnector(cd.url, cd.token),
                **self.extra_targets,
            }
            self.extra_sources = {
                CaseSystem.CARE_DIRECTOR: CareDirectorConnector(cd.url, cd.token),
                **self.extra_sources,
            }
            if not any(isinstance(p, CareDirectorPublisher) for p in self.extra_publishers):
                cursor = state / "care-director-cursor.json"
                publishers.append(CareDirectorPublisher(CareDirectorConnector(cd.url, cd.token),
                                                        self.settings.bootstrap_servers, topics.transfers,
                                                        topics.dead_letter, cursor))  # fmt: skip
        self.extra_publishers = [*self.extra_publishers, *publishers]

    async def start(self) -> None:
        await self.router.start()
        await self.publisher.start()
        await self.stepups.start()
        await self.reporter.start()
        await self.decisions.start()
        await self.notices.start()
        for extra in self.extra_publishers:
            await extra.start()
        await self.closures.start()
        if self.loops:
            stop = lambda: self._stopping  # noqa: E731
            parts: list[_Loop] = [self.publisher, self.stepups, self.notices, self.closures, self.reporter,
                                  self.decisions, *self.extra_publishers]  # fmt: skip
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
        log.error("loop_failed", loop=task.get_name(), error_class=type(exc).__name__)  # the message may hold data
        self.failed = task.get_name()
        self.router.stopped.set()

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for extra in self.extra_publishers:
            await extra.stop()
        await self.closures.stop()
        await self.notices.stop()
        await self.decisions.stop()
        await self.reporter.stop()
        await self.stepups.stop()
        await self.publisher.stop()
        await self.router.stop()

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
