"""Logs are JSON lines with a correlation id, and never carry personal data."""

from __future__ import annotations

import json

import pytest
import structlog

from casebridge.logs import configure_logging


@pytest.fixture(autouse=True)
def _reset_structlog() -> object:
    yield
    structlog.reset_defaults()


def test_personal_data_is_redacted_at_any_depth(capsys: pytest.CaptureFixture[str]) -> None:
    """Names, dates of birth, NHS numbers and notes never reach a log line, even nested."""
    configure_logging(json=True)
    structlog.get_logger("casebridge.test").warning(
        "careless_call",
        transfer_id="t-1",
        nhs_number="9990001235",
        payload={
            "child": {"given_name": "Robin"},
            "documents": [{"content": "private notes"}],
            "date_of_birth": "2016-04-09",
        },
    )
    line = capsys.readouterr().err.strip()
    assert not any(secret in line for secret in ("9990001235", "Robin", "private notes", "2016-04-09"))
    record = json.loads(line)
    assert ("careless_call", "t-1", "[redacted]") == (record["event"], record["correlation_id"], record["nhs_number"])
