"""Council protocols as data: the rules a transfer must meet, and how it is routed.

A protocol file (``mappings/data/protocols/<council>.toml``) lists ``[[rule]]`` entries,
each with the rule id of ``shared/PROTOCOLS.md``, a ``check`` kind from the closed set
below, the check's parameters, and the words an operator sees (``message``, ``fix``).
Checks are pure functions of the transfer message: no I/O, no logging; facts that live in
other systems (is the Support Leader away, is the LCS record still open now) are passed
in by the router as ``Facts``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import (
    Council,
    Direction,
    DocumentType,
    RecordState,
    RuleViolation,
    ServiceLevel,
    TransferMessage,
)

from ._fieldmap import DATA_DIR, MappingError

PROTOCOL_DIR = DATA_DIR / "protocols"

RuleIdStr = Annotated[str, Field(pattern=r"^(G[1-4]|SW26-\d+|SW22-\d+|LU-\d+|BA-\d+|NS-\d+)$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AppliesTo(_Model):
    direction: Direction | None = None
    to_levels: list[ServiceLevel] | None = None
    unless_family_hub_universal: bool = False

    def matches(self, t: TransferMessage) -> bool:
        if self.direction is not None and t.pathway.direction is not self.direction:
            return False
        if self.to_levels is not None and t.pathway.to_level not in self.to_levels:
            return False
        return not (self.unless_family_hub_universal and t.family_hub_universal)


class _Rule(_Model):
    id: RuleIdStr
    message: str = Field(min_length=1)
    fix: str = Field(min_length=1)
    applies_to: AppliesTo = AppliesTo()


class ManagementDecisionRule(_Rule):
    """G2 / NS-1: the manager's decision and rationale are recorded."""

    check: Literal["management-decision"]
    forum_required: bool = False

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        d = t.management_decision
        return d is not None and (not self.forum_required or bool(d.forum))


class DocumentsRule(_Rule):
    """NS-6 / NS-8 and the like: these documents travel with the transfer."""

    check: Literal["documents"]
    documents: list[DocumentType] = Field(min_length=1)

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        return all(t.documents_of(kind) for kind in self.documents)


class ProfessionalRule(_Rule):
    """NS-6 / BA-6: a named professional in the given role."""

    check: Literal["professional"]
    role: Literal["social_worker", "lead_professional", "support_leader", "family_support_worker"]

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        return getattr(t.professionals, self.role) is not None


class SourceOpenRule(_Rule):
    """NS-7: the source record is still open, as the message says and as the source system says now."""

    check: Literal["source-open"]
    alert: bool = True

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        state = facts.source_state if facts.source_state is not None else t.source_record.state
        return state is RecordState.OPEN


class ConsentRule(_Rule):
    """G1: consent with the needed scope, or the s.47 exemption decided by a named manager."""

    check: Literal["consent"]
    scope: list[str] = Field(default_factory=list)

    def holds(self, t: TransferMessage, facts: Facts) -> bool:
        if t.consent_exemption is not None:
            return t.pathway.direction is Direction.STEP_UP or t.pathway.from_level is ServiceLevel.CHILD_PROTECTION
        if t.consent is None:
            return False
        return set(self.scope) <= {s.value for s in t.consent.scope}


Rule = Annotated[
    ManagementDecisionRule | DocumentsRule | ProfessionalRule | SourceOpenRule | ConsentRule,
    Field(discriminator="check"),
]


class LocalityRouting(_Model):
    """NS-2: to the locality's Support Leader; to its team manager while the leader is away."""

    rule: RuleIdStr
    kind: Literal["locality-support-leader"]
    localities: list[str] = Field(min_length=1)


class NoRecord(_Model):
    """NS-14 / G4: a supported step-down to universal in a Family Hub sends no case record."""

    rule: RuleIdStr
    to_level: ServiceLevel
    when_family_hub_universal: bool = True


class ProtocolSpec(_Model):
    id: str
    council: Council
    seed: str
    rule: list[Rule] = Field(min_length=1)
    routing: LocalityRouting | None = None
    no_record: NoRecord | None = None


@dataclass(frozen=True)
class Facts:
    """What the router learned from other systems just before deciding."""

    source_state: RecordState | None = None
    leader_away: bool | None = None


@dataclass(frozen=True)
class Route:
    """Who receives the transfer, and which routing rules chose them."""

    role: Literal["support-leader", "team-manager", "default"]
    locality: str | None
    rule_ids: list[str] = field(default_factory=list)


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
            RuleViolation(rule_id=r.id, message=r.message, fix=r.fix)
            for r in self.spec.rule
            if r.applies_to.matches(t) and not r.holds(t, facts)
        ]

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

    def route(self, t: TransferMessage, facts: Facts) -> Route:
        r = self.spec.routing
        if r is None:
            return Route(role="default", locality=t.child.locality)
        if t.child.locality not in r.localities:
            raise MappingError(f"{self.origin}: {r.rule}: locality is not one of {', '.join(r.localities)}")
        role: Literal["support-leader", "team-manager"] = "team-manager" if facts.leader_away else "support-leader"
        return Route(role=role, locality=t.child.locality, rule_ids=[r.rule])

    @property
    def rule_ids(self) -> list[str]:
        ids = [r.id for r in self.spec.rule]
        ids += [x.rule for x in (self.spec.routing, self.spec.no_record) if x is not None]
        return ids


def load_protocol(council_or_path: Council | str | Path) -> Protocol:
    """Load and validate a protocol file; an error names the file and the rule."""
    path = Path(council_or_path) if str(council_or_path).endswith(".toml") else PROTOCOL_DIR / f"{council_or_path}.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"{path.name}: {exc}") from exc
    try:
        spec = ProtocolSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors(include_url=False, include_input=False):
            loc = list(e["loc"])
            where = ".".join(str(p) for p in loc)
            if len(loc) >= 2 and loc[0] == "rule" and isinstance(loc[1], int):
                rule_id = raw.get("rule", [{}])[loc[1]].get("id", "?")
                where = f"rule {rule_id} (#{loc[1] + 1}): " + ".".join(str(p) for p in loc[2:])
            problems.append(f"{where}: {e['msg']}")
        raise MappingError(f"{path.name}: " + "; ".join(problems)) from exc
    return Protocol(spec=spec, origin=path.name)
