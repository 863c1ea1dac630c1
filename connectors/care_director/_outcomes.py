"""Care Director's assessment outcomes: the SW22-7 table stated once, in ``mappings/data/care-director-outcomes.toml``.

The table is loaded by ``mappings`` (the Swindon 2022 protocol's assessment-outcome rule reads the
same file); this module only looks outcomes up by Care Director's code or by label.
"""

from __future__ import annotations

from collections.abc import Mapping

from mappings import CARE_DIRECTOR_OUTCOMES, AssessmentOutcome, load_outcomes, outcome_table

OUTCOMES_FILE = CARE_DIRECTOR_OUTCOMES

ASSESSMENT_OUTCOMES: Mapping[str, AssessmentOutcome] = outcome_table(OUTCOMES_FILE)
_BY_CODE: Mapping[str, AssessmentOutcome] = {o.code: o for o in ASSESSMENT_OUTCOMES.values()}

__all__ = ["ASSESSMENT_OUTCOMES", "OUTCOMES_FILE", "AssessmentOutcome", "load_outcomes", "outcome_of"]


def outcome_of(label_or_code: str | None) -> AssessmentOutcome | None:
    """The outcome a transfer's ``assessment_outcome`` names (its label, or Care Director's code)."""
    if label_or_code is None:
        return None
    return ASSESSMENT_OUTCOMES.get(label_or_code) or _BY_CODE.get(label_or_code)
