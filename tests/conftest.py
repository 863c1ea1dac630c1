"""Shared fixtures. The Kafka broker is real in every run, and never skipped:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (a broker someone already runs);
2. else testcontainers' Kafka when a Docker engine answers;
3. else casebridge's own local broker (Apache Kafka's jars from Maven Central, the
   machine's Java), started once for the session in a temporary home.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

#: the CLI's dead-letter index (casebridge/dlqindex.py) lives under XDG_STATE_HOME: the tests' (and the CLI
#: processes they start) go to a directory of this run, not the user's ~/.local/state
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="casebridge-test-state-")

from casebridge.localdeploy import free_port  # noqa: F401 (tests import it from here: outside the ephemeral range)
from casebridge.localkafka import temporary_broker
from casebridge.scenarios import EhmSandboxClient, LcsSandboxClient
from casebridge.stack import Stack
from router import Settings
from router.settings import RetrySettings
from sandboxes import create_ehm_app, create_lcs_app, serve
from tests.support import TOKEN, Systems


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False  # no engine to ask (and docker's client leaks a socket when it finds none)
    import docker

    try:
        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of a real Apache Kafka broker for this test session."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with temporary_broker(timeout=120) as bootstrap:
        yield bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic prefix (and consumer group) per test, so tests never share state."""
    return f"t-{uuid.uuid4().hex[:12]}"


# -- the sandbox case systems and a casebridge stack on them ---------------------------------


@pytest.fixture
def systems(tmp_path: Path) -> Iterator[Systems]:
    with (
        serve(create_lcs_app(tmp_path / "lcs.db", TOKEN), "127.0.0.1", 0) as lcs,
        serve(create_ehm_app(tmp_path / "ehm.db", TOKEN), "127.0.0.1", 0) as ehm,
    ):
        s = Systems(lcs, ehm, LcsSandboxClient(lcs.url, TOKEN), EhmSandboxClient(ehm.url, TOKEN))
        yield s
        s.lcs_client.close()
        s.ehm_client.close()


@pytest.fixture
def retry_settings() -> RetrySettings:
    """Quick in-process retries and short delayed tiers, so retry paths run in seconds."""
    return RetrySettings(attempts=2, initial_seconds=0.05, max_seconds=0.2, total_seconds=2.0, tiers=[3.0, 6.0])


@pytest.fixture
async def stack(
    systems: Systems, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, retry_settings: RetrySettings
) -> AsyncIterator[Stack]:
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
    )
    s = Stack(settings, tmp_path / "state", systems=systems.deployed(), loops=False)
    async with s:
        yield s
