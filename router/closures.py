"""Closing a source record later: LU-4 (10 days after social care accepted), SW22-10 (once the receiving
early-help worker is named), NS-12 (once the Front Door accepted the step-up).

Where the flow keeps a source record open under a rule with a later closure, ``ClosurePlanner``
turns it into a ``PendingClosure`` (ids, times, the protocol's closure wording; no child data,
staff names only), which the flow writes to the compacted ``<prefix>.pending-closures`` topic keyed by
transfer id. ``ClosureScheduler``, a step of the lifecycle loop (``router/lifecycle.py``), acts on that topic's
entries as the loop reads it and the events topic. A closure falls due
at its time (LU-4), on the transfer's ``allocated`` event (SW22-10) or on the Front Door's
``front-door-decision`` event (NS-12: accepted closes; not accepted cancels, the record
stays open). A signal never acts alone: an ``allocated`` or ``front-door-decision`` event read on the events topic
is confirmed with the system that owns it (the target's allocation of the transfer, LCS's decision on the contact)
before anything closes; unconfirmed, nothing closes and a critical alert says so. An allocation an operator records
(``router/allocations.py``: a team mailbox cannot report one) writes a closure waiting for an allocation back due now
with the worker it names, which the close then uses instead of asking the target (SW22-10), or with which the
documents go first (BA-9); its audit record, followed here, is what the ``allocated`` event is emitted for.
LU-4 is cancelled when a step-down of the same child is agreed before it falls due
(seed 002: co-working for 10 days, then early help closes or the case steps down): the
scheduler looks in the child history the loop follows (``router/_history.py``, written by the flow on
every completed step-down), tombstones the entry and emits a ``milestone`` event
``closure-cancelled`` naming LU-4, so the monitor shows why the record stayed open. When due,
the record is closed through the source connector, ``source-closed`` is emitted with the rule
id, and the entry is tombstoned.

Delivery: at least once. A signal is made durable by rewriting the entry with its due time;
a crash between the close and the tombstone closes again, which every source connector's
close makes a no-op (idempotent on transfer id), and the event id is the same. A source
that is down leaves the closure due for the next round; a refusal dead-letters the entry
(``casebridge replay`` puts it back) and raises an alert. The clock is injectable (the loop's). A signal read
before its pending closure, or not yet confirmed, is marked as the loop marks every such signal: a mark
``signal:<transfer id>`` (the trigger, go or not, when read) on this topic, on the transfer's partition, before
the offsets move past it; restored with the pending closures, tombstoned once the closure is due, cancelled or
gone, or the signal was not confirmed, and after ``KEEP_MARKS`` when nothing it could serve arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from connectors import CasebridgeError, PermanentError, Receipt, Source, Target, TargetUnavailable
from connectors._replay_audit import ReplayAudits, replayed_event
from contracts import (
    AlertRaised,
    CaseSystem,
    Council,
    FrontDoorDecided,
    MilestoneRecorded,
    Person,
    RecordState,
    SourceClosed,
    SourceRecord,
    TransferDeadLettered,
    TransferEvent,
    TransferMessage,
    field_errors,
    parse_event,
    wire,
)
from mappings import DeadlineRule, Route, StepDownMemory, deadlines_by_rule, due_at, load_protocols
from mappings import Protocol as CouncilProtocol

from ._history import Entry as HistoryEntry
from ._history import child_keys, hashed_key
from ._outbox import Failure, dead_letter_headers
from ._pending import SIGNAL_MARK, PendingClosure, SignalMark, Trigger, decode_signal_mark, encode_signal_mark
from ._reading import fold_compacted
from ._retry import H_REPLAY_OF, H_REPLAY_OPERATOR
from .allocations import (
    AllocationAudit,
    AllocationNotPending,
    AllocationRefused,
    KnowsAllocation,
    MilestoneAudit,
    RecordedAllocation,
    confirm_allocation,
    record_allocation,
    recorded_allocation,
    recorded_allocation_event_id,
    recorded_milestone,
)
from .flow import event_id
from .lifecycle import Marks, Step

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

log = structlog.get_logger("casebridge.router.closures")
Clock = Callable[[], datetime]
_Record = tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, headers
#: ``source-closed`` events kept for transfers whose pending closure has not been read yet (the oldest go first)
MAX_SIGNALS = 100_000


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Timing:
    """When a rule's closure falls due: after a deadline (its length and unit), or on a signal."""

    trigger: Trigger
    after: DeadlineRule | None = None
    #: a step-down of the same child before the closure falls due cancels it (LU-4)
    cancel_on_step_down: bool = False
    #: the withheld documents go to the target before the close (BA-9)
    send_documents: bool = False


