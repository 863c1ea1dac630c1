"""Broker outages: which Kafka errors are transient, and the one place that says Kafka is away and back.

A broker restart is routine maintenance; it must never stop casebridge. These errors are **transient**
(recovery makes them go away; every loop and the router wait them out with bounded backoff):

- the broker unreachable: ``KafkaConnectionError``, ``NodeNotReadyError``, ``NoBrokersAvailable``,
  ``RequestTimedOutError``, ``KafkaTimeoutError`` (a send, a metadata wait or a batch that expired while the
  broker was away), ``ConnectionError`` / ``TimeoutError`` from a socket;
- a cluster recovering: ``LeaderNotAvailableError``, ``NotLeaderForPartitionError``, ``NotEnoughReplicasError``,
  ``NotEnoughReplicasAfterAppendError``, ``UnknownTopicOrPartitionError`` (metadata not yet rebuilt), the group
  coordinator moving or loading (``GroupCoordinatorNotAvailableError``, ``NotCoordinatorForGroupError``,
  ``GroupLoadInProgressError``), ``KafkaStorageError``, ``StaleMetadata``, ``NotControllerError``;
- an idempotent producer out of step after the broker lost its state: ``OutOfOrderSequenceNumber``,
  ``UnknownProducerId``, ``DuplicateSequenceNumber`` (aiokafka's sender dies on the first: the producer
  is renewed, see ``connectors._feed.renew_producer``);
- any other aiokafka error that marks itself ``retriable``.

Everything else is **not** transient and stays fatal (the router halts, exit 3; a loop dies, exit 4): a record
the broker refuses as too large (``MessageSizeTooLargeError``, ``RecordTooLargeError``), authorization and
authentication failures, an invalid topic or configuration, a producer fenced by another.

``OUTAGE`` is the process's view of the broker: the first transient failure logs one ``kafka_unreachable``
warning, then at most one ``kafka_still_unreachable`` a minute (with how many failures it absorbed), and one
``kafka_reachable`` info line (with the seconds it was away) once a loop's Kafka call succeeds again, or the
broker answers Kafka's ApiVersions request at a bootstrap address (probed every 1-5 s) and no client failed in
the ``STEADY`` seconds after.
aiokafka's own connection-error lines are routed here too (``casebridge.logs.damp_kafka_client_logs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Awaitable
from typing import Any

import structlog
from aiokafka import errors as kerr

log = structlog.get_logger("casebridge.kafka")

_TRANSIENT: tuple[type[BaseException], ...] = (
    kerr.KafkaConnectionError,
    kerr.NodeNotReadyError,
    kerr.NoBrokersAvailable,
    kerr.RequestTimedOutError,
    kerr.KafkaTimeoutError,
    kerr.LeaderNotAvailableError,
    kerr.NotLeaderForPartitionError,
    kerr.NotEnoughReplicasError,
    kerr.NotEnoughReplicasAfterAppendError,
    kerr.UnknownTopicOrPartitionError,
    kerr.GroupCoordinatorNotAvailableError,
    kerr.NotCoordinatorForGroupError,
    kerr.GroupLoadInProgressError,
    kerr.KafkaStorageError,
    kerr.StaleMetadata,
    kerr.NotControllerError,
    kerr.OutOfOrderSequenceNumber,
    kerr.UnknownProducerId,
    kerr.DuplicateSequenceNumber,
    ConnectionError,
    TimeoutError,
)
_FATAL: tuple[type[BaseException], ...] = (
    kerr.MessageSizeTooLargeError,
    kerr.RecordTooLargeError,
    kerr.TopicAuthorizationFailedError,
    kerr.GroupAuthorizationFailedError,
    kerr.ClusterAuthorizationFailedError,
    kerr.TransactionalIdAuthorizationFailed,
    kerr.ProducerFenced,
    kerr.InvalidTopicError,
)


def is_transient_kafka_error(exc: BaseException | None) -> bool:
    """True for a Kafka error a broker's recovery makes go away (the module's list), looking through causes."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, _FATAL):
            return False
        if isinstance(exc, _TRANSIENT):
            return True
        if isinstance(exc, kerr.KafkaError) and getattr(exc, "retriable", False):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


_UNREACHABLE: tuple[type[BaseException], ...] = (
    kerr.KafkaConnectionError,
    kerr.NodeNotReadyError,
    kerr.NoBrokersAvailable,
    kerr.RequestTimedOutError,
    kerr.KafkaTimeoutError,
    ConnectionError,
    TimeoutError,
)


def is_unreachable(exc: BaseException | None) -> bool:
    """The broker not answering at all (no connection, a request timed out), as opposed to a cluster that answers
    while recovering (a leader election): only these make ``OUTAGE`` say Kafka is unreachable."""
    return isinstance(exc, _UNREACHABLE) or (exc is not None and is_unreachable(exc.__cause__))


