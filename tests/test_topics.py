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
from router.settings import TopicSettings
from router.topics import DAY_MS, TopicMisconfigured, _configs, prepare


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
    names = [t.dead_letter, t.parking, t.audit, t.intake_audit, t.retry_state, t.history, t.transfers, t.events]
    for _ in range(50):  # a topic just created is described with its configuration a moment later
        found = await _settings_of(kafka_bootstrap, names)
        if found[t.dead_letter].get("retention.ms") == "-1" and found[t.history].get("cleanup.policy") == "compact":
            break
        await asyncio.sleep(0.2)
    kept = (t.dead_letter, t.parking, t.audit, t.intake_audit)
    assert [("-1", "-1", "delete")] * 4 == [
        (found[n]["retention.ms"], found[n]["retention.bytes"], found[n]["cleanup.policy"]) for n in kept
    ]
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


async def test_g3_a_compacted_or_size_bounded_dead_letter_parking_or_audit_topic_is_refused_at_start(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Compaction keeps one record per key and ``retention.bytes`` deletes the oldest past a size: either would
    lose dead letters, parked messages or the audit trail, so each is refused in one line naming topic and setting."""
    t = Topics(topic_prefix)
    await _create(kafka_bootstrap, t.dead_letter, {"cleanup.policy": "compact,delete", "retention.ms": "-1"})
    await _create(kafka_bootstrap, t.parking, {"retention.ms": "-1", "retention.bytes": "1048576"})
    await _create(kafka_bootstrap, t.audit, {"cleanup.policy": "compact"})
    await _create(kafka_bootstrap, t.intake_audit, {"retention.ms": str(7 * DAY_MS)})
    for _ in range(50):  # a topic just created is described with its configuration a moment later
        if "compact" == (await _settings_of(kafka_bootstrap, [t.audit])).get(t.audit, {}).get("cleanup.policy"):
            break
        await asyncio.sleep(0.2)
    with pytest.raises(TopicMisconfigured) as refused:
        await prepare(kafka_bootstrap, t, 1, TopicSettings())
    message = str(refused.value)
    assert 1 == len(message.splitlines())
    assert f"topic {t.dead_letter} has cleanup.policy=compact,delete" in message
    assert f"topic {t.parking} has retention.bytes=1048576" in message
    assert f"topic {t.audit} has cleanup.policy=compact" in message
    assert f"topic {t.intake_audit} has retention.ms=604800000 (7 days)" in message
    found = await _settings_of(kafka_bootstrap, [t.parking])
    assert "1048576" == found[t.parking]["retention.bytes"]  # refused, not altered


async def test_fewer_brokers_than_the_replication_factor_are_refused_outside_local_development(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A one-broker cluster under a council's deployment (no ``local_development``) is refused, naming
    ``[topics] replication_factor``, unless that is set; a factor larger than the cluster is refused too; nothing
    is created when refused. A local development deployment fits the factor to the cluster."""
    t = Topics(topic_prefix)
    council = TopicSettings().with_fitted_replication(False)
    with pytest.raises(TopicMisconfigured) as refused:
        await prepare(kafka_bootstrap, t, 1, council)
    assert "the cluster has 1 broker(s), fewer than the default replication factor 3" in str(refused.value)
    assert "set [topics] replication_factor = 1 to accept that" in str(refused.value)
    with pytest.raises(TopicMisconfigured, match=r"\[topics\] replication_factor = 2 but the cluster has 1"):
        await prepare(kafka_bootstrap, t, 1, TopicSettings(replication_factor=2).with_fitted_replication(False))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert [] == [n for n in await admin.list_topics() if n.startswith(f"{topic_prefix}.")]
    finally:
        await admin.close()
    await prepare(kafka_bootstrap, t, 1, TopicSettings(replication_factor=1).with_fitted_replication(False))
    await prepare(kafka_bootstrap, t, 1, TopicSettings())  # local development: fitted to the cluster


def test_a_deployment_file_fits_replication_only_when_it_says_local_development(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from casebridge.deployment import load

    body = BARNSLEY_FILE.format(state=tmp_path / "state")
    local, council = tmp_path / "local.toml", tmp_path / "council.toml"
    local.write_text("local_development = true\n" + body)
    council.write_text(body)
    monkeypatch.setenv("TED_TOKEN", "ted-token-0123456789")
    assert (True, False) == (
        load(local).settings.topic_config.fit_replication,
        load(council).settings.topic_config.fit_replication,
    )


BARNSLEY_FILE = """councils = ["barnsley"]
bootstrap_servers = "127.0.0.1:9092"
topic_prefix = "t-fit"
state_dir = "{state}"
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
