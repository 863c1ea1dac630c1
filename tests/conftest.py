"""Shared fixtures. The Kafka broker is real in every run, and never skipped:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (a broker someone already runs);
2. else testcontainers' Kafka when a Docker engine answers;
3. else casebridge's own local broker (Apache Kafka's jars from Maven Central, the
   machine's Java), started once for the session in a temporary home.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from casebridge.localkafka import LocalKafka


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    with tempfile.TemporaryDirectory(prefix="casebridge-kafka-") as home:
        broker = LocalKafka(Path(home), port=free_port(), controller_port=free_port())
        broker.start(timeout=120)
        try:
            yield broker.bootstrap
        finally:
            broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic prefix (and consumer group) per test, so tests never share state."""
    return f"t-{uuid.uuid4().hex[:12]}"