class KafkaOutage:
    """One warning when Kafka becomes unreachable, one info line when it is back, at most one reminder a minute."""

    def __init__(self, remind_every: float = 60.0, probe_every: tuple[float, float] = (1.0, 5.0)) -> None:
        self.remind_every = remind_every
        self.probe_every = probe_every
        self.addresses: list[tuple[str, int]] = []
        self.down_since: float | None = None
        self.failures = 0
        self.outages = 0
        self._reminded = 0.0
        self._probe: asyncio.Task[None] | None = None

    def configure(self, bootstrap_servers: str) -> None:
        """The addresses probed while the broker is away (``HOST:PORT,...``)."""
        found = []
        for part in bootstrap_servers.split(","):
            host, _, port = part.strip().rpartition(":")
            if host and port.isdigit():
                found.append((host.strip("[]"), int(port)))
        self.addresses = found

    @property
    def away(self) -> bool:
        return self.down_since is not None

    def failed(self, where: str, exc: BaseException | str) -> None:
        """A transient Kafka failure seen by ``where`` (a loop, the router, the Kafka client)."""
        error_class = exc if isinstance(exc, str) else type(exc).__name__
        now = time.monotonic()
        self.failures += 1
        if self.down_since is None:
            self.down_since = self._reminded = now
            self.outages += 1
            log.warning("kafka_unreachable", where=where, error_class=error_class)
            self._start_probe()
        elif now - self._reminded >= self.remind_every:
            self._reminded = now
            log.warning(
                "kafka_still_unreachable",
                where=where,
                error_class=error_class,
                seconds_away=round(now - self.down_since, 1),
                failures=self.failures,
            )

    def answered(self, where: str = "probe") -> None:
        """Kafka answered again (a write acknowledged, a client started): one line, with how long it was away."""
        if self.down_since is None:
            return
        away = time.monotonic() - self.down_since
        log.info("kafka_reachable", where=where, seconds_away=round(away, 1), failures=self.failures)
        self.down_since = None
        self.failures = 0

    def _start_probe(self) -> None:
        if not self.addresses or (self._probe is not None and not self._probe.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe = loop.create_task(self._probing(), name="kafka-probe")

    async def _probing(self) -> None:
        """Ask the bootstrap addresses (Kafka's ApiVersions, the request every client sends first) with bounded
        backoff; the broker is back once one answers and no client failed for ``STEADY`` seconds after (a broker
        that is shutting down, or still electing leaders, answers ApiVersions too)."""
        wait, most = self.probe_every
        while self.down_since is not None:
            await asyncio.sleep(wait)
            wait = min(wait * 2, most)
            for host, port in self.addresses:
                if not await _api_versions(host, port):
                    continue
                failures = self.failures
                await asyncio.sleep(self.STEADY)
                if self.down_since is not None and self.failures == failures:
                    self.answered()
                break

    #: seconds without a client failure after the broker answered before it is said to be back
    STEADY = 5.0

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(BaseException):
                await self._probe
            self._probe = None


#: the process's one view of the broker (``casebridge run`` is one deployment in one process)
OUTAGE = KafkaOutage()


async def _api_versions(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a Kafka broker answers an ApiVersions request (v0) at ``host:port`` without an error. A listener
    that is not plaintext (TLS) does not answer it: there the loops' own successes say the broker is back."""
    client_id = b"casebridge-probe"
    request = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(struct.pack(">i", len(request)) + request)
        await asyncio.wait_for(writer.drain(), timeout)
        head = await asyncio.wait_for(reader.readexactly(10), timeout)
        _, correlation, error = struct.unpack(">iih", head)
        return bool(correlation == 7 and error == 0)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def within(what: str, work: Awaitable[Any], seconds: float) -> bool:
    """Await ``work`` for at most ``seconds`` (a client's stop or close while the broker is away can wait
    forever); False, with one log line, if it did not finish in time."""
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        log.warning("stop_timed_out", what=what, seconds=seconds)
        return False
    except asyncio.CancelledError:  # aiokafka's consumer.stop() can end so when a fetch it cancels was in a backoff
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled ourselves
        log.warning("stop_failed", what=what, error_class="CancelledError")
    except Exception as exc:  # stopping anyway: a client that fails to close is closed as far as it goes
        log.warning("stop_failed", what=what, error_class=type(exc).__name__)
    return True


async def close_producer(producer: Any, seconds: float, what: str = "producer") -> None:
    """Stop an aiokafka producer within ``seconds``: with the broker away an idempotent producer's batches never
    expire and ``stop()`` (which flushes) would wait forever. Past the time its sender is cancelled, so nothing
    it still holds is sent later (those writes were never acknowledged; whoever queued them writes them again
    from its cursor or committed offsets)."""
    stopping = asyncio.ensure_future(producer.stop())
    if await within(what, asyncio.shield(stopping), seconds):
        return
    sender = getattr(producer, "_sender", None)  # aiokafka's sender task: cancelled, stop() then completes
    task = getattr(sender, "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
    if not await within(what, stopping, 1.0):
        stopping.cancel()
