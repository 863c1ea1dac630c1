"""Council protocols as data: the rules a transfer must meet, and how it is routed.

A protocol file (``mappings/data/protocols/<council>.toml``) has, all optional but ``rule``:

- ``[[pathway]]``: per direction, the source and target case systems of that council;
- ``[[rule]]``: the rule id of ``PROTOCOLS.md``, a ``check`` kind from the closed set
  below (``CHECKS``), its parameters, ``applies_to`` (direction, levels, flags) and the
  words an operator sees (``message``, ``fix``);
- ``[[route]]``: routing steps, a closed set of ``kind``s (locality Support Leader,
  assessment outcome, lead professional, recent step-down history, urgency, referral
  endorsement, no lead professional);
- ``[[keep_open]]``: when the source record stays open after the handover;
- ``[[closure]]``: what the source system's closure record says;
- ``later`` on either: the record closes later instead of now, on a signal or a deadline (``Later``);
- ``[[notice]]``: notices sent to named professionals once the target holds the transfer;
- ``[no_record]``: when nothing is sent at all (NS-14).

Checks are pure functions of the transfer message: no I/O, no logging. Facts that live in
other systems (is the Support Leader away, is the source record still open now, the
child's recent step-downs) are passed in by the router as ``Facts``.

Load-time errors name the file, the line and the rule: ``tomllib`` keeps no positions,
so the loader indexes the raw text's table headers and keys (:class:`_Lines`).
"""

from __future__ import annotations

import re
import tomllib
import typing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts import (
    CaseSystem,
    ClosureRecord,
    Council,
    Direction,
    DocumentType,
    Purpose,
    RecordState,
    RuleViolation,
    ServiceLevel,
    TransferMessage,
    Urgency,
)

from ._deadlines import DEADLINES_FILE, DeadlineRule, deadlines_by_rule, due_at, message_times
from ._fieldmap import DATA_DIR, MappingError
from ._outcomes import AssessmentOutcome, outcome_table

PROTOCOL_DIR = DATA_DIR / "protocols"

RuleIdStr = Annotated[str, Field(pattern=r"^(G[1-4]|SW26-\d+|SW22-\d+|LU-\d+|BA-\d+|NS-\d+|FFX-\d+)$")]
Role = Literal["social_worker", "lead_professional", "support_leader", "family_support_worker"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _has_role(person_role: str, roles: list[str]) -> bool:
    """Whether ``person_role`` is one of ``roles``, whole names (case and spacing aside).

    Never a part of a name: an "Assistant Team Manager", or "not the Duty Manager", is not a "Team Manager" /
    "Duty Manager". A protocol lists each title it accepts ("Contact Swindon Duty Manager" beside "Duty Manager").
    """
    said = _normal(person_role)
    return any(_normal(r) == said for r in roles)


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())


class AppliesTo(_Model):
    direction: Direction | None = None
    from_levels: list[ServiceLevel] | None = None
    to_levels: list[ServiceLevel] | None = None
    unless_family_hub_universal: bool = False
    #: SW22-2: only where the family is open to a council service
    when_open_to_council_service: bool = False
    #: BA-13: only for a disabled child with a direct payment / individual budget
    when_disabled_direct_payment: bool = False

    def matches(self, t: TransferMessage) -> bool:
        p = t.pathway
        if self.direction is not None and p.direction is not self.direction:
            return False
        if self.from_levels is not None and p.from_level not in self.from_levels:
            return False
        if self.to_levels is not None and p.to_level not in self.to_levels:
            return False
        if self.when_open_to_council_service and not t.open_to_council_service:
            return False
        if self.when_disabled_direct_payment and not (t.child.disabled and t.child.direct_payment):
            return False
        return not (self.unless_family_hub_universal and t.family_hub_universal)


# -- checks: the closed set of what a rule can ask of a transfer ------------------------------


class _Rule(_Model):
    id: RuleIdStr
    message: str = Field(min_length=1)
    fix: str = Field(min_length=1)
    applies_to: AppliesTo = AppliesTo()

    def detail(self, t: TransferMessage) -> str | None:
        """What exactly did not hold, where a code says it (codes and enum values only, never personal data)."""
        return None


