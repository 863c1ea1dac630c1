"""Logging, configured once at start-up: structlog, JSON lines, personal data redacted.

Every line carries the event name and a correlation id: the transfer's id while the
router handles it (bound with ``structlog.contextvars``), else the process's run id. The
redaction processor replaces the value of any key that can hold personal data, at any
depth, so that a careless ``log.info(..., child=...)`` still leaks nothing, and masks
NHS numbers, UPNs and postcodes inside any string (exception texts, library lines).
"""

from __future__ import annotations

import json
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


#: values that cannot hold personal data (no string inside): left as they are without a look
_SCALARS = (int, float, bool, type(None))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        # most strings hold nothing to mask: a search (no match) is cheaper than a sub that copies
        return _PERSONAL_PATTERNS.sub(REDACTED, value) if _PERSONAL_PATTERNS.search(value) else value
    if isinstance(value, dict):
        return {k: REDACTED if k in PERSONAL_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: personal-data keys never reach a log line."""
    for key, value in event_dict.items():  # values are replaced in place: the keys do not change
        if key in PERSONAL_KEYS:
            event_dict[key] = REDACTED
        elif not isinstance(value, _SCALARS):
            event_dict[key] = _scrub(value)
    return event_dict


def _json_fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer does for a value JSON cannot hold: ``__structlog__()``, else ``repr``."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


#: one encoder for every line: ``json.dumps(..., default=...)`` builds a new encoder per call
_ENCODER = json.JSONEncoder(default=_json_fallback)


def _dumps(obj: Any, **_: Any) -> str:
    return _ENCODER.encode(obj)


def _correlation(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if event_dict.get("correlation_id") is None:
        event_dict["correlation_id"] = event_dict.get("transfer_id") or RUN_ID
    return event_dict


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Configure structlog and the standard library (aiokafka, uvicorn) to write JSON lines to stderr."""
    renderer: Any = structlog.processors.JSONRenderer(_dumps) if json else structlog.dev.ConsoleRenderer(colors=False)
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
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),  # as Print, one write call fewer
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
