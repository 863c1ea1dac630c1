"""The local broker secured (``casebridge kafka start --secure``), proven with raw aiokafka clients.

One secured broker for the module (temporary home, free ports): TLS with the generated CA, SASL
SCRAM-SHA-512 users, the StandardAuthorizer with the per-principal ACLs on this module's topic prefix.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
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
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]

from casebridge.localdeploy import free_port
from casebridge.localkafka import LocalKafka, SecurityMismatch
from casebridge.localkafka_secure import PRINCIPALS, TLS_CLOSE_SECONDS
from connectors import Receipt
from connectors.intake import IntakeServer, IntakeSettings
from connectors.kafka import KafkaConnection
from contracts import CaseSystem, wire
from router import topics as topic_setup
from router.allocations import AllocationAudit, MilestoneAudit
from router.closures import ClosurePlanner
from router.settings import ALLOCATION_AUDIT_PREFIX, Topics, TopicSettings
from tests.council_data import step_down, transfer
from tests.deployed import secured_cli

PREFIX = f"sec-{uuid.uuid4().hex[:8]}"
TOPICS = ("transfers", "events", "dlq", "audit", "parking", "retry.1", "pending-closures", "pending-notices", "remap")


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


def _as(broker: LocalKafka, principal: str) -> KafkaConnection:
    """The connection of ``principal`` as its ``[kafka]`` table gives it (password by file)."""
    files = broker.secure_files
    return KafkaConnection(
        bootstrap_servers=broker.bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username=principal,
        password_file=files.password_file(principal),
        ca_file=files.ca_file,
    )


@pytest.fixture(scope="module")
def intake_audit(broker: LocalKafka, topics: dict[str, str]) -> str:
    """``<prefix>.intake-audit``, created and checked as ``casebridge run`` does (router/topics.py: kept forever) by
    the router principal; one partition, so ``_records`` reads it all."""
    t = Topics(PREFIX)

    async def create() -> None:
        await topic_setup.prepare(_as(broker, "router"), t, 0, TopicSettings(partitions=1), {t.intake_audit})
        await asyncio.sleep(TLS_CLOSE_SECONDS)

    asyncio.run(create())
    return t.intake_audit


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


async def test_the_router_writes_intake_audit_but_not_audit_and_only_operator_and_monitor_read_it(
    broker: LocalKafka, topics: dict[str, str], intake_audit: str
) -> None:
    """The intake runs in ``casebridge run`` as the router principal: it may write ``<prefix>.intake-audit`` and
    still not ``<prefix>.audit``; nobody else may write the intake's audit; the operator and the monitor read it, as
    they read the audit topic, and the viewer and the publisher may not."""
    marker = f"intake audit by router {uuid.uuid4().hex[:8]}".encode()
    await _produce(broker, "router", intake_audit, marker)
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(broker, "router", topics["audit"], b"forged audit", idempotent=False)
    for principal in ("operator", "monitor", "publisher", "viewer"):
        with pytest.raises(TopicAuthorizationFailedError):
            await _produce(broker, principal, intake_audit, b"forged intake audit", idempotent=False)
    for principal in ("operator", "monitor"):
        assert marker in [r.value for r in await _records(broker, principal, intake_audit)], principal
    for principal in ("viewer", "publisher"):
        with pytest.raises(TopicAuthorizationFailedError):
            await _read(broker, principal, intake_audit)


async def test_a_secured_intake_post_as_the_router_principal_is_accepted_and_audited_on_intake_audit(
    broker: LocalKafka, topics: dict[str, str], intake_audit: str, tmp_path: Path
) -> None:
    """Luton's form tool posts to the intake of a secured deployment (the router principal's connection, as
    ``casebridge run`` gives it): 202 once the transfer and its audit record were acknowledged; the audit record is
    on ``<prefix>.intake-audit``, readable by the operator, and nothing was written to the audit topic."""
    token = "luton-fst-form-tool-" + "s" * 32
    settings = IntakeSettings.model_validate(
        {"host": "127.0.0.1", "port": 0, "callers": [{"name": "luton-fst-forms", "token": token, "council": "luton"}]}
    )
    doc = step_down("luton", 97)
    audits_before = len(await _records(broker, "operator", topics["audit"]))
    async with (
        IntakeServer(settings, _as(broker, "router"), Topics(PREFIX), tmp_path / "intake.sqlite3") as intake,
        httpx.AsyncClient(base_url=intake.url, timeout=60) as http,
    ):
        answer = await http.post("/api/transfers", json=doc, headers={"Authorization": f"Bearer {token}"})
    assert (202, "accepted") == (answer.status_code, answer.json().get("status")), answer.text
    found = [r for r in await _records(broker, "operator", intake_audit) if r.key == b"intake/luton-sd-97"]
    assert [("accepted", 202, "luton-fst-forms")] == [
        (a["outcome"], a["status"], a["caller"]) for a in (json.loads(r.value) for r in found)
    ]
    assert audits_before == len(await _records(broker, "operator", topics["audit"]))


def _cli_as(broker: LocalKafka, principal: str, *args: str) -> subprocess.CompletedProcess[str]:
    return secured_cli(broker, PREFIX, principal, *args)


async def _records(broker: LocalKafka, principal: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of partition 0 of ``topic`` now, as ``principal`` (read to the partition's end)."""
    consumer = AIOKafkaConsumer(
        group_id=None, auto_offset_reset="earliest", enable_auto_commit=False, **_options(broker, principal)
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        found: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + 30
        while await consumer.position(tp) < end and time.monotonic() < deadline:
            found += (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
        return found
    finally:
        await consumer.stop()


@pytest.mark.parametrize("principal", ["router", "publisher"])
async def test_a_replay_by_a_principal_that_may_not_write_its_audit_record_replays_nothing(
    broker: LocalKafka, topics: dict[str, str], principal: str
) -> None:
    """The router's principal may write the transfers topic but not the audit topic: its replay is refused in one
    line before anything reaches the transfers topic (the audit record is written first); the publisher's cannot
    even read the dead letters."""
    transfer_id = f"replay-{principal}-{uuid.uuid4().hex[:8]}"
    headers = [
        (wire.DLQ_TRANSFER_ID, transfer_id.encode()),
        (wire.DLQ_ORIGINAL_TOPIC, topics["transfers"].encode()),
        (wire.DLQ_STAGE, b"deliver"),
        (wire.DLQ_ERROR_CLASS, b"TargetRefused"),
    ]
    producer = AIOKafkaProducer(acks="all", **_options(broker, "router"))
    await producer.start()
    try:
        await producer.send_and_wait(topics["dlq"], b'{"transfer_id": "%s"}' % transfer_id.encode(), partition=0,
                                     headers=headers)  # fmt: skip
    finally:
        await producer.stop()
    refused = await asyncio.to_thread(_cli_as, broker, principal, "replay", "--transfer", transfer_id, "--no-index")
    assert (True, 1) == (refused.returncode in (1, 5), len(refused.stderr.splitlines())), refused.stderr
    assert refused.stderr.startswith("error: "), refused.stderr
    if principal == "router":  # it reads the dead letter, and is refused writing the audit record
        assert "refused principal 'router': not authorized" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and broker.secure_files.password(principal) not in refused.stderr
    replayed = [r for r in await _records(broker, "router", topics["transfers"]) if transfer_id.encode() in r.value]
    assert [] == replayed
    audit = [r for r in await _records(broker, "operator", topics["audit"]) if transfer_id.encode() in r.value]
    assert [] == audit


async def test_an_allocation_by_a_principal_that_may_not_write_its_audit_record_records_nothing(
    broker: LocalKafka, topics: dict[str, str]
) -> None:
    """The router's principal may write the pending closures but not the audit topic: its allocation is refused
    (the audit record is written first), and the closure waiting for it stays as it was."""
    planned = ClosurePlanner("t").plan(
        transfer(step_down("barnsley", 91)), ["BA-9"], Receipt(CaseSystem.MAILBOX, "M-91")
    )
    assert planned is not None and planned.due_at is None
    key = planned.transfer_id.encode()
    producer = AIOKafkaProducer(acks="all", **_options(broker, "router"))
    await producer.start()
    try:
        await producer.send_and_wait(topics["pending-closures"], planned.encode(), key=key, partition=0)
    finally:
        await producer.stop()
    refused = await asyncio.to_thread(
        _cli_as, broker, "router", "allocate", planned.transfer_id, "--worker", "A Madeup", "--organisation", "O"
    )
    assert (5, 1) == (refused.returncode, len(refused.stderr.splitlines())), refused.stderr
    assert refused.stderr.startswith("error: ") and "not authorized" in refused.stderr, refused.stderr
    pending = [r for r in await _records(broker, "router", topics["pending-closures"]) if r.key == key]
    assert [planned.encode()] == [r.value for r in pending]
    audit = [r for r in await _records(broker, "operator", topics["audit"]) if key in (r.key or b"")]
    assert [] == audit


@pytest.mark.parametrize("principal", ["router", "publisher", "viewer"])
async def test_a_forged_allocation_or_milestone_audit_record_is_refused_by_the_broker_and_nothing_is_due(
    broker: LocalKafka, topics: dict[str, str], principal: str
) -> None:
    """A recorded allocation or milestone is the signal only as an audit record, and only the operator and the
    monitor may write the audit topic: one forged by any other principal is refused by the ACL, so the audit topic
    holds nothing the closure scheduler or the notices step could act on for the closure waiting for it."""
    planned = ClosurePlanner("t").plan(
        transfer(step_down("barnsley", {"router": 92, "publisher": 93, "viewer": 94}[principal])),
        ["BA-9"],
        Receipt(CaseSystem.MAILBOX, "M-92"),
    )
    assert planned is not None and planned.due_at is None
    tid = planned.transfer_id
    await _produce(broker, "router", topics["pending-closures"], planned.encode())
    now = datetime.now(UTC)
    allocation = AllocationAudit(
        operator="operator", at=now, transfer_id=tid, rule_id="BA-9", rule_ids=["BA-9"], council="barnsley",
        organisation="O", target_system=CaseSystem.MAILBOX, target_reference="M-92",
    )  # fmt: skip
    milestone = MilestoneAudit(
        operator="operator", at=now, transfer_id=tid, milestone="meeting-held", council="barnsley", rule_ids=["BA-9"]
    )
    forged = [
        (f"{ALLOCATION_AUDIT_PREFIX}{tid}".encode(), allocation.model_dump_json().encode()),
        (milestone.key, milestone.model_dump_json().encode()),
    ]
    producer = AIOKafkaProducer(acks="all", enable_idempotence=False, request_timeout_ms=15000,
                                **_options(broker, principal))  # fmt: skip
    await producer.start()
    try:
        for key, value in forged:
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait(topics["audit"], value, key=key, partition=0)
    finally:
        await producer.stop()
    audit = [r for r in await _records(broker, "operator", topics["audit"]) if tid.encode() in (r.key or b"")]
    assert [] == audit


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
