"""Connectors to the case systems: one shape (``Target`` / ``Source``), one error tree."""

from ._base import Connector, Receipt, Source, SourceState, Target
from ._errors import (
    CasebridgeError,
    PermanentError,
    RecordClosed,
    RuleRefused,
    TargetRefused,
    TargetUnavailable,
    TransientError,
)
from ._feed import FeedPublisher
from ._http import HttpClient

__all__ = [
    "CasebridgeError",
    "Connector",
    "FeedPublisher",
    "HttpClient",
    "PermanentError",
    "Receipt",
    "RecordClosed",
    "RuleRefused",
    "Source",
    "SourceState",
    "Target",
    "TargetRefused",
    "TargetUnavailable",
    "TransientError",
]