class ManagementDecisionRule(_Rule):
    """G2 / NS-1 / SW26-4 / LU-3 / LU-6 / BA-5: the manager's decision and rationale, in the right forum."""

    check: Literal["management-decision"]
    forum_required: bool = False
    #: the decision must come from one of these forums ("Transfer Meeting", "CIN Panel", ...)
    forums: list[str] = Field(default_factory=list)
    #: the decider's role must be one of these, whole names ("Team Manager", "Duty Manager", ...)
    roles: list[str] = Field(default_factory=list)

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        d = t.management_decision
        if d is None:
            return False
        if (self.forum_required or self.forums) and not d.forum:
            return False
        if self.forums and not _has_role(d.forum or "", self.forums):
            return False
        return not self.roles or _has_role(d.decided_by.role, self.roles)

    def detail(self, t: TransferMessage) -> str | None:
        d = t.management_decision
        if d is None:
            return "no management decision"
        if (self.forum_required or self.forums) and not d.forum:
            return "no forum named"
        if self.forums and not _has_role(d.forum or "", self.forums):
            return f"the forum is not one of {', '.join(self.forums)}"
        if self.roles and not _has_role(d.decided_by.role, self.roles):
            return f"not decided by a {' / '.join(self.roles)}"
        return None


class DocumentsRule(_Rule):
    """NS-6 / NS-8 / NS-9 / SW22-3 / SW22-14 / BA-7: these documents travel with the transfer."""

    check: Literal["documents"]
    documents: list[DocumentType] = Field(default_factory=list)
    #: at least one of these (e.g. the CIN plan or the review minutes)
    any_of: list[DocumentType] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> DocumentsRule:
        if not self.documents and not self.any_of:
            raise ValueError("name 'documents' or 'any_of'")
        return self

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        kinds = {d.type for d in t.documents}
        return kinds.issuperset(self.documents) and (not self.any_of or not kinds.isdisjoint(self.any_of))

    def detail(self, t: TransferMessage) -> str | None:
        """The document types that are missing (enum values of the contract)."""
        kinds = {d.type for d in t.documents}
        missing = [d.value for d in self.documents if d not in kinds]
        said = [f"missing document type {', '.join(missing)}"] if missing else []
        if self.any_of and kinds.isdisjoint(self.any_of):
            said.append(f"none of the document types {', '.join(d.value for d in self.any_of)}")
        return "; ".join(said) or None


class ProfessionalRule(_Rule):
    """NS-6 / BA-6 / SW26-7 / SW22-11 / SW22-12: a named professional in the given role."""

    check: Literal["professional"]
    role: Role
    #: BA-6: the name *and the organisation*
    organisation_required: bool = False
    #: SW22-12: required only where at least this many services are involved
    min_services: int = Field(default=0, ge=0)
    #: BA-6 with BA-9: when nobody holds the role yet, another rule (a routing step) deals with it
    absent_ok: bool = False

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        if len(t.services) < self.min_services:
            return True
        person = getattr(t.professionals, self.role)
        if person is None:
            return self.absent_ok
        return not self.organisation_required or bool(person.organisation)

    def detail(self, t: TransferMessage) -> str | None:
        if self.holds(t, Facts()):
            return None
        if getattr(t.professionals, self.role) is None:
            return f"no professionals.{self.role}"
        return f"professionals.{self.role} has no organisation"


class SourceOpenRule(_Rule):
    """NS-7: the source record is still open, as the message says and as the source system says now."""

    check: Literal["source-open"]
    alert: bool = True

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        state = facts.source_state if facts.source_state is not None else t.source_record.state
        return state is RecordState.OPEN


