"""Every topic is created with its documented configuration, and ``casebridge run`` refuses a dead-letter topic
that would delete records (Kafka's default: 7 days), naming it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from router import Settings, Topics, build_router
from router.topics import DAY_MS, TopicMisconfigured, _configs


async def _settings_of(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await _configs(admin, names)
    finally:
        await admin.close()


async def _create(bootstrap: str, name: str, config: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1, topic_configs=config)])
    finally:
        await admin.close()


def _router(bootstrap: str, prefix: str) -> object:
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, group_id=f"{prefix}-router")
    return build_router(settings, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: MemorySource()})


async def test_g3_the_router_creates_dead_letters_parking_and_audit_kept_forever_and_state_compacted(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    router = _router(kafka_bootstrap, topic_prefix)
    await router.start()  # type: ignore[attr-defined]
    await router.stop()  # type: ignore[attr-defined]
    t = Topics(topic_prefix)
    names = [t.dead_letter, t.parking, t.audit, t.retry_state, t.history, t.transfers, t.events]
    for _ in range(50):  # a topic just created is described with its configuration a moment later
        found = await _settings_of(kafka_bootstrap, names)
        if found[t.dead_letter].get("retention.ms") == "-1" and found[t.history].get("cleanup.policy") == "compact":
            break
        await asyncio.sleep(0.2)
    assert ["-1", "-1", "-1"] == [found[n]["retention.ms"] for n in (t.dead_letter, t.parking, t.audit)]
    assert ["compact", "compact"] == [found[n]["cleanup.policy"] for n in (t.retry_state, t.history)]
    assert str(7 * DAY_MS) == found[t.transfers]["retention.ms"]
    assert str(365 * DAY_MS) == found[t.events]["retention.ms"]
    assert "1" == found[t.dead_letter]["min.insync.replicas"]  # a one-broker Kafka: 1 (3 brokers: 2)


async def test_g3_a_dead_letter_topic_with_seven_days_retention_is_refused_at_start(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    t = Topics(topic_prefix)
    await _create(kafka_bootstrap, t.dead_letter, {"retention.ms": str(7 * DAY_MS)})
    await _create(kafka_bootstrap, t.history, {"cleanup.policy": "delete"})
    router = _router(kafka_bootstrap, topic_prefix)
    with pytest.raises(TopicMisconfigured) as refused:
        await router.start()  # type: ignore[attr-defined]
    await router.stop()  # type: ignore[attr-defined]
    assert f"topic {t.dead_letter} has retention.ms=604800000 (7 days)" in str(refused.value)
    assert f"topic {t.history} has cleanup.policy=delete" in str(refused.value)


async def test_g3_casebridge_run_refuses_a_seven_day_dead_letter_topic_in_one_line(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    t = Topics(topic_prefix)
    await _create(kafka_bootstrap, t.dead_letter, {"retention.ms": str(7 * DAY_MS)})
    config = tmp_path / "barnsley.toml"
    config.write_text(
        f"""councils = ["barnsley"]
local_development = true
bootstrap_servers = "{kafka_bootstrap}"
topic_prefix = "{topic_prefix}"
state_dir = "{tmp_path / "state"}"
[systems.ted]
kind = "ted"
url = "http://127.0.0.1:1/ted"
token = {{ env = "TED_TOKEN" }}
[systems.mail]
kind = "mailbox"
host = "127.0.0.1"
username = "casebridge"
password = {{ env = "TED_TOKEN" }}
sender = "casebridge@barnsley.example"
mailboxes = {{ "barnsley" = "earlyhelp@barnsley.example" }}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASEBRIDGE_")}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "casebridge", "run", "--config", str(config)],
        env={**env, "TED_TOKEN": "ted-token-0123456789"}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 5 == done.returncode, done.stderr[-2000:]
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert f"refuses to start: topic {t.dead_letter} has retention.ms=604800000 (7 days)" in line
    assert "Traceback" not in done.stderr
