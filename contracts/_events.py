"""The router's events: every step of a transfer is one of these on the events topic.

Events carry no personal data: ids, council, pathway, rule ids and outcomes only, so
they can be shown on overview pages and kept in monitoring stores.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import Field, TypeAdapter

from ._common import AwareDatetime, CaseSystem, Council, Direction, Identifier, RuleId, ServiceLevel, Strict, utcnow


class FieldError(Strict):
    """One reason a message was refused: the field's dotted path and the rule it broke."""

    field: str
    rule: str
    message: str


class RuleViolation(Strict):
    rule_id: RuleId
    message: str
    fix: str


class _Event(Strict):
    event_id: Identifier
    transfer_id: Identifier | None
    correlation_id: Identifier | None = None
    council: Council | None = None
    occurred_at: AwareDatetime = Field(default_factory=utcnow)


class TransferRequested(_Event):
    """The router took the transfer in (``occurred_at``: when it handled the message).

    ``requested_at`` is the transfer's own ``requested_at``, the instant a protocol deadline that
    starts at ``requested`` (NS-4, SW22-15) is timed from, by the protocol check and the monitor
    alike; a backlog or a replay is handled later than that. Events written before this field
    existed have none: the monitor then times those deadlines from ``occurred_at``.
    """

    event_type: Literal["requested"] = "requested"
    direction: Direction
    from_level: ServiceLevel
    to_level: ServiceLevel
    from_system: CaseSystem
    to_system: CaseSystem
    requested_at: AwareDatetime | None = None


class TransferValidated(_Event):
    event_type: Literal["validated"] = "validated"


class TransferRejected(_Event):
    """The message broke the contract (not a protocol rule): it goes to the dead-letter topic."""

    event_type: Literal["rejected"] = "rejected"
    errors: list[FieldError] = Field(min_length=1)


class TransferHeld(_Event):
    """A protocol rule is not met: the transfer waits, visible, until the cause is fixed."""

    event_type: Literal["held"] = "held"
    violations: list[RuleViolation] = Field(min_length=1)


class TransferDelivered(_Event):
    event_type: Literal["delivered"] = "delivered"
    target_system: CaseSystem
    target_reference: Identifier
    assigned_role: str | None = None
    rule_ids: list[RuleId] = Field(default_factory=list, description="routing rules applied, e.g. NS-2")
    team: str | None = Field(
        default=None, description="receiving team, where the protocol routes to one (SW22-7, LU-9)"
    )
    urgent: bool = Field(default=False, description="SW22-1: an urgent referral, routed first")


class TransferAcknowledged(_Event):
    event_type: Literal["acknowledged"] = "acknowledged"
    target_system: CaseSystem
    target_reference: Identifier


class TransferAllocated(_Event):
    event_type: Literal["allocated"] = "allocated"
    target_system: CaseSystem
    target_reference: Identifier
    episode_reference: Identifier


class SourceClosed(_Event):
    event_type: Literal["source-closed"] = "source-closed"
    source_system: CaseSystem
    source_reference: Identifier
    rule_ids: list[RuleId] = Field(
        default_factory=list, description="the rule of a later closure (LU-4, SW22-10, NS-12); empty when at handover"
    )


class FrontDoorDecided(_Event):
    """NS-12: the Front Door's decision on a step-up contact (accepted: recording moves to the target system)."""

    event_type: Literal["front-door-decision"] = "front-door-decision"
    target_system: CaseSystem
    target_reference: Identifier
    decision: Literal["accepted", "not-accepted"]
    rule_ids: list[RuleId] = Field(default_factory=lambda: ["NS-12"])


class SourceKeptOpen(_Event):
    """The protocol keeps the source record open after the handover (e.g. SW26-3, BA-13)."""

    event_type: Literal["source-kept-open"] = "source-kept-open"
    source_system: CaseSystem
    rule_ids: list[RuleId] = Field(min_length=1)


class TransferCompletedNoRecord(_Event):
    """NS-14 / G4: a step-down to universal in a Family Hub sends no case record."""

    event_type: Literal["completed-no-record"] = "completed-no-record"
    rule_ids: list[RuleId] = Field(min_length=1)


class NoticeSent(_Event):
    """LU-7: a notice (receipt, allocation) went to the named professionals' roles; no names here."""

    event_type: Literal["notice-sent"] = "notice-sent"
    notice: Literal["receipt", "allocation"]
    channel: CaseSystem
    recipients: list[Literal["social_worker", "manager"]] = Field(min_length=1)
    rule_ids: list[RuleId] = Field(min_length=1)


class TransferDeadLettered(_Event):
    event_type: Literal["dead-lettered"] = "dead-lettered"
    stage: str
    error_class: str
    reason: str
    rule_ids: list[RuleId] = Field(default_factory=list)


class TransferRetryScheduled(_Event):
    """The target was unavailable after in-process retries: the transfer waits in a delayed retry tier."""

    event_type: Literal["retry-scheduled"] = "retry-scheduled"
    tier: int = Field(ge=0)
    due_at: AwareDatetime
    attempts: int = Field(ge=1)
    error_class: str
    behind_earlier_transfer: bool = Field(
        default=False, description="waits only to keep the order of the child's transfers, not because it failed"
    )


class TransferDuplicate(_Event):
    """A copy of a transfer that already completed (a publisher's retry, a second feed, a re-send, a replay of a
    dead letter whose transfer completed since): written off, not run again. ``first_message_id`` completed it."""

    event_type: Literal["duplicate"] = "duplicate"
    message_id: Identifier
    first_message_id: Identifier


class TransferReplayed(_Event):
    event_type: Literal["replayed"] = "replayed"
    operator: str
    dead_letter_offset: int


class AlertRaised(_Event):
    """Something an operator must act on (raised once per state change, not per attempt)."""

    event_type: Literal["alert"] = "alert"
    severity: Literal["info", "warning", "critical"]
    rule_ids: list[RuleId] = Field(default_factory=list)
    summary: str


class MilestoneRecorded(_Event):
    """A step no router event marks, recorded by an operator or a connector (e.g. NS-4's meeting held).

    Protocol deadlines (mappings/data/deadlines.toml) start or are met by milestones. It names
    the step only: who recorded it and any notes stay out (no personal data in events).
    """

    event_type: Literal["milestone"] = "milestone"
    milestone: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
    rule_ids: list[RuleId] = Field(default_factory=list)
    recorded_via: Literal["operator", "connector"] = "operator"


TransferEvent = Annotated[
    TransferRequested
    | TransferValidated
    | TransferRejected
    | TransferHeld
    | TransferDelivered
    | TransferAcknowledged
    | TransferAllocated
    | FrontDoorDecided
    | SourceClosed
    | SourceKeptOpen
    | TransferCompletedNoRecord
    | TransferDeadLettered
    | TransferRetryScheduled
    | TransferReplayed
    | TransferDuplicate
    | AlertRaised
    | MilestoneRecorded
    | NoticeSent,
    Field(discriminator="event_type"),
]

# mypy versions disagree on whether an Annotated union is a type form; pydantic takes it either way
EVENT_ADAPTER: TypeAdapter[TransferEvent] = TypeAdapter(cast(Any, TransferEvent))


def parse_event(raw: bytes | str) -> TransferEvent:
    return EVENT_ADAPTER.validate_json(raw)
