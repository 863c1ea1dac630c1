"""Logging, configured once at start-up: structlog, JSON lines, personal data redacted.

Every line carries the event name and a correlation id: the transfer's id while the
router handles it (bound with ``structlog.contextvars``), else the process's run id.

The redaction processor runs last before rendering, on structlog's lines and on the
standard library's (uvicorn, aiokafka, httpx) alike:

- a key that can hold personal data has its value replaced, at any depth. Keys are
  matched case- and separator-insensitively (``Given_Name``, ``childName``,
  ``NHS_Number``) and by fragment (``name``, ``birth``, ``nhs``, ``postcode``,
  ``address``, ``phone``, ``email``...); casebridge's own keys (``transfer_id``,
  ``topic``, ``rule_ids``...) are on an allow-list and are never masked;
- NHS numbers, UPNs, postcodes, URL query strings and pydantic's ``input_value=...``
  are masked inside any text (an exception's traceback, a library's line);
- an object that is not plain data (a pydantic model, a dataclass, an exception) is
  logged as ``<TypeName>``, never by its ``repr``.

Exceptions are formatted *before* redaction, so their text is redacted too; a pydantic
``ValidationError`` is written as its field locations and error types only.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import MutableMapping
from pathlib import PurePath
from typing import Any

import structlog
from pydantic_core import ValidationError

REDACTED = "[redacted]"

#: keys whose value is personal data, compared after lower-casing and dropping ``_``/``-``/spaces
PERSONAL_KEYS = frozenset(
    {
        "givenname",
        "familyname",
        "name",
        "fullname",
        "dateofbirth",
        "dob",
        "nhsnumber",
        "upn",
        "address",
        "postcode",
        "email",
        "phone",
        "content",
        "notes",
        "plan",
        "text",
        "child",
        "consent",
        "rationale",
        "line1",
        "line2",
        "line3",
        "town",
        "city",
        "county",
        "note",
        "comment",
        "comments",
        "description",
        "zip",
        "zipcode",
        "gender",
        "sex",
        "ethnicity",
        "religion",
    }
)
#: a key holding one of these (after normalising) is personal wherever it occurs in the key
_PERSONAL_FRAGMENTS = (
    "name",
    "birth",
    "nhs",
    "postcode",
    "postalcode",
    "zipcode",
    "address",
    "phone",
    "mobile",
    "email",
    "street",
    "child",
    "note",
    "comment",
    "description",
    "freetext",
    "consent",
    "rationale",
    "ethnicity",
    "religion",
)
#: a key with one of these as a word (``care_plan``, ``error_text``, ``home_town``) is personal
_PERSONAL_WORDS = frozenset(
    {"dob", "upn", "text", "plan", "content", "town", "city", "county", "gender", "line1", "line2", "line3"}
)
#: fragments that make even an ``..._id`` key personal (``nhs_id``); others allow ids (``child_id``)
_STRONG_FRAGMENTS = ("name", "birth", "nhs", "upn", "postcode", "address", "phone", "email", "dob")
#: casebridge's own keys, and other names that merely contain a fragment: never masked (normalised)
SAFE_KEYS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "correlationid",
        "transferid",
        "transferids",
        "eventid",
        "requestid",
        "episodeid",
        "contactid",
        "caseid",
        "ruleid",
        "ruleids",
        "rule",
        "errorclass",
        "council",
        "councils",
        "topic",
        "topics",
        "caller",
        "callers",
        "loop",
        "loops",
        "system",
        "systems",
        "host",
        "port",
        "partition",
        "partitions",
        "offset",
        "groupid",
        "status",
        "severity",
        "tier",
        "trigger",
        "outcome",
        "outcomes",
        "attempt",
        "attempts",
        "size",
        "records",
        "feed",
        "channel",
        "closure",
        "fields",
        "mailboxkey",
        "reference",
        "key",
        "where",
        "reason",
        "dryrun",
        "parked",
        "replayed",
        "resumed",
        "retriable",
        "alreadyreplayed",
        "behindearliertransfer",
        "bytransfer",
        "restseconds",
        "exception",
        "contenttype",
        "contentlength",
        *(
            f"{what}name"
            for what in (
                "topic",
                "host",
                "file",
                "logger",
                "council",
                "system",
                "event",
                "app",
                "rule",
                "field",
                "mapping",
                "contract",
                "group",
                "queue",
                "table",
                "class",
                "loop",
                "task",
                "thread",
                "process",
                "module",
                "func",
                "service",
                "schema",
                "header",
                "column",
                "model",
                "mailbox",
                "feed",
                "tier",
            )
        ),
    }
)
#: values of these keys are left exactly as they are (no scan)
_UNTOUCHED = frozenset({"timestamp", "level", "_record", "_from_structlog"})

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=4096)
def is_personal_key(key: str) -> bool:
    """Whether a value logged under ``key`` is to be redacted (see the module's docstring)."""
    words = _CAMEL.sub(r"\1_\2", key).lower()
    flat = _NON_ALNUM.sub("", words)
    if flat in SAFE_KEYS:
        return False
    if flat in PERSONAL_KEYS:
        return True
    parts = [p for p in _NON_ALNUM.split(words) if p]
    if parts and parts[-1] in {"id", "ids", "count"} and not any(f in flat for f in _STRONG_FRAGMENTS):
        return False  # an identifier or a count (child_id, children_count): not the data itself
    if len(parts) > 1 and parts[-1] == "by":
        return True  # given_by, decided_by, requested_by: a person
    if parts and parts[0] == "upn":
        return True
    return any(p in _PERSONAL_WORDS for p in parts) or any(f in flat for f in _PERSONAL_FRAGMENTS)


def nhs_check_digit_ok(digits: str) -> bool:
    """The NHS number's modulus-11 check: weights 10..2 on the first nine digits."""
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


# A value "stands alone" when it is not glued to a larger token: no letter, digit, ``_``, ``-``
# or ``.`` right before it, nor after it (a ``.`` after it may end a sentence: only ``.x`` counts).
_ALONE_BEFORE = r"(?<![\w.\-])"
_ALONE_AFTER = r"(?![\w\-]|\.\w)"
#: personal data with a shape, caught inside any string. The choices:
#: - an NHS number after "NHS" (``NHS9434765919``, ``nhs: 943 476 5919``, ``NHS no. 943-476-5919``): masked;
#: - 3-3-4 spaced or dashed digits standing alone: masked whatever the check digit (the NHS's own
#:   display form; a phone number so written is personal too);
#: - ten plain digits standing alone: masked only when they pass the NHS modulus-11 check. A number
#:   that fails it is very unlikely to be an NHS number (one mistyped is rejected upstream), and
#:   timestamps and counters are common in casebridge's own lines;
#: - ten digits inside a larger token (``demo-1764600000.transfers``, ``t-1764600000-router``): an
#:   identifier casebridge made, left alone even when they pass the check;
#: - UPNs (a letter, 11 digits, a digit or letter) and UK postcodes, any case, standing alone;
#: - a URL's query string (``/children?given_name=Jane``): everything after the ``?``;
#: - pydantic's ``input_value=...`` (up to ``, input_type=``), which echoes the rejected input.
_PERSONAL_PATTERNS = re.compile(
    r"(?P<nhs_prefix>(?<![a-z])nhs(?:[ _-]?(?:no|num|number))?\.?[\s:#=_-]*)"
    r"(?P<nhs_prefixed>\d{3}[ -]?\d{3}[ -]?\d{4})(?!\d)"
    r"|(?P<input_value>input_value=).*?(?=, input_type=)"
    r"|(?P<query>\?)[^\s\"'#<>?]*=[^\s\"'#<>]*"
    rf"|{_ALONE_BEFORE}(?:\d{{3}}[ -]\d{{3}}[ -]\d{{4}}){_ALONE_AFTER}"
    rf"|{_ALONE_BEFORE}(?P<plain>\d{{10}}){_ALONE_AFTER}"
    rf"|{_ALONE_BEFORE}[a-z]\d{{11}}[0-9a-z]{_ALONE_AFTER}"
    rf"|{_ALONE_BEFORE}[a-z]{{1,2}}\d[a-z\d]? ?\d[a-z]{{2}}{_ALONE_AFTER}",
    re.IGNORECASE,
)


#: a quick first look, true of every shape above (three digits in a row, a postcode's end, a "?")
_MAYBE_SHAPED = re.compile(r"\d{3}|\d[A-Za-z]? ?\d[A-Za-z]{2}|\?")


def _mask(match: re.Match[str]) -> str:
    if match["nhs_prefixed"] is not None:
        return match["nhs_prefix"] + REDACTED
    if match["input_value"] is not None:
        return match["input_value"] + REDACTED
    if match["query"] is not None:
        return "?" + REDACTED
    if match["plain"] is not None and not nhs_check_digit_ok(match["plain"]):
        return match[0]
    return REDACTED


def scrub_text(text: str) -> str:
    """``text`` with NHS numbers, UPNs, postcodes, query strings and pydantic inputs masked."""
    # most strings hold nothing to mask: a quick look says so, and a search (no match) is cheaper
    # than a sub that copies
    if not _MAYBE_SHAPED.search(text) and "input_value=" not in text:
        return text
    return _PERSONAL_PATTERNS.sub(_mask, text) if _PERSONAL_PATTERNS.search(text) else text


#: values that cannot hold personal data (no string inside): left as they are without a look
_SCALARS = (float, bool, type(None))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, int):
        # a bare int that is a valid NHS number is masked; casebridge's own ints (offsets) are under safe keys
        return REDACTED if 10**9 <= value < 10**10 and nhs_check_digit_ok(str(value)) else value
    if isinstance(value, dict):
        return {
            (scrub_text(k) if isinstance(k, str) else k): REDACTED
            if isinstance(k, str) and is_personal_key(k)
            else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    if isinstance(value, enum.Enum):
        return _scrub(value.value)
    if isinstance(value, dt.datetime | dt.time | uuid.UUID):
        return str(value)
    if isinstance(value, PurePath):
        return scrub_text(str(value))
    structlog_form = getattr(value, "__structlog__", None)
    if callable(structlog_form):
        return _scrub(structlog_form())
    # a pydantic model, a dataclass, an exception, a date (of birth?): its repr could hold anything
    return f"<{type(value).__name__}>"


def redact_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: personal-data keys and shaped personal data never reach a log line."""
    for key, value in event_dict.items():  # values are replaced in place: the keys do not change
        if key in _UNTOUCHED:  # also _record, _from_structlog: structlog's own, removed before rendering
            continue
        if is_personal_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, int) and not isinstance(value, bool) and is_safe_key(key):
            continue
        else:
            event_dict[key] = _scrub(value)
    return event_dict


@functools.lru_cache(maxsize=1024)
def is_safe_key(key: str) -> bool:
    return _NON_ALNUM.sub("", _CAMEL.sub(r"\1_\2", key).lower()) in SAFE_KEYS


def _validation_summary(exc: ValidationError) -> str:
    """A pydantic error without the input it rejected: each field's location and error type."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'} [{e['type']}]" for e in errors)
    return f"{len(errors)} validation error(s) for {exc.title}: {where}"


