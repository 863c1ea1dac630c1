"""Wiring the flow to Kafka: consume in batches, outcome first, offsets after.

Commit scheme (what makes "nothing is lost" true):
- Every subscriber uses FastStream's MANUAL ack policy with auto-commit off. FastStream's
  ACK and REJECT_ON_ERROR would commit even when a handler failed; NACK_ON_ERROR would
  redeliver in a tight loop.
- A batch (up to ``batch_size`` records) is processed; different children's messages run
  concurrently, one child's messages strictly in order (records are keyed by child).
- Every output of the batch (events, retry-tier writes, retry state, dead letters) is
  acknowledged by the broker (idempotent producer, acks=all) before the batch's offsets
  are committed, once per batch, explicitly: exactly the offsets of the batch's records
  (FastStream's ``ack()`` would commit everything read so far).
- Pipelined: the acknowledgements and the commit of batch k are awaited in a task of
  their own while batch k+1 is processed; batch k+1 is not handed over before batch k
  settled, so commits stay in order and at most one batch is unsettled. On a crash the
  unsettled batches are read again; each step being idempotent on transfer id (and event
  ids deterministic), a re-delivery completes without duplicates at the targets.
- A message whose handling fails for any reason ends in an event and a retry tier or the
  dead-letter topic; the flow never raises. If an output cannot be written (the dead-letter
  write itself failed), the router halts without committing: on restart the batch is read
  again and, every step being idempotent on transfer id, completes without duplicates.
- Broker outages: an output that failed for a transient reason (``connectors._outage``: the
  broker away, a leader election, an idempotent producer out of step after a restart) is not
  a halt. Nothing is committed, the router stops handling batches (``recovering``) and calls
  ``recover``: ``casebridge.stack`` then stops its consumers and outbox, waits (bounded
  backoff) until the broker answers and starts a fresh Router on the same flow, which reads
  on from the committed offsets with its state reloaded, as a supervisor's restart would.
  Only a failure no retry fixes (a record too large, not authorized) halts (exit 3).

Many processes (``_assignor.py``): every subscriber is in the one group ``group_id`` with a co-partitioned
assignor, so partition p of the transfers topic and of every tier belongs to one process; it restores the retry
state of its partitions when they are assigned, before it handles their records, and forgets it when they are
revoked. A record of a partition revoked while its batch was in hand is neither handled nor committed here.

Retry tiers (see ``_retry.py``): a transfer whose target stays unavailable moves to tier
0, then 1, ..., then the dead-letter topic; the child's later messages follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
import typing
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias, cast

import structlog
from aiokafka import ConsumerRebalanceListener
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord, TopicPartition
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaMessage
from pydantic import ValidationError

from connectors import Source, Target
from connectors import _tracing as tracing
from connectors import kafka as clients
from connectors._feed import MAX_DEAD_LETTER_BYTES, record_bytes
from connectors._outage import within
from connectors._replay_audit import ReplayAudits
from connectors.kafka import Kafka
from contracts import AlertRaised, CaseSystem, Council, TransferDuplicate, TransferMessage, TransferRetryScheduled
from mappings import Protocol, load_protocols

from . import _metrics as metrics
from . import topics
from ._assignor import for_instance
from ._fencing import Membership
from ._history import ChildHistory
from ._lifecycle import CompletedTransfers
from ._outbox import Failure, Outbox, OutputFailed
from ._retry import Origin, RetryState, due_at, original_headers
from ._upgrade import carry_over_offsets
from .closures import ClosurePlanner, timings_of
from .flow import Outcome, TransferFlow, event_id, peek_transfer_id, urgent_first
from .settings import Settings

log = structlog.get_logger("casebridge.router")


#: a member that died is noticed in this time (the broker's minimum): its partitions move on quickly
SESSION_TIMEOUT_MS = 6000


class RouterHalted(RuntimeError):
    """Raised for every batch after an output failed: nothing more is committed."""


async def ensure_topics(kafka: Kafka, names: Sequence[str], compacted: Sequence[str] = (), partitions: int = 3) -> None:
    """Create the topics if they do not exist (single-node default: replication factor 1)."""
    admin = clients.admin(kafka)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                n,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if n in compacted else {},
            )
            for n in [*names, *compacted]
            if n not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def _raw_body(msg: Any) -> Any:
    """Hand the handler raw bytes: decoding is the contract's job, so bad JSON reaches the flow."""
    return msg.body


