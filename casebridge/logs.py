"""Logging, configured once at start-up: structlog, JSON lines, personal data redacted.

Every line carries the event name and a correlation id: the transfer's id while the
router handles it (bound with ``structlog.contextvars``), else the process's run id. The
redaction processor replaces the value of any key that can hold personal data, at any
depth, so that a careless ``log.info(..., child=...)`` still leaks nothing, and masks
NHS numbers, UPNs and postcodes inside any string (exception texts, library lines).
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import MutableMapping
from typing import Any

import structlog

PERSONAL_KEYS = frozenset(
    {
        "given_name",
        "family_name",
        "name",
        "full_name",
        "date_of_birth",
        "dob",
        "nhs_number",
        "upn",
        "address",
        "postcode",
        "email",
        "phone",
        "content",
        "notes",
        "meeting_notes",
        "plan",
        "text",
        "child",
        "consent",
        "rationale",
        "address_line",
        "address_lines",
        "line1",
        "line2",
        "town",
        "given_by",
        "decided_by",
        "requested_by",
        "case_notes",
        "note",
        "comment",
        "comments",
        "free_text",
        "description",
    }
)
REDACTED = "[redacted]"
#: personal data that has a shape, caught inside any string (an exception text, a third-party log line):
#: NHS numbers (10 digits, maybe spaced 3-3-4), UPNs (a letter, 11 digits, a digit or letter), UK postcodes
_PERSONAL_PATTERNS = re.compile(
    r"(?<![\w])(?:\d{3} ?\d{3} ?\d{4}|[A-Z]\d{11}[0-9A-Z]|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2})(?![\w])"
)
#: lines logged outside any transfer carry the process's run id as their correlation id
RUN_ID = f"run-{uuid.uuid4().hex[:12]}"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _PERSONAL_PATTERNS.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: REDACTED if k in PERSONAL_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: personal-data keys never reach a log line."""
    for key in list(event_dict):
        if key in PERSONAL_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _correlation(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if event_dict.get("correlation_id") is None:
        event_dict["correlation_id"] = event_dict.get("transfer_id") or RUN_ID
    return event_dict


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Configure structlog and the standard library (aiokafka, uvicorn) to write JSON lines to stderr."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _correlation,
        redact_personal_data,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("casebridge").setLevel(level)