class ConsentRule(_Rule):
    """G1: consent with the needed scope, or the s.47 exemption decided by a named manager.

    The only exemption is risk of significant harm (G1, NS-11): an exemption stands in for
    consent only when all of these hold, each stated in the protocol file:

    - its reason is one of ``exemption_reasons`` (the significant-harm code the source system states);
    - the transfer goes to one of ``exemption_to_levels`` (child protection, s.47): a step-up to
      child in need (s.17) or any step-down needs the family's consent;
    - it was decided by a manager whose role is one of ``exemption_roles`` (whole names) (SW26-2: a Duty
      Manager; SW22-4: a MASH manager; NS-11: the Team Manager or Front Door management ...).

    A rule names all three or none: naming none (or ``exemption_allowed = false``: SW26-4,
    SW22-8, LU-6) accepts no exemption at all, never "anyone, for any level"; naming only some is
    refused at load. ``signed`` asks for signed consent (LU-6).
    """

    check: Literal["consent"]
    scope: list[str] = Field(default_factory=list)
    signed: bool = False
    exemption_allowed: bool = True
    exemption_reasons: list[str] = Field(default_factory=list)
    exemption_to_levels: list[ServiceLevel] = Field(default_factory=list)
    exemption_roles: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _exemption_stated(self) -> ConsentRule:
        named = {
            "exemption_reasons": self.exemption_reasons,
            "exemption_to_levels": self.exemption_to_levels,
            "exemption_roles": self.exemption_roles,
        }
        given = [k for k, v in named.items() if v]
        if not self.exemption_allowed and given:
            raise ValueError(f"exemption_allowed = false takes no {', '.join(given)}")
        missing = [k for k, v in named.items() if not v]
        if given and missing:
            raise ValueError(
                f"an exemption needs {', '.join(missing)} too (G1: significant harm, decided by a named manager)"
            )
        return self

    @property
    def accepts_exemptions(self) -> bool:
        """Whether any exemption can stand in for consent (all three lists named, exemptions allowed)."""
        return self.exemption_allowed and bool(self.exemption_roles)

    def _exemption_problem(self, t: TransferMessage) -> str | None:
        """Why the transfer's exemption does not stand in for consent (``None``: it does)."""
        e = t.consent_exemption
        if e is None:
            return "no exemption"
        if not self.accepts_exemptions:
            return "no exemption is accepted here"
        if e.reason not in self.exemption_reasons:
            return f"exemption reason {e.reason!r} is not one of {', '.join(self.exemption_reasons)}"
        if t.pathway.to_level not in self.exemption_to_levels:
            levels = ", ".join(level.value for level in self.exemption_to_levels)
            return f"an exemption is only for a transfer to {levels}, not {t.pathway.to_level.value}"
        if not _has_role(e.decided_by.role, self.exemption_roles):
            return f"the exemption was not decided by a {' / '.join(self.exemption_roles)}"
        return None

    def _consent_holds(self, t: TransferMessage) -> bool:
        if t.consent is None:
            return False
        if self.signed and not t.consent.signed:
            return False
        return set(self.scope) <= {s.value for s in t.consent.scope}

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        if self._consent_holds(t):
            return True
        return t.consent_exemption is not None and self._exemption_problem(t) is None

    def detail(self, t: TransferMessage) -> str | None:
        if self._consent_holds(t):
            return None
        if t.consent_exemption is None:
            c = t.consent
            if c is None:
                return "no consent"
            if self.signed and not c.signed:
                return "consent not signed"
            lacking = [s for s in self.scope if s not in {x.value for x in c.scope}]
            return f"consent scope lacks {', '.join(lacking)}" if lacking else None
        return self._exemption_problem(t)


class PurposeNotRule(_Rule):
    """BA-5: a step-down is never made only to monitor the child or to make an onward referral.

    The decision is made here, once, for every source system. The structured reason comes first:
    where the transfer carries a ``purpose_code`` (the source system's coded reason), it alone
    decides (``codes``). Only where it carries none does the free-text ``purpose`` decide, by the
    words of ``fallback_keywords`` (matched at word starts, case- and hyphen-insensitive).
    """

    check: Literal["purpose-not"]
    codes: list[Purpose] = Field(min_length=1)
    fallback_keywords: list[str] = Field(min_length=1)

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        if t.purpose_code is not None:
            return t.purpose_code not in self.codes
        return not self.free_text_fallback_matches(t.purpose)

    def detail(self, t: TransferMessage) -> str | None:
        """The refused purpose code, or the protocol's keyword the free text matched (never the text)."""
        if t.purpose_code is not None:
            return f"purpose code {t.purpose_code.value!r}" if t.purpose_code in self.codes else None
        text = _words(t.purpose or "")
        matched = [w for w in self.fallback_keywords if re.search(rf"(?<!\w){re.escape(_words(w))}", text)]
        return f"the purpose names {matched[0]!r}" if matched else None

    def free_text_fallback_matches(self, purpose: str | None) -> bool:
        """The fallback: does the free-text purpose name one of the forbidden purposes?"""
        text = _words(purpose or "")
        return any(re.search(rf"(?<!\w){re.escape(_words(w))}", text) for w in self.fallback_keywords)


def _words(text: str) -> str:
    return " ".join(text.casefold().replace("-", " ").split())


class AssessmentOutcomeRule(_Rule):
    """SW22-7: the assessment outcome selects the step-down's level and target.

    ``outcomes`` names the outcome table in ``mappings/data`` (stated once, read also by the
    case system's connector); only its step-down outcomes count here.
    """

    check: Literal["assessment-outcome"]
    outcomes: str = Field(pattern=r"^[a-z0-9-]+-outcomes\.toml$")

    @model_validator(mode="after")
    def _table_loads(self) -> AssessmentOutcomeRule:
        outcome_table(self.outcomes)  # a broken or missing table is refused with the protocol
        return self

    def chosen(self, t: TransferMessage) -> AssessmentOutcome | None:
        """The step-down outcome the transfer's ``assessment_outcome`` names (by label)."""
        chosen = outcome_table(self.outcomes).get(t.assessment_outcome or "")
        return chosen if chosen is not None and chosen.step_down else None

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        chosen = self.chosen(t)
        return chosen is not None and chosen.to_level is t.pathway.to_level

    def detail(self, t: TransferMessage) -> str | None:
        """The outcome named where it is a code (``_code``), never free text typed where the code belongs."""
        if not t.assessment_outcome:
            return "no assessment outcome"
        chosen = self.chosen(t)
        named = _code("assessment outcome", t.assessment_outcome)
        if chosen is None:
            return f"{named} is not a step-down outcome of {self.outcomes}"
        if chosen.to_level is t.pathway.to_level:
            return None
        return f"{named} leads to {chosen.to_level.value}, not {t.pathway.to_level.value}"


