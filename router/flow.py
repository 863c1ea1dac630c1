"""The flow of one transfer, top to bottom. Read this file to know what casebridge does.

    raw bytes from the transfers topic
      1. decode against the contract            -> rejected + dead letter     (bad input)
      2. requested, validated
      3. ask the source whether its record is still open
      4. check the council's protocol rules      -> held + dead letter (+ alert for NS-7)
      5. NS-14: nothing to send                  -> completed-no-record, source closed
      6. route (NS-2, SW22-7, LU-9, SW22-1...)   -> delivered (to the system and team the protocol names);
         only where the route asks it (NS-2), the target is asked who is away
      7. the target confirms it holds it         -> acknowledged (+ LU-7 receipt notice)
      8. only then close the source record       -> source-closed, with the protocol's closure record
         or keep it open (SW26-3, BA-13, ...)    -> source-kept-open
         or close it later (LU-4, SW22-10, NS-12) -> source-kept-open + a pending closure (router/closures.py)
      9. a completed step-down is remembered per child (compacted topic) for LU-9 / NS-10

Transient failures of a case system are retried here with backoff and jitter (tenacity);
when retries run out, or on a permanent failure, the message is dead-lettered with the
error class and stage. The flow never drops a message: every path ends in an event and,
where the transfer did not complete, a dead letter.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog
from aiokafka.structs import ConsumerRecord
from pydantic import TypeAdapter, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_random_exponential
from typing_extensions import TypedDict

from connectors import CasebridgeError, Receipt, Source, Target
from connectors._budget import budget_ends, end_budget
from connectors._replay_audit import ReplayAudits, replayed_event
from contracts import (
    AlertRaised,
    CaseSystem,
    Council,
    Direction,
    FieldError,
    NoticeSent,
    Professionals,
    RecordState,
    SourceClosed,
    SourceKeptOpen,
    TransferAcknowledged,
    TransferCompletedNoRecord,
    TransferDeadLettered,
    TransferDelivered,
    TransferEvent,
    TransferHeld,
    TransferMessage,
    TransferRejected,
    TransferRequested,
    TransferValidated,
    field_errors,
    wire,
)
from contracts.wire import event_id_hasher, uuid5_text
from mappings import Facts, MappingError, Route
from mappings import Protocol as CouncilProtocol

from ._event_json import encode_event, event_type_of, transfer_head, utc_datetime, utc_text
from ._history import ChildHistory
from ._outbox import Failure
from ._pending import PendingNotice
from ._retry import H_REPLAY_OF, H_REPLAY_OPERATOR, H_TIER, header
from .settings import RetrySettings

if TYPE_CHECKING:
    from .closures import ClosurePlanner

log = structlog.get_logger("casebridge.router")
_EVENT_NS = wire.EVENT_NS
event_id = wire.event_id  # an event's id, derived as contracts.wire says (re-exported: the router's callers use it)
T = TypeVar("T")


class Sink(Protocol):
    """Where the flow's outputs go (the router's Outbox, or a list in a test)."""

    async def emit(self, event: TransferEvent) -> None: ...

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        """An event already serialised (``router._event_json``): the bytes ``model_dump_json`` would give."""

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], failure: Failure) -> None: ...

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None: ...


@dataclass
class Outcome:
    """What became of one message: its last state, and the rule ids behind it if held.

    ``transient`` means the target stayed unavailable through the in-process retries: the
    router moves the message to a delayed retry tier (or, after the last, dead-letters it).
    """

    state: str
    transfer_id: str | None = None
    rule_ids: list[str] = field(default_factory=list)
    error_class: str | None = None
    message: str | None = None
    attempts: int = 1
    council: str | None = None


@dataclass(frozen=True)
class _Checked:
    """A transfer that met its council's protocol (``TransferFlow._gate``): what the later stages need."""

    transfer: TransferMessage
    emit: _Emitter
    protocol: CouncilProtocol
    #: the system the pathway delivers to (a route may name another: SW22-7, LU-9)
    target: CaseSystem
    facts: Facts
    #: the source record was closed by this very transfer before (a re-run): it is not closed or planned again
    closed_by_us: bool


@dataclass(frozen=True)
class _Delivered:
    """What delivery gave (``TransferFlow._deliver``): the receipt, the source to finish, and the target and route it
    went by (None, None: nothing was sent, NS-14)."""

    receipt: Receipt
    source: Source
    target: Target | None = None
    route: Route | None = None