def timings_of(protocols: Iterable[CouncilProtocol]) -> dict[str, Timing]:
    """Each rule whose record closes later, from the protocol files (``later`` on ``[[keep_open]]`` and
    ``[[closure]]``); a deadline's length and unit are those of the rule in ``mappings/data/deadlines.toml`` (the
    monitor's too). Raises ValueError naming a rule that closes at a deadline it has none of."""
    deadlines = deadlines_by_rule()
    out: dict[str, Timing] = {}
    for protocol in protocols:
        for rule, later in protocol.closes_later().items():
            after = deadlines.get(rule)
            if later.on == "due" and after is None:
                raise ValueError(
                    f'{protocol.origin}: {rule} closes later on = "due" but deadlines.toml has no deadline for'
                    f" {rule}: add one (its length and unit), or close it on a signal"
                )
            out[rule] = Timing(
                later.on,
                after if later.on == "due" else None,
                cancel_on_step_down=later.cancel_on_step_down,
                send_documents=later.send_documents,
            )
    return out


def default_timings() -> dict[str, Timing]:
    """The timings of every protocol shipped in ``mappings``."""
    return timings_of(load_protocols().values())


class ClosurePlanner:
    """In the flow: does the record kept open (or about to be closed) get a closure later instead?"""

    def __init__(self, topic: str, timings: dict[str, Timing] | None = None, clock: Clock = utc_now) -> None:
        self.topic = topic
        self.timings = default_timings() if timings is None else timings
        self.clock = clock

    def plan(self, closing: TransferMessage, kept_open: list[str], receipt: Receipt) -> PendingClosure | None:
        """A pending closure when the rules keeping the record open all close it later (LU-4, SW22-10), or when
        the protocol's closure waits for a signal (NS-12); None: kept open for good (SW26-3, BA-13) or closed now."""
        if kept_open:
            if not all(r in self.timings for r in kept_open):
                return None
            rule = kept_open[0]
        else:
            ids = closing.closure.rule_ids if closing.closure else []
            found = [r for r in ids if r in self.timings]
            if not found:
                return None
            rule = found[0]
        timing = self.timings[rule]
        due = None
        if timing.trigger == "due":
            if timing.after is None:
                raise ValueError(f"{rule}: a timed closure needs a deadline (length and unit)")
            due = due_at(self.clock(), timing.after.length, timing.after.unit)
        return PendingClosure(
            transfer_id=closing.transfer_id,
            correlation_id=closing.correlation_id,
            council=closing.council,
            rule_id=rule,
            trigger=timing.trigger,
            due_at=due,
            requested_at=closing.requested_at,
            pathway=closing.pathway,
            source_record=closing.source_record,
            closure=closing.closure,
            target_system=receipt.system,
            target_reference=receipt.reference,
            assessment_outcome=closing.assessment_outcome,
            cancel_on_step_down=[hashed_key(k) for k in child_keys(closing)] if timing.cancel_on_step_down else [],
            send_documents=timing.send_documents,
        )


@runtime_checkable
class KnowsDecision(Protocol):
    """A target that records a decision on the transfer itself (NS-12: the Front Door's, on the LCS contact)."""

    async def front_door_decision(self, transfer_id: str) -> str | None: ...


@runtime_checkable
class KnowsStepDown(Protocol):
    """A source that can give a step-down again, documents included (BA-9: they go once a worker is allocated)."""

    async def stepdown_transfer(
        self, source_record: SourceRecord, transfer_id: str, council: Council
    ) -> TransferMessage: ...