class StatedDeadlineRule(_Rule):
    """SW26-6 / NS-4 / BA-14 ...: a deadline the transfer states may not be later than the protocol allows.

    The length, unit and start event are not stated here: they are the monitor's deadline of the
    same rule id in ``mappings/data/deadlines.toml`` (one source of truth), and the due time is
    ``_deadlines.due_at`` (working days skip England and Wales bank holidays). The clock starts at
    the rule's own start event, at the instant the message states for it (``[message_times]`` in
    ``deadlines.toml``: ``requested`` is the transfer's ``requested_at``, NS-4 and SW22-15): the
    instant the monitor starts it at too, however late the router handled the message. A deadline
    whose start event comes after the request (acknowledged, allocated, source-closed: SW26-6,
    BA-12, BA-14, SW22-13) has no start yet when the protocol is checked, so no stated due can be
    shown too late then: this check does not hold it (``limit`` is ``None``), and the monitor times
    the deadline from the event when it happens.
    """

    check: Literal["deadline"]

    @model_validator(mode="after")
    def _stated_once(self) -> StatedDeadlineRule:
        if self.id not in deadlines_by_rule():
            raise ValueError(
                f"deadline {self.id} is not in {DEADLINES_FILE.name}: its length is stated there, once, "
                "with its unit and start event"
            )
        path = message_times().get(self.deadline.start)
        if path is not None and not _is_time_field(path):
            raise ValueError(
                f"{DEADLINES_FILE.name} [message_times]: {self.deadline.start} = {path!r} is not a time field "
                "of the transfer message"
            )
        return self

    @property
    def deadline(self) -> DeadlineRule:
        """The deadline this rule checks (length, unit, start event), from ``deadlines.toml``."""
        return deadlines_by_rule()[self.id]

    def started_at(self, t: TransferMessage) -> datetime | None:
        """When the deadline started, where the message states its start event (``None``: not known yet)."""
        path = message_times().get(self.deadline.start)
        if path is None:
            return None
        value: Any = t
        for name in path.split("."):
            value = getattr(value, name, None)
        return value if isinstance(value, datetime) else None

    def limit(self, t: TransferMessage) -> datetime | None:
        """The latest due time the transfer may state (``None``: its start is not known, so not checked)."""
        start = self.started_at(t)
        if start is None:
            return None
        d = self.deadline
        return due_at(start, d.length, d.unit)

    def _late(self, t: TransferMessage) -> tuple[datetime, datetime] | None:
        """The first stated due later than the limit, with the limit."""
        if not any(d.rule_id == self.id for d in t.deadlines):
            return None
        limit = self.limit(t)
        if limit is None:
            return None
        late = next((d.due for d in t.deadlines if d.rule_id == self.id and d.due > limit), None)
        return None if late is None else (late, limit)

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        return self._late(t) is None

    def detail(self, t: TransferMessage) -> str | None:
        late = self._late(t)
        if late is None:
            return None
        return f"stated due {late[0].isoformat()} is later than {late[1].isoformat()}"


def _is_time_field(path: str) -> bool:
    """Whether a dotted path names a date-time field of the transfer message (``requested_at``)."""
    model: Any = TransferMessage
    for name in path.split("."):
        info = getattr(model, "model_fields", {}).get(name)
        if info is None:
            return False
        model = next((a for a in _types_of(info.annotation) if a is datetime or _is_model(a)), None)
    return model is datetime


def _types_of(annotation: Any) -> list[Any]:
    """The plain types an annotation allows (unions and ``Annotated`` unwrapped)."""
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    if typing.get_origin(annotation) is Annotated:
        return _types_of(args[0])
    return [t for a in args for t in _types_of(a)]


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


Rule = Annotated[
    ManagementDecisionRule
    | DocumentsRule
    | ProfessionalRule
    | SourceOpenRule
    | ConsentRule
    | PurposeNotRule
    | AssessmentOutcomeRule
    | StatedDeadlineRule,
    Field(discriminator="check"),
]
CHECKS = (
    "management-decision",
    "documents",
    "professional",
    "source-open",
    "consent",
    "purpose-not",
    "assessment-outcome",
    "deadline",
)


