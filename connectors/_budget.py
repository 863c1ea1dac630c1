"""The time a call to a case system may still take: its own deadline, or less when the caller's retry budget is
nearly spent. The router's retries (``router/flow.py`` ``_retrying``) set the budget's end for the calls they make;
the HTTP boundary (``connectors/_http.py``) bounds each request by whichever comes first, so no attempt runs past
the budget the settings give a transfer's call (``[retry] total_seconds``)."""

from __future__ import annotations

import time
from contextvars import ContextVar

#: when the current call's retry budget ends (``time.monotonic()``), or None outside a budget
_BUDGET_ENDS: ContextVar[float | None] = ContextVar("casebridge_call_budget_ends", default=None)
#: an attempt given less than this is still made (and times out at once, retriable), never refused outright
MIN_SECONDS = 0.05


def call_deadline(own: float) -> float:
    """Seconds the next attempt may take: ``own`` (the connector's deadline), or what is left of the budget."""
    ends = _BUDGET_ENDS.get()
    if ends is None:
        return own
    return max(MIN_SECONDS, min(own, ends - time.monotonic()))


def budget_ends(at: float) -> object:
    """Start a budget ending at ``at`` (monotonic) for the calls made in this context; returns the token to end it."""
    return _BUDGET_ENDS.set(at)


def end_budget(token: object) -> None:
    _BUDGET_ENDS.reset(token)  # type: ignore[arg-type]
