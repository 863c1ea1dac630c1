"""The router: consumes transfer messages, checks each council's protocol, delivers, closes.

Read ``router/flow.py`` for the flow of one transfer and ``router/app.py`` for how it is
wired to Kafka (consumption, commits, dead letters).

The names below are imported when first used (PEP 562): an operator's command such as
``casebridge dlq list`` reads ``router.deadletters`` without paying for the router's
Kafka wiring (FastStream) on every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts._lazy import lazy_names

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .app import Router, build_router
    from .flow import Outcome, TransferFlow
    from .lifecycle import Lifecycle
    from .settings import Settings, Topics

#: each public name and the module that defines it
_WHERE = {
    "Router": ".app",
    "build_router": ".app",
    "Outcome": ".flow",
    "TransferFlow": ".flow",
    "Lifecycle": ".lifecycle",
    "Settings": ".settings",
    "Topics": ".settings",
}


__getattr__ = lazy_names(__name__, _WHERE, globals())


__all__ = ["Lifecycle", "Outcome", "Router", "Settings", "Topics", "TransferFlow", "__version__", "build_router"]
