"""``casebridge run`` builds its stack from CASEBRIDGE_* settings: TED and Care Director only where named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casebridge.stack import stack_from_settings
from connectors.care_director import CareDirectorConnector, CareDirectorPublisher
from connectors.ted import TedConnector, TedPublisher
from contracts import CaseSystem
from router import Settings

BASE = {
    "CASEBRIDGE_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never contacted: the stack is built, not started
    "CASEBRIDGE_LCS__URL": "http://127.0.0.1:1/lcs",
    "CASEBRIDGE_LCS__TOKEN": "t-lcs",
    "CASEBRIDGE_EHM__URL": "http://127.0.0.1:1/ehm",
    "CASEBRIDGE_EHM__TOKEN": "t-ehm",
}


def _settings(monkeypatch: pytest.MonkeyPatch, **extra: str) -> Settings:
    for name in [n for n in os.environ if n.startswith("CASEBRIDGE_")]:
        monkeypatch.delenv(name)
    for name, value in {**BASE, **extra}.items():
        monkeypatch.setenv(name, value)
    return Settings()


async def test_ba15_run_builds_the_ted_publisher_and_connector_when_the_settings_name_ted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings(monkeypatch, CASEBRIDGE_TED__URL="http://127.0.0.1:1/ted", CASEBRIDGE_TED__TOKEN="t-ted")
    assert settings.ted is not None and "t-ted" not in repr(settings)  # the token never prints
    stack = stack_from_settings(settings, tmp_path)
    [publisher] = [p for p in stack.extra_publishers if isinstance(p, TedPublisher)]
    assert publisher.ted.base_url.startswith("http://127.0.0.1:1/ted")
    assert isinstance(stack.router.flow.targets[CaseSystem.TED], TedConnector)
    assert isinstance(stack.router.flow.sources[CaseSystem.TED], TedConnector)
    assert not [p for p in stack.extra_publishers if isinstance(p, CareDirectorPublisher)]
    assert CaseSystem.CARE_DIRECTOR not in stack.router.flow.targets
    await stack.stop()  # built, never started: closes its Kafka clients


async def test_sw22_10_run_builds_care_director_when_named_and_neither_without_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cd = _settings(
        monkeypatch, CASEBRIDGE_CARE_DIRECTOR__URL="http://127.0.0.1:1/cd", CASEBRIDGE_CARE_DIRECTOR__TOKEN="t-cd"
    )
    stack = stack_from_settings(cd, tmp_path)
    assert [CareDirectorPublisher] == [type(p) for p in stack.extra_publishers]
    assert isinstance(stack.router.flow.sources[CaseSystem.CARE_DIRECTOR], CareDirectorConnector)
    await stack.stop()

    plain = stack_from_settings(_settings(monkeypatch), tmp_path)  # a deployment without TED still starts
    assert [] == plain.extra_publishers
    assert CaseSystem.TED not in plain.router.flow.targets and CaseSystem.TED not in plain.router.flow.sources
    await plain.stop()


def test_run_needs_lcs_and_ehm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _settings(monkeypatch)
    settings.lcs = None
    with pytest.raises(ValueError, match="CASEBRIDGE_LCS__URL"):
        stack_from_settings(settings, tmp_path)
