"""The flow tracker: reads ``<prefix>.events`` into the store, resumable and rebuildable.

No consumer group: the store keeps the topic positions itself, in the same transaction
as the events (so a crash between the two cannot lose or double-count). Rebuilding is
deleting the database: the tracker then reads the topic from its beginning.

The stored positions are the source of truth. The tracker reads one batch and reads nothing more
until that batch is stored: a store that fails (the file locked, the disk full, read-only) is
retried with the same batch, with bounded backoff, for as long as it takes, never skipped; the
outage is logged once when it starts, at most once a minute while it lasts, and once when it ends.
The lag it reports is the topic's end against the stored positions, so it grows during an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from connectors import kafka as clients
from connectors.kafka import Kafka
from contracts import TransferEvent, parse_event
from router.settings import Topics

from ._store import STORE_ERRORS, Position, Store

log = structlog.get_logger("casebridge.monitor")
#: backoff between attempts to store the same batch: doubling from the first, up to the last
STORE_BACKOFF = (0.2, 5.0)
#: while the store keeps failing, one log line at most this often
STILL_FAILING_LOG_SECONDS = 60.0


def drop_store(path: Path) -> None:
    """Delete the tracker's database (and SQLite's side files): the next start rebuilds from Kafka."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    """What the store said, without a path or a value: SQLite's message ("database is locked") or the OS error."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)[:120] or type(exc).__name__


@dataclass
class _Batch:
    """Read from the topic, not yet stored: held until it is (nothing further is read meanwhile)."""

    events: list[TransferEvent]
    positions: list[Position]


