"""Where a feed's cursor is kept, and which process of a deployment runs its feeds.

A feed (a change-feed publisher, a reporter: ``connectors._feed._FeedLoop``) reads a case system after its cursor
and moves the cursor only once the broker acknowledged what it wrote for the page. One interface (``Cursor``),
two stores:

- ``FileCursor``: a JSON file in the state directory (one process on its own: the tests that poll by hand);
- ``KafkaCursors``: the deployment's compacted topic ``<prefix>.feed-cursors`` (partition 0; key = the feed's
  name, value = ``{"after": N}``), which ``casebridge run`` uses: every process of the deployment reads the same
  cursors, so a process taking the feeds over resumes where the last owner stopped. A feed the topic does not
  know yet starts from its cursor file (a deployment upgraded from one process), else from the beginning.

``FeedLease`` gives the feeds one owner per deployment, the Kafka way: every ``casebridge run`` process of the
deployment is a member of the consumer group ``<group_id>-feeds`` on the cursor topic, and the member assigned its
partition 0 runs the feeds; the others run none and wait. When that member leaves (stopped, died, or paused past
its session timeout) the group gives partition 0 to another, which reads the cursors to their end and starts the
feeds. On revoke the owner stops its feeds before it lets the partition go (the rebalance waits for it). A member
paused past its session timeout that resumes still believes it owns the partition until it hears otherwise: its
membership is confirmed with the coordinator (``connectors._membership``) before each page and each cursor
write, so it writes at most the page in hand when it resumes (the same transfer and message ids: the router writes
such a copy off as ``duplicate``), and no cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from . import kafka as clients
from ._membership import Membership
from .kafka import Kafka

log = structlog.get_logger("casebridge.connectors")

#: the partition the cursors are written to and read from, and whose owner runs the feeds
PARTITION = 0
#: a member that died is noticed in 6 s (the broker's minimum), as the router's group
SESSION_TIMEOUT_MS = 6000


class Cursor(Protocol):
    """A feed's position: the last feed position whose outputs Kafka acknowledged."""

    def load(self) -> int: ...

    async def commit(self, after: int) -> None:
        """Save ``after`` (called only once the broker acknowledged the page's outputs)."""


