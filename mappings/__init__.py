"""Declarative field mappings and council protocols, as data (``mappings/data``) with a pure engine."""

from ._deadlines import (
    DeadlineRule,
    DeadlineState,
    DeadlineStatus,
    Unit,
    add_working_days,
    deadlines_for,
    due_at,
    evaluate,
    load_deadlines,
)
from ._fieldmap import FieldMapping, MappingError, load_mapping
from ._protocol import Facts, Protocol, Route, load_protocol

__all__ = [
    "Facts",
    "FieldMapping",
    "MappingError",
    "Protocol",
    "Route",
    "load_mapping",
    "load_protocol",
    "DeadlineRule",
    "DeadlineState",
    "DeadlineStatus",
    "Unit",
    "add_working_days",
    "deadlines_for",
    "due_at",
    "evaluate",
    "load_deadlines",
]
