"""Assessment outcome tables as data (``mappings/data/<system>-outcomes.toml``): SW22-7, stated once.

The table is the case system's pick list (code and label) with what each outcome means for a
step-down: whether it steps down at all, the level and the receiving system and team (SW22-7),
and the lead service the closure record names (SW22-11). The Swindon 2022 protocol's
``assessment-outcome`` rule and route read it by file name; the Care Director connector and
publisher read the same table.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import CaseSystem, ServiceLevel

from ._fieldmap import DATA_DIR, MappingError

CARE_DIRECTOR_OUTCOMES = "care-director-outcomes.toml"


class AssessmentOutcome(BaseModel):
    """One outcome of the pick list: where a step-down goes (SW22-7), who leads (SW22-11)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(min_length=1)
    label: str = Field(min_length=1)
    rule: str = Field(pattern=r"^SW22-\d+$")
    step_down: bool
    to_level: ServiceLevel
    #: the receiving case system and team (the route's ``system`` and ``team``)
    target: CaseSystem
    team: str = Field(min_length=1)
    lead_service: str = Field(min_length=1)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: list[AssessmentOutcome] = Field(min_length=1)


def load_outcomes(text: str | None = None, name: str = CARE_DIRECTOR_OUTCOMES) -> Mapping[str, AssessmentOutcome]:
    """The outcomes by label (the text a transfer carries); a bad file names the file and the field."""
    try:
        if text is None:
            text = (DATA_DIR / name).read_text(encoding="utf-8")
        parsed = _File.model_validate(tomllib.loads(text))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"{name}: {exc} (SW22-7)", rule_ids=("SW22-7",)) from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise MappingError(f"{name}: {problems} (SW22-7)", rule_ids=("SW22-7",)) from exc
    by_label = {o.label: o for o in parsed.outcome}
    if len(by_label) != len(parsed.outcome) or len({o.code for o in parsed.outcome}) != len(parsed.outcome):
        raise MappingError(f"{name}: outcome codes and labels must be unique (SW22-7)", rule_ids=("SW22-7",))
    return by_label


@cache
def outcome_table(name: str = CARE_DIRECTOR_OUTCOMES) -> Mapping[str, AssessmentOutcome]:
    """A shipped outcome table by label, read once."""
    return load_outcomes(name=name)