def _format_exception(exc_info: Any) -> str:
    """The traceback as Python prints it, but a pydantic ValidationError says only where and what."""
    text = "".join(traceback.format_exception(*exc_info))
    seen: set[int] = set()
    exc: BaseException | None = exc_info[1]
    pending = [exc] if exc is not None else []
    while pending:  # the whole chain: __cause__ and __context__
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, ValidationError):
            message = str(exc)
            if message:
                text = text.replace(message, _validation_summary(exc))
        pending.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
    return text


#: exceptions are formatted before redaction, so that the formatted text is redacted too
_format_exc_info = structlog.processors.ExceptionRenderer(_format_exception)


def _json_fallback(obj: Any) -> Any:
    """A value JSON cannot hold (redaction has already replaced any object): its type's name, never ``repr``."""
    return f"<{type(obj).__name__}>"


#: one encoder for every line: ``json.dumps(..., default=...)`` builds a new encoder per call
_ENCODER = json.JSONEncoder(default=_json_fallback)


def _dumps(obj: Any, **_: Any) -> str:
    return _ENCODER.encode(obj)


#: a process's run id: the correlation id of lines logged outside any transfer
RUN_ID = f"run-{uuid.uuid4().hex[:12]}"


def _correlation(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if event_dict.get("correlation_id") is None:
        event_dict["correlation_id"] = event_dict.get("transfer_id") or RUN_ID
    return event_dict


#: libraries whose lines must reach the root handler (and so the redaction), not handlers of their own
LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "aiokafka", "httpx", "httpcore")


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Configure structlog and the standard library (aiokafka, uvicorn, httpx) to write JSON lines to stderr.

    uvicorn must then be started with ``log_config=None``: its default configuration gives its
    loggers handlers of their own that do not propagate, and so bypass the redaction.
    """
    renderer: Any = structlog.processors.JSONRenderer(_dumps) if json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _correlation,
        _format_exc_info,
        redact_personal_data,
    ]
    structlog.configure(
        processors=[*shared, renderer],
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
    for name in LIBRARY_LOGGERS:  # a library configured before us: its lines come through the root handler
        library = logging.getLogger(name)
        library.handlers[:] = []
        library.propagate = True
    logging.getLogger("casebridge").setLevel(level)
    damp_kafka_client_logs()


class _KafkaClientDamper(logging.Filter):
    """aiokafka logs every failed connection attempt, fetch and heartbeat (millions of lines in a long outage).
    Its lines about the broker being unreachable go to the outage tracker (``connectors._outage.OUTAGE``: one
    line when Kafka goes away, one when it is back); every other line passes once, then at most once per
    ``every`` seconds per message (with how many were dropped in between)."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        from connectors._outage import OUTAGE, is_unreachable  # here: logging is set up before connectors

        args = record.args if isinstance(record.args, tuple) else ()
        errors = [a for a in args if isinstance(a, BaseException)]
        if record.exc_info and record.exc_info[1] is not None:
            errors.append(record.exc_info[1])
        unreachable = next((e for e in errors if is_unreachable(e)), None)
        if unreachable is not None or "unable connect" in str(record.msg).lower():
            OUTAGE.failed("kafka client", unreachable or "KafkaConnectionError")
            return False
        now = time.monotonic()
        key = (record.name, str(record.msg))
        last, dropped = self._last.get(key, (-self.every, 0))
        if now - last < self.every:
            self._last[key] = (last, dropped + 1)
            return False
        self._last[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in the last {self.every:.0f} s)"
        return True


def damp_kafka_client_logs(every: float = 60.0) -> None:
    """Route aiokafka's connection-error lines to the outage tracker and rate-limit its others (one filter on the
    ``aiokafka`` logger's handler path: added once, so ``configure_logging`` can run again)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _KafkaClientDamper) for f in handler.filters):
            handler.addFilter(_KafkaClientDamper(every))
