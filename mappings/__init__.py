"""Declarative field mappings and council protocols, as data (``mappings/data``) with a pure engine."""

from ._deadlines import (
    DeadlineRule,
    DeadlineState,
    DeadlineStatus,
    Unit,
    add_working_days,
    deadlines_by_rule,
    deadlines_for,
    due_at,
    evaluate,
    load_deadlines,
    message_times,
)
from ._fieldmap import FieldMapping, MappingError, load_mapping
from ._outcomes import CARE_DIRECTOR_OUTCOMES, AssessmentOutcome, load_outcomes, outcome_table
from ._protocol import CHECKS, Facts, Protocol, Route, StepDownMemory, load_protocol, load_protocols

__all__ = [
    "CARE_DIRECTOR_OUTCOMES",
    "AssessmentOutcome",
    "load_outcomes",
    "outcome_table",
    "CHECKS",
    "Facts",
    "FieldMapping",
    "MappingError",
    "Protocol",
    "Route",
    "StepDownMemory",
    "load_mapping",
    "load_protocol",
    "DeadlineRule",
    "DeadlineState",
    "DeadlineStatus",
    "Unit",
    "add_working_days",
    "deadlines_by_rule",
    "deadlines_for",
    "due_at",
    "evaluate",
    "load_deadlines",
    "message_times",
    "load_protocols",
]
