"""``casebridge run`` builds its stack from CASEBRIDGE_* settings: TED and Care Director only where named."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from casebridge.stack import Stack, stack_from_settings
from connectors import TargetRefused
from connectors.care_director import CareDirectorConnector, CareDirectorPublisher
from connectors.ted import TedConnector, TedPublisher
from contracts import CaseSystem
from router import Settings
from router.settings import RetrySettings
from tests.support import TOKEN, Systems

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
    # one connector per use (each starts and stops its own HTTP client): none is shared by two users
    uses = [stack.router.flow.targets[CaseSystem.TED], stack.router.flow.sources[CaseSystem.TED], publisher.connector]
    assert 3 == len({id(c) for c in uses})
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


class _DyingFeed(TedPublisher):
    """A TED publisher whose feed answers something no retry can fix (a refusal that is not transient)."""

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def poll_once(self) -> int:
        raise TargetRefused("feed page refused for Jane Example", status=404)


async def test_a_loop_that_dies_stops_the_stack_and_says_which_without_its_message(
    systems: Systems, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, retry_settings: RetrySettings
) -> None:
    """A side loop (here TED's publisher) that dies is not left dead in a running process: the stack stops
    (``casebridge run`` exits 4 so its supervisor restarts it) and logs the loop and error class only."""
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
    )
    dying = _DyingFeed(
        TedConnector("http://127.0.0.1:1/ted", SecretStr(TOKEN)), kafka_bootstrap, "t", "d", tmp_path / "c"
    )
    stack = Stack(settings, systems.lcs.url, SecretStr(TOKEN), systems.ehm.url, SecretStr(TOKEN), tmp_path / "state",
                  extra_publishers=[dying])  # fmt: skip
    with capture_logs() as logs:
        async with stack:
            await asyncio.wait_for(stack.router.stopped.wait(), timeout=30)
    assert "_DyingFeed" == stack.failed
    [failed] = [e for e in logs if e["event"] == "loop_failed"]
    assert ("_DyingFeed", "TargetRefused") == (failed["loop"], failed["error_class"])
    assert "Jane" not in repr(logs)
