"""The local broker secured (``casebridge kafka start --secure``), proven with raw aiokafka clients.

One secured broker for the module (temporary home, free ports): TLS with the generated CA, SASL
SCRAM-SHA-512 users, the StandardAuthorizer with the per-principal ACLs on this module's topic prefix.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.client import AIOKafkaClient  # type: ignore[import-untyped]
from aiokafka.conn import create_conn  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from casebridge.localdeploy import free_port
from casebridge.localkafka import LocalKafka, SecurityMismatch
from casebridge.localkafka_secure import PRINCIPALS, TLS_CLOSE_SECONDS

PREFIX = f"sec-{uuid.uuid4().hex[:8]}"
TOPICS = ("transfers", "events", "dlq", "audit", "parking", "retry.1")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    home = tmp_path_factory.mktemp("secure-kafka")
    port = free_port()
    controller = free_port()
    while controller == port:
        controller = free_port()
    kafka = LocalKafka(home, port=port, controller_port=controller, secure=True, topic_prefix=PREFIX)
    kafka.start(timeout=180)
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(autouse=True)
async def _tls_closed() -> AsyncIterator[None]:
    """Let every TLS connection a test closed finish its close_notify before the test's loop is closed:
    a transport still closing when the loop goes is an unclosed socket, reported in a later test."""
    yield
    await asyncio.sleep(TLS_CLOSE_SECONDS)


@pytest.fixture(scope="module")
def topics(broker: LocalKafka) -> dict[str, str]:
    """This module's topics, created by the router principal (its ACLs allow it to create them)."""
    names = {t: f"{PREFIX}.{t}" for t in TOPICS}

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap, **broker.secure_files.client_options("router"))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names.values()])
        finally:
            await admin.close()
            await asyncio.sleep(TLS_CLOSE_SECONDS)  # asyncio.run would close the loop under TLS's close_notify

    asyncio.run(create())
    return names


def _options(broker: LocalKafka, principal: str, password: str | None = None) -> dict[str, Any]:
    return {"bootstrap_servers": broker.bootstrap, **broker.secure_files.client_options(principal, password)}


async def _produce(broker: LocalKafka, principal: str, topic: str, value: bytes, *, idempotent: bool = True) -> None:
    """Write ``value`` as ``principal``; ``idempotent=False`` for a refusal by the topic's ACL alone
    (an idempotent producer of a principal with no Write anywhere is refused its producer id first)."""
    options = _options(broker, principal)
    producer = AIOKafkaProducer(acks="all", enable_idempotence=idempotent, request_timeout_ms=15000, **options)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def _read(broker: LocalKafka, principal: str, topic: str, group: str | None = None) -> list[bytes]:
    """Every record of partition 0 of ``topic`` as ``principal`` (through ``group`` if given)."""
    consumer = AIOKafkaConsumer(
        group_id=group, auto_offset_reset="earliest", enable_auto_commit=False, **_options(broker, principal)
    )
    await consumer.start()
    try:
        if group is None:
            consumer.assign([TopicPartition(topic, 0)])
        else:
            consumer.subscribe([topic])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while not values and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            # without Describe on the topic the broker hides it: aiokafka logs that and fetches nothing
            if topic in consumer._client.cluster.unauthorized_topics:
                raise TopicAuthorizationFailedError(topic)
            values += [record.value for records in batches.values() for record in records]
        if group is not None:
            await consumer.commit()
        return values
    finally:
        await consumer.stop()


async def test_the_router_principal_produces_and_consumes_over_sasl_ssl(
    broker: LocalKafka, topics: dict[str, str]
) -> None:
    value = f"transfer-{uuid.uuid4().hex}".encode()
    await _produce(broker, "router", topics["transfers"], value)
    assert value in await _read(broker, "router", topics["transfers"], group=f"{PREFIX}-router")
    # the events topic too: the router is the one that writes it
    event = f"event-{uuid.uuid4().hex}".encode()
    await _produce(broker, "router", topics["events"], event)
    assert event in await _read(broker, "router", topics["events"])


async def test_the_viewer_reads_events_but_is_refused_the_dlq_and_transfers(
    broker: LocalKafka, topics: dict[str, str]
) -> None:
    marker = f"viewer-{uuid.uuid4().hex}".encode()
    await _produce(broker, "router", topics["events"], marker)
    await _produce(broker, "router", topics["dlq"], b"dead letter")
    assert marker in await _read(broker, "viewer", topics["events"])
    for topic in (topics["dlq"], topics["transfers"], topics["parking"]):
        with pytest.raises(TopicAuthorizationFailedError):
            await _read(broker, "viewer", topic)


@pytest.mark.parametrize("principal", ["operator", "viewer", "publisher", "monitor"])
async def test_only_the_router_reads_the_transfers_and_retry_tiers(
    broker: LocalKafka, topics: dict[str, str], principal: str
) -> None:
    await _produce(broker, "router", topics["retry.1"], b"a transfer waiting to retry")
    for topic in (topics["transfers"], topics["retry.1"]):
        with pytest.raises(TopicAuthorizationFailedError):
            await _read(broker, principal, topic)
    assert b"a transfer waiting to retry" in await _read(broker, "router", topics["retry.1"])


