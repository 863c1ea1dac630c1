"""Logs: a correlation id on every line, shaped personal data masked, and a full demo run leaks nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from casebridge.logs import RUN_ID, configure_logging


@pytest.fixture(autouse=True)
def _reset_structlog() -> object:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_every_line_has_a_correlation_id_bound_or_the_run_id(capsys: pytest.CaptureFixture[str]) -> None:
    """Inside a transfer's context lines carry its id without naming it; outside, the process's run id."""
    configure_logging(json=True)
    log = structlog.get_logger("casebridge.test")
    with structlog.contextvars.bound_contextvars(correlation_id="ns-42"):
        log.info("inside_a_transfer")
    log.info("router_started")
    first, second = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines())
    assert ("ns-42", RUN_ID) == (first["correlation_id"], second["correlation_id"])


def test_nhs_numbers_upns_postcodes_and_address_keys_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """Shaped personal data is masked inside any text (e.g. a library's error); address and note keys are redacted."""
    configure_logging(json=True)
    structlog.get_logger("casebridge.test").warning(
        "library_error",
        error="value 999 000 0018 for child A123456789012 at BS20 7AB rejected; also 9990001235",
        address_lines=["1 Example Street"],
        case_notes="private",
    )
    line = capsys.readouterr().err
    for secret in ["999 000 0018", "9990001235", "A123456789012", "BS20 7AB", "Example Street", "private"]:
        assert secret not in line


def test_full_demo_run_logs_no_child_names_dates_of_birth_or_nhs_numbers(kafka_bootstrap: str, tmp_path: Path) -> None:
    """`casebridge demo` on the session broker, logging at DEBUG: none of its synthetic children's data appears."""
    children = tmp_path / "children.jsonl"
    wrapper = (
        "import json, sys\n"
        "import casebridge.scenarios as s\n"
        "made = s.synthetic_child\n"
        "def recording(*a, **k):\n"
        "    child = made(*a, **k)\n"
        f"    with open({str(children)!r}, 'a') as f: f.write(json.dumps(child) + '\\n')\n"
        "    return child\n"
        "s.synthetic_child = recording\n"
        "from casebridge.cli import main\n"
        f"sys.argv = ['casebridge', 'demo', '--bootstrap', {kafka_bootstrap!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "CASEBRIDGE_LOG_LEVEL": "DEBUG"}
    done = subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    output = done.stdout + done.stderr
    assert 0 == done.returncode, output[-3000:]
    assert re.search(r"\b(\d+) of \1 cases ended as expected", done.stdout), done.stdout[-2000:]
    assert "transfer_received" in done.stderr  # the router's lines were captured
    made = [json.loads(line) for line in children.read_text().splitlines()]
    assert len(made) >= 7  # every council's cases made their synthetic children through this function
    secrets = {c[k] for c in made for k in ("given_name", "family_name", "date_of_birth", "nhs_number")}
    leaked = sorted(s for s in secrets if s in output)
    assert [] == leaked
