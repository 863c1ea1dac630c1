"""Declarative field mappings and council protocols, as data (``mappings/data``) with a pure engine."""

from ._fieldmap import FieldMapping, MappingError, load_mapping
from ._protocol import CHECKS, Facts, Protocol, Route, StepDownMemory, load_protocol, load_protocols

__all__ = [
    "CHECKS",
    "Facts",
    "FieldMapping",
    "MappingError",
    "Protocol",
    "Route",
    "StepDownMemory",
    "load_mapping",
    "load_protocol",
    "load_protocols",
]
