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
        ted, cd = self.settings.ted, self.settings.care_director
        publishers: list[FeedPublisher] = []
        if ted is not None:
            connector = TedConnector(ted.url, ted.token)
            self.extra_targets = {CaseSystem.TED: connector, **self.extra_targets}
            self.extra_sources = {CaseSystem.TED: connector, **self.extra_sources}
            if not any(isinstance(p, TedPublisher) for p in self.extra_publishers):
                cursor = state / "ted-cursor.json"
                publishers.append(TedPublisher(connector, self.settings.bootstrap_servers, topics.transfers,
                                               topics.dead_letter, cursor))  # fmt: skip
        if cd is not None:
            connector_cd = CareDirectorConnector(cd.url, cd.token)
            self.extra_targets = {CaseSystem.CARE_DIRECTOR: connector_cd, **self.extra_targets}
            self.extra_sources = {CaseSystem.CARE_DIRECTOR: connector_cd, **self.extra_sources}
            if not any(isinstance(p, CareDirectorPublisher) for p in self.extra_publishers):
                cursor = state / "care-director-cursor.json"
                publishers.append(CareDirectorPublisher(connector_cd, self.settings.bootstrap_servers,
                                                        topics.transfers, topics.dead_letter, cursor))  # fmt: skip
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
            self._tasks = [
                asyncio.create_task(self.publisher.run(self.poll_interval, stop)),
                asyncio.create_task(self.stepups.run(self.poll_interval, stop)),
                asyncio.create_task(self.notices.run(self.poll_interval, stop)),
                asyncio.create_task(self.closures.run(self.poll_interval, stop)),
                asyncio.create_task(self.reporter.run(self.poll_interval, stop)),
                *(asyncio.create_task(p.run(self.poll_interval, stop)) for p in self.extra_publishers),
                asyncio.create_task(self.decisions.run(self.poll_interval, stop)),
            ]

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
