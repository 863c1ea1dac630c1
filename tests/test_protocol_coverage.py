"""Every rule id of PROTOCOLS.md is proved by a test named after it, or listed in the README as out of scope."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mappings import load_protocols

ROOT = Path(__file__).parent.parent
RULES = ROOT / "docs" / "PROTOCOLS.md"  # a copy: CI runs from a fresh clone where ../shared may not exist
SHARED = ROOT.parent / "shared" / "PROTOCOLS.md"
ID = re.compile(r"^- (G\d|SW26-\d+|SW22-\d+|LU-\d+|BA-\d+|NS-\d+) ", re.M)


def rule_ids(text: str) -> list[str]:
    return ID.findall(text)


def token(rule_id: str) -> str:
    """NS-7 -> ns07, SW22-7 -> sw22_07, LU-9 -> lu09, G1 -> g1 (as it appears in a test name)."""
    if rule_id.startswith("G"):
        return rule_id.lower()
    prefix, number = rule_id.lower().split("-")
    return f"{prefix}{'_' if prefix[-1].isdigit() else ''}{int(number):02d}"


def _test_names() -> set[str]:
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def out_of_scope() -> dict[str, str]:
    """docs/protocol-rules.md's "Rules outside what a middleware can check": ``- ID: reason`` lines."""
    text = (ROOT / "docs" / "protocol-rules.md").read_text()
    section = text.split("## Rules outside what a middleware can check", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^- ([A-Z0-9]+-?\d*): (.+)$", section, re.M)}


def test_the_rule_list_copy_matches_the_shared_one() -> None:
    """docs/PROTOCOLS.md is the shared rule list (checked when the shared folder is there)."""
    ids = rule_ids(RULES.read_text())
    assert 50 <= len(ids) and len(set(ids)) == len(ids)
    if SHARED.exists():
        assert rule_ids(SHARED.read_text()) == ids


def test_every_rule_is_tested_or_listed_out_of_scope_with_a_reason() -> None:
    """Each id appears in a test function name, or in docs/protocol-rules.md's out-of-scope list with a reason."""
    names = [f"_{n}_" for n in _test_names()]
    excluded = out_of_scope()
    missing = [
        rid
        for rid in rule_ids(RULES.read_text())
        if rid not in excluded and not any(f"_{token(rid)}_" in n for n in names)
    ]
    assert [] == missing
    assert all(len(reason) > 20 for reason in excluded.values())


def test_out_of_scope_rules_are_not_also_claimed_by_protocol_data() -> None:
    """A rule the README calls out of scope is not encoded in a protocol file (and vice versa)."""
    encoded = {rid for p in load_protocols().values() for rid in p.rule_ids}
    assert set() == encoded & set(out_of_scope())
