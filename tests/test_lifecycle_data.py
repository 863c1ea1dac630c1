"""#16 item 1: what becomes of a source record after delivery is protocol data, not code keyed by rule id.

A ``[[keep_open]]`` or ``[[closure]]`` entry with ``later = { on = ... }`` closes the record later, on a signal
(``allocated``, ``recorded``, ``accepted``) or at the rule's deadline in ``deadlines.toml`` (``due``); without it a
kept-open record stays open. The router's closure planner is built from the protocol files alone
(``router.closures.timings_of``), so a council's new closing step is a line of its file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from connectors import Receipt
from contracts import CaseSystem
from mappings import MappingError, Protocol, load_protocol, load_protocols
from mappings._protocol import PROTOCOL_DIR
from router.closures import ClosurePlanner, default_timings, timings_of
from tests.council_data import step_down, transfer

EXAMPLE = PROTOCOL_DIR / "families-first-example.toml"


def _protocol(tmp_path: Path, extra: str) -> Protocol:
    path = tmp_path / "families-first-example.toml"
    path.write_text(EXAMPLE.read_text(encoding="utf-8") + "\n" + extra, encoding="utf-8")
    return load_protocol(path)


def test_a_closing_step_added_to_a_protocol_file_is_planned_and_one_without_later_stays_open(tmp_path: Path) -> None:
    protocol = _protocol(
        tmp_path,
        """
[[keep_open]]
rule = "FFX-90"
applies_to = { direction = "step-down" }
later = { on = "allocated" }

[[keep_open]]
rule = "FFX-91"
applies_to = { direction = "step-down" }
""",
    )
    timings = timings_of([protocol])
    assert "FFX-90" in timings and "FFX-91" not in timings
    planner = ClosurePlanner("pending", timings)
    kept = transfer(step_down("north-somerset", 90))
    receipt = Receipt(CaseSystem.EHM, "EHM-90")
    planned = planner.plan(kept, ["FFX-90"], receipt)
    assert planned is not None
    assert ("FFX-90", "allocated", None) == (planned.rule_id, planned.trigger, planned.due_at)
    assert planner.plan(kept, ["FFX-91"], receipt) is None  # kept open for good


def test_a_closure_at_a_deadline_needs_the_rules_deadline(tmp_path: Path) -> None:
    protocol = _protocol(
        tmp_path,
        """
[[keep_open]]
rule = "FFX-92"
applies_to = { direction = "step-up" }
later = { on = "due", cancel_on_step_down = true }
""",
    )
    with pytest.raises(ValueError, match=r'FFX-92 closes later on = "due" but deadlines.toml has no deadline'):
        timings_of([protocol])


def test_a_later_that_names_no_known_signal_is_refused_at_load_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"later"):
        _protocol(
            tmp_path,
            """
[[keep_open]]
rule = "FFX-93"
applies_to = { direction = "step-up" }
later = { on = "someday" }
""",
        )


def test_the_shipped_closing_steps_come_from_the_protocol_files() -> None:
    """LU-4, SW22-10, BA-9 and NS-12 as the files say them: their triggers and flags are the files' ``later``."""
    from_files = {
        rule: (later.on, later.cancel_on_step_down, later.send_documents)
        for p in load_protocols().values()
        for rule, later in p.closes_later().items()
    }
    planned = {r: (t.trigger, t.cancel_on_step_down, t.send_documents) for r, t in default_timings().items()}
    assert from_files == planned
    assert {"LU-4", "SW22-10", "BA-9", "NS-12"} <= set(planned)
    assert planned["LU-4"][0] == "due" and default_timings()["LU-4"].after is not None  # deadlines.toml's 10 days


def test_no_rule_id_is_named_in_the_routers_code() -> None:
    """Rule ids appear in router/ only in docstrings and comments: behaviour keyed by rule id is data."""
    rule_id = re.compile(r"\b(?:LU|NS|SW|SW22|SW26|BA|FFX)-\d{1,2}\b")
    found = []
    for path in sorted(Path("router").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [f"{path}:{node.lineno}: {m}" for m in rule_id.findall(node.value)]
    assert found == []
