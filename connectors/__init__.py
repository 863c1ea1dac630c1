"""Connectors to the case systems: one shape (``Target`` / ``Source``), one error tree."""

from ._base import Connector, Receipt, Source, SourceState, Target
from ._errors import (
    CasebridgeError,
    PermanentError,
    RecordClosed,
    TargetRefused,
    TargetUnavailable,
    TransientError,
)
from ._http import HttpClient

__all__ = [
    "CasebridgeError",
    "Connector",
    "HttpClient",
    "PermanentError",
    "Receipt",
    "RecordClosed",
    "Source",
    "SourceState",
    "Target",
    "TargetRefused",
    "TargetUnavailable",
    "TransientError",
]