# -- routing, keeping open, closure, notices ---------------------------------------------------


class PathwaySystems(_Model):
    """Per council and direction: which case system the transfer leaves and which receives it."""

    direction: Direction
    source: CaseSystem
    target: CaseSystem
    team: str | None = None


class _Step(_Model):
    rule: RuleIdStr
    applies_to: AppliesTo = AppliesTo()


class LocalityRouting(_Step):
    """NS-2: to the locality's Support Leader; to its team manager while the leader is away."""

    kind: Literal["locality-support-leader"]
    localities: list[str] = Field(min_length=1)


class OutcomeRouting(_Step):
    """SW22-7: the assessment outcome's target system and team (table in the assessment-outcome rule)."""

    kind: Literal["assessment-outcome"]


class LeadProfessionalRouting(_Step):
    """SW26-7: allocated to the named Lead Practitioner."""

    kind: Literal["lead-professional"]


class NoLeadProfessionalRouting(_Step):
    """BA-9: no lead professional yet: a request for targeted one-to-one support, without the documents."""

    kind: Literal["no-lead-professional"]


class RecentStepDownRouting(_Step):
    """LU-9 / NS-10: a step-up soon after a step-down goes back to the team (and social worker) that stepped it down."""

    kind: Literal["recent-step-down"]
    within_days: int = Field(ge=1)


class UrgentRouting(_Step):
    """SW22-1: a s.47 concern is an urgent referral, flagged urgent and routed first."""

    kind: Literal["urgent"]
    to_levels: list[ServiceLevel] = Field(min_length=1)


class ReferralEndorsement(_Step):
    """SW26-1: a step-up opens a Contact; it is a Referral only with the Duty Manager's endorsement."""

    kind: Literal["referral-endorsement"]
    roles: list[str] = Field(min_length=1)


RouteStep = Annotated[
    LocalityRouting
    | OutcomeRouting
    | LeadProfessionalRouting
    | NoLeadProfessionalRouting
    | RecentStepDownRouting
    | UrgentRouting
    | ReferralEndorsement,
    Field(discriminator="kind"),
]


class Later(_Model):
    """The record closes later instead of now (router/closures.py holds it as a pending closure until then).

    ``on``: ``due``, when the rule's deadline in ``deadlines.toml`` has passed (LU-4: 10 days); ``allocated``, on the
    target's allocation of the transfer (SW22-10: the receiving worker named); ``recorded``, once an operator or the
    target recorded the allocation (BA-9); ``accepted``, on the Front Door's acceptance (NS-12; not accepted
    cancels it and the record stays open). ``cancel_on_step_down``: a step-down of the same child agreed before it
    falls due cancels it (LU-4). ``send_documents``: the documents withheld at delivery go first (BA-9).
    """

    on: Literal["due", "allocated", "recorded", "accepted"]
    cancel_on_step_down: bool = False
    send_documents: bool = False


class KeepOpen(_Step):
    """SW26-3 / SW22-6 / LU-4 / BA-13 / SW22-10: the source record is not closed after the handover."""

    #: kept open only until one of these is named on the transfer (SW22-10: the receiving worker)
    until_named: list[Role] = Field(default_factory=list)
    #: ... and closed later, on a signal or a deadline (LU-4, SW22-10, BA-9); without it, kept open for good
    later: Later | None = None

    def keeps(self, t: TransferMessage) -> bool:
        if not self.applies_to.matches(t):
            return False
        return not any(getattr(t.professionals, r) is not None for r in self.until_named) if self.until_named else True


class Closure(_Step):
    """SW26-5 / BA-3 / SW22-11: what the closure record on the source system says."""

    reason: str = Field(min_length=1)
    lead_professional: bool = False
    #: the closure waits for a signal instead of being made at once (NS-12: the Front Door's acceptance)
    later: Later | None = None


class Notice(_Step):
    """LU-7: tell these professionals that the target holds the transfer, and when it is allocated."""

    on: Literal["acknowledged", "allocated"]
    to: list[Literal["social_worker", "manager"]] = Field(min_length=1)
    channel: CaseSystem = CaseSystem.MAILBOX


class NoRecord(_Model):
    """NS-14 / G4: a supported step-down to universal in a Family Hub sends no case record."""

    rule: RuleIdStr
    to_level: ServiceLevel
    when_family_hub_universal: bool = True


