"""Turning pydantic's validation errors into field / rule / message triples."""

from __future__ import annotations

import re

from pydantic import ValidationError

from ._events import FieldError

#: how the contract spells its fields: an unknown key spelled so (a typo, a field of another schema version) is named
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: what stands for any other unknown key: a key is the sender's input too (a child's name, an NHS number, a postcode)
UNKNOWN_FIELD = "(unknown field)"


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Name the field (dotted path) and the rule for each error; never echo the input value, nor an unknown key
    that is not spelled as a field name (``UNKNOWN_FIELD`` instead)."""
    out: list[FieldError] = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "extra_forbidden" and loc and not _FIELD_NAME.fullmatch(loc[-1]):
            loc[-1] = UNKNOWN_FIELD
        out.append(FieldError(field=".".join(loc) or "$", rule=err["type"], message=err["msg"]))
    return out