Record: TypeAlias = ConsumerRecord[bytes, bytes]


class _Committer(typing.Protocol):
    """The consumer side the router needs: aiokafka's commit of explicit offsets."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


async def _settled_before(before: asyncio.Task[None] | None) -> None:
    """Until the batch before's settling ended. Its failure is its own and is not raised here (this batch's
    acknowledgement, chained after its, fails too); a cancellation of this one does not cancel it."""
    if before is not None:
        await asyncio.wait([before])
        if not before.cancelled():
            before.exception()  # retrieved: not logged again as never retrieved


def next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """What to commit once ``records`` are settled: per partition, the offset after the last of them."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if r.offset + 1 > out.get(tp, -1):
            out[tp] = r.offset + 1
    return out


class _SettleOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another group member, the batch in flight is settled (committed) and their retry
    state forgotten; partitions assigned have their retry state restored before any of their records is handled."""

    def __init__(self, router: Router, topic: str, tier: int | None) -> None:
        self.router = router
        self.topic = topic
        self.tier = tier

    async def on_partitions_revoked(self, revoked: Any) -> None:
        gone = self.router._revoked(self.topic, {tp.partition for tp in revoked})
        # the batch in hand stops at its next record of a revoked partition; what it completed is written before
        # the partitions move, so their new owner restores it (its records are not committed: it reads them again,
        # and finds them completed)
        await self.router._batch_finished(self.tier)
        with contextlib.suppress(Exception):  # a failed batch has halted the router; the rebalance goes on
            await self.router._settle_tier(self.tier)
        await self.router._forget(gone)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.router._assigned(self.topic, {tp.partition for tp in assigned})


class Router:
    def __init__(self, settings: Settings, flow: TransferFlow) -> None:
        self.settings = settings
        self.flow = flow
        self.topics = settings.topics
        self.tiers = list(settings.retry.tiers)
        self.halted = False
        #: an output failed transiently: no batch is handled until ``recover`` (set by the stack) replaced us
        self.recovering = False
        self.recover: Callable[[OutputFailed], None] | None = None
        self.stopped = asyncio.Event()
        self.outcomes: dict[str, int] = defaultdict(int)
        self.retry_state = RetryState()
        #: the completed transfers of this process's partitions: a copy of one is a duplicate (``_lifecycle.py``)
        self.completed = CompletedTransfers()
        self.outbox = Outbox(
            settings.connection,
            self.topics.events,
            self.topics.dead_letter,
            settings.group_id,
            parking_topic=self.topics.parking,
        )
        self.broker = clients.broker(settings.connection, logger=None)
        self.app = FastStream(self.broker)
        self._gate = asyncio.Semaphore(settings.concurrency)
        #: per subscriber: its last batch's settling (which waits for the one before) and the one before it; two
        #: batches may be settling while the next is handled (their acknowledgements are a round trip behind)
        self._settling: dict[int | None, asyncio.Task[None]] = {}
        self._settling_before: dict[int | None, asyncio.Task[None]] = {}
        self._handling: dict[int | None, asyncio.Event] = {}  # per subscriber: set once its batch is handed over
        self._closing = False
        # co-partitioned (router/_assignor.py): partition p of the transfers topic and of every tier belongs to
        # one process of the group, which holds the retry state of exactly its partitions
        # (topic, tier, delay): the transfers topic, then each retry tier
        subscriptions: list[tuple[str, int | None, float]] = [(self.topics.transfers, None, 0.0)]
        subscriptions += [(self.topics.retry(tier), tier, delay) for tier, delay in enumerate(self.tiers)]
        self.assignor = for_instance(topics=[topic for topic, _, _ in subscriptions])
        #: partition number -> the topics whose partition of that number this process owns now
        self._owners: dict[int, set[str]] = defaultdict(set)
        #: (topic, partition) -> how many times it was revoked: a batch's record is handled only if unchanged
        self._epochs: dict[tuple[str, int], int] = defaultdict(int)
        self._restoring = asyncio.Lock()
        #: per subscriber (None: the transfers topic; n: tier n): its lease on its group membership (``_fencing``)
        self._members: dict[int | None, Membership] = defaultdict(lambda: Membership(SESSION_TIMEOUT_MS / 1000))
        #: per subscriber: its consumer, as the last batch came from it (whose membership the outbox's gate asks)
        self._consumers: dict[int | None, Any] = {}
        self.outbox.gate = self._still_member
        self.outbox.sent_after_acknowledged = frozenset({self.topics.lifecycle})
        for topic, tier, delay in subscriptions:
            self._subscribe(topic, tier, delay)

    def _subscribe(self, topic: str, tier: int | None, delay: float = 0.0) -> None:
        # every subscriber in the one group: the assignor can only co-partition what one group's leader assigns
        subscriber = self.broker.subscriber(
            topic,
            group_id=self.settings.group_id,
            batch=True,
            max_records=self.settings.batch_size,
            batch_timeout_ms=self.settings.batch_timeout_ms,
            listener=_SettleOnRevoke(self, topic, tier),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            decoder=_raw_body,
            max_poll_interval_ms=self.settings.max_poll_interval_ms(delay),  # a tier's records wait until due
            partition_assignment_strategy=(self.assignor,),
            # a member that died is noticed in 6 s (the broker's minimum), so its partitions move on quickly
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=1500,
            rebalance_timeout_ms=30000,
        )

        async def on_batch(body: list[bytes], msg: KafkaMessage) -> None:
            await self._on_batch(msg, tier)

        subscriber(on_batch)

    # -- ownership -------------------------------------------------------------------------

    async def _assigned(self, topic: str, partitions: set[int]) -> None:
        """Partitions of ``topic`` assigned: the retry state of those not yet owned (under any topic) is restored
        from the retry-state topic first; the assignment waits for it (no record of them is handled before)."""
        async with self._restoring:
            new = sorted(p for p in partitions if not self._owners.get(p))
            if new:
                kafka = self.settings.connection
                # the two tables read side by side (each reader's start is a round trip or two); one failing, the
                # other is stopped too (no table is filled for partitions that are not owned)
                restores = [
                    asyncio.ensure_future(self.retry_state.restore(kafka, self.topics.retry_state, new)),
                    asyncio.ensure_future(self.completed.restore(kafka, self.topics.lifecycle, new)),
                ]
                try:
                    read = sum(await asyncio.gather(*restores))
                except BaseException:
                    for task in restores:
                        task.cancel()
                    await asyncio.wait(restores)
                    raise
                log.info(
                    "partitions_restored",
                    partitions=new,
                    records=read,
                    parked=len(self.retry_state),
                    lifecycle_entries=len(self.completed),
                )
            for p in partitions:
                self._owners[p].add(topic)

    async def _restored(self, epochs: dict[tuple[str, int], int], within: float = 30.0) -> bool:
        """Until the state of every partition of a batch is restored. aiokafka hands the consumer its new assignment
        before it calls ``on_partitions_assigned``, so a first batch can be fetched while ``_assigned`` still reads
        the partitions' state. False if that takes longer than ``within`` seconds. A partition revoked meanwhile
        counts as done: its records are not handled (``_in_order``)."""
        deadline = time.monotonic() + within
        while True:
            waiting = [
                (t, p) for (t, p), e in epochs.items() if t not in self._owners.get(p, ()) and self._epochs[(t, p)] == e
            ]
            if not waiting:
                return True
            if time.monotonic() > deadline:
                log.error("partitions_not_restored", partitions=sorted(p for _, p in waiting))
                return False
            async with self._restoring:  # a restore under way ends first
                pass
            await asyncio.sleep(0.02)

    def _revoked(self, topic: str, partitions: set[int]) -> list[int]:
        """Partitions of ``topic`` revoked: records of them still in a batch are not handled (nor committed).
        Returns the partitions this process owns under no topic any more: their state is forgotten (``_forget``)
        once the batches in hand finished."""
        gone = []
        for p in partitions:
            self._epochs[(topic, p)] += 1
            owners = self._owners.get(p)
            if owners is not None:
                owners.discard(topic)
                if not owners:
                    del self._owners[p]
                    gone.append(p)
        return gone

    async def _forget(self, gone: list[int]) -> None:
        """The retry state and completed transfers of partitions no longer owned, forgotten once every batch in
        hand has finished: a record of theirs still in progress when they were revoked completes with its child's
        state as it was (a completion written from a table already emptied would name only itself, and the new
        owner would restore a child's completed transfers without the earlier ones)."""
        if not gone:
            return
        await asyncio.gather(*(self._batch_finished(tier) for tier in list(self._handling)))
        gone = [p for p in gone if p not in self._owners]  # not assigned again meanwhile
        if gone:
            forgotten = self.retry_state.drop(gone)
            self.completed.drop(gone)
            log.info("partitions_revoked", partitions=sorted(gone), forgotten=forgotten)

    # -- one batch -------------------------------------------------------------------------

    async def _on_batch(self, msg: KafkaMessage, tier: int | None) -> None:
        if self.halted or self.recovering:
            raise RouterHalted("the router halted after an output failure; restart it")
        finished = self._handling[tier] = asyncio.Event()
        self._consumers[tier] = msg.consumer
        try:
            await self._handle_batch(msg, tier)
        finally:
            finished.set()

    async def _batch_finished(self, tier: int | None, within: float = 20.0) -> None:
        """Until the batch this subscriber has in hand (if any) is handled and handed over."""
        handling = self._handling.get(tier)
        if handling is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(handling.wait(), within)

    async def _handle_batch(self, msg: KafkaMessage, tier: int | None) -> None:
        started = metrics.batch_started()
        records: tuple[Record, ...] = tuple(msg.raw_message)
        epochs = {(r.topic, r.partition): self._epochs[(r.topic, r.partition)] for r in records}
        if not await self._restored(epochs):
            self._fence(tier)  # never handle a record without its partition's state: rejoin afresh instead
        lost: set[tuple[str, int]] = set()  # partitions revoked while this batch was handled: not committed
        by_child: dict[bytes | None, list[Record]] = defaultdict(list)
        for record in records:
            by_child[record.key].append(record)
        groups = sorted(by_child.values(), key=urgent_first)  # SW22-1: urgent referrals take the first slots
        counts: dict[str, int] = defaultdict(int)
        if tier is None:
            # at most `concurrency` children at once anyway: that many workers, each taking the next child's
            # records, cost less than a task per child (hundreds a batch)
            queue = iter(groups)

            async def worker() -> None:
                for group in queue:
                    await self._in_order(group, tier, counts, epochs, lost, msg.consumer)

            await asyncio.gather(*(worker() for _ in range(min(self.settings.concurrency, len(groups)))))
        else:  # a retry tier's records wait until due, each child on its own, holding no worker
            await asyncio.gather(*(self._in_order(group, tier, counts, epochs, lost, msg.consumer) for group in groups))
        # one line per batch with its outcome counts (each transfer's own line is at debug, its events say more)
        log.info(
            "batch_completed", topic=records[0].topic if records else None, records=len(records), outcomes=dict(counts)
        )
        metrics.batch_handled(records, counts, started)
        before = self._settling_before.pop(tier, None)
        if before is not None:  # the batch before the last: settled long since, as a rule; raises if it failed
            await before
        if not await self._members[tier].current(msg.consumer):  # a pause after the batch's last record
            self._fence(tier)
        acked = await self.outbox.hand_over()
        consumer = cast(_Committer, msg.consumer)
        offsets = {tp: o for tp, o in next_offsets(records).items() if (tp.topic, tp.partition) not in lost}
        last = self._settling.get(tier)
        settling = asyncio.ensure_future(self._settle(acked, consumer, offsets, len(records), last))
        self._settling[tier] = settling
        if last is not None:
            self._settling_before[tier] = last
        if self._closing:  # stopping: nothing may be left in flight
            await self._settle_tier(tier)

    async def _settle(
        self,
        acked: asyncio.Task[None],
        consumer: _Committer,
        offsets: dict[TopicPartition, int],
        count: int,
        before: asyncio.Task[None] | None = None,
    ) -> None:
        """Once the batch's outputs (and every earlier one) are acknowledged, and the batch before committed its
        offsets (commits in batch order), commit exactly its offsets."""
        try:
            await acked
        except OutputFailed as exc:
            if exc.transient and self.recover is not None and not self.halted:
                if not self.recovering:  # the broker away or recovering: not committed, the stack recovers us
                    self.recovering = True
                    log.warning("router_outputs_unacknowledged", reason=str(exc), records=count)
                    self.recover(exc)
            elif not self.halted:
                self.halted = True
                log.critical("router_halted", reason=str(exc), records=count)
                self.stopped.set()
            raise
        finally:  # the batch before settled first, failed or not: commits in batch order, its outcome retrieved here
            await _settled_before(before)
        if not offsets:  # every partition of the batch was revoked meanwhile: its new owner reads them again
            return
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # partitions revoked, broker away: the batch is read again, harmlessly (idempotent)
            log.warning("offsets_not_committed", error_class=type(exc).__name__, records=count)

    async def _settle_tier(self, tier: int | None) -> None:
        """Until the subscriber's batches handed over so far are settled (the last waits for those before it)."""
        self._settling_before.pop(tier, None)
        settling = self._settling.pop(tier, None)
        if settling is not None:
            await settling

    async def settled(self) -> None:
        """Until every batch processed so far is settled: outputs acknowledged, offsets committed.

        Raises OutputFailed if a batch's outputs were not acknowledged (the router has halted).
        """
        for tier in list(self._settling):
            await self._settle_tier(tier)

    async def _in_order(
        self,
        records: list[Record],
        tier: int | None,
        counts: dict[str, int],
        epochs: dict[tuple[str, int], int],
        lost: set[tuple[str, int]],
        consumer: Any = None,
    ) -> None:
        for record in records:
            if tier is not None:  # wait until due, holding no concurrency slot
                wait = (due_at(record) - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
            tp = (record.topic, record.partition)
            if tp in lost or self._epochs[tp] != epochs[tp]:  # another process owns it now: it handles the record
                lost.add(tp)
                counts["revoked"] += 1
                continue
            if consumer is not None and not await self._members[tier].current(consumer):
                self._fence(tier)  # dropped from the group while paused: these partitions are another's now
                lost.add(tp)
                counts["fenced"] += 1
                continue
            async with self._gate:
                outcome = await self._one(record, tier)
            self.outcomes[outcome.state] += 1
            counts[outcome.state] += 1

    async def _still_member(self) -> str | None:
        """The outbox's gate (``Outbox.gate``): None while every subscriber's membership holds, else why not (and
        this member is fenced)."""
        subscribers = list(self._consumers.items())
        # asked together: a subscriber idle past the lease's recheck costs one heartbeat, not one after another
        current = await asyncio.gather(*(self._members[tier].current(consumer) for tier, consumer in subscribers))
        for (tier, _), still in zip(subscribers, current, strict=True):
            if not still:
                self._fence(tier)
                return self.outbox.fenced
        return None

    def _fence(self, tier: int | None) -> None:
        """This process was dropped from its group (``_fencing``): it handles nothing more, sends nothing it has
        not sent, commits nothing, and rejoins as a fresh member (the stack's in-process recovery)."""
        if self.outbox.fenced is None:
            log.warning("member_fenced", topic=self.topics.transfers if tier is None else self.topics.retry(tier))
            self.outbox.fence("this member was dropped from its consumer group")

    # -- one message -----------------------------------------------------------------------

    async def _one(self, record: Record, tier: int | None) -> Outcome:
        # parsed once here: its transfer id is the correlation id, and the flow takes the parse as it is
        try:
            parsed: TransferMessage | ValidationError | None = self.flow.parse(record)
        except Exception:  # a bug in a validator: the flow meets it again, and _run dead-letters the message
            parsed = None
        if isinstance(parsed, TransferMessage):
            correlation = parsed.transfer_id
        else:
            correlation = peek_transfer_id(record.value) or f"{record.topic}:{record.partition}:{record.offset}"
        # every log line about this record carries its correlation id (this task's context only)
        tokens = structlog.contextvars.bind_contextvars(correlation_id=correlation)
        try:
            if not tracing.active():
                return await self._one_correlated(record, tier, parsed)
            # the transfer's trace (its publisher's, from the record's headers): each case system call a child
            with tracing.handling(correlation, record.headers, record.topic, record.partition) as span:
                outcome = await self._one_correlated(record, tier, parsed)
                assert span is not None  # tracing is active
                span.set_attribute("casebridge.outcome", outcome.state)
                if parsed is not None and not isinstance(parsed, ValidationError):
                    span.set_attribute("casebridge.council", parsed.council.value)
                return outcome
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _one_correlated(
        self, record: Record, tier: int | None, parsed: TransferMessage | ValidationError | None
    ) -> Outcome:
        if isinstance(parsed, TransferMessage):
            first = self.completed.completed_by(record.key, parsed.transfer_id, record.value or b"", parsed.message_id)
            if first is not None:  # completed already, here or by the process that owned the partition before
                outcome = await self._duplicate(record, parsed, first)
                if tier is not None and record.key is not None:  # a copy waiting in a tier leaves it
                    await self._resolve(record, Origin.of(record))
                return outcome
        head_tier = self.retry_state.tier_of(record.key)
        if record.key is not None and head_tier is not None and (tier is None or head_tier > tier):
            # an earlier transfer of this child waits in a retry tier: this one queues behind it
            origin = Origin.of(record)
            if await self._to_tier(record, origin, head_tier, attempts=origin.attempts, behind=True):
                return Outcome("deferred")
            if tier is not None:  # too big to move on to the next tier: dead-lettered, it leaves the tiers
                await self._resolve(record, origin)
            return Outcome("dead-lettered", peek_transfer_id(record.value))
        outcome = await self._run(record, parsed)
        if outcome.state == "completed" and isinstance(parsed, TransferMessage) and record.key is not None:
            done = self.completed.complete(
                record.key, parsed.transfer_id, record.value or b"", parsed.message_id, record.partition
            )
            await self.outbox.send(self.topics.lifecycle, record.key, done, [])
        if tier is None and outcome.state != "transient":
            return outcome  # the common path: read from the transfers topic, done; no retry bookkeeping
        origin = Origin.of(record)
        if outcome.state == "transient":
            attempts = origin.attempts + outcome.attempts
            next_tier = 0 if tier is None else tier + 1
            if next_tier >= len(self.tiers):
                await self._dead_letter_exhausted(record, origin, outcome, attempts)
                outcome = Outcome("dead-lettered", outcome.transfer_id)
            elif await self._to_tier(record, origin, next_tier, attempts=attempts, outcome=outcome):
                if tier is None:
                    await self._alert(outcome, "warning", "target unavailable: transfer entered the retry tiers")
                return outcome
            else:  # too big for a retry tier: dead-lettered (by reference) instead
                await self._alert(outcome, "critical", "target unavailable, too big to retry: dead-lettered")
                outcome = Outcome("dead-lettered", outcome.transfer_id)
        if tier is not None and record.key is not None:
            await self._resolve(record, origin)
            if outcome.state == "completed" and origin.attempts > 0:  # it had failed, not only waited its turn
                await self._alert(outcome, "info", "transfer recovered after retry and completed")
        return outcome

    async def _dead_letter_exhausted(self, record: Record, origin: Origin, outcome: Outcome, attempts: int) -> None:
        failure = Failure(
            stage="deliver",
            error_class=outcome.error_class or "TransientError",
            message=outcome.message or "target unavailable",
            attempts=attempts,
            first_failure=origin.first_failure or datetime.now(UTC),
            transfer_id=outcome.transfer_id,
            council=outcome.council,
        )
        await self.outbox.dead_letter(record, failure)
        await self._alert(outcome, "critical", "target unavailable through every retry tier: dead-lettered")

    async def _resolve(self, record: Record, origin: Origin) -> None:
        """A record left the tiers: its child's retry state forgets it (the child flows again if it was the last)."""
        if record.key is not None:
            remaining = self.retry_state.resolve(record.key, origin.retry_id)
            await self.outbox.send(self.topics.retry_state, record.key, RetryState.encode(remaining), [])

    async def _duplicate(self, record: Record, transfer: TransferMessage, first: str) -> Outcome:
        """A copy of a completed transfer: one ``duplicate`` event (its id the record's: a re-read writes the same),
        and nothing else; no case system is called, no source closed again."""
        await self.flow.replayed(record, self.outbox)  # a replay of it was still an operator's act: recorded
        await self.outbox.emit(
            TransferDuplicate(
                event_id=event_id(f"{record.topic}/{record.partition}/{record.offset}", "duplicate"),
                transfer_id=transfer.transfer_id,
                correlation_id=transfer.correlation_id,
                council=transfer.council,
                message_id=transfer.message_id,
                first_message_id=first,
            )
        )
        log.info("transfer_duplicate", transfer_id=transfer.transfer_id)
        return Outcome("duplicate", transfer.transfer_id)

    async def _run(self, record: Record, parsed: TransferMessage | ValidationError | None = None) -> Outcome:
        try:
            return await self.flow.run(record, self.outbox, parsed)
        except Exception as exc:  # a bug must not lose the message: dead-letter it and go on
            # no traceback text: an exception's message may quote personal data; file:line is enough to find it
            frames = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in traceback.extract_tb(exc.__traceback__)]
            log.error("transfer_internal_error", error_class=type(exc).__name__, where=frames[-5:])
            failure = Failure(stage="internal", error_class=type(exc).__name__, message="internal error in the router")
            await self.outbox.dead_letter(record, failure)
            return Outcome("dead-lettered")

    async def _to_tier(
        self,
        record: Record,
        origin: Origin,
        tier: int,
        *,
        attempts: int,
        outcome: Outcome | None = None,
        behind: bool = False,
    ) -> bool:
        """Park ``record`` in retry tier ``tier``; False when it is too big to (the producer would refuse it, and the
        router halt on it at every restart): then it is dead-lettered instead, by reference, naming its size."""
        now = datetime.now(UTC)
        due = now + timedelta(seconds=self.tiers[tier])
        headers = original_headers(record)  # without casebridge.retry.*
        headers += origin.retry_headers(tier, due, attempts, origin.first_failure or now)
        size = record_bytes(record.key, record.value, headers)
        if size > MAX_DEAD_LETTER_BYTES:
            transfer_id = outcome.transfer_id if outcome else peek_transfer_id(record.value)
            log.warning("transfer_too_large_to_retry", transfer_id=transfer_id, tier=tier, size=size)
            reason = (
                f"too big for retry tier {tier}: {size} bytes with its retry headers, over {MAX_DEAD_LETTER_BYTES}"
                + (" (it waited behind an earlier transfer of its child)" if behind else "")
            )
            failure = Failure(
                stage="retry",
                error_class="RecordTooLarge",
                message=reason,
                attempts=max(attempts, 1),
                first_failure=origin.first_failure or now,
                transfer_id=transfer_id,
                council=outcome.council if outcome else None,
            )
            await self.outbox.dead_letter(record, failure)
            return False
        await self.outbox.send(self.topics.retry(tier), record.key, record.value, headers)
        if record.key is not None:
            parked = self.retry_state.park(record.key, origin.retry_id, tier, record.partition)
            await self.outbox.send(self.topics.retry_state, record.key, RetryState.encode(parked), [])
        transfer_id = outcome.transfer_id if outcome else peek_transfer_id(record.value)
        if transfer_id is not None:
            await self.outbox.emit(
                TransferRetryScheduled(
                    event_id=event_id(f"{origin.retry_id}/{tier}", "retry-scheduled"),
                    transfer_id=transfer_id,
                    tier=tier,
                    due_at=due,
                    attempts=max(attempts, 1),
                    error_class=(outcome.error_class if outcome else None) or "TransientError",
                    behind_earlier_transfer=behind,
                )
            )
        log.info("transfer_retry_scheduled", transfer_id=transfer_id, tier=tier, behind_earlier_transfer=behind)
        return True

    async def _alert(self, outcome: Outcome, severity: Literal["info", "warning", "critical"], summary: str) -> None:
        """Raised once per state change of a transfer (entered retry, dead-lettered, recovered)."""
        if outcome.transfer_id is None:
            return
        await self.outbox.emit(
            AlertRaised(
                event_id=event_id(f"{outcome.transfer_id}/{summary}", "alert"),
                transfer_id=outcome.transfer_id,
                severity=severity,
                summary=summary,
            )
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, connectors: bool = True) -> None:
        """Prepare the topics, load the state, connect and consume; ``connectors=False``: the case systems'
        connectors are already started (a fresh Router after an outage)."""
        self._closing = False
        t = self.topics
        # every topic created with its documented configuration; refused if an existing one would lose records
        await topics.prepare(self.settings.connection, t, len(self.tiers), self.settings.topic_config)
        # the retry state is restored per partition as the group assigns them (``_assigned``), not here
        if self.flow.history is not None:
            await self.flow.history.load(self.settings.connection, t.history)
        for connector in self._connectors() if connectors else ():
            await connector.start()
        # the topics every transfer writes: their partitions learnt now
        await self.outbox.start([t.events, t.history, t.lifecycle, t.pending_notices, t.pending_closures])
        # upgraded from one process, whose tiers each had a group: each tier goes on where it was (``_upgrade``)
        group = self.settings.group_id
        earlier = {t.retry(n): [f"{group}-retry-{n}"] for n in range(len(self.tiers))}
        await carry_over_offsets(self.settings.connection, group, earlier)
        await self.broker.start()
        log.info(
            "router_started", topic=t.transfers, group_id=self.settings.group_id, parked=len(self.retry_state.parked)
        )

    async def stop(self, connectors: bool = True, budget: float = 6.0) -> None:
        """Stop within about ``budget`` seconds in every state, the broker away included (SIGTERM is honoured in
        10 s): what is not acknowledged by then is not committed, and is read again at the next start."""
        self._closing = True  # a batch still being processed settles before its handler returns
        with contextlib.suppress(AttributeError):  # FastStream's wait for a handler in flight (default 15 s)
            self.broker.config.broker_config.graceful_timeout = budget / 3
        await within("router batches", self._settled_quietly(), budget / 3)
        await within("router consumers", self.broker.stop(), budget / 2)  # waits for a batch in its handler
        self._consumers.clear()  # out of the group now: the outbox's last writes are not held for a heartbeat
        await within("router batches", self._settled_quietly(), budget / 6)
        await self.outbox.stop(within=budget / 6)
        for connector in self._connectors() if connectors else ():
            await connector.stop()
        log.info("router_stopped", outcomes=dict(self.outcomes))

    async def _settled_quietly(self) -> None:
        with contextlib.suppress(OutputFailed, RouterHalted):  # logged as router_halted / recovering already
            await self.settled()

    def _connectors(self) -> list[Target | Source]:
        return [*self.flow.targets.values(), *self.flow.sources.values()]

    async def run_until_stopped(self) -> None:
        await self.start()
        try:
            await self.stopped.wait()
        finally:
            await self.stop()


def build_router(
    settings: Settings,
    targets: dict[CaseSystem, Target],
    sources: dict[CaseSystem, Source],
    protocols: dict[Council, Protocol] | None = None,
) -> Router:
    """A router for the given connectors; by default with every council protocol shipped in ``mappings``."""
    if protocols is None:
        protocols = load_protocols()
    flow = TransferFlow(
        protocols,
        targets,
        sources,
        settings.retry,
        settings.group_id,
        ChildHistory(),
        settings.topics.history,
        settings.topics.pending_notices,
        ClosurePlanner(settings.topics.pending_closures, timings_of(protocols.values())),
    )
    flow.keyed = True  # a record not keyed by its child is refused: per-child order depends on it
    flow.replay_audits = ReplayAudits(settings.connection, settings.topics.audit)
    return Router(settings, flow)
