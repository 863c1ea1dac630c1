"""One casebridge deployment in a process: the router, the lifecycle loop after delivery (``router/lifecycle.py``;
its steps: the allocation notices, LU-7, and the closure scheduler, LU-4, SW22-10, NS-12, BA-9), and for each
system the deployment file names (``casebridge/registry.py``) its connectors and its feed publishers and reporters.

Used by ``casebridge run --config`` (with loops) and by the end-to-end tests (polling by hand, to control
timing). The case systems are reached by URL; nothing is required but what the deployment names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog
from tenacity import AsyncRetrying, retry_if_exception
from tenacity.wait import wait_random_exponential

from connectors import CasebridgeError, Source, Target
from connectors._cursors import FeedLease, FileCursor, KafkaCursors
from connectors._feed import _FeedLoop
from connectors._outage import OUTAGE, is_transient_kafka_error, is_unreachable, within
from connectors.ehm import AllocationReporter, StepUpPublisher
from connectors.lcs import DecisionReporter, LcsPublisher
from contracts import CaseSystem, Council
from mappings import load_protocols
from router import Router, Settings, build_router
from router._outbox import OutputFailed
from router.alerts import AlertDispatcher
from router.closures import ClosureScheduler, utc_now
from router.lifecycle import Lifecycle
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
    #: the lifecycle loop's clock (tests move it on to see LU-4's 10 days pass)
    clock: Callable[[], datetime] = utc_now
    router: Router = field(init=False)
    #: the one loop after delivery; ``notices`` and ``closures`` are its steps
    lifecycle: Lifecycle = field(init=False)
    #: the systems' feed publishers, reporters and servers, then the caller's
    feeds: list[Any] = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    #: the loop that died, if one did (``casebridge run`` then exits 4)
    failed: str | None = field(default=None, init=False)
    #: why it died, in casebridge's own words (no values), or the error class
    failure: str | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)
    #: in-process recoveries of the router after a broker outage (``_recover``)
    recoveries: int = field(default=0, init=False)
    _recovery: asyncio.Task[None] | None = field(default=None, init=False)
    #: per loop (its type's name): when its last poll succeeded (``time.time()``), for ``casebridge run``'s metrics
    last_poll: dict[str, float] = field(default_factory=dict, init=False)
    #: with loops, the feeds (publishers, reporters) have one owner per deployment: the process its feeds lease
    #: (``connectors._cursors.FeedLease``) gives partition 0 of the cursor topic runs them, from the cursors there
    lease: FeedLease | None = field(default=None, init=False)
    cursors: KafkaCursors | None = field(default=None, init=False)
    _leased: list[_FeedLoop] = field(default_factory=list, init=False)
    _feed_tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _feeds_stopping: bool = field(default=False, init=False)

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
        self.lifecycle = Lifecycle(self.settings, self.router.flow.sources, self.router.flow.targets, self.clock)

    @property
    def notices(self) -> AllocationNotices:
        """The lifecycle's notices step (``poll_once``: one round of the lifecycle loop, the notices it sent)."""
        return self.lifecycle.notices

    @property
    def closures(self) -> ClosureScheduler:
        """The lifecycle's closures step (``poll_once``: one round of the lifecycle loop, the records it closed)."""
        return self.lifecycle.closures

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
        OUTAGE.configure(self.settings.bootstrap_servers)
        self.router.recover = self._recover_soon
        await self.router.start()
        if self.loops:
            self._leased = [f for f in self.feeds if isinstance(f, _FeedLoop)]
        for feed in self._leased:
            feed.leased = True  # what follows the owner (the remap consumer) starts when this process owns them
        for feed in self.feeds:
            await feed.start()
        await self.lifecycle.start()
        if self.loops:
            stop = lambda: self._stopping  # noqa: E731
            parts: list[_Loop] = [self.lifecycle, *(f for f in self.feeds if f not in self._leased)]
            if self._leased:
                parts.append(await self._feeds_lease())
            for part in parts:
                self._timed(part)
                task = asyncio.create_task(part.run(self.poll_interval, stop), name=type(part).__name__)
                task.add_done_callback(self._loop_ended)
                self._tasks.append(task)

    # -- the feeds: one owner per deployment ----------------------------------------------------

    async def _feeds_lease(self) -> FeedLease:
        """Join the deployment's feeds group; the feeds' cursors move to the cursor topic."""
        topics = self.settings.topics
        group = f"{self.settings.group_id}-feeds"
        self.lease = lease = FeedLease(self.settings.connection, topics.feed_cursors, group,
                                       self._own_feeds, self._give_up_feeds)  # fmt: skip
        self.cursors = KafkaCursors(self.settings.connection, topics.feed_cursors, current=lease.current)
        await self.cursors.start()
        for feed in self._leased:
            if isinstance(feed.cursor, FileCursor):
                feed.cursor = self.cursors.cursor(feed.cursor)
            self._timed(feed)
            self._guarded(feed, lease)
        await lease.start()
        return lease

    @staticmethod
    def _guarded(part: Any, lease: FeedLease) -> None:
        """A page is read only while the lease is confirmed (a member paused past its session timeout, resumed,
        reads nothing more before it learns it was dropped)."""
        poll = part.poll_once

        async def poll_once() -> int:
            if not await lease.current():
                return 0
            found: int = await poll()
            return found

        part.poll_once = poll_once

    async def _own_feeds(self) -> None:
        """This process took the feeds over: the cursors read to their end, then every feed started."""
        assert self.cursors is not None and self.lease is not None
        read = await self.cursors.restore()
        for feed in self._leased:
            await feed.resume()
        self._feeds_stopping = False
        stop = lambda: self._stopping or self._feeds_stopping  # noqa: E731
        for feed in self._leased:
            task = asyncio.create_task(feed.run(self.poll_interval, stop), name=type(feed).__name__)
            task.add_done_callback(self._loop_ended)
            self._feed_tasks.append(task)
        log.info("feeds_owned", group_id=self.lease.group_id, feeds=[type(f).__name__ for f in self._leased],
                 cursors=len(self.cursors.values), records=read)  # fmt: skip

    async def _give_up_feeds(self) -> None:
        """The lease is going (revoked, or this process stops): every feed stops before it moves on; a poll in
        flight finishes (its cursor written only if the lease still holds), one stuck on Kafka is cancelled."""
        self._feeds_stopping = True
        tasks, self._feed_tasks = self._feed_tasks, []
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=5.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(within(type(f).__name__, f.pause(), 2.0) for f in self._leased))

    def _timed(self, part: Any) -> None:
        """Record when each poll of ``part`` succeeds (``last_poll``); a loop without polls (the intake's server)
        is only up or not (``loops_up``)."""
        poll = getattr(part, "poll_once", None)
        if poll is None:
            return
        name = type(part).__name__

        async def poll_once() -> int:
            found: int = await poll()
            self.last_poll[name] = time.time()
            return found

        part.poll_once = poll_once

    def loops_up(self) -> dict[str, bool]:
        """Per loop (its type's name): running (True) or ended (False); empty before ``start`` or without loops."""
        return {task.get_name(): not task.done() for task in [*self._tasks, *self._feed_tasks]}

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

    # -- the router after a broker outage -------------------------------------------------------

    def _recover_soon(self, failure: OutputFailed) -> None:
        """The router's outputs failed transiently (the broker away or recovering): recover it in-process."""
        if self._stopping or (self._recovery is not None and not self._recovery.done()):
            return
        if is_unreachable(failure.__cause__):
            OUTAGE.failed("router", failure.__cause__ or failure)
        self._recovery = asyncio.create_task(self._recover(), name="router-recovery")

    async def _recover(self) -> None:
        """What a supervisor's restart would do, in-process: stop the router's consumers and outbox (nothing
        unacknowledged is committed or sent later), wait with bounded backoff until the broker answers, and start a
        fresh Router on the same flow and connectors, which reads on from the committed offsets with its retry state
        and child history reloaded. Every step is idempotent on transfer id and event ids are deterministic, so
        the batches read again complete without duplicates at the case systems."""
        started = asyncio.get_running_loop().time()
        old = self.router
        log.warning("router_recovering", reason="outputs not acknowledged by Kafka")
        await old.stop(connectors=False, budget=4.0)
        if old.flow.history is not None:
            old.flow.history.by_key.clear()  # reloaded whole from the broker: only what it acknowledged
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient_kafka_error),
            wait=wait_random_exponential(multiplier=1, max=15),
            stop=lambda _: self._stopping,
            sleep=self._sleep_unless_stopping,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    fresh = Router(old.settings, old.flow)
                    fresh.stopped, fresh.outcomes, fresh.recover = old.stopped, old.outcomes, self._recover_soon
                    try:
                        await fresh.start(connectors=False)
                    except BaseException as exc:
                        if is_unreachable(exc):
                            OUTAGE.failed("router", exc)
                        await fresh.stop(connectors=False, budget=2.0)
                        raise
        except Exception as exc:
            if self._stopping:
                return
            # no retry fixes it: the stack stops, as a dead loop stops it (exit 4), and its supervisor restarts it
            log.error("loop_failed", loop="router-recovery", error_class=type(exc).__name__)
            self.failed, self.failure = "router-recovery", type(exc).__name__
            old.stopped.set()
            return
        if self._stopping:
            await fresh.stop(connectors=False, budget=3.0)
            return
        self.router = fresh
        self.recoveries += 1
        OUTAGE.answered("router")
        log.info("router_recovered", seconds=round(asyncio.get_running_loop().time() - started, 1))

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        end = asyncio.get_running_loop().time() + seconds
        while not self._stopping and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(min(0.2, end - asyncio.get_running_loop().time()))

    async def stop(self) -> None:
        """Stop everything within about 9 s in every state, the broker away included (``casebridge run`` honours
        SIGTERM in 10 s): a loop still waiting on Kafka is cancelled after 1.5 s (its cursor did not move past
        what was not acknowledged), every client's stop is bounded."""
        self._stopping = True
        if self._recovery is not None:
            await within("router recovery", self._recovery, 1.0)
        running = [*self._tasks, *self._feed_tasks]
        if running:
            _, late = await asyncio.wait(running, timeout=1.5)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        parts = [*reversed(self.feeds), self.lifecycle]
        stops = [within(type(p).__name__, p.stop(), 2.0) for p in parts]
        if self.lease is not None:  # its feeds stopped above: it leaves the group, another process takes them over
            stops.append(within("feeds lease", self.lease.stop(), 2.0))
        if self.cursors is not None:
            stops.append(within("feed cursors", self.cursors.stop(), 2.0))
        await asyncio.gather(*stops)
        await self.router.stop(budget=4.5)
        await OUTAGE.close()

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # what did start is stopped again (no client left open)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
