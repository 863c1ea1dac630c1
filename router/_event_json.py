"""Hand-built JSON for the five events every completed transfer emits: the bytes ``model_dump_json`` gives.

Building a pydantic event and serialising it cost about 10 us, five a transfer, a third of
the router's own CPU per transfer (py-spy). The five events of a completed transfer
(requested, validated, delivered, acknowledged, source-closed) are written here from
a template instead, in the model's field order and pydantic's JSON format, byte for byte
(``tests/test_router_event_json.py`` proves it over a range of inputs).

A template is used only when it cannot differ from the model: every value the flow passes
that the model would validate (ids from a case system's receipt, rule ids, team and role
names) must be a plain string that needs neither escaping nor stripping and that the
model's pattern accepts (checked here with stricter, ASCII-only patterns), and the
transfer's ``requested_at`` an aware ``datetime`` whose offset is whole minutes. Anything else
returns ``None`` and the caller builds the model, which validates (and refuses) it as before.
The ids and enums that come from the transfer itself were validated when it was parsed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts import (
    CaseSystem,
    Council,
    Direction,
    ServiceLevel,
    SourceClosed,
    TransferAcknowledged,
    TransferDelivered,
    TransferMessage,
    TransferRequested,
    TransferValidated,
)

#: contracts' Identifier (``^[A-Za-z0-9][A-Za-z0-9._:\-]*$``, at most 128): nothing to escape or strip
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
#: contracts' RuleId, ASCII digits only (the model's pattern decides anything else)
_RULE_ID = re.compile(r"(?:G[1-4]|SW26-[0-9]+|SW22-[0-9]+|LU-[0-9]+|BA-[0-9]+|NS-[0-9]+|FFX-[0-9]+)")
#: printable ASCII without a quote or backslash (nothing JSON escapes), no whitespace at either end to strip
_TEXT = re.compile(r"[!#-\[\]-~](?:[ !#-\[\]-~]*[!#-\[\]-~])?")


def _identifier(value: Any) -> str | None:
    return f'"{value}"' if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None


def _text_or_null(value: Any) -> str | None:
    if value is None:
        return "null"
    return f'"{value}"' if isinstance(value, str) and _TEXT.fullmatch(value) else None


def _rule_ids(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(r, str) and _RULE_ID.fullmatch(r) for r in value):
        return None
    return "[" + ",".join(f'"{r}"' for r in value) + "]"


def _datetime_or_null(value: Any) -> str | None:
    """pydantic's JSON form of an aware datetime (``isoformat``, ``Z`` for UTC), ``null`` for None.

    None (build the model) for anything else: a naive time, a subclass, an offset that is not
    whole minutes (pydantic writes only its hours and minutes).
    """
    if value is None:
        return "null"
    if type(value) is not datetime:
        return None
    offset = value.utcoffset()
    if offset is None or offset % timedelta(minutes=1):
        return None
    text = value.isoformat()
    return f'"{text[:-6]}Z"' if not offset else f'"{text}"'


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def utc_text(micros: int) -> str:
    """pydantic's JSON form of ``utc_datetime(micros)``: ISO 8601, microseconds only when not zero, ``Z``.

    ``micros``: microseconds since the epoch (``time.time_ns() // 1000``). The whole
    second's text is kept from one call to the next (five events a transfer share it).
    """
    second, us = divmod(micros, 1_000_000)
    if second != _second[0]:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second[0] = second
    return f"{_second[1]}.{us:06d}Z" if us else f"{_second[1]}Z"


def utc_datetime(micros: int) -> datetime:
    """The aware UTC datetime of ``micros`` microseconds since the epoch (exact, no float rounding)."""
    second, us = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(second, UTC).replace(microsecond=us)


_REQUESTED = frozenset({"direction", "from_level", "to_level", "from_system", "to_system", "requested_at"})
_DELIVERED = frozenset({"target_system", "target_reference", "assigned_role", "rule_ids", "team", "urgent"})
_ACKNOWLEDGED = frozenset({"target_system", "target_reference"})
_SOURCE_CLOSED = frozenset({"source_system", "source_reference"})


def _requested(f: Mapping[str, Any]) -> str | None:
    if f.keys() != _REQUESTED:
        return None
    requested_at = _datetime_or_null(f["requested_at"])
    if requested_at is None:
        return None
    return (
        f',"direction":"{f["direction"].value}","from_level":"{f["from_level"].value}",'
        f'"to_level":"{f["to_level"].value}","from_system":"{f["from_system"].value}",'
        f'"to_system":"{f["to_system"].value}","requested_at":{requested_at}'
    )


def _validated(f: Mapping[str, Any]) -> str | None:
    return "" if not f else None


def _delivered(f: Mapping[str, Any]) -> str | None:
    if f.keys() != _DELIVERED:
        return None
    ref, role, rules, team = (
        _identifier(f["target_reference"]),
        _text_or_null(f["assigned_role"]),
        _rule_ids(f["rule_ids"]),
        _text_or_null(f["team"]),
    )
    urgent = f["urgent"]
    if ref is None or role is None or rules is None or team is None or not isinstance(urgent, bool):
        return None
    return (
        f',"target_system":"{f["target_system"].value}","target_reference":{ref},"assigned_role":{role},'
        f'"rule_ids":{rules},"team":{team},"urgent":{"true" if urgent else "false"}'
    )


def _acknowledged(f: Mapping[str, Any]) -> str | None:
    if f.keys() != _ACKNOWLEDGED:
        return None
    ref = _identifier(f["target_reference"])
    return None if ref is None else f',"target_system":"{f["target_system"].value}","target_reference":{ref}'


def _source_closed(f: Mapping[str, Any]) -> str | None:
    if f.keys() != _SOURCE_CLOSED:
        return None
    ref = _identifier(f["source_reference"])
    if ref is None:
        return None
    return f',"source_system":"{f["source_system"].value}","source_reference":{ref},"rule_ids":[]'


#: event class -> (its event_type, the template of the fields after event_type)
_TEMPLATES: dict[type[Any], tuple[str, Callable[[Mapping[str, Any]], str | None]]] = {
    TransferRequested: ("requested", _requested),
    TransferValidated: ("validated", _validated),
    TransferDelivered: ("delivered", _delivered),
    TransferAcknowledged: ("acknowledged", _acknowledged),
    SourceClosed: ("source-closed", _source_closed),
}
#: every field of each templated event, in the model's order: a template whose model has changed
#: (a field added, removed or moved) is not used, so the model builds that event until the template is updated
_HEAD_FIELDS = ("event_id", "transfer_id", "correlation_id", "council", "occurred_at", "event_type")
_TEMPLATE_FIELDS: dict[type[Any], tuple[str, ...]] = {
    TransferRequested: ("direction", "from_level", "to_level", "from_system", "to_system", "requested_at"),
    TransferValidated: (),
    TransferDelivered: ("target_system", "target_reference", "assigned_role", "rule_ids", "team", "urgent"),
    TransferAcknowledged: ("target_system", "target_reference"),
    SourceClosed: ("source_system", "source_reference", "rule_ids"),
}
_TEMPLATES = {k: t for k, t in _TEMPLATES.items() if tuple(k.model_fields) == _HEAD_FIELDS + _TEMPLATE_FIELDS[k]}
#: the fields that must be members of the model's enum (their ``.value`` goes in as it is)
_ENUM_FIELDS: dict[type[Any], tuple[tuple[str, type[Any]], ...]] = {
    TransferRequested: (
        ("direction", Direction),
        ("from_level", ServiceLevel),
        ("to_level", ServiceLevel),
        ("from_system", CaseSystem),
        ("to_system", CaseSystem),
    ),
    TransferDelivered: (("target_system", CaseSystem),),
    TransferAcknowledged: (("target_system", CaseSystem),),
    SourceClosed: (("source_system", CaseSystem),),
}


def event_type_of(kind: type[Any]) -> str:
    """The ``event_type`` an event class writes (its header on the events topic)."""
    known = _TEMPLATES.get(kind)
    return known[0] if known is not None else str(kind.model_fields["event_type"].default)


def transfer_head(transfer: TransferMessage) -> str | None:
    """The transfer's part of each of its events (transfer id, correlation id, council), or None if not plain.

    Built once a transfer; ``transfer`` is a validated transfer, checked again here all the same.
    """
    transfer_id, correlation_id = _identifier(transfer.transfer_id), _identifier(transfer.correlation_id)
    if transfer_id is None or correlation_id is None or type(transfer.council) is not Council:
        return None
    return f'"transfer_id":{transfer_id},"correlation_id":{correlation_id},"council":"{transfer.council.value}"'


def encode_event(
    kind: type[Any], event_id: str, head: str, occurred_at: str, fields: Mapping[str, Any]
) -> bytes | None:
    """``kind(event_id=..., transfer_id=..., ..., **fields).model_dump_json().encode()``, or None: build the model.

    ``head`` is ``transfer_head(transfer)``; ``event_id`` is an ``event_id()`` (a UUID's text);
    ``occurred_at`` is ``utc_text(micros)`` (the model gets ``utc_datetime(micros)``).
    """
    template = _TEMPLATES.get(kind)
    if template is None:
        return None
    event_type, rest = template
    for name, enum in _ENUM_FIELDS.get(kind, ()):
        if type(fields.get(name)) is not enum:
            return None  # not a member of the model's enum: let the model coerce or refuse it
    tail = rest(fields)
    if tail is None:
        return None
    return (
        f'{{"event_id":"{event_id}",{head},"occurred_at":"{occurred_at}","event_type":"{event_type}"{tail}}}'.encode()
    )