class ProtocolSpec(_Model):
    id: str
    council: Council
    seed: str
    pathway: list[PathwaySystems] = Field(default_factory=list)
    rule: list[Rule] = Field(min_length=1)
    route: list[RouteStep] = Field(default_factory=list)
    keep_open: list[KeepOpen] = Field(default_factory=list)
    closure: list[Closure] = Field(default_factory=list)
    notice: list[Notice] = Field(default_factory=list)
    no_record: NoRecord | None = None

    @model_validator(mode="after")
    def _one_pathway_per_direction(self) -> ProtocolSpec:
        directions = [p.direction for p in self.pathway]
        if len(directions) != len(set(directions)):
            raise ValueError("one [[pathway]] per direction")
        if any(isinstance(s, OutcomeRouting) for s in self.route) and not any(
            isinstance(r, AssessmentOutcomeRule) for r in self.rule
        ):
            raise ValueError("an assessment-outcome route needs an assessment-outcome rule with the outcomes table")
        for r in self.rule:
            if isinstance(r, StatedDeadlineRule) and r.deadline.council != self.council:
                raise ValueError(
                    f"deadline {r.id} belongs to {r.deadline.council} in {DEADLINES_FILE.name}, not {self.council}"
                )
        return self


# -- what the router passes in, and what routing returns --------------------------------------


class StepDownMemory(NamedTuple):
    """One earlier step-down of the child (from the router's durable per-child history).

    A NamedTuple: the router keeps a year of them, stored as exact tuples of its fields
    (``router/_history.py``, which the garbage collector stops scanning) and made into this
    type when the protocol reads them.
    """

    transfer_id: str
    council: str
    at: datetime
    team: str | None
    social_worker: str | None


@dataclass(frozen=True)
class Facts:
    """What the router learned from other systems just before deciding."""

    source_state: RecordState | None = None
    leader_away: bool | None = None
    #: the child's earlier step-downs, newest last (LU-9, NS-10)
    history: tuple[StepDownMemory, ...] = ()


@dataclass(frozen=True)
class Route:
    """Who receives the transfer, and which routing rules chose them.

    ``role`` is the receiving role (``support-leader``, ``team-manager``, ``lead-professional``,
    ``targeted-support-request``, ``contact``, ``referral``, ``default``); ``system`` the target
    case system when the protocol chose it (SW22-7); ``team`` the receiving team (SW22-7,
    LU-9); ``first_contact`` the social worker to call first (NS-10); ``urgent`` SW22-1;
    ``withhold_documents`` BA-9 (the documents go only once a worker is allocated).
    """

    role: str
    locality: str | None
    rule_ids: list[str] = field(default_factory=list)
    system: CaseSystem | None = None
    team: str | None = None
    first_contact: str | None = None
    urgent: bool = False
    withhold_documents: bool = False


_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/&()'-]{0,59}$")


def _code(what: str, value: str | None) -> str:
    """``what`` with its value where the value is a code (short, code characters); never free text at length.

    A locality or an outcome is a code of the council's systems, not personal data; anything longer or with
    other characters is not named, in case a person's details were typed where a code belongs.
    """
    if not value:
        return f"no {what}"
    if _CODE.match(value):
        return f"{what} {value!r}"
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what} that is not a code"


def _with_detail(message: str, detail: str | None) -> str:
    return f"{message} ({detail})" if detail else message


