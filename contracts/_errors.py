"""Turning pydantic's validation errors into field / rule / message triples."""

from __future__ import annotations

from pydantic import ValidationError

from ._events import FieldError


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Name the field (dotted path) and the rule for each error; never echo the input value."""
    out: list[FieldError] = []
    for err in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "$"
        out.append(FieldError(field=path, rule=err["type"], message=err["msg"]))
    return out