class WorkerUnknown(PermanentError):
    """Allocated, but the target does not say to whom: the closure record cannot name the worker (SW22-10); or no
    worker was recorded for a closure that sends the documents to them (BA-9). Names the pending closure's rule."""

    def __init__(self, message: str, rule_id: str) -> None:
        super().__init__(message)
        self.rule_ids = (rule_id,)


def _without_values(exc: Exception) -> str:
    """What went wrong, naming the class and (for a validation error) the fields, never their values."""
    if isinstance(exc, ValidationError):
        return f"ValidationError at {', '.join(e.field for e in field_errors(exc))} (values not shown)"
    return f"unexpected {type(exc).__name__} (message not shown: it may hold record data)"


class ClosureScheduler(Step):
    """The closures step: pending closures and signal marks of the pending-closures partitions held."""

    name = "closures"

    def __init__(self, host: Lifecycle, sources: dict[CaseSystem, Source], targets: dict[CaseSystem, Target]) -> None:
        super().__init__(host, host.settings.topics.pending_closures)
        self.sources = sources
        self.targets = targets
        self.pending: dict[str, PendingClosure] = {}
        #: signals read for transfers (allocated; front door accepted True / not accepted False), the durable ones
        #: (``marks``) included
        self.signals: dict[str, tuple[Trigger, bool]] = {}
        #: durable signal marks: transfer id -> when marked, the trigger and whether it says go
        self.marks: Marks[SignalMark] = Marks(self, SIGNAL_MARK, encode_signal_mark)
        #: transfers a ``source-closed`` event says are closed (by a re-run of the transfer, or by this scheduler)
        self.closed: dict[str, None] = {}
        #: (partition, offset) of this scheduler's own writes to the pending topic: not applied again when read back
        self._own: set[tuple[int, int]] = set()
        #: operators' recorded allocations and milestones read in this round: their events go out before the commit
        self._recorded: list[AllocationAudit | MilestoneAudit] = []
        #: replayed closures read in this round (dead letter id, operator, transfer id): their ``replayed`` events go
        #: out before the commit, for a replay the audit topic records (else a critical alert, _replay_audit.py)
        self._replays: list[tuple[str, str, str]] = []
        self.replay_audits = ReplayAudits(host.settings.connection, host.settings.topics.audit)

    @property
    def step_downs(self) -> dict[str, tuple[HistoryEntry, ...]]:
        """The child history the loop follows (hashed key -> step-downs): LU-4's cancellation."""
        return self.host.step_downs

    def drop(self, partitions: Collection[int]) -> None:
        for tid in {t for t in [*self.pending, *self.marks] if self.partition(t) in partitions}:
            self._forget(tid)
        self.marks.drop(partitions)
        self._own = {(p, o) for p, o in self._own if p not in partitions}

    def restore(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for r in records:
            self._apply(r)

    def apply(self, r: ConsumerRecord[bytes, bytes]) -> None:
        if (r.partition, r.offset) in self._own:  # our own write, applied when it was made
            self._own.discard((r.partition, r.offset))
            return
        self._apply(r)
        of = dict(r.headers or ()).get(H_REPLAY_OF)
        if of is not None and r.key is not None:  # an operator replayed its dead letter: the event is ours, if audited
            operator = dict(r.headers or ()).get(H_REPLAY_OPERATOR, b"").decode(errors="replace")
            self._replays.append((of.decode(errors="replace"), operator, r.key.decode()))

    def _apply(self, r: ConsumerRecord[bytes, bytes]) -> None:
        """One record of the pending-closures topic: a pending closure or a signal mark; no value: a tombstone."""
        if r.key is None:
            return
        key = r.key.decode()
        if key.startswith(SIGNAL_MARK):
            tid = key.removeprefix(SIGNAL_MARK)
            mark = None if r.value is None else decode_signal_mark(r.value)
            self.marks.apply(tid, mark)
            if mark is None:
                self.signals.pop(tid, None)
            else:
                self.signals.setdefault(tid, mark[1:])
        else:
            fold_compacted(self.pending, [r], bytes.decode, PendingClosure.decode)

    async def act(self, now: datetime) -> int:
        """Close every record now due; returns how many records were closed."""
        # forgotten only once on the broker: a round that fails here sends them again (the same event ids)
        replays = [await replayed_event(self.replay_audits, of, operator, tid) for of, operator, tid in self._replays]
        await self._send_all([self._event_record(e) for e in [*(a.event() for a in self._recorded), *replays]])
        self._recorded, self._replays = [], []
        for tid in sorted(self.closed.keys() & self.pending.keys()):
            p = self.pending.get(tid)
            if p is None:  # its partition was revoked meanwhile
                continue
            confirmed = await self._source_says_closed(p)
            if confirmed:
                await self._write(tid, None)
                log.info("closure_not_needed", transfer_id=tid)
            elif confirmed is False:
                self.closed.pop(tid, None)
        for _, p in sorted(self.pending.items()):
            down = self._stepped_down(p)
            if down is not None:
                await self._cancel(p, down)
        for tid, p in sorted(self.pending.items()):
            signal = self.signals.get(tid)
            if p.due_at is None and signal is not None and signal[0] == p.trigger:
                await self._on_signal(p, signal[1], now)
        closed: list[tuple[PendingClosure, SourceClosed]] = []
        for tid, p in sorted(self.pending.items()):
            if p.due_at is None or p.due_at > now:
                continue
            try:
                closed.append((p, await self._close(p)))
            except PermanentError as exc:
                await self._dead_letter(p, exc)
            except CasebridgeError as exc:  # the source is down: the closure stays due
                log.warning("closure_failed", transfer_id=tid, rule_ids=[p.rule_id], error_class=type(exc).__name__)
            except Exception as exc:  # a bug or unreadable data: this entry goes to a person, the others still close
                await self._dead_letter(p, PermanentError(_without_values(exc)))
        # every source-closed is on the broker before any of their entries is tombstoned (a crash between: closed
        # again, a no-op, same event id)
        await self._send_all([self._event_record(e) for _, e in closed])
        await self._send_all([(self.topic, p.transfer_id.encode(), None, []) for p, _ in closed])
        for p, _ in closed:
            self._forget(p.transfer_id)
            log.info("source_closed_later", transfer_id=p.transfer_id, rule_ids=[p.rule_id])
        await self._keep_signals(now)
        return len(closed)

    async def _keep_signals(self, now: datetime) -> None:
        """Every signal still waiting (nothing pending yet, or not yet confirmed) is marked before the offsets
        move past it; a mark whose signal was acted on, dropped, or kept past ``KEEP_MARKS`` with nothing it could
        serve, is tombstoned."""

        def serves(tid: str) -> bool:
            p = self.pending.get(tid)
            return p is not None and p.trigger == self.marks[tid][1]

        for tid in await self.marks.expire(now, serves):
            self.signals.pop(tid, None)
        # taken once: a revoke during the writes below forgets signals and marks of partitions gone meanwhile
        waiting = {t: s for t, s in self.signals.items() if (p := self.pending.get(t)) is None or p.due_at is None}
        for tid in sorted(self.marks.keys() - waiting.keys()):
            if tid in self.marks:
                await self._mark(tid, None)
        for tid, signal in sorted(waiting.items()):
            mark = self.marks.get(tid)
            if mark is None or mark[1:] != signal:  # new, or the signal changed (a decision corrected): rewritten
                await self._mark(tid, (now, *signal))

    async def _mark(self, tid: str, mark: SignalMark | None) -> None:
        meta = await (self.marks.tombstone(tid) if mark is None else self.marks.write(tid, mark))
        if self.owns(tid):  # read back by this process: applied now, not again
            self._own.add((meta.partition, meta.offset))
        else:  # the process holding the transfer's partition reads it
            self.signals.pop(tid, None)

    def read(self, r: ConsumerRecord[bytes, bytes]) -> None:
        if r.topic == self.settings.topics.audit:
            self.replay_audits.remember(r.key, r.value)  # a replay's audit record: known before its record is read
            audit = recorded_allocation(r.key, r.value) or recorded_milestone(r.key, r.value)
            if audit is not None:
                self._recorded.append(audit)
            return
        kind = dict(r.headers or ()).get(wire.EVENT_TYPE)
        if r.key is None or kind not in (b"allocated", b"front-door-decision", b"source-closed"):
            return
        tid = r.key.decode()
        if len(self.closed) >= MAX_SIGNALS:  # kept for transfers with nothing pending yet: the oldest go first
            del self.closed[next(iter(self.closed))]
        if kind == b"source-closed":  # e.g. by a re-run of the transfer (the worker named on it): nothing to do
            self.closed[tid] = None
            return
        try:
            event: TransferEvent | None = parse_event(r.value or b"")
        except ValidationError as exc:  # not ours to refuse (the tracker sees it too): say so
            log.warning("event_unreadable", transfer_id=tid, fields=[e.field for e in field_errors(exc)])
            event = None
        if event is not None and event.event_id == recorded_allocation_event_id(tid):
            # an operator's recorded allocation wrote its closure due (with the worker) before this event: not a
            # signal, or a closure read before that write would be written back due without the worker
            return
        if kind == b"allocated":  # an allocation, readable or not
            self.signals[tid] = ("allocated", True)
            return
        if isinstance(event, FrontDoorDecided):
            self.signals[tid] = ("accepted", event.decision == "accepted")

    def _stepped_down(self, p: PendingClosure) -> StepDownMemory | None:
        """A step-down of the same child agreed after the step-up and before the closure falls due (LU-4)."""
        for key in p.cancel_on_step_down:
            for m in map(StepDownMemory._make, self.step_downs.get(key, ())):
                if m.transfer_id != p.transfer_id and m.at >= p.requested_at and (p.due_at is None or m.at <= p.due_at):
                    return m
        return None

    async def _cancel(self, p: PendingClosure, down: StepDownMemory) -> None:
        """The case stepped down again before the closure fell due: early help keeps it, nothing closes (LU-4)."""
        tid = p.transfer_id
        await self._emit(
            MilestoneRecorded(
                **self._about(p, "closure-cancelled"),
                milestone="closure-cancelled",
                rule_ids=[p.rule_id],
                recorded_via="connector",
            )
        )
        await self._write(tid, None)
        log.info("closure_cancelled", transfer_id=tid, rule_ids=[p.rule_id], by_transfer=down.transfer_id)

    async def _on_signal(self, p: PendingClosure, go: bool, now: datetime) -> None:
        """The signal arrived: due now (written back, so a restart keeps it), or cancelled (NS-12 not accepted).
        Confirmed first with the system that owns it (``_confirmed``)."""
        tid = p.transfer_id
        confirmed = await self._confirmed(p, go)
        if confirmed is None:
            return
        if not go:
            await self._write(tid, None)
            log.info("closure_cancelled", transfer_id=tid, rule_ids=[p.rule_id])
            return
        update: dict[str, Any] = {"due_at": now}
        if isinstance(confirmed, Person) and p.worker is None:
            update["worker"] = confirmed  # the worker the target names: the close does not ask again
        await self._write(tid, p.model_copy(update=update))
        log.info("closure_due", transfer_id=tid, rule_ids=[p.rule_id], trigger=p.trigger)

    async def _confirmed(self, p: PendingClosure, go: bool) -> Person | bool | None:
        """A signal read on the events topic acts only once the system that owns it says the same: anyone who can
        write to Kafka could have written the event. The front door's decision: LCS's decision on the contact; an
        allocation: the target's allocation of the transfer (the worker it names). Unconfirmed: the signal is
        dropped, nothing closes, and an alert says so (None is returned). The system down: the signal waits for the
        next poll (None too, the signal kept)."""
        tid = p.transfer_id
        target = self.targets.get(p.target_system)
        if p.trigger == "allocated":
            worker = await confirm_allocation(target, tid)
            if worker is None:
                return None  # ask again at the next poll
            if worker is not False:
                return worker
            signal = "an allocated event"
        else:
            try:
                actual = await target.front_door_decision(tid) if isinstance(target, KnowsDecision) else None
            except CasebridgeError as exc:
                if getattr(exc, "retriable", False):
                    log.warning("signal_unconfirmed_yet", transfer_id=tid, error_class=type(exc).__name__)
                    return None
                actual = None
            if actual is not None and (actual == "accepted") == go:
                return True
            signal = "a front-door-decision event"
        self.signals.pop(tid, None)
        await self._not_confirmed(p, "signal-not-confirmed", signal, p.target_system, "nothing was closed")
        return None

    async def _not_confirmed(self, p: PendingClosure, kind: str, signal: str, owner: CaseSystem, outcome: str) -> None:
        """A signal the system that owns it does not confirm: logged, and a critical alert naming the rule."""
        log.warning("signal_not_confirmed", transfer_id=p.transfer_id, rule_ids=[p.rule_id], system=owner.value)
        await self._emit(
            AlertRaised(
                **self._about(p, kind),
                severity="critical",
                rule_ids=[p.rule_id],
                summary=f"{signal} that {owner.value} does not confirm was ignored: {outcome};"
                " check who can write the events topic",
            )
        )

    async def _source_says_closed(self, p: PendingClosure) -> bool | None:
        """A ``source-closed`` event for a record this scheduler still means to close (e.g. a re-run of the transfer
        closed it): the source is asked first, as for every signal. Closed there: True, nothing left to do. Still
        open (a forged event, or one about another record): False, the closure stays pending, and an alert. The
        source down: None, asked again at the next poll."""
        tid = p.transfer_id
        source = self.sources.get(p.source_record.system)
        if source is not None:
            try:
                state = await source.state(p.closing_transfer())
            except CasebridgeError as exc:
                if getattr(exc, "retriable", False):
                    log.warning("signal_unconfirmed_yet", transfer_id=tid, error_class=type(exc).__name__)
                    return None
            else:
                if state.state is RecordState.CLOSED:
                    return True
        await self._not_confirmed(
            p,
            "source-closed-not-confirmed",
            "a source-closed event",
            p.source_record.system,
            "the closure stays pending",
        )
        return False

    async def _close(self, p: PendingClosure) -> SourceClosed:
        """Close the record through its source connector (idempotent); returns the event to emit."""
        source = self.sources.get(p.source_record.system)
        if source is None:
            raise PermanentError(f"no source connector is configured for {p.source_record.system.value!r}")
        if p.send_documents:
            reference = await self._send_documents_then_close(p, source)
        else:
            # the worker an operator recorded, else (an allocation the target reported) the worker the target names
            worker = p.worker or (await self._worker(p) if p.trigger == "allocated" else None)
            receipt = Receipt(p.target_system, p.target_reference, created=False, acknowledged=True)
            reference = await source.close(p.closing_transfer(worker), receipt)
        return SourceClosed(
            **self._about(p, "source-closed"),
            source_system=p.source_record.system,
            source_reference=reference,
            rule_ids=[p.rule_id],
        )

    async def _send_documents_then_close(self, p: PendingClosure, source: Source) -> str:
        """BA-9 then BA-15: the step-down with its documents (fetched again from the source) goes to the target under
        ``<transfer id>-documents``, naming the allocated worker as lead professional; the source closes only once
        the target acknowledged it. Both steps are idempotent per transfer id (a crash between: sent once)."""
        target = self.targets.get(p.target_system)
        if p.worker is None or not p.worker.organisation:
            raise WorkerUnknown(
                f"{p.rule_id}: no allocated worker (name and organisation) was recorded for the documents", p.rule_id
            )
        if target is None or not isinstance(source, KnowsStepDown):
            raise PermanentError(
                f"{p.rule_id}: {p.source_record.system.value} cannot give the step-down again, or no target connector"
                f" is configured for {p.target_system.value!r}: send the documents by hand"
            )
        again = await source.stepdown_transfer(p.source_record, p.transfer_id, p.council)
        lead = p.worker.model_copy(update={"role": "Lead Professional"})
        full = again.model_copy(
            update={"professionals": again.professionals.model_copy(update={"lead_professional": lead}),
                    "closure": p.closure}
        )  # fmt: skip
        documents = full.model_copy(update={"transfer_id": f"{p.transfer_id}-documents"})
        route = Route(role="documents", locality=None, rule_ids=[p.rule_id], team=None)
        await target.deliver(documents, route)
        receipt = await target.confirm(documents)
        if not receipt.acknowledged:
            raise TargetUnavailable(f"{p.target_system.value} does not yet confirm it holds the {p.rule_id} documents")
        await self._emit(
            MilestoneRecorded(
                **self._about(p, "documents-sent"),
                milestone="documents-sent",
                rule_ids=[p.rule_id],
                recorded_via="connector",
            )
        )
        return await source.close(full, receipt)

    async def _worker(self, p: PendingClosure) -> Person:
        target = self.targets.get(p.target_system)
        worker = await target.allocated_worker(p.transfer_id) if isinstance(target, KnowsAllocation) else None
        if worker is None:
            raise WorkerUnknown(
                f"{p.target_system.value} does not say who was allocated, so the closure record cannot name the "
                f"receiving early-help worker ({p.rule_id}): close the record by hand",
                p.rule_id,
            )
        return worker

    async def _dead_letter(self, p: PendingClosure, exc: PermanentError) -> None:
        tid, topics = p.transfer_id, self.settings.topics
        rule_ids = [p.rule_id, *(r for r in exc.rule_ids if r != p.rule_id)]
        failure = Failure(
            stage="close-later",
            error_class=type(exc).__name__,
            message=str(exc),
            rule_ids=rule_ids,
            transfer_id=tid,
            council=p.council.value,
        )
        value = p.encode()
        record = ConsumerRecord(
            topics.pending_closures, 0, 0, int(self.clock().timestamp() * 1000), 0, tid.encode(), value, None,
            len(tid), len(value), (),
        )  # fmt: skip
        headers = dead_letter_headers(record, self.host.group_id, failure)
        await self._send_all([(topics.dead_letter, tid.encode(), value, headers)])
        await self._emit(
            TransferDeadLettered(
                **self._about(p, "dead-lettered"),
                stage="close-later",
                error_class=type(exc).__name__,
                reason=str(exc),
                rule_ids=rule_ids,
            )
        )
        await self._emit(
            AlertRaised(
                **self._about(p, "alert"),
                severity="critical",
                rule_ids=rule_ids,
                summary=f"source record kept open: its later closure failed ({type(exc).__name__})",
            )
        )
        await self._write(tid, None)
        log.warning("closure_dead_lettered", transfer_id=tid, rule_ids=rule_ids, error_class=type(exc).__name__)

    def _about(self, p: PendingClosure, kind: str) -> dict[str, Any]:
        """What every event the scheduler writes about a pending closure shares: its id (deterministic per
        transfer, rule and kind, so a re-run writes the same event), the transfer, the council and the time."""
        return {
            "event_id": event_id(f"{p.transfer_id}/closure/{p.rule_id}", kind),
            "transfer_id": p.transfer_id,
            "correlation_id": p.correlation_id,
            "council": p.council,
            "occurred_at": self.clock(),
        }

    async def _write(self, tid: str, p: PendingClosure | None) -> None:
        await self._send_all([(self.topic, tid.encode(), None if p is None else p.encode(), [])])
        if p is None:
            self._forget(tid)
        else:
            self.pending[tid] = p

    def _forget(self, tid: str) -> None:
        self.pending.pop(tid, None)
        self.signals.pop(tid, None)

    async def _emit(self, event: TransferEvent) -> None:
        await self._send_all([self._event_record(event)])

    def _event_record(self, event: TransferEvent) -> _Record:
        value = event.model_dump_json().encode()
        return self.settings.topics.events, wire.event_key(event), value, wire.event_headers(event.event_type)

    async def _send_all(self, records: list[_Record]) -> None:
        """Send through the loop's producer, then wait until the broker acknowledged every one."""
        sent = await self.host.send([(topic, key, value, headers, None) for topic, key, value, headers in records])
        for (topic, *_), meta in zip(records, sent, strict=True):
            if topic == self.topic:
                self._own.add((meta.partition, meta.offset))


__all__ = [
    "AllocationAudit",
    "AllocationNotPending",
    "AllocationRefused",
    "ClosurePlanner",
    "ClosureScheduler",
    "KnowsAllocation",
    "KnowsStepDown",
    "RecordedAllocation",
    "Timing",
    "WorkerUnknown",
    "default_timings",
    "timings_of",
    "record_allocation",
    "utc_now",
]
