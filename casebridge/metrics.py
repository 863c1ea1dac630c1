"""``casebridge run``'s own Prometheus metrics, served on ``GET /metrics`` (and ``GET /healthz``) when the deployment
file has a ``[metrics] port``: the router and its loops observable on their own, without the monitor.

On the process's registry (``connectors._metrics.REGISTRY``), three kinds of figures:

- counted where they happen: the case-system calls (``connectors._metrics``: latency, errors by class, retries)
  and the router's batches (``router._metrics``: size, handling time, outcomes, retry-tier writes);
- read from the running stack at each scrape (``StackCollector``): each loop up or not and when its last poll
  succeeded, the router running / recovering / halted and its recoveries, Kafka reachable or not
  (``connectors._outage.OUTAGE``), the deployment (version, councils served);
- refreshed in the background every ``LAG_EVERY`` seconds (``monitor.group_lag``, committed offsets against end
  offsets): the consumer lag of the router's groups (``<group_id>``, ``<group_id>-lifecycle``, ...).

Labels are system names, call templates, error classes, topics, consumer groups, loop names and council ids:
never a transfer id, a record id or anything personal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from connectors._metrics import REGISTRY
from connectors._outage import OUTAGE, within

if TYPE_CHECKING:
    from .deployment import Deployment, MetricsSettings
    from .stack import Stack

log = structlog.get_logger("casebridge.metrics")

#: seconds between two rounds of consumer lag (each asks Kafka for the groups' committed and end offsets)
LAG_EVERY = 10.0


class MetricsUnavailable(OSError):
    """The metrics port cannot be listened on: one line naming the address and the setting."""


def version() -> str:
    try:
        return package_version("casebridge")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
        return "unknown"


class StackCollector(Collector):
    """The running stack's state, read at each scrape (from memory: answers with Kafka away)."""

    def __init__(self, stack: Stack, deployment: Deployment, lag: ConsumerLag) -> None:
        self.stack = stack
        self.deployment = deployment
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        stack = self.stack
        up = GaugeMetricFamily("casebridge_loop_up", "1 while the loop runs, 0 once it ended", labels=["loop"])
        for name, running in sorted(self.loops_up().items()):
            up.add_metric([name], 1 if running else 0)
        yield up
        polled = GaugeMetricFamily(
            "casebridge_loop_last_success_timestamp_seconds",
            "When the loop's last poll succeeded (Unix time); absent until its first",
            labels=["loop"],
        )
        for name, at in sorted(stack.last_poll.items()):
            polled.add_metric([name], at)
        yield polled
        router = stack.router
        state = GaugeMetricFamily(
            "casebridge_router_state", "1 for the router's state now (running, recovering, halted)", labels=["state"]
        )
        current = "halted" if router.halted else "recovering" if router.recovering else "running"
        for name in ("running", "recovering", "halted"):
            state.add_metric([name], 1 if name == current else 0)
        yield state
        yield CounterMetricFamily(
            "casebridge_router_recoveries",
            "In-process recoveries of the router after a broker outage",
            value=stack.recoveries,
        )
        yield GaugeMetricFamily(
            "casebridge_kafka_reachable",
            "1 while Kafka answers this process's clients, 0 while it is away (connectors._outage)",
            value=0 if OUTAGE.away else 1,
        )
        away = GaugeMetricFamily(
            "casebridge_kafka_unreachable_seconds", "Seconds Kafka has been away (0 while it answers)"
        )
        away.add_metric([], 0.0 if OUTAGE.down_since is None else time.monotonic() - OUTAGE.down_since)
        yield away
        yield CounterMetricFamily(
            "casebridge_kafka_outages", "Times Kafka went away for this process", value=OUTAGE.outages
        )
        lag = GaugeMetricFamily(
            "casebridge_router_consumer_lag",
            "Records on the topic the consumer group has not committed yet (committed offsets against end offsets)",
            labels=["group", "topic"],
        )
        for row in self.lag.rows:
            lag.add_metric([row["group"], row["topic"]], row["lag"])
        yield lag
        if self.lag.refreshed_at is not None:
            yield GaugeMetricFamily(
                "casebridge_router_consumer_lag_refreshed_timestamp_seconds",
                "When the consumer lag was last read from Kafka (Unix time)",
                value=self.lag.refreshed_at,
            )
        yield InfoMetricFamily(
            "casebridge_deployment",
            "The deployment casebridge run serves",
            value={
                "version": version(),
                "topic_prefix": self.deployment.settings.topic_prefix,
                "group_id": self.deployment.settings.group_id,
            },
        )
        councils = GaugeMetricFamily(
            "casebridge_council_served", "1 for each council this deployment serves", labels=["council"]
        )
        for council in self.deployment.councils:
            councils.add_metric([council.value], 1)
        yield councils

    def loops_up(self) -> dict[str, bool]:
        """Each loop of the stack, and the router (running: not halted, not recovering, not stopped)."""
        stack = self.stack
        loops = stack.loops_up()
        if loops:  # started
            router = stack.router
            loops["Router"] = not (router.halted or router.recovering or router.stopped.is_set())
        return loops

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: failing before the stack started, once the router halted or a loop ended; a router
        recovering from a broker outage, and Kafka away, are not failures (both are waited out)."""
        loops = self.loops_up()
        router = self.stack.router
        ok = bool(loops) and not router.halted and all(up for name, up in loops.items() if name != "Router")
        body = {
            "status": "ok" if ok else "failing",
            "router": "halted" if router.halted else "recovering" if router.recovering else "running",
            "loops": loops,
            "kafka_reachable": not OUTAGE.away,
        }
        return ok, body


class ConsumerLag:
    """The router's consumer groups' lag, read every ``every`` seconds (the last figures kept while Kafka is away)."""

    def __init__(self, deployment: Deployment, every: float = LAG_EVERY) -> None:
        self.settings = deployment.settings
        self.every = every
        self.rows: list[dict[str, Any]] = []
        self.refreshed_at: float | None = None

    def mine(self, group: str) -> bool:
        gid = self.settings.group_id
        return group == gid or group.startswith(gid + "-")

    async def refresh(self) -> None:
        from monitor import group_lag  # only where metrics are served (the monitor package is the larger import)

        async with asyncio.timeout(max(10.0, self.every)):
            self.rows = await group_lag(self.settings.connection, self.settings.topics, self.mine)
        self.refreshed_at = time.time()

    async def run(self) -> None:
        failing: str | None = None
        while True:
            try:
                await self.refresh()
                failing = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away or slow: the last figures stay; one line per kind of failure
                if failing != type(exc).__name__:
                    failing = type(exc).__name__
                    log.warning("metrics_lag_failed", error_class=failing)
            await asyncio.sleep(self.every)


class MetricsServer:
    """``GET /metrics`` (Prometheus text format) and ``GET /healthz`` on asyncio's own server, in the run's loop:
    nothing to stop but the listening socket and the lag task, which go with the run. Listening starts first
    (``start``: a port taken is refused before anything else is built), the stack is watched once built (``watch``).
    """

    def __init__(self, settings: MetricsSettings, deployment: Deployment) -> None:
        self.settings = settings
        self.deployment = deployment
        self.lag = ConsumerLag(deployment)
        self.collector: StackCollector | None = None
        self.registry = REGISTRY
        self._server: asyncio.Server | None = None
        self._lag_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        host, port = self.settings.host, self.settings.port
        assert port is not None, "metrics are off without a port"
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else exc.strerror or type(exc).__name__
            raise MetricsUnavailable(
                f"cannot serve metrics on {host}:{port}: {why}; stop what holds the port or set another [metrics] port"
                " (CASEBRIDGE_METRICS__PORT)"
            ) from None

    def watch(self, stack: Stack) -> None:
        """Serve ``stack``'s figures (its loops, router, lag) from now on."""
        self.collector = StackCollector(stack, self.deployment, self.lag)
        self.registry.register(self.collector)
        self._lag_task = asyncio.create_task(self.lag.run(), name="metrics-lag")
        log.info("metrics_serving", address=self.settings.address)

    async def stop(self) -> None:
        if self._lag_task is not None:  # a round waiting on Kafka (the broker away) is not waited for long
            self._lag_task.cancel()
            await asyncio.wait({self._lag_task}, timeout=1.0)
        if self.collector is not None:
            with contextlib.suppress(Exception):
                self.registry.unregister(self.collector)
        if self._server is not None:
            self._server.close()
            await within("metrics server", self._server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            method, target, *_ = [*head.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""]
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain; charset=utf-8", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_PLAIN_0_0_4, generate_latest(self.registry)
            elif path == "/healthz":
                ok, health = self.collector.health() if self.collector else (False, {"status": "starting"})
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(health).encode() + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain; charset=utf-8", b"/metrics or /healthz\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, UnicodeError):
            pass  # a client that went away or sent no request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def listening(deployment: Deployment) -> MetricsServer | None:
    """The metrics server listening (None when the deployment has no ``[metrics] port``); raises
    MetricsUnavailable when the port cannot be listened on."""
    if deployment.metrics.port is None:
        return None
    server = MetricsServer(deployment.metrics, deployment)
    await server.start()
    return server


@asynccontextmanager
async def serving(server: MetricsServer | None, stack: Stack) -> AsyncIterator[None]:
    """``stack``'s figures served while inside; the server stopped on leaving."""
    if server is None:
        yield
        return
    server.watch(stack)
    try:
        yield
    finally:
        await server.stop()