@pytest.mark.parametrize("principal", ["operator", "viewer", "publisher", "monitor"])
async def test_a_principal_that_is_not_the_router_is_refused_writing_events(
    broker: LocalKafka, topics: dict[str, str], principal: str
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(broker, principal, topics["events"], b"forged front-door-decision", idempotent=False)


async def test_only_the_operator_and_the_monitor_write_audit_and_the_publisher_writes_transfers_only(
    broker: LocalKafka, topics: dict[str, str]
) -> None:
    for principal in ("operator", "monitor"):
        await _produce(broker, principal, topics["audit"], f"audit by {principal}".encode())
    for principal in ("router", "publisher", "viewer"):
        with pytest.raises(TopicAuthorizationFailedError):
            await _produce(broker, principal, topics["audit"], b"forged audit", idempotent=False)
    await _produce(broker, "publisher", topics["transfers"], b"published")
    for topic in (topics["transfers"], topics["dlq"]):
        with pytest.raises(TopicAuthorizationFailedError):
            await _read(broker, "publisher", topic)


async def test_a_wrong_password_is_refused(broker: LocalKafka) -> None:
    files = broker.secure_files
    accepted = await create_conn("127.0.0.1", broker.port, **files.client_options("router"))
    accepted.close()
    with pytest.raises(SaslAuthenticationFailed):
        await create_conn("127.0.0.1", broker.port, **files.client_options("router", password="not-the-password"))
    # nor is one principal's password another's
    with pytest.raises(SaslAuthenticationFailed):
        await create_conn("127.0.0.1", broker.port, **files.client_options("router", files.password("viewer")))


async def test_plaintext_reaches_neither_listener(broker: LocalKafka) -> None:
    client = AIOKafkaClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        await client.bootstrap()
    await client.close()
    # the controller listener: TLS with the CA's client certificate only; a client without one is refused
    tls_only = AIOKafkaClient(
        bootstrap_servers=f"127.0.0.1:{broker.controller_port}",
        security_protocol="SSL",
        ssl_context=broker.secure_files.ssl_context(),
        request_timeout_ms=5000,
    )
    with pytest.raises(KafkaConnectionError):
        await tls_only.bootstrap()
    await tls_only.close()


def test_each_principal_has_a_kafka_table_and_a_private_password_file(broker: LocalKafka) -> None:
    files = broker.secure_files
    for principal in PRINCIPALS:
        table = tomllib.loads(files.settings_file(principal).read_text(encoding="utf-8"))["kafka"]
        assert {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "username": principal,
            "password": {"file": str(files.password_file(principal))},
            "ca_file": str(files.ca_file),
        } == table
        assert Path(table["password"]["file"]).is_absolute()
        assert 0o600 == stat.S_IMODE(os.stat(table["password"]["file"]).st_mode)
        assert len(files.password(principal)) >= 32
    assert len({files.password(p) for p in PRINCIPALS}) == len(PRINCIPALS)
    assert 0o600 == stat.S_IMODE(os.stat(broker.home / "server.properties").st_mode)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_cli_says_it_runs_secured_prints_the_tables_and_refuses_a_plain_start(broker: LocalKafka) -> None:
    home, port = str(broker.home), str(broker.port)
    status = _cli("kafka", "status", "--home", home, "--port", port)
    assert 0 == status.returncode, status.stderr
    assert f"running at {broker.bootstrap}" in status.stdout
    assert "secured: SASL_SSL, SCRAM-SHA-512" in status.stdout

    ports = ("--port", port, "--controller-port", str(broker.controller_port))
    started = _cli("kafka", "start", "--secure", "--home", home, *ports, "--prefix", PREFIX)
    assert 0 == started.returncode, started.stderr
    assert broker.bootstrap == started.stdout.splitlines()[0]
    for principal in PRINCIPALS:
        assert broker.secure_files.client_table(principal) in started.stdout
    assert not any(broker.secure_files.password(p) in started.stdout + started.stderr for p in PRINCIPALS)

    plain = _cli("kafka", "start", "--home", home, *ports)
    assert 2 == plain.returncode
    assert [f"error: {SecurityMismatch(broker.home, True).summary}"] == plain.stderr.splitlines()
    assert "--secure" in plain.stderr and "--home" in plain.stderr


def test_a_home_formatted_plaintext_is_refused_a_secured_start(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.properties").write_text("version=1\n", encoding="utf-8")  # as a plain format leaves it
    kafka = LocalKafka(tmp_path, port=free_port(), secure=True)
    with pytest.raises(SecurityMismatch, match="formatted plaintext") as refused:
        kafka.start(timeout=5)
    assert "--home" in refused.value.summary
    assert not (tmp_path / "secure").exists()
    assert not kafka.status().running