@dataclass(frozen=True)
class Protocol:
    spec: ProtocolSpec
    origin: str

    @property
    def council(self) -> Council:
        return self.spec.council

    def check(self, t: TransferMessage, facts: Facts = Facts()) -> list[RuleViolation]:
        """Every rule that applies and does not hold, in file order."""
        return [
            RuleViolation(rule_id=r.id, message=_with_detail(r.message, r.detail(t)), fix=r.fix)
            for r in self.spec.rule
            if r.applies_to.matches(t) and not r.holds(t, facts)
        ]

    def details(self, t: TransferMessage) -> dict[str, str]:
        """Rule id -> what exactly did not hold, for the rules of ``t`` that say it (SW22-7: the outcome code)."""
        found: dict[str, str] = {}
        for r in self.spec.rule:
            d = r.detail(t) if r.applies_to.matches(t) else None
            if d:
                found.setdefault(r.id, d)
        return found

    def alerting(self, violations: list[RuleViolation]) -> list[str]:
        """Rule ids among ``violations`` that must raise an alert (a record closed out of band)."""
        alerting = {r.id for r in self.spec.rule if isinstance(r, SourceOpenRule) and r.alert}
        return [v.rule_id for v in violations if v.rule_id in alerting]

    def sends_no_record(self, t: TransferMessage) -> str | None:
        """The rule id when this transfer completes without sending a case record (NS-14)."""
        nr = self.spec.no_record
        if nr and t.pathway.to_level is nr.to_level and (t.family_hub_universal or not nr.when_family_hub_universal):
            return nr.rule
        return None

    def systems(self, direction: Direction) -> PathwaySystems | None:
        return next((p for p in self.spec.pathway if p.direction is direction), None)

    def asks_who_is_away(self, t: TransferMessage) -> bool:
        """Whether routing ``t`` depends on the target's ``leader_away`` fact (NS-2's locality routing applies)."""
        return any(isinstance(step, LocalityRouting) and step.applies_to.matches(t) for step in self.spec.route)

    def route(self, t: TransferMessage, facts: Facts) -> Route:
        """Apply the routing steps that apply, in file order; each may set part of the route."""
        pathway = self.systems(t.pathway.direction)
        r: dict[str, Any] = {
            "role": "default",
            "locality": t.child.locality,
            "rule_ids": [],
            "system": pathway.target if pathway else None,
            "team": pathway.team if pathway else None,
            "urgent": t.urgency is Urgency.URGENT,
        }
        for step in self.spec.route:
            if not step.applies_to.matches(t):
                continue
            if self._step(step, t, facts, r):
                r["rule_ids"].append(step.rule)
        return Route(**r)

    def _step(self, step: RouteStep, t: TransferMessage, facts: Facts, r: dict[str, Any]) -> bool:
        """Apply one routing step to the route being built; whether it applied."""
        if isinstance(step, LocalityRouting):
            if t.child.locality not in step.localities:
                raise MappingError(
                    f"{self.origin}: {step.rule}: {_code('locality', t.child.locality)} is not one of"
                    f" {', '.join(step.localities)} (field child.locality)"
                )
            r["role"] = "team-manager" if facts.leader_away else "support-leader"
            return True
        if isinstance(step, OutcomeRouting):
            table = next(x for x in self.spec.rule if isinstance(x, AssessmentOutcomeRule))
            chosen = table.chosen(t)
            if chosen is None:
                raise MappingError(
                    f"{self.origin}: {step.rule}: {_code('assessment outcome', t.assessment_outcome)} is not one of"
                    f" the protocol's step-down outcomes (field assessment_outcome)"
                )
            r.update(system=chosen.target, team=chosen.team)
            return True
        if isinstance(step, LeadProfessionalRouting):
            if t.professionals.lead_professional is None:
                return False
            r["role"] = "lead-professional"
            return True
        if isinstance(step, NoLeadProfessionalRouting):
            if t.professionals.lead_professional is not None:
                return False
            r.update(role="targeted-support-request", withhold_documents=True)
            return True
        if isinstance(step, RecentStepDownRouting):
            since = t.requested_at - timedelta(days=step.within_days)
            recent = [h for h in facts.history if h.council == t.council.value and since <= h.at <= t.requested_at]
            if not recent:
                return False
            last = recent[-1]
            if last.team:
                r["team"] = last.team
            if last.social_worker:
                r["first_contact"] = last.social_worker
            return True
        if isinstance(step, UrgentRouting):
            if t.pathway.to_level not in step.to_levels and t.urgency is not Urgency.URGENT:
                return False
            r["urgent"] = True
            return True
        # ReferralEndorsement
        d = t.management_decision
        endorsed = d is not None and bool(d.rationale) and _has_role(d.decided_by.role, step.roles)
        r["role"] = "referral" if endorsed else "contact"
        return True

    def closes_later(self) -> dict[str, Later]:
        """Rule id -> when its record closes later, for every ``[[keep_open]]`` and ``[[closure]]`` that says so."""
        steps: list[KeepOpen | Closure] = [*self.spec.keep_open, *self.spec.closure]
        return {s.rule: s.later for s in steps if s.later is not None}

    def keeps_open(self, t: TransferMessage) -> list[str]:
        """Rule ids that keep the source record open after the handover (empty: close it)."""
        return [k.rule for k in self.spec.keep_open if k.keeps(t)]

    def closure(self, t: TransferMessage) -> ClosureRecord | None:
        """The closure record the source system writes (first matching ``[[closure]]``)."""
        for c in self.spec.closure:
            if c.applies_to.matches(t):
                lead = t.professionals.lead_professional if c.lead_professional else None
                return ClosureRecord(reason=c.reason, lead_professional=lead, rule_ids=[c.rule])
        return None

    def notice_channels(self) -> set[CaseSystem]:
        """The channels the protocol's notices go by (a deployment must serve each as a target)."""
        return {n.channel for n in self.spec.notice}

    def routed_targets(self) -> set[CaseSystem]:
        """Target systems a routing step can choose beyond the pathways' (SW22-7's outcome table)."""
        if not any(isinstance(step, OutcomeRouting) for step in self.spec.route):
            return set()
        tables = [x for x in self.spec.rule if isinstance(x, AssessmentOutcomeRule)]
        return {o.target for t in tables for o in outcome_table(t.outcomes).values() if o.step_down}

    def notices(self, t: TransferMessage, on: str) -> list[Notice]:
        return [n for n in self.spec.notice if n.on == on and n.applies_to.matches(t)]

    @property
    def rule_ids(self) -> list[str]:
        s = self.spec
        ids = [r.id for r in s.rule]
        ids += [x.rule for x in (*s.route, *s.keep_open, *s.closure, *s.notice)]
        ids += [s.no_record.rule] if s.no_record else []
        return list(dict.fromkeys(ids))


