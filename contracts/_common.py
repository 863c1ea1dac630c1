"""Building blocks shared by the transfer message and the router's events."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: the contract's version, MAJOR.MINOR (docs/contract-compatibility.md): a minor version only adds optional
#: fields and enum values; a reader accepts every version in KNOWN_VERSIONS and refuses any other, naming it
SCHEMA_VERSION: Literal["1.1"] = "1.1"
KNOWN_VERSIONS: tuple[str, ...] = ("1.0", "1.1")


class Strict(BaseModel):
    """Base of every contract model: unknown fields are refused, instances are immutable.

    Errors never carry the input (``hide_input_in_errors``): a refused value may be a child's
    NHS number or name, and ``str(exc)`` ends up in logs and dead-letter reasons.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, hide_input_in_errors=True)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a time zone (for example 2026-11-23T09:00:00Z)")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
NonEmpty = Annotated[str, Field(min_length=1, max_length=20_000)]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
RuleId = Annotated[str, Field(pattern=r"^(G[1-4]|SW26-\d+|SW22-\d+|LU-\d+|BA-\d+|NS-\d+|FFX-\d+)$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Council(StrEnum):
    """The councils whose protocols casebridge carries (one protocol each, see PROTOCOLS.md)."""

    SWINDON = "swindon"
    SWINDON_2022 = "swindon-2022"
    LUTON = "luton"
    BARNSLEY = "barnsley"
    NORTH_SOMERSET = "north-somerset"
    #: illustrative, not a real council (schema 1.1): a council that has adopted the Families First reforms
    #: (Family Help, multi-agency child protection teams); protocol ``families-first-example.toml``, rules FFX-n
    FAMILIES_FIRST_EXAMPLE = "families-first-example"


class Direction(StrEnum):
    STEP_UP = "step-up"
    STEP_DOWN = "step-down"


class ServiceLevel(StrEnum):
    """Levels of need, lowest first (the rank is used to check a pathway's direction).

    Schema 1.1 adds the Families First levels: ``family-help`` (the Family Help service that replaces
    targeted early help and child in need where a council has adopted the reforms) and
    ``multi-agency-child-protection`` (the multi-agency child protection teams, s.47). A step between two
    levels of the same rank (family-help and child-in-need-s17; child-protection-s47 and
    multi-agency-child-protection) is neither up nor down, and refused.
    """

    UNIVERSAL = "universal"
    EARLY_HELP = "early-help"
    INTENSIVE_EARLY_HELP = "intensive-early-help"
    CHILD_IN_NEED = "child-in-need-s17"
    CHILD_PROTECTION = "child-protection-s47"
    FAMILY_HELP = "family-help"
    MULTI_AGENCY_CHILD_PROTECTION = "multi-agency-child-protection"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {
    ServiceLevel.UNIVERSAL: 0,
    ServiceLevel.EARLY_HELP: 1,
    ServiceLevel.INTENSIVE_EARLY_HELP: 2,
    ServiceLevel.FAMILY_HELP: 3,
    ServiceLevel.CHILD_IN_NEED: 3,
    ServiceLevel.CHILD_PROTECTION: 4,
    ServiceLevel.MULTI_AGENCY_CHILD_PROTECTION: 4,
}
#: the levels and codes a 1.0 reader does not know: a message using one is schema 1.1
LEVELS_SINCE_1_1 = frozenset({ServiceLevel.FAMILY_HELP, ServiceLevel.MULTI_AGENCY_CHILD_PROTECTION})


class CaseSystem(StrEnum):
    """Case systems and channels a transfer can come from or go to."""

    LCS = "lcs"
    EHM = "ehm"
    CARE_DIRECTOR = "care-director"
    TED = "ted"
    MAILBOX = "mailbox"
