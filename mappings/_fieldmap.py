"""Declarative field mappings: a vendor record in, a canonical contract dict out.

A mapping file (TOML) is data, not code. Each ``[[field]]`` names a target path ``to``
(dotted; a trailing ``[]`` appends to a list) and exactly one source:

- ``from = "request.plan"``: the value at that path of the source document;
- ``value = ...``: a literal (any TOML value);
- ``template = ...``: a string, table or array whose strings starting with ``$`` are
  replaced by the value at that path (``"$child.id"``), recursively.

``values = { vendor_code = "canonical" }`` translates the resolved value through a table
(a value not in the table is an error naming it). ``optional = true`` skips the field
when any referenced source value is missing or null (otherwise a missing value is an
error naming the mapping, the field and the path).
Mappings are pure: no I/O beyond loading the file, no logging.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DATA_DIR = Path(__file__).parent / "data"


class MappingError(ValueError):
    """A mapping file is invalid, or a source record lacks a value the mapping needs; ``rule_ids``: rules broken."""

    def __init__(self, message: str, *, rule_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.rule_ids = rule_ids


class _Missing(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class FieldRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    to: str = Field(pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*(\[\])?$")
    from_: str | None = Field(default=None, alias="from")
    value: Any = None
    template: Any = None
    optional: bool = False
    values: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FieldRule:
        given = [n for n in ("from_", "value", "template") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of 'from', 'value' or 'template' is required")
        return self


class MappingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str
    target: str
    field: list[FieldRule] = Field(min_length=1)


_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,39}$")


def _named_value(target: str, value: Any) -> str:
    """The untranslatable value, where it is a code (a level, stage or reason code); never a child's data.

    Anything mapped into ``child.*`` is personal data (a gender code too), and anything that does not look like a
    short code may be free text: both are left unnamed.
    """
    text = str(value)
    if target.startswith("child.") or not _CODE.match(text):
        return "its value"
    return repr(text)


def _lookup(doc: Any, path: str) -> Any:
    cur = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            raise _Missing(path)
        cur = cur[part]
    return cur


def _render(template: Any, doc: Any) -> Any:
    if isinstance(template, str) and template.startswith("$"):
        return _lookup(doc, template[1:])
    if isinstance(template, dict):
        return {k: _render(v, doc) for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, doc) for v in template]
    return template


def _assign(out: dict[str, Any], path: str, value: Any) -> None:
    append = path.endswith("[]")
    parts = path.removesuffix("[]").split(".")
    cur = out
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    if append:
        cur.setdefault(parts[-1], []).append(value)
    else:
        cur[parts[-1]] = value


@dataclass(frozen=True)
class FieldMapping:
    """A loaded mapping: ``apply(source) -> dict`` ready for the target contract."""

    spec: MappingSpec
    origin: str

    def apply(self, source: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rule in self.spec.field:
            try:
                if rule.from_ is not None:
                    value = _lookup(source, rule.from_)
                elif rule.template is not None:
                    value = _render(rule.template, source)
                else:
                    value = copy.deepcopy(rule.value)
                if rule.values is not None:
                    if str(value) not in rule.values:
                        raise MappingError(
                            f"{self.origin}: field {rule.to!r} has no translation for {_named_value(rule.to, value)} "
                            f"(allowed: {', '.join(sorted(rule.values))})"
                        )
                    value = rule.values[str(value)]
            except _Missing as missing:
                if rule.optional:
                    continue
                raise MappingError(
                    f"{self.origin}: field {rule.to!r} needs source path {missing.path!r}, which is missing"
                ) from None
            _assign(out, rule.to, value)
        return out


def load_mapping(name_or_path: str | Path) -> FieldMapping:
    """Load ``mappings/data/<name>.toml`` (or a path); errors name the file and the field."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = DATA_DIR / f"{name_or_path}.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"{path.name}: {exc}") from exc
    try:
        spec = MappingSpec.model_validate(raw.get("mapping", {}) | {"field": raw.get("field", [])})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise MappingError(f"{path.name}: {problems}") from exc
    return FieldMapping(spec=spec, origin=path.name)