class Tracker:
    def __init__(self, store: Store, kafka: Kafka, topics: Topics) -> None:
        self.store = store
        self.kafka = kafka
        self.topic = topics.events
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: list[TopicPartition] = []
        self.skipped = 0  # records that are not valid events (kept out of the store, counted)
        #: the next offset per partition that the store holds (what it said at start, then every stored batch)
        self.stored: dict[int, int] = {}
        self.pending: _Batch | None = None
        #: the current store outage: since when (epoch seconds), attempts, SQLite's reason; None when storing
        self.failing_since: float | None = None
        self.attempts = 0
        self.store_error: str | None = None
        self.store_failures = 0  #: failed attempts to store, ever (a counter for the metrics)
        self._logged_at = 0.0
        #: the events topic's end per partition when last asked, and when (epoch seconds)
        self.ends: dict[int, int] = {}
        self.ends_at: float | None = None

    async def start(self) -> None:
        self.consumer = clients.consumer(
            self.kafka,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self.consumer.subscribe([self.topic])  # no group: every partition is ours
        await self.consumer.start()
        await self._assign()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def _assign(self) -> bool:
        """Once the events topic's partitions are ours, resume each from the store's position."""
        assert self.consumer is not None
        if self.assigned:
            return True
        partitions = sorted(self.consumer.assignment())
        if not partitions:
            return False
        stored = await self.store.read(self.store.positions, self.topic)
        self.stored = dict(stored)
        for tp in partitions:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition])
            else:
                await self.consumer.seek_to_beginning(tp)
        self.assigned = partitions
        log.info("tracker_assigned", topic=self.topic, partitions=len(partitions), resumed=bool(stored))
        return True

    @property
    def storing(self) -> bool:
        return self.failing_since is None

    async def poll_once(self, timeout_ms: int = 500) -> int:
        """Store the batch held from before, else read what is there (waiting up to ``timeout_ms``) and store it.

        Returns how many events were new; 0 also when the store failed (``storing`` is then False and the
        batch is held for the next call: nothing further is read until it is stored).
        """
        assert self.consumer is not None, "start() first"
        if self.pending is None:
            if not await self._assign():
                await asyncio.sleep(min(timeout_ms, 100) / 1000)
                return 0
            batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=2000)
            events: list[TransferEvent] = []
            positions: list[Position] = []
            for tp, records in batch.items():
                for r in records:
                    try:
                        events.append(parse_event(r.value or b""))
                    except ValidationError:
                        self.skipped += 1
                        log.warning("tracker_event_unreadable", topic=tp.topic, partition=tp.partition, offset=r.offset)
                if records:
                    positions.append(Position(tp.topic, tp.partition, records[-1].offset + 1))
            if not positions:
                return 0
            self.pending = _Batch(events, positions)
        return await self._store_pending()

    async def _store_pending(self) -> int:
        batch = self.pending
        assert batch is not None
        try:
            new = await self.store.write(batch.events, batch.positions)
        except STORE_ERRORS as exc:
            self._store_failed(exc, batch)
            return 0
        self.pending = None
        for p in batch.positions:
            self.stored[p.partition] = p.next_offset
        if self.failing_since is not None:
            log.info(
                "tracker_store_recovered",
                seconds=round(time.time() - self.failing_since, 1),
                attempts=self.attempts,
                events=len(batch.events),
            )
            self.failing_since, self.attempts, self.store_error = None, 0, None
        return new

    def _store_failed(self, exc: BaseException, batch: _Batch) -> None:
        self.store_failures += 1
        self.attempts += 1
        self.store_error = _reason(exc)
        now = time.time()
        code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        if self.failing_since is None:
            self.failing_since = self._logged_at = now
            log.warning(
                "tracker_store_failing",
                error_class=type(exc).__name__,
                code=code,
                reason=self.store_error,
                events_held=len(batch.events),
                action="retrying the same batch with backoff; nothing is skipped",
            )
        elif now - self._logged_at >= STILL_FAILING_LOG_SECONDS:
            self._logged_at = now
            log.warning(
                "tracker_store_still_failing",
                code=code,
                reason=self.store_error,
                seconds=round(now - self.failing_since, 1),
                attempts=self.attempts,
            )

    def backoff(self) -> float:
        """How long to wait before the next attempt to store the held batch."""
        first, most = STORE_BACKOFF
        return float(min(most, first * 2 ** max(0, self.attempts - 1)))

    async def lag(self) -> dict[int, int]:
        """How far the store is behind the topic's end, per partition (the positions it holds, not what was read)."""
        assert self.consumer is not None
        if not self.assigned:
            return {}
        ends = await self.consumer.end_offsets(self.assigned)
        self.ends, self.ends_at = {tp.partition: end for tp, end in ends.items()}, time.time()
        return {tp.partition: max(0, end - self.stored.get(tp.partition, 0)) for tp, end in ends.items()}

    def health(self) -> dict[str, Any]:
        """The tracker's own state, from memory (no SQLite, no Kafka): storing or not, lag when last asked."""
        lag = None
        if self.ends_at is not None:
            lag = sum(max(0, end - self.stored.get(p, 0)) for p, end in self.ends.items())
        return {
            "storing": self.storing,
            "store_error": self.store_error,
            "failing_since": _iso(self.failing_since),
            "attempts": self.attempts,
            "events_held": len(self.pending.events) if self.pending is not None else 0,
            "store_failures": self.store_failures,
            "lag": lag,
            "lag_at": _iso(self.ends_at),
        }

    async def catch_up(self, timeout: float = 60.0) -> None:
        """Poll until the store holds everything the topic held when called (tests, rebuilds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.assigned and not any((await self.lag()).values()):
                return
            await self.poll_once(200)
        raise TimeoutError(f"the tracker did not catch up with {self.topic} in {timeout} s")

    async def run(self, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            pause = 0.0
            try:
                await self.poll_once(500)
                if not self.storing:
                    pause = self.backoff()
            except Exception as exc:  # a broker hiccup must not end the tracker; the store resumes where it was
                log.warning("tracker_poll_failed", error_class=type(exc).__name__)
                pause = 1.0
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopped.wait(), pause)


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
