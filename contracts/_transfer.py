"""The canonical transfer message: one child's step-up or step-down, schema version 1.

Field names follow what councils already know from the DfE children's social care data
(Standard Safeguarding Dataset / CSC API payload): ``upn``, ``nhs_number``,
``date_of_birth``, ``la_child_id`` style per-system identifiers, ``lead_professional``.
Everything personal lives under ``child`` and in document content so that the router can
log and emit events from the rest without personal data.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from ._common import (
    SCHEMA_VERSION,
    AwareDatetime,
    CaseSystem,
    Council,
    Direction,
    Identifier,
    NonEmpty,
    RuleId,
    ServiceLevel,
    Strict,
)
from ._identifiers import NhsNumber, Upn


class Pathway(Strict):
    direction: Direction
    from_level: ServiceLevel
    to_level: ServiceLevel
    from_system: CaseSystem
    to_system: CaseSystem

    @model_validator(mode="after")
    def _direction_matches_levels(self) -> Self:
        going_up = self.to_level.rank > self.from_level.rank
        if self.from_level == self.to_level or going_up != (self.direction is Direction.STEP_UP):
            raise ValueError(
                f"direction {self.direction.value!r} does not match levels "
                f"{self.from_level.value!r} -> {self.to_level.value!r}"
            )
        return self


class SystemIdentifier(Strict):
    system: CaseSystem
    id: Identifier


class Gender(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class Child(Strict):
    """The child. Every field here is personal data: never log it."""

    identifiers: list[SystemIdentifier] = Field(min_length=1)
    given_name: NonEmpty
    family_name: NonEmpty
    date_of_birth: date
    gender: Gender = Gender.UNKNOWN
    upn: Upn | None = None
    nhs_number: NhsNumber | None = None
    locality: str | None = Field(default=None, max_length=64)
    disabled: bool = False
    direct_payment: bool = Field(default=False, description="direct payment or individual budget in place (BA-13)")

    def identifier(self, system: CaseSystem) -> str | None:
        return next((i.id for i in self.identifiers if i.system is system), None)


class Person(Strict):
    """A professional (not the family). Names here are staff names: still kept out of logs."""

    name: NonEmpty
    role: NonEmpty
    organisation: str | None = None
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")


class ConsentScope(StrEnum):
    REFERRAL = "referral"
    INFORMATION_SHARING = "information-sharing"
    STATUTORY_ASSESSMENT = "statutory-assessment"
    RECOMMENDATIONS = "recommendations"


class Consent(Strict):
    given_by: NonEmpty
    given_on: date
    scope: list[ConsentScope] = Field(min_length=1)
    signed: bool = False


class ConsentExemption(Strict):
    """G1: the only exemption is risk of significant harm, decided by a named manager."""

    reason: Literal["significant-harm-s47"]
    decided_by: Person
    decided_on: date


class ManagementDecision(Strict):
    decided_by: Person
    forum: str | None = Field(
        default=None, description="panel or meeting that ratified it, e.g. 'Transfer Meeting', 'CIN Panel'"
    )
    rationale: NonEmpty
    decided_on: date


class DocumentType(StrEnum):
    MEETING_NOTES = "meeting-notes"
    PLAN = "plan"
    ASSESSMENT = "assessment"
    EHA = "early-help-assessment"
    TAF_PLAN = "taf-plan"
    CIN_PLAN = "cin-plan"
    REVIEW_MINUTES = "review-minutes"
    CASE_NOTES = "case-notes"
    STEP_UP_FORM = "step-up-form"
    CLOSURE_SUMMARY = "closure-summary"
    ESCALATION_SUMMARY = "escalation-summary"
    CONSENT_FORM = "consent-form"


class Document(Strict):
    """A document travels inline (``content``) or by reference to the source system, not both."""

    type: DocumentType
    title: str | None = Field(default=None, max_length=256)
    content: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    reference: Identifier | None = None
    media_type: str = "text/plain"

    @model_validator(mode="after")
    def _content_or_reference(self) -> Self:
        if (self.content is None) == (self.reference is None):
            raise ValueError("exactly one of content or reference is required")
        return self


class Professionals(Strict):
    social_worker: Person | None = None
    lead_professional: Person | None = None
    support_leader: Person | None = None
    family_support_worker: Person | None = None


class RecordState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class SourceRecord(Strict):
    system: CaseSystem
    record_id: Identifier
    request_id: Identifier | None = None
    state: RecordState
    closed_at: AwareDatetime | None = None


class Urgency(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"


class Purpose(StrEnum):
    """Why a step is made, as a code the source system records (BA-5 refuses the last two)."""

    #: early help (or the receiving service) will work with the family
    SUPPORT = "support"
    #: only so that someone keeps an eye on the child
    MONITORING = "monitoring"
    #: only to make an onward referral
    ONWARD_REFERRAL = "onward-referral"


class Deadline(Strict):
    rule_id: RuleId
    due: AwareDatetime
    what: NonEmpty


class ClosureRecord(Strict):
    """The source record's final entry, as the council's protocol words it (SW26-5, SW22-11, BA-3).

    The router fills it in from the protocol just before it asks the source system to close.
    """

    reason: NonEmpty
    lead_professional: Person | None = None
    rule_ids: list[RuleId] = Field(default_factory=list)


class TransferMessage(Strict):
    """One handover of one child between services; the unit the router routes."""

    schema_version: Literal[1] = SCHEMA_VERSION
    transfer_id: Identifier = Field(description="stable for the handover: the same transfer published twice has one id")
    message_id: Identifier = Field(description="unique per publication of the transfer")
    correlation_id: Identifier
    council: Council
    requested_at: AwareDatetime
    pathway: Pathway
    urgency: Urgency = Urgency.ROUTINE
    child: Child
    consent: Consent | None = None
    consent_exemption: ConsentExemption | None = None
    management_decision: ManagementDecision | None = None
    documents: list[Document] = Field(default_factory=list)
    professionals: Professionals = Field(default_factory=Professionals)
    source_record: SourceRecord
    deadlines: list[Deadline] = Field(default_factory=list)
    assessment_outcome: str | None = Field(
        default=None, max_length=128, description="Care Director assessment outcome (SW22-7)"
    )
    purpose: str | None = Field(
        default=None,
        max_length=256,
        description="why the step is made, in words; BA-5 reads it only where purpose_code is absent",
    )
    purpose_code: Purpose | None = Field(
        default=None,
        description="why the step is made, as the source system's coded reason (BA-5 refuses monitoring and "
        "onward-referral); preferred over the free-text purpose",
    )
    family_hub_universal: bool = Field(
        default=False, description="NS-14: supported step-down to universal in a Family Hub"
    )
    open_to_council_service: bool = Field(
        default=False, description="SW22-2: the family is open to a council service (line manager decides first)"
    )
    services: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        description="services that will support the family after the handover (SW22-12: more than one needs a lead)",
    )
    closure: ClosureRecord | None = Field(
        default=None, description="filled in by the router from the protocol before the source record is closed"
    )

    @property
    def child_key(self) -> str:
        """The Kafka key: one child's messages keep their order on one partition."""
        first = self.child.identifiers[0]
        return f"{first.system.value}:{first.id}"