class TransferFlow:
    def __init__(
        self,
        protocols: dict[Council, CouncilProtocol],
        targets: dict[CaseSystem, Target],
        sources: dict[CaseSystem, Source],
        retry: RetrySettings,
        group_id: str,
        history: ChildHistory | None = None,
        history_topic: str | None = None,
        notices_topic: str | None = None,
        closures: ClosurePlanner | None = None,
    ) -> None:
        self.protocols = protocols
        self.targets = targets
        self.sources = sources
        self.retry = retry
        self.group_id = group_id
        self.history = history
        self.history_topic = history_topic
        self.notices_topic = notices_topic
        self.closures = closures
        #: refuse a record not keyed by its child (the router sets it; a flow driven by hand takes any key)
        self.keyed = False
        #: the replays the audit topic records: a ``replayed`` event only for those (the router sets it; a flow
        #: driven by hand trusts the replay headers)
        self.replay_audits: ReplayAudits | None = None

    @staticmethod
    def parse(record: ConsumerRecord[bytes, bytes]) -> TransferMessage | ValidationError:
        """The record against the contract: the transfer, or why it is not one."""
        try:
            return TransferMessage.model_validate_json(record.value or b"")
        except ValidationError as exc:
            return exc

    async def run(
        self,
        record: ConsumerRecord[bytes, bytes],
        sink: Sink,
        parsed: TransferMessage | ValidationError | None = None,
    ) -> Outcome:
        """Carry one record through the flow; ``parsed`` is ``parse(record)`` when the caller has it already.

        The stages, each with a typed result: the contract (``_accepted``), the gate (``_gate``: the source's
        facts and the council's protocol), delivery (``_deliver``), the target's confirmation and the notices
        (``_confirm_and_notify``), and finishing the source (``_finish_source``). A stage that ends the transfer
        returns its ``Outcome``; a case system's failure ends it in ``_failed`` (a retry tier or a dead letter).
        """
        await self.replayed(record, sink)
        accepted = await self._accepted(record, sink, parsed)
        if isinstance(accepted, Outcome):
            return accepted
        transfer, emit = accepted
        try:
            checked = await self._gate(record, sink, transfer, emit)
            if isinstance(checked, Outcome):
                return checked
            delivered = await self._deliver(checked)
            receipt = await self._confirm_and_notify(checked, delivered, sink)
            await self._finish_source(checked, delivered.source, receipt, sink)
        except (CasebridgeError, MappingError) as exc:
            return await self._failed(record, sink, emit, transfer, exc)
        # per transfer at debug; the router logs one ``batch_completed`` line (with counts) per batch at info
        log.debug("transfer_completed", transfer_id=transfer.transfer_id)
        return Outcome("completed", transfer.transfer_id)

    async def _accepted(
        self, record: ConsumerRecord[bytes, bytes], sink: Sink, parsed: TransferMessage | ValidationError | None
    ) -> tuple[TransferMessage, _Emitter] | Outcome:
        """1-2. The record against the contract and its key: the transfer (requested, validated), or rejected."""
        transfer = self.parse(record) if parsed is None else parsed
        if isinstance(transfer, ValidationError):
            return await self._reject(record, transfer, sink)
        if self.keyed and record.key != transfer.child_key.encode():  # wire.transfer_key, inline
            # per-child order (and the retry tiers' queue per child) holds only for records keyed by their child
            wrong = FieldError(
                field="(record key)",
                rule="child_key",
                message="a transfer is keyed by its child: <system>:<id> of child.identifiers[0]",
            )
            return await self._refuse(record, [wrong], "MissingKey" if record.key is None else "KeyMismatch", sink)

        emit = _Emitter(transfer, sink)
        log.debug("transfer_received", transfer_id=transfer.transfer_id, council=transfer.council.value)
        p = transfer.pathway
        await emit(
            TransferRequested,
            direction=p.direction,
            from_level=p.from_level,
            to_level=p.to_level,
            from_system=p.from_system,
            to_system=p.to_system,
            requested_at=transfer.requested_at,  # the protocol deadlines' clock (NS-4, SW22-15), for the monitor
        )
        await emit(TransferValidated)
        return transfer, emit

    async def _gate(
        self, record: ConsumerRecord[bytes, bytes], sink: Sink, transfer: TransferMessage, emit: _Emitter
    ) -> _Checked | Outcome:
        """3-4. The source's facts and the council's protocol: the transfer may go on, or it is held."""
        p = transfer.pathway
        protocol = self._protocol(transfer)
        pathway = protocol.systems(p.direction)
        if pathway is not None and pathway.source is not p.from_system:
            raise MappingError(
                f"{protocol.origin}: the {p.direction.value} pathway starts on {pathway.source.value}, "
                f"not {p.from_system.value} (field pathway.from_system)"
            )
        # 3. facts from the source (and the child's step-down history: LU-9, NS-10); with no source
        # connector the protocol is still checked (its other rules hold the transfer with their ids)
        found = self.sources.get(p.from_system)
        source_state = await self._retrying(lambda: found.state(transfer)) if found is not None else None
        closed_by_us = source_state is not None and source_state.closed_by_transfer == transfer.transfer_id
        facts = Facts(
            source_state=RecordState.OPEN if closed_by_us or source_state is None else source_state.state,
            history=self.history.lookup(transfer) if self.history is not None else (),
        )
        # 4. the council's protocol
        violations = protocol.check(transfer, facts)
        if not violations:
            return _Checked(transfer, emit, protocol, pathway.target if pathway else p.to_system, facts, closed_by_us)
        rule_ids = [v.rule_id for v in violations]
        await emit(TransferHeld, violations=violations)
        alerting = protocol.alerting(violations)
        if alerting:
            await emit(
                AlertRaised,
                severity="critical",
                rule_ids=alerting,
                summary="source record closed before its transfer; transfer held, reopen the record",
            )
        log.warning("transfer_held", transfer_id=transfer.transfer_id, rule_ids=rule_ids)
        await self._dead_letter(
            record,
            sink,
            emit,
            transfer,
            stage="protocol",
            error_class="ProtocolRuleNotMet",
            message="protocol rules not met: " + _named(rule_ids, protocol.details(transfer)),
            rule_ids=rule_ids,
        )
        return Outcome("held", transfer.transfer_id, rule_ids)

    async def _deliver(self, checked: _Checked) -> _Delivered:
        """5-6. Route and deliver (or, NS-14, nothing to send): the target's receipt."""
        transfer, protocol, emit = checked.transfer, checked.protocol, checked.emit
        # only a transfer that met the protocol needs its connectors
        target = self._target(checked.target)
        source = self._source(transfer.pathway.from_system)  # NoConnector now, before anything is sent
        # 5. NS-14: a step-down that keeps no record sends nothing
        no_record_rule = protocol.sends_no_record(transfer)
        if no_record_rule is not None:
            await emit(TransferCompletedNoRecord, rule_ids=[no_record_rule])
            return _Delivered(
                Receipt(transfer.pathway.to_system, "no-record", created=False, acknowledged=True), source
            )
        # 6. route (NS-2, SW22-7, LU-9, SW22-1, ...) and deliver; the target is asked who is away only
        # where the route depends on it (NS-2), and only for a transfer that met the protocol
        facts = checked.facts
        if protocol.asks_who_is_away(transfer):
            away = await self._retrying(lambda: target.leader_away(transfer.child.locality or ""))
            facts = replace(facts, leader_away=away)
        route = protocol.route(transfer, facts)
        if route.system is not None:
            target = self._target(route.system)
        # BA-9 / G4: until a worker is allocated, the request goes without the case documents
        outgoing = transfer.model_copy(update={"documents": []}) if route.withhold_documents else transfer
        receipt = await self._retrying(lambda: target.deliver(outgoing, route))
        await emit(
            TransferDelivered,
            target_system=receipt.system,
            target_reference=receipt.reference,
            assigned_role=route.role,
            rule_ids=route.rule_ids,
            team=route.team,
            urgent=route.urgent,
        )
        return _Delivered(receipt, source, target, route)

    async def _confirm_and_notify(self, checked: _Checked, delivered: _Delivered, sink: Sink) -> Receipt:
        """7. The target's acknowledgement, the notices due on it (LU-7's receipt), and those due later (on
        allocation: ``router/notices.py``). A transfer with no record sent (NS-14) has nothing to confirm."""
        target, route = delivered.target, delivered.route
        if target is None or route is None:
            return delivered.receipt
        transfer, protocol, emit = checked.transfer, checked.protocol, checked.emit

        async def confirmed() -> Receipt:
            confirmation = await target.confirm(transfer)
            if not confirmation.acknowledged:
                raise NotAcknowledged(f"{target.system.value} does not confirm it holds the transfer")
            return confirmation

        receipt = await self._retrying(confirmed)
        await emit(TransferAcknowledged, target_system=receipt.system, target_reference=receipt.reference)
        # LU-7: the receipt notice to the social worker and manager
        for notice in protocol.notices(transfer, "acknowledged"):
            sw = transfer.professionals.social_worker  # the notice goes to the sending team's mailbox
            team = sw.organisation if sw and sw.organisation else route.team
            await self._notify(notice.channel, _notice_of(transfer, notice.to), notice.rule, team)
            await emit(
                NoticeSent,
                notice="receipt",
                channel=notice.channel,
                recipients=notice.to,
                rule_ids=[notice.rule],
            )
        # LU-7: the allocation notice is sent later, when the transfer is allocated (router/notices.py)
        for notice in protocol.notices(transfer, "allocated"):
            if self.notices_topic:
                pending = PendingNotice(
                    notice.rule, notice.channel, [str(r) for r in notice.to], _notice_of(transfer, notice.to)
                )
                await sink.send(self.notices_topic, transfer.transfer_id.encode(), pending.encode(), [])
        return receipt

    async def _finish_source(self, checked: _Checked, source: Source, receipt: Receipt, sink: Sink) -> None:
        """8-9. Only now: close the source record, keep it open where the protocol says so, or close it later;
        a completed step-down is remembered for the child (LU-9, NS-10)."""
        transfer, protocol, emit = checked.transfer, checked.protocol, checked.emit
        p = transfer.pathway
        kept_open = protocol.keeps_open(transfer)
        closing = transfer.model_copy(update={"closure": protocol.closure(transfer)})
        # ... or close it later (LU-4, SW22-10, NS-12): a pending closure for router/closures.py (not again
        # when a re-run finds the record already closed by this transfer)
        later = self.closures.plan(closing, kept_open, receipt) if self.closures and not checked.closed_by_us else None
        if later is not None:
            kept_open = kept_open or [later.rule_id]
        if kept_open:
            await self._retrying(lambda: source.keep_open(transfer, receipt, kept_open))
            if later is not None and self.closures is not None:  # after keep_open: a refused one closes nothing later
                await sink.send(self.closures.topic, transfer.transfer_id.encode(), later.encode(), [])
            await emit(SourceKeptOpen, source_system=p.from_system, rule_ids=kept_open)
        else:
            closed_ref = await self._retrying(lambda: source.close(closing, receipt))
            await emit(SourceClosed, source_system=p.from_system, source_reference=closed_ref)
        if p.direction is Direction.STEP_DOWN and self.history is not None:
            for key, value in self.history.remember(transfer):
                if self.history_topic:
                    await sink.send(self.history_topic, key, value, [])

    async def _failed(
        self,
        record: ConsumerRecord[bytes, bytes],
        sink: Sink,
        emit: _Emitter,
        transfer: TransferMessage,
        exc: CasebridgeError | MappingError,
    ) -> Outcome:
        """A case system failed (or the deployment cannot serve the transfer): a retry tier for a transient
        failure, else a dead letter."""
        rule_ids = list(getattr(exc, "rule_ids", ()))
        attempts = getattr(exc, "attempts", 1)
        retriable = getattr(exc, "retriable", False)
        log.warning(
            "transfer_failed",
            transfer_id=transfer.transfer_id,
            error_class=type(exc).__name__,
            retriable=retriable,
            attempts=attempts,
        )
        if retriable:
            return Outcome(
                "transient",
                transfer.transfer_id,
                rule_ids,
                error_class=type(exc).__name__,
                message=str(exc),
                attempts=attempts,
                council=transfer.council.value,
            )
        await self._dead_letter(
            record,
            sink,
            emit,
            transfer,
            stage="deliver",
            error_class=type(exc).__name__,
            message=str(exc),
            rule_ids=rule_ids,
            attempts=attempts,
        )
        return Outcome("dead-lettered", transfer.transfer_id, rule_ids)

    # -- helpers -------------------------------------------------------------------------

    def _protocol(self, transfer: TransferMessage) -> CouncilProtocol:
        protocol = self.protocols.get(transfer.council)
        if protocol is None:
            raise CouncilNotServed(f"this deployment does not serve council {transfer.council.value!r}")
        return protocol

    def _target(self, system: CaseSystem) -> Target:
        if system not in self.targets:
            raise NoConnector(f"no target system of this deployment serves {system.value!r}")
        return self.targets[system]

    def _source(self, system: CaseSystem) -> Source:
        if system not in self.sources:
            raise NoConnector(f"no source system of this deployment serves {system.value!r}")
        return self.sources[system]

    async def _notify(self, channel: CaseSystem, notice: TransferMessage, rule: str, team: str | None) -> None:
        target = self._target(channel)
        route = Route(role="notice-receipt", locality=None, rule_ids=[rule], team=team)
        await self._retrying(lambda: target.deliver(notice, route))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures (tenacity: exponential backoff with jitter, bounded attempts and time).

        The first attempt runs before tenacity's loop is built (building it costs more than a
        call to a fast target, and most calls succeed at once); a transient failure of it is
        handed to tenacity as attempt 1, so waits, attempt counts and the time budget (from the
        first attempt's start) are as they would be with tenacity around every attempt.
        """
        started = time.monotonic()
        r = self.retry
        # every attempt's HTTP deadline ends with the budget at the latest (connectors/_budget.py)
        budget = budget_ends(started + r.total_seconds)
        try:
            return await self._retrying_within(call, started)
        finally:
            end_budget(budget)

    async def _retrying_within(self, call: Callable[[], Awaitable[T]], started: float) -> T:
        first_failure: CasebridgeError | None = None
        try:
            return await call()
        except CasebridgeError as exc:
            exc.attempts = 1  # type: ignore[attr-defined]
            if not getattr(exc, "retriable", False):
                raise
            first_failure = exc
        r = self.retry
        jitter = wait_random_exponential(multiplier=r.initial_seconds, max=r.max_seconds)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after", None) or 0.0
            return max(float(retry_after), jitter(state))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(r.attempts) | stop_after_delay(r.total_seconds - (time.monotonic() - started)),
            wait=wait,
            retry=retry_if_exception(lambda e: getattr(e, "retriable", False)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    if first_failure is not None:
                        failed, first_failure = first_failure, None
                        raise failed
                    return await call()
                except CasebridgeError as exc:
                    exc.attempts = attempt.retry_state.attempt_number  # type: ignore[attr-defined]
                    raise
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def replayed(self, record: ConsumerRecord[bytes, bytes], sink: Sink) -> None:
        """A dead letter an operator replayed (``casebridge replay`` wrote its audit record, then the record back
        with its headers): the ``replayed`` event is the router's to write, once, when the record is first read again
        (the operator's principal writes no events). Its id is the dead letter's: a re-read writes the same event.
        Only for a replay the audit topic records by the operator the headers name (``replay_audits``); replay
        headers without one get a critical alert instead (connectors/_replay_audit.py)."""
        of = header(record, H_REPLAY_OF)
        if of is None or header(record, H_TIER) is not None:  # not replayed, or a retry of the replayed record
            return
        operator = header(record, H_REPLAY_OPERATOR) or ""
        await sink.emit(await replayed_event(self.replay_audits, of, operator, peek_transfer_id(record.value)))

    async def _reject(self, record: ConsumerRecord[bytes, bytes], exc: ValidationError, sink: Sink) -> Outcome:
        errors = field_errors(exc)
        error_class = "MalformedJson" if any(e.rule == "json_invalid" for e in errors) else "ContractViolation"
        return await self._refuse(record, errors, error_class, sink)

    async def _refuse(
        self, record: ConsumerRecord[bytes, bytes], errors: list[FieldError], error_class: str, sink: Sink
    ) -> Outcome:
        """Not a transfer the flow can carry (the contract, or its key): rejected, dead-lettered at ``validate``."""
        transfer_id = peek_transfer_id(record.value)
        rejected_id = event_id(f"{record.topic}/{record.partition}/{record.offset}", "rejected")
        await sink.emit(TransferRejected(event_id=rejected_id, transfer_id=transfer_id, errors=errors))
        reason = "; ".join(f"{e.field}: {e.rule}" for e in errors[:10])
        log.warning(
            "transfer_rejected", transfer_id=transfer_id, error_class=error_class, fields=[e.field for e in errors[:10]]
        )
        failure = Failure(stage="validate", error_class=error_class, message=reason, transfer_id=transfer_id)
        await sink.dead_letter(record, failure)
        await sink.emit(
            TransferDeadLettered(
                event_id=event_id(rejected_id, "dlq"),
                transfer_id=transfer_id,
                stage="validate",
                error_class=error_class,
                reason=reason,
            )
        )
        return Outcome("rejected", transfer_id)

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        sink: Sink,
        emit: _Emitter,
        transfer: TransferMessage,
        *,
        stage: str,
        error_class: str,
        message: str,
        rule_ids: list[str],
        attempts: int = 1,
    ) -> None:
        failure = Failure(
            stage=stage,
            error_class=error_class,
            message=message,
            attempts=attempts,
            rule_ids=rule_ids,
            transfer_id=transfer.transfer_id,
            council=transfer.council.value,
        )
        await sink.dead_letter(record, failure)
        await emit(TransferDeadLettered, stage=stage, error_class=error_class, reason=message, rule_ids=rule_ids)
        if stage != "protocol":  # a held transfer is shown as held; a failed delivery needs a person now
            await emit(AlertRaised, severity="critical", rule_ids=rule_ids, summary=f"dead-lettered: {error_class}")


def _named(rule_ids: list[str], details: dict[str, str]) -> str:
    """``SW22-7 (assessment outcome 'X' is not ...), G1``: each rule id, with what did not hold where a code says it."""
    return ", ".join(f"{r} ({details[r]})" if r in details else r for r in dict.fromkeys(rule_ids))


class NoConnector(CasebridgeError):
    """The deployment names no system that carries this transfer: permanent until the deployment changes."""


class CouncilNotServed(CasebridgeError):
    """The transfer's council is not among the deployment's ``councils``."""


class NotAcknowledged(CasebridgeError):
    """The target does not (yet) confirm it holds the transfer: retried."""

    retriable = True


class _Emitter:
    """Builds a transfer's events with deterministic ids (a re-run yields the same ids)."""

    def __init__(self, transfer: TransferMessage, sink: Sink) -> None:
        self.transfer = transfer
        self.sink = sink
        self._head = transfer_head(transfer)
        self._ids = event_id_hasher(transfer.message_id)  # event_id(message_id, kind), the common part hashed once

    async def __call__(self, kind: type[Any], **fields: Any) -> None:
        t = self.transfer
        digest = self._ids.copy()
        digest.update(kind.__name__.encode())
        eid = uuid5_text(digest)
        micros = time.time_ns() // 1000
        # the five events of every completed transfer from a template (byte-equal to the model's JSON)
        if self._head is not None:
            encoded = encode_event(kind, eid, self._head, utc_text(micros), fields)
            if encoded is not None:
                await self.sink.emit_encoded(t.transfer_id, event_type_of(kind), encoded)
                return
        event = kind(
            event_id=eid,
            transfer_id=t.transfer_id,
            correlation_id=t.correlation_id,
            council=t.council,
            occurred_at=utc_datetime(micros),
            **fields,
        )
        await self.sink.emit(event)


def _notice_of(transfer: TransferMessage, roles: Sequence[str]) -> TransferMessage:
    """A notice carries who it is about and to whom, never the case documents (G4)."""
    manager = transfer.management_decision.decided_by if transfer.management_decision else None
    sw = transfer.professionals.social_worker if "social_worker" in roles else None
    return transfer.model_copy(
        update={
            "transfer_id": f"{transfer.transfer_id}-notice-receipt",
            "documents": [],
            "professionals": Professionals(social_worker=sw, lead_professional=manager if "manager" in roles else None),
        }
    )


_URGENT = re.compile(rb'"urgency"\s*:\s*"urgent"|"to_level"\s*:\s*"child-protection-s47"')


def urgent_first(records: list[ConsumerRecord[bytes, bytes]]) -> int:
    """Sort key for a child's records in a batch: 0 when any is urgent or a s.47 step-up (SW22-1), else 1.

    A byte search, not a parse: the contract is checked later, in the flow; this only orders.
    """
    return 0 if any(r.value and _URGENT.search(r.value) for r in records) else 1


class _TopLevel(TypedDict, total=False):
    transfer_id: Any


_TOP_LEVEL: TypeAdapter[_TopLevel] = TypeAdapter(_TopLevel)


def peek_transfer_id(raw: bytes | None) -> str | None:
    """The transfer id of a message, when it has a well-formed one (log correlation, operators' filters).

    Reads the top-level ``transfer_id`` only: the rest of the message is scanned, not built (a json.loads of
    a 2-8 KB transfer cost more than the rest of the flow's parsing of it).
    """
    try:
        value = _TOP_LEVEL.validate_json(raw or b"").get("transfer_id")
    except ValidationError:
        return None
    if (
        isinstance(value, str)
        and 0 < len(value) <= 128
        and value.replace("-", "").replace("_", "").replace(".", "").replace(":", "").isalnum()
    ):
        return value
    return None
