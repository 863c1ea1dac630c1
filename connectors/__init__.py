"""Connectors to the case systems: one shape (``Target`` / ``Source``), one error tree.

The names below are imported when first used (PEP 562): ``connectors.kafka`` alone (the one
Kafka client factory, which every operator command needs) does not pull in the HTTP client and
the feeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts._lazy import lazy_names

if TYPE_CHECKING:
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

#: each public name and the module that defines it
_WHERE = {
    "Connector": "._base",
    "Receipt": "._base",
    "Source": "._base",
    "SourceState": "._base",
    "Target": "._base",
    "CasebridgeError": "._errors",
    "PermanentError": "._errors",
    "RecordClosed": "._errors",
    "RuleRefused": "._errors",
    "TargetRefused": "._errors",
    "TargetUnavailable": "._errors",
    "TransientError": "._errors",
    "FeedPublisher": "._feed",
    "HttpClient": "._http",
}


__getattr__ = lazy_names(__name__, _WHERE, globals())


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
