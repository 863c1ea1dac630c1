"""The secured tier: a council deployed over SASL_SSL with ACLs on (``casebridge kafka start --secure``).

North Somerset on its sandboxes, ``casebridge run --config FILE`` as a subprocess with the router principal's
``[kafka]`` table (as ``kafka start --secure`` prints it) and no ``local_development``; the operator's CLI with
the operator principal (``CASEBRIDGE_KAFKA__*``); the test watches the events topic as the viewer. A step-down
is delivered, a dead letter replayed by the operator completes, and the ACLs hold: the viewer is refused the
dlq, a principal that is not the router is refused writing the events topic.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import TopicAuthorizationFailedError  # type: ignore[import-untyped]

from casebridge.dlqindex import default_path
from casebridge.localdeploy import (
    Events,
    RunningDeployment,
    Sandboxes,
    deployment_file,
    free_port,
    sandboxes,
)
from casebridge.localkafka import LocalKafka
from casebridge.scenarios import EhmSandboxClient, LcsSandboxClient
from connectors import kafka as clients
from connectors.kafka import KafkaConnection
from router.settings import Topics
from tests.deployed import QUICK_RETRY, secured_cli, types

PREFIX = f"sd-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    home = tmp_path_factory.mktemp("secured-deployment-kafka")
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


def _operator_cli(broker: LocalKafka, principal: str, *args: str) -> subprocess.CompletedProcess[str]:
    return secured_cli(broker, PREFIX, principal, *args)


@dataclass
class Deployed:
    systems: Sandboxes
    run: RunningDeployment


@pytest.fixture(scope="module")
def deployed(broker: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """North Somerset on LCS and EHM sandboxes, ``casebridge run`` with the router principal, no local_development."""
    work = tmp_path_factory.mktemp("secured-deployment")
    with sandboxes(work / "systems", ["lcs", "ehm"]) as systems:
        text, env = deployment_file(
            "north-somerset", systems, bootstrap=broker.bootstrap, prefix=PREFIX, state_dir=work / "state",
            retry=QUICK_RETRY,
        )  # fmt: skip
        lines = [line for line in text.splitlines() if not line.startswith("local_development")]
        assert len(lines) == len(text.splitlines()) - 1  # a deployment like a council's: no local_development
        config = work / "north-somerset.toml"
        # one broker: a council's deployment must say it accepts one copy of each record
        topics = "[topics]\nreplication_factor = 1\n"
        config.write_text("\n".join(lines) + "\n\n" + broker.secure_files.client_table("router") + "\n" + topics)
        run = RunningDeployment(config, env, work / "casebridge-run.log").start(timeout=180)
        try:
            yield Deployed(systems, run)
        finally:
            code = run.stop()
            assert 0 == code, run.output()[-3000:]


async def _dead_letter(d: Deployed, lcs: LcsSandboxClient, ehm: EhmSandboxClient, events: Events) -> tuple[str, str]:
    """A step-down EHM refuses (a 4xx): dead-lettered at once, its LCS record open; (transfer id, child id)."""
    ehm.inject_fault(status=400, path_prefix="/api/stepdown-tray/")
    child = lcs.create_child(locality="North")
    held = f"north-somerset-lcs-{lcs.request_stepdown(child)}".lower()
    by = await events.until({held: "dead-lettered"}, timeout=120)
    assert "dead-lettered" in types(by.get(held, [])), d.run.output()[-3000:]
    assert "open" == lcs.child(child)["record_state"]
    return held, child


async def test_secured_deployment_delivers_a_step_down_and_the_operator_replays_a_dead_letter(
    broker: LocalKafka, deployed: Deployed
) -> None:
    d = deployed
    lcs = LcsSandboxClient(d.systems.urls["lcs"], d.systems.token)
    ehm = EhmSandboxClient(d.systems.urls["ehm"], d.systems.token)
    events = Events(_as(broker, "viewer"), f"{PREFIX}.events")  # the viewer may read the events
    try:
        # a step-down delivered to EHM's tray and the LCS record closed, over SASL_SSL with ACLs on
        good_child = lcs.create_child(locality="North")
        good = f"north-somerset-lcs-{lcs.request_stepdown(good_child)}".lower()
        by = await events.until({good: "source-closed"}, timeout=120)
        assert {"delivered", "acknowledged", "source-closed"} <= set(types(by.get(good, []))), d.run.output()[-3000:]
        assert good in [i["transfer_id"] for i in ehm.tray()]
        assert "closed" == lcs.child(good_child)["record_state"]

        held, held_child = await _dead_letter(d, lcs, ehm, events)
        listed = _operator_cli(broker, "operator", "dlq", "list", "--transfer", held)
        assert 0 == listed.returncode, listed.stderr
        assert held in listed.stdout and "TargetRefused" in listed.stdout

        # the viewer is refused the dlq, through the CLI and a client of its own
        viewer = _operator_cli(broker, "viewer", "dlq", "list")
        assert 0 != viewer.returncode
        assert 1 == len(viewer.stderr.splitlines()) and viewer.stderr.startswith("error: "), viewer.stderr
        assert "TopicAuthorizationFailedError" in viewer.stderr and "Traceback" not in viewer.stderr
        assert "refused principal 'viewer': not authorized" in viewer.stderr and "retry" not in viewer.stderr
        # the operator's index of the dead letters is the operator's: the viewer pointed at that very file is refused
        # by the broker (the index fetches once even when it has nothing new), not answered from it
        operators = default_path(_as(broker, "operator"), Topics(PREFIX))
        assert operators.exists()
        cached = _operator_cli(broker, "viewer", "dlq", "list", "--index", str(operators))
        assert 0 != cached.returncode and "TopicAuthorizationFailedError" in cached.stderr, cached.stdout
        assert held not in cached.stdout
        # a replay or an allocation by a principal without the operator's ACLs is refused, writing nothing
        for args in (("replay", "--transfer", held), ("allocate", held, "--worker", "A Madeup", "--organisation", "O")):
            refused = _operator_cli(broker, "viewer", *args)
            assert (True, 1) == (refused.returncode in (2, 5), len(refused.stderr.splitlines())), refused.stderr
            assert refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
        consumer = clients.consumer(_as(broker, "viewer"), group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(f"{PREFIX}.dlq", 0)])
            with pytest.raises(TopicAuthorizationFailedError):
                for _ in range(30):
                    await consumer.getmany(timeout_ms=1000)
        finally:
            await consumer.stop()

        # the cause fixed, the operator replays it, as the principal Kafka authenticated; the transfer completes
        ehm.clear_faults()
        other = _operator_cli(broker, "operator", "replay", "--operator", "ops-tester", "--transfer", held)
        assert 2 == other.returncode and "--operator 'ops-tester' is not the principal" in other.stderr
        replayed = _operator_cli(broker, "operator", "replay", "--transfer", held)
        assert 0 == replayed.returncode, replayed.stderr
        by = await events.until({held: "source-closed"}, timeout=120)
        assert "source-closed" in types(by.get(held, [])), d.run.output()[-3000:]
        assert {good, held} <= {i["transfer_id"] for i in ehm.tray()}
        assert "closed" == lcs.child(held_child)["record_state"]
        audit = await _read_all(_as(broker, "operator"), f"{PREFIX}.audit")
        assert [("operator", held)] == [
            (a["operator"], a["transfer_id"]) for a in audit if a.get("transfer_id") == held
        ]

        # no principal but the router writes the events topic: a forged event is refused
        for principal in ("operator", "monitor", "viewer", "publisher"):
            producer = clients.producer(_as(broker, principal), acks="all")
            await producer.start()
            try:
                with pytest.raises(TopicAuthorizationFailedError):
                    await producer.send_and_wait(f"{PREFIX}.events", b'{"event_type": "source-closed"}')
            finally:
                await producer.stop()
    finally:
        await events.stop()
        lcs.close()
        ehm.close()


async def _read_all(kafka: KafkaConnection, topic: str) -> list[dict[str, str]]:
    """Every JSON record of ``topic`` (partition 0 .. its end)."""
    consumer = clients.consumer(kafka, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # the cluster's metadata, for the topic's partitions
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[dict[str, str]] = []
        for _ in range(60):
            if all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                return found
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found += [json.loads(r.value) for r in records]
        raise TimeoutError(f"{topic} not read to its end in 60 s")
    finally:
        await consumer.stop()
