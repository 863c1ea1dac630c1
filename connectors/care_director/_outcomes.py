"""Care Director's assessment outcomes as data (``mappings/data/care-director-outcomes.toml``)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import ServiceLevel
from mappings import MappingError

OUTCOMES_FILE = "care-director-outcomes.toml"


class AssessmentOutcome(BaseModel):
    """One outcome of the ACP's pick list: where a step-down goes (SW22-7), who leads (SW22-11)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(min_length=1)
    label: str = Field(min_length=1)
    rule: str = Field(pattern=r"^SW22-\d+$")
    step_down: bool
    to_level: ServiceLevel
    lead_service: str = Field(min_length=1)
    team: str = Field(min_length=1, pattern=r"^[a-z0-9-]+$")


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: list[AssessmentOutcome] = Field(min_length=1)


def load_outcomes(text: str | None = None) -> Mapping[str, AssessmentOutcome]:
    """The outcomes by label (the text a transfer carries); a bad file names the file and the field."""
    if text is None:
        text = (resources.files("mappings") / "data" / OUTCOMES_FILE).read_text(encoding="utf-8")
    try:
        parsed = _File.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{OUTCOMES_FILE}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise MappingError(f"{OUTCOMES_FILE}: {problems} (SW22-7)") from exc
    by_label = {o.label: o for o in parsed.outcome}
    if len(by_label) != len(parsed.outcome) or len({o.code for o in parsed.outcome}) != len(parsed.outcome):
        raise MappingError(f"{OUTCOMES_FILE}: outcome codes and labels must be unique (SW22-7)")
    return by_label


ASSESSMENT_OUTCOMES: Mapping[str, AssessmentOutcome] = load_outcomes()
_BY_CODE: Mapping[str, AssessmentOutcome] = {o.code: o for o in ASSESSMENT_OUTCOMES.values()}


def outcome_of(label_or_code: str | None) -> AssessmentOutcome | None:
    """The outcome a transfer's ``assessment_outcome`` names (its label, or Care Director's code)."""
    if label_or_code is None:
        return None
    return ASSESSMENT_OUTCOMES.get(label_or_code) or _BY_CODE.get(label_or_code)