class FileCursor:
    """The last feed position whose outputs Kafka acknowledged, in a file; written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def name(self) -> str:
        """The feed's name (``<system>-<feed>``, the file's name without ``-cursor.json``): its key on the topic."""
        return self.path.name.removesuffix("-cursor.json").removesuffix(".json")

    def load(self) -> int:
        try:
            return int(json.loads(self.path.read_text(encoding="utf-8"))["after"])
        except FileNotFoundError:
            return 0

    def save(self, after: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"after": after}), encoding="utf-8")
        os.replace(tmp, self.path)

    async def commit(self, after: int) -> None:
        self.save(after)


class KafkaCursors:
    """The deployment's feed cursors on its compacted cursor topic (partition 0), read to the end by ``restore``
    and written by ``write`` (acknowledged by all in-sync replicas before it returns)."""

    def __init__(self, kafka: Kafka, topic: str, current: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.kafka = kafka
        self.topic = topic
        #: feed name -> cursor, as the topic holds them (after ``restore``) and as this process wrote them
        self.values: dict[str, int] = {}
        #: whether this process may still write cursors (its lease confirmed); None: always
        self.current = current
        self._producer: Any = None

    async def start(self) -> None:
        from ._feed import idempotent_producer  # (the feed module imports this one)

        self._producer = idempotent_producer(self.kafka)
        await self._producer.start()

    async def stop(self) -> None:
        from ._outage import close_producer

        if self._producer is not None:
            producer, self._producer = self._producer, None
            await close_producer(producer, 2.0, "feed cursors producer")

    async def restore(self) -> int:
        """Read the cursors to the topic's end (the last value of each feed wins); returns how many records."""
        tp = TopicPartition(self.topic, PARTITION)
        # no group, so no committed offset: the position is reset to the earliest offset (a seek_to_beginning after
        # assign races with the reset that assign starts, and may lose to it)
        consumer: AIOKafkaConsumer = clients.consumer(
            self.kafka, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        read = 0
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            values: dict[str, int] = {}
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
                for r in batch.get(tp, []):
                    read += 1
                    name = (r.key or b"").decode(errors="replace")
                    if r.value is None:
                        values.pop(name, None)
                        continue
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        values[name] = int(json.loads(r.value)["after"])
        finally:
            from ._outage import within

            await within("feed cursors reader", consumer.stop(), 2.0)  # (aiokafka's stop may end cancelled)
        self.values = values
        return read

    async def write(self, name: str, after: int) -> bool:
        """Write ``name``'s cursor; False (nothing written) if this process no longer holds the feeds' lease."""
        if self.current is not None and not await self.current():
            log.warning("feed_cursor_not_written", feed=name, reason="the feeds' lease was lost")
            return False
        if self._producer is None:
            raise RuntimeError("KafkaCursors used before start()")
        from ._feed import renew_producer

        await renew_producer(self, "_producer")  # its sender died (a broker restart): a fresh one
        value = json.dumps({"after": after}).encode()
        await self._producer.send_and_wait(self.topic, value=value, key=name.encode(), partition=PARTITION)
        self.values[name] = after
        return True

    def cursor(self, fallback: FileCursor) -> KafkaCursor:
        """The cursor of the feed whose file cursor was ``fallback`` (read once if the topic does not know it)."""
        return KafkaCursor(self, fallback)


class KafkaCursor:
    """One feed's cursor on the cursor topic; the file cursor it replaces is only read while the topic has none."""

    def __init__(self, store: KafkaCursors, fallback: FileCursor) -> None:
        self.store = store
        self.fallback = fallback

    @property
    def name(self) -> str:
        return self.fallback.name

    @property
    def path(self) -> Path:
        return self.fallback.path

    def load(self) -> int:
        found = self.store.values.get(self.name)
        return found if found is not None else self.fallback.load()

    async def commit(self, after: int) -> None:
        await self.store.write(self.name, after)


class FeedLease:
    """Membership of ``group_id`` on the cursor topic: ``acquired`` runs when this member is assigned partition 0
    (it starts the feeds), ``released`` when it loses it or stops (it stops them; the partition moves on only after
    it returned). ``run`` polls the group (a member that does not poll is dropped) and confirms the membership."""

    def __init__(
        self,
        kafka: Kafka,
        topic: str,
        group_id: str,
        acquired: Callable[[], Awaitable[None]],
        released: Callable[[], Awaitable[None]],
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.group_id = group_id
        self._acquired = acquired
        self._released = released
        self.owned = False
        self._assigned = False
        self._lock = asyncio.Lock()
        self._membership = Membership(SESSION_TIMEOUT_MS / 1000)
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        consumer: AIOKafkaConsumer = clients.consumer(
            self.kafka,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=1500,
            rebalance_timeout_ms=30000,
        )
        consumer.subscribe([self.topic], listener=_Listener(self))
        await consumer.start()
        self._consumer = consumer

    async def current(self) -> bool:
        """Whether this process still owns the feeds (its membership confirmed with the coordinator)."""
        if not self.owned or self._consumer is None:
            return False
        return await self._membership.current(self._consumer)

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        """Until ``stop()``: poll the group; start the feeds once partition 0 is assigned; stop them if the
        coordinator says this member was dropped (it rejoins on the next poll). A transient Kafka error (the broker
        away or recovering) is waited out: the feeds start once the cursors could be read."""
        from ._outage import OUTAGE, is_transient_kafka_error, is_unreachable

        consumer = self._consumer
        assert consumer is not None
        failed = False
        while not stop():
            try:
                await consumer.getmany(timeout_ms=int(min(interval, 0.5) * 1000))  # records: this process's writes
                if stop():
                    break
                async with self._lock:
                    # (after a lost membership, only once confirmed again: the rejoin, or the coordinator back)
                    if self._assigned and not self.owned and await self._membership.current(consumer):
                        self.owned = True
                        try:
                            await self._acquired()
                        except BaseException:
                            self.owned = False
                            raise
                    elif self.owned and not await self._membership.current(consumer):
                        await self._release("membership not confirmed by the group coordinator")
                if failed:
                    failed = False
                    OUTAGE.answered("feeds-lease")
            except Exception as exc:
                if not is_transient_kafka_error(exc):
                    raise
                if is_unreachable(exc):
                    failed = True
                    OUTAGE.failed("feeds-lease", exc)  # one line for the whole outage
                else:  # the cluster answers, but is recovering (a leader election): one line a try, a second apart
                    log.warning("kafka_recovering", feed="feeds-lease", error_class=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _release(self, reason: str) -> None:
        """Stop the feeds while still the owner (a page in flight finishes and writes its cursor), then let go."""
        if self.owned:
            try:
                await self._released()
            finally:
                self.owned = False
            log.info("feeds_released", group_id=self.group_id, reason=reason)

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        self._assigned = TopicPartition(self.topic, PARTITION) in partitions
        if self._assigned:
            self._membership.confirmed_at = time.monotonic()
        else:  # another member of the deployment runs the feeds: this one waits
            log.info("feeds_standby", group_id=self.group_id)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        if TopicPartition(self.topic, PARTITION) in partitions:
            self._assigned = False
            async with self._lock:  # the feeds stop before the partition moves on
                await self._release("partition revoked")

    async def stop(self) -> None:
        """Stop the feeds (if owned), then leave the group: another member takes the feeds over at once."""
        self._assigned = False
        async with self._lock:
            await self._release("stopping")
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lease: FeedLease) -> None:
        self.lease = lease

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.lease.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.lease.assigned(set(assigned))