# -- loading ---------------------------------------------------------------------------------


class _Lines:
    """Where things are in a TOML file's raw text (tomllib keeps no positions)."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        #: (line number, table name, is array-of-tables)
        self.headers: list[tuple[int, str, bool]] = []
        for n, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line)
            if m:
                self.headers.append((n, m.group(1), line.lstrip().startswith("[[")))

    def _block(self, table: str | None, index: int | None) -> tuple[int, int]:
        """First and last line of a table (``None``: the top level before any header)."""
        if table is None:
            return 1, (self.headers[0][0] - 1 if self.headers else len(self.lines))
        found = [h for h in self.headers if h[1] == table]
        if not found:
            return 1, len(self.lines)
        start = found[min(index or 0, len(found) - 1)][0]
        later = [h[0] for h in self.headers if h[0] > start]
        return start, (later[0] - 1 if later else len(self.lines))

    def of(self, loc: tuple[int | str, ...]) -> int:
        """The line of a pydantic error location such as ``('rule', 3, 'documents', 0)``."""
        table: str | None = None
        index: int | None = None
        rest = list(loc)
        head = rest[0] if rest else None
        if isinstance(head, str) and any(h[1] == head for h in self.headers):
            table = head
            rest.pop(0)
            nxt = rest[0] if rest else None
            if isinstance(nxt, int):
                index = nxt
                rest.pop(0)
        first, last = self._block(table, index)
        key = (
            next((p for p in rest if isinstance(p, str)), None) if rest else (loc[0] if loc and table is None else None)
        )
        if isinstance(key, str):
            for n in range(first, last + 1):
                m = self._KEY.match(self.lines[n - 1])
                if m and m.group(1) == key:
                    return n
        return first


def load_protocol(council_or_path: Council | str | Path) -> Protocol:
    """Load and validate a protocol file; an error names the file, the line and the rule."""
    path = Path(council_or_path) if str(council_or_path).endswith(".toml") else PROTOCOL_DIR / f"{council_or_path}.toml"
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"{path.name}: {exc}") from exc
    try:
        spec = ProtocolSpec.model_validate(raw)
    except ValidationError as exc:
        lines = _Lines(text)
        problems = []
        for e in exc.errors(include_url=False, include_input=False):
            loc = tuple(e["loc"])
            if len(loc) >= 3 and loc[2] in CHECKS + _ROUTE_KINDS:  # the discriminated union's tag
                loc = loc[:2] + loc[3:]
            if e["type"] in ("union_tag_invalid", "union_tag_not_found") and loc:
                loc = (*loc, "kind" if loc[0] == "route" else "check")
            where = ".".join(str(p) for p in loc) or "the file as a whole"
            if len(loc) >= 2 and isinstance(loc[0], str) and isinstance(loc[1], int):
                entries = raw.get(loc[0], [])
                entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else {}
                name = entry.get("id") or entry.get("rule") or "?" if isinstance(entry, dict) else "?"
                where = f"{loc[0]} {name} (#{loc[1] + 1}): " + ".".join(str(p) for p in loc[2:])
            problems.append(f"line {lines.of(loc)}: {where}: {e['msg']}")
        raise MappingError(f"{path.name}: " + "; ".join(problems)) from exc
    return Protocol(spec=spec, origin=path.name)


_ROUTE_KINDS = (
    "locality-support-leader",
    "assessment-outcome",
    "lead-professional",
    "no-lead-professional",
    "recent-step-down",
    "urgent",
    "referral-endorsement",
)


def load_protocols(directory: Path = PROTOCOL_DIR) -> dict[Council, Protocol]:
    """Every protocol file of a directory (by default, every council casebridge ships), one per council."""
    protocols: dict[Council, Protocol] = {}
    for path in sorted(directory.glob("*.toml")):
        p = load_protocol(path)
        if p.council in protocols:
            raise MappingError(f"{path.name}: council {p.council.value!r} already has {protocols[p.council].origin}")
        protocols[p.council] = p
    return protocols
