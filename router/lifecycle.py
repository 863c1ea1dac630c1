"""A transfer's lifecycle after delivery: one loop, hosting the steps that wait for something.

Once the target holds a transfer, the flow (``router/flow.py``) may leave work waiting for later, keyed by
transfer id on a compacted state topic: a notice due on allocation (``router/notices.py``, ``<prefix>.pending-
notices``) and a source record to close later (``router/closures.py``, ``<prefix>.pending-closures``). Each is a
*step* of this loop; the loop owns the plumbing they share:

- one consumer group, ``<group_id>-lifecycle``, over the events, audit and both state topics, co-partitioned by
  ``router/_assignor.py`` (all keyed by transfer id, one partition count: checked at start by ``router/topics.py``);
  a process holds the pending entries of exactly the state partitions it is assigned;
- one restore per assigned partition: both state topics' partition p are read to their end (streamed, never
  partial) before any record of p is handled, and the group's position on them moves to that end; revoked
  partitions are forgotten;
- one producer (idempotent), renewed when its sender dies;
- the child history, which every process follows whole (a group-less consumer: a step-down of any child can
  cancel a closure, whichever partition its transfers are on);
- one commit policy: a round reads what is new, every step acts, every write of the round (events, tombstones,
  marks) is acknowledged, then the offsets are committed. A commit refused because the group rebalanced is not
  a failure: whoever owns the partitions reads again from the last commit, and every step is idempotent.

A signal read before its pending entry (an allocation, the front door's decision, with the flow lagging or
crashed between delivery and its write of the pending entry, or a target that cannot confirm the signal yet)
is solved one way for every step, by a durable mark (``Marks``, one per step): before the offsets move past the
signal, the step writes a mark (its key: a prefix and the transfer id) to its own state topic, on the partition
of that transfer (not of the mark's key), so the mark is restored with the pending entries of that partition by
whichever process holds it. A mark is tombstoned once its signal was acted on (or found unconfirmed), or after
``KEEP_MARKS`` when nothing it serves arrived. Reading the state partition to its end before acting on a signal
would not be enough: the flow writes the pending entry after delivery, so it may come after the signal it waits
for.

Delivery: at least once, per step (see each step's docstring); an action and its tombstone may be repeated
after a crash between them, which every step makes a no-op (idempotent connectors, deterministic event ids).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError
from aiokafka.structs import ConsumerRecord, RecordMetadata

from connectors import Source, Target
from connectors import kafka as clients
from connectors._feed import idempotent_producer, poll_forever, renew_producer
from contracts import CaseSystem

from ._history import Entry as HistoryEntry
from ._history import decode as decode_history
from ._history import hashed_key
from ._reading import first_assignment, fold_compacted, owned_follower, partition_for, read_partitions, replay_compacted
from ._upgrade import carry_over_offsets
from .settings import Settings

log = structlog.get_logger("casebridge.router.lifecycle")
#: a commit refused because the group rebalanced meanwhile (not a failure of the loop)
_REBALANCED = (CommitFailedError, IllegalStateError, RebalanceInProgressError)
#: how long a mark whose pending entry never came is kept (the flow writes the entry right after delivery, before
#: anyone can allocate or decide, so only a crashed or lagging flow writes it later)
KEEP_MARKS = timedelta(days=30)
#: how often the marks past ``KEEP_MARKS`` are looked for
EXPIRE_EVERY = timedelta(minutes=1)
#: a record to write: topic, key, value (None: a tombstone), headers, partition (None: the key's)
Record = tuple[str, bytes, bytes | None, list[tuple[str, bytes]], int | None]
#: a step's mark: a tuple whose first item is when its signal was read
M = TypeVar("M", bound=tuple[Any, ...])


def _hashed(key: bytes) -> str:
    return hashed_key(key.decode())


class Step(ABC):
    """What the lifecycle loop hosts: the pending entries of one state topic and what falls due on them.

    The loop hands a step the records of its state topic (``restore`` while restoring a partition, ``apply`` when
    read live), every events and audit record (``read``), and once a round ``act``; its writes go through the
    loop's producer (``Lifecycle.send``), its signals still waiting into its ``Marks``."""

    #: the step's name (the counts of a round are keyed by it)
    name: ClassVar[str]

    def __init__(self, host: Lifecycle, topic: str) -> None:
        self.host = host
        #: the step's state topic
        self.topic = topic

    @property
    def settings(self) -> Settings:
        return self.host.settings

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.host.clock

    @property
    def producer(self) -> Any:
        """The loop's producer (renewed in place when its sender dies: never kept by a step)."""
        return self.host.producer

    def partition(self, tid: str) -> int:
        """The state partition of a transfer (the producer's default partitioner on its id)."""
        return self.host.partition(self.topic, tid)

    def owns(self, tid: str) -> bool:
        return self.partition(tid) in self.host.owned.get(self.topic, set())

    async def poll_once(self) -> int:
        """One round of the lifecycle loop (every step acts); returns what this step did in it."""
        return (await self.host.poll_round())[self.name]

    # -- what the loop calls --------------------------------------------------------------------------------------

    @abstractmethod
    def drop(self, partitions: Collection[int]) -> None:
        """Forget the entries (and marks) of state partitions this process no longer holds."""

    def restore(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Records of the state topic read while restoring newly assigned partitions."""
        for r in records:
            self.apply(r)

    @abstractmethod
    def apply(self, r: ConsumerRecord[bytes, bytes]) -> None:
        """A record of the state topic read live (the flow's, an operator's, or this step's own)."""

    @abstractmethod
    def read(self, r: ConsumerRecord[bytes, bytes]) -> None:
        """A record of the events or audit topic: a signal, perhaps."""

    @abstractmethod
    async def act(self, now: datetime) -> int:
        """Everything now due; before it returns, every signal still waiting is durable (its mark acknowledged).
        Returns how many actions were taken (notices sent, records closed)."""


class Marks(dict[str, M]):
    """One step's durable marks, by transfer id: the loop's one answer to a signal read before its pending entry.

    ``write`` puts a mark on the step's state topic under ``<prefix><transfer id>``, on the transfer's own
    partition (not its key's), so it is restored with that partition's pending entries by whichever process
    holds it; this process keeps it in memory only if that is itself. A step writes a mark for every signal still
    waiting before its ``act`` returns, so the round's commit never moves past a signal that is not on the broker.
    ``tombstone`` removes it once its signal was acted on or found unconfirmed; ``expire`` once it is older than
    ``KEEP_MARKS`` with nothing it could serve. ``apply`` is a mark record read back (restore, or live)."""

    def __init__(self, step: Step, prefix: str, encode: Callable[[M], bytes]) -> None:
        super().__init__()
        self.step = step
        self.prefix = prefix
        self._encode = encode
        self._expired_at: datetime | None = None

    def key(self, tid: str) -> bytes:
        return f"{self.prefix}{tid}".encode()

    def apply(self, tid: str, mark: M | None) -> None:
        if mark is None:
            self.pop(tid, None)
        else:
            self[tid] = mark

    async def write(self, tid: str, mark: M) -> RecordMetadata:
        meta = await self._send(tid, self._encode(mark))
        if self.step.owns(tid):  # else the process holding the transfer's partition reads it
            self[tid] = mark
        return meta

    async def tombstone(self, tid: str) -> RecordMetadata:
        self.pop(tid, None)
        return await self._send(tid, None)

    async def expire(self, now: datetime, serves: Callable[[str], bool]) -> list[str]:
        """Tombstone the marks older than ``KEEP_MARKS`` that nothing pending could use; returns their ids. Looked
        for once every ``EXPIRE_EVERY`` (a scan of every mark each round would cost more than the rest of it)."""
        if self._expired_at is not None and now - self._expired_at < EXPIRE_EVERY:
            return []
        self._expired_at = now
        old = [tid for tid, mark in sorted(self.items()) if now - mark[0] > KEEP_MARKS and not serves(tid)]
        for tid in old:
            await self.tombstone(tid)
        return old

    def drop(self, partitions: Collection[int]) -> None:
        for tid in [t for t in self if self.step.partition(t) in partitions]:
            del self[tid]

    async def _send(self, tid: str, value: bytes | None) -> RecordMetadata:
        step = self.step
        [meta] = await step.host.send([(step.topic, self.key(tid), value, [], step.partition(tid))])
        return meta


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Pending entries held for exactly the state partitions assigned."""

    def __init__(self, loop: Lifecycle) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.loop._drop(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.loop._restore(assigned)


class Lifecycle:
    """The one loop after delivery (see the module's docstring); ``notices`` and ``closures`` are its steps."""

    def __init__(
        self,
        settings: Settings,
        sources: dict[CaseSystem, Source],
        targets: dict[CaseSystem, Target],
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        from .closures import ClosureScheduler, utc_now  # the steps import this module
        from .notices import AllocationNotices

        self.settings = settings
        self.clock = clock or utc_now
        topics = settings.topics
        self.group_id = f"{settings.group_id}-lifecycle"
        self.notices = AllocationNotices(self, targets)
        self.closures = ClosureScheduler(self, sources, targets)
        self.steps: tuple[Step, ...] = (self.notices, self.closures)
        self._by_topic = {s.topic: s for s in self.steps}
        self.consumer = owned_follower(
            settings.connection,
            self.group_id,
            [topics.events, topics.audit, *self._by_topic],
            _Assignment(self),
        )
        self.producer = idempotent_producer(settings.connection)
        #: the state partitions this process holds (restored), per state topic, and how many each topic has
        self.owned: dict[str, set[int]] = {t: set() for t in self._by_topic}
        self.partitions: dict[str, int] = {}
        #: set once the group first assigned this process its partitions (and their entries were restored)
        self.assigned = asyncio.Event()
        #: the whole child history (hashed key -> step-downs), read at start, then followed
        self.step_downs: dict[str, tuple[HistoryEntry, ...]] = {}  # exact tuples: the collector stops scanning them
        self.history: AIOKafkaConsumer | None = None
        #: state partitions assigned whose restore failed, by topic: read at the start of the next round
        self._unrestored: dict[str, set[int]] = {}

    def partition(self, topic: str, tid: str) -> int:
        return partition_for(tid.encode(), self.partitions.get(topic) or 1)

    async def start(self) -> None:
        """Read the child history whole and follow it; join the group: each state partition is restored as the
        group assigns it (``_restore``), the first assignment awaited."""
        history = self.settings.topics.history
        self.step_downs.update(await replay_compacted(self.settings.connection, history, _hashed, decode_history))
        await self.producer.start()
        for topic in self._by_topic:
            self.partitions[topic] = len(await self.producer.partitions_for(topic))
        # earliest, as the seek below: with "latest" the reset that assign starts may win the race against the seek
        self.history = clients.consumer(
            self.settings.connection, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await self.history.start()
        parts = [TopicPartition(history, p) for p in sorted(await self.producer.partitions_for(history))]
        self.history.assign(parts)
        await self.history.seek_to_beginning(*parts)  # read again from the start: folding it twice is harmless
        # upgraded from the two loops: start where both had got to, not at the beginning (``_upgrade``)
        topics, earlier = self.settings.topics, [f"{self.settings.group_id}-{n}" for n in ("notices", "closures")]
        await carry_over_offsets(
            self.settings.connection, self.group_id, {topics.events: earlier, topics.audit: earlier}
        )
        await self.consumer.start()
        await first_assignment(self.assigned, type(self).__name__)

    async def stop(self) -> None:
        await self.consumer.stop()
        if self.history is not None:
            await self.history.stop()
        await self.producer.stop()

    async def _restore(self, assigned: Collection[TopicPartition]) -> None:
        """Both state topics' newly assigned partitions, read to their end before any of their records is handled;
        the group's position on them moves to that end (what is older was just read). One that cannot be read now
        (aiokafka only logs a listener's error) is read again at the start of the next round, before anything."""
        for topic in self._by_topic:
            partitions = {tp.partition for tp in assigned if tp.topic == topic}
            try:
                await self._restore_topic(topic, partitions)
            except Exception as exc:
                self._unrestored.setdefault(topic, set()).update(partitions)
                log.error("lifecycle_not_restored", topic=topic, partitions=sorted(partitions),
                          error_class=type(exc).__name__)  # fmt: skip
        self.assigned.set()

    async def _restore_topic(self, topic: str, partitions: set[int]) -> None:
        step = self._by_topic[topic]
        step.drop(partitions)
        ends: dict[int, int] = {}
        await read_partitions(self.settings.connection, topic, partitions, step.restore, ends=ends)
        for p, end in ends.items():
            self.consumer.seek(TopicPartition(topic, p), end)
        self.owned[topic] |= partitions

    async def _restore_left(self) -> None:
        """The state partitions whose restore failed, if still assigned, read now; raises if they cannot be (a
        transient Kafka error: the loop waits and tries again; anything else ends it, and the process exits 4)."""
        for topic, partitions in sorted(self._unrestored.items()):
            still = partitions & {tp.partition for tp in self.consumer.assignment() if tp.topic == topic}
            await self._restore_topic(topic, still)
            del self._unrestored[topic]
            log.info("lifecycle_restored_late", topic=topic, partitions=sorted(still))

    def _drop(self, revoked: Collection[TopicPartition]) -> None:
        for topic, step in self._by_topic.items():
            partitions = {tp.partition for tp in revoked if tp.topic == topic}
            self.owned[topic] -= partitions
            self._unrestored.get(topic, set()).difference_update(partitions)
            step.drop(partitions)

    async def send(self, records: list[Record]) -> list[RecordMetadata]:
        """Send, then wait until the broker acknowledged every one (in order, per partition)."""
        futures = [
            await self.producer.send(topic, value, key=key, headers=headers, partition=partition)
            for topic, key, value, headers, partition in records
        ]
        return [await f for f in futures]

    async def poll_round(self) -> dict[str, int]:
        """Read what is new, let every step act, commit. Returns what each step did, by its name. A state partition
        assigned whose restore failed is read first: nothing is read or acted on without it."""
        await self._restore_left()
        for records in (await self.consumer.getmany(timeout_ms=200)).values():
            for r in records:
                step = self._by_topic.get(r.topic)
                if step is not None:
                    step.apply(r)
                elif r.key is not None:  # events and audit: signals, perhaps, for every step
                    for s in self.steps:
                        s.read(r)
        if self.history is not None:
            for records in (await self.history.getmany(timeout_ms=0)).values():
                fold_compacted(self.step_downs, records, _hashed, decode_history)
        done = {s.name: await s.act(self.clock()) for s in self.steps}
        try:
            await self.consumer.commit()
        except _REBALANCED:  # evicted (paused past its session timeout), or the partitions moved: read again from
            # the last commit by whoever owns them now, where every entry still pending and every mark is
            log.warning("lifecycle_commit_failed", reason="the group rebalanced; read again from the last commit")
        return done

    async def poll_once(self) -> int:
        """One round; returns how many actions every step took in it."""
        return sum((await self.poll_round()).values())

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, "lifecycle", reset=lambda: renew_producer(self))


__all__ = ["EXPIRE_EVERY", "KEEP_MARKS", "Lifecycle", "Marks", "Step"]
