"""Declarative field mappings and council protocols, as data (``mappings/data``) with a pure engine."""

from ._fieldmap import FieldMapping, MappingError, load_mapping
from ._protocol import Facts, Protocol, Route, load_protocol

__all__ = ["Facts", "FieldMapping", "MappingError", "Protocol", "Route", "load_mapping", "load_protocol"]
