"""Building blocks shared by the transfer message and the router's events."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1


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
RuleId = Annotated[str, Field(pattern=r"^(G[1-4]|SW26-\d+|SW22-\d+|LU-\d+|BA-\d+|NS-\d+)$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Council(StrEnum):
    """The councils whose protocols casebridge carries (one protocol each, see PROTOCOLS.md)."""

    SWINDON = "swindon"
    SWINDON_2022 = "swindon-2022"
    LUTON = "luton"
    BARNSLEY = "barnsley"
    NORTH_SOMERSET = "north-somerset"


class Direction(StrEnum):
    STEP_UP = "step-up"
    STEP_DOWN = "step-down"


class ServiceLevel(StrEnum):
    """Levels of need, lowest first (the order is used to check a pathway's direction)."""

    UNIVERSAL = "universal"
    EARLY_HELP = "early-help"
    INTENSIVE_EARLY_HELP = "intensive-early-help"
    CHILD_IN_NEED = "child-in-need-s17"
    CHILD_PROTECTION = "child-protection-s47"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {level: i for i, level in enumerate(ServiceLevel)}  # the declaration order, looked up once per check


class CaseSystem(StrEnum):
    """Case systems and channels a transfer can come from or go to."""

    LCS = "lcs"
    EHM = "ehm"
    CARE_DIRECTOR = "care-director"
    TED = "ted"
    MAILBOX = "mailbox"
