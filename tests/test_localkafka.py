"""Tests for the Docker-free local Kafka broker (casebridge.localkafka)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

from casebridge.localkafka import (
    AlreadyRunning,
    JavaNotFound,
    KafkaError,
    LocalKafka,
    MavenNotFound,
    PortInUse,
)


def _free_ports(count: int) -> list[int]:
    """Ports nothing listens on, found by letting the OS pick them."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@pytest.fixture
def no_java_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory as the only PATH entry, and no JAVA_HOME."""
    bin_dir = tmp_path / "empty-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return bin_dir


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A socket listening on a free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[bytes] = []
    deadline = time.monotonic() + 30.0
    try:
        while len(received) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                received.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return received


def test_restart_keeps_produced_messages(tmp_path: Path) -> None:
    """Messages produced before a stop are read back after restarting the same home."""
    port, controller_port = _free_ports(2)
    kafka = LocalKafka(tmp_path / "kafka", port=port, controller_port=controller_port)
    topic = f"roundtrip-{uuid.uuid4().hex}"
    values = [f"message-{i}".encode() for i in range(10)]
    try:
        bootstrap = kafka.start()
        assert bootstrap == f"127.0.0.1:{port}"
        assert kafka.start() == bootstrap  # idempotent while running
        running = kafka.status()
        assert running.running and running.pid is not None
        assert running.bootstrap == bootstrap

        asyncio.run(_produce(bootstrap, topic, values))
        kafka.stop()
        stopped = kafka.status()
        assert not stopped.running and stopped.pid is None and stopped.bootstrap is None
        assert not (tmp_path / "kafka" / "kafka.pid").exists()

        assert kafka.start() == bootstrap
        assert asyncio.run(_consume(bootstrap, topic, len(values))) == values
    finally:
        kafka.stop()
    assert not kafka.status().running
    kafka.stop()  # idempotent once stopped


@pytest.mark.parametrize("busy", ["broker", "controller"])
def test_port_in_use_names_the_port(tmp_path: Path, listening_socket: socket.socket, busy: str) -> None:
    """start() refuses a port that already has a listener, naming it and --port."""
    taken = listening_socket.getsockname()[1]
    (other,) = _free_ports(1)
    if busy == "broker":
        kafka = LocalKafka(tmp_path, port=taken, controller_port=other)
    else:
        kafka = LocalKafka(tmp_path, port=other, controller_port=taken)
    with pytest.raises(PortInUse) as raised:
        kafka.start()
    assert raised.value.port == taken
    assert str(taken) in str(raised.value) and "--port" in str(raised.value)
    assert not (tmp_path / "kafka.pid").exists()
    assert not kafka.status().running


def test_java_not_found_says_how_to_install(tmp_path: Path, no_java_on_path: Path) -> None:
    """Without java on PATH, start() and ensure_jars() raise JavaNotFound with a fix."""
    kafka = LocalKafka(tmp_path / "kafka", jars_dir=tmp_path / "jars")
    for action in (kafka.start, kafka.ensure_jars):
        with pytest.raises(JavaNotFound) as raised:
            action()
        message = str(raised.value)
        assert "java" in message.lower() and "install" in message.lower()
        assert isinstance(raised.value, KafkaError)
    assert not (tmp_path / "kafka").exists()


def test_maven_not_found_when_jars_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With java but no mvn and no jars, ensure_jars() raises MavenNotFound naming the dir."""
    java = shutil.which("java")
    assert java is not None, "this test needs java installed"
    bin_dir = tmp_path / "java-only-bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(java)
    monkeypatch.setenv("PATH", str(bin_dir))
    jars = tmp_path / "jars"
    with pytest.raises(MavenNotFound) as raised:
        LocalKafka(tmp_path / "kafka", jars_dir=jars).ensure_jars()
    assert str(jars) in str(raised.value) and "mvn" in str(raised.value)


@contextlib.contextmanager
def fake_running_broker(home: Path, port: int) -> Iterator[str]:
    """A process that looks like ``home``'s running broker (its command line names kafka.Kafka and the home's
    properties, which advertise ``port``): no JVM needed to test what start() does with a running broker."""
    home = home.resolve()
    properties = home / "server.properties"
    properties.write_text(f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n", encoding="utf-8")
    sleeper = "import time; time.sleep(120)"
    process = subprocess.Popen([sys.executable, "-c", sleeper, "kafka.Kafka", str(properties)])
    (home / "kafka.pid").write_text(f"{process.pid}\n", encoding="utf-8")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def test_start_on_another_port_of_a_running_home_is_refused_only_when_exact(tmp_path: Path) -> None:
    """The home's broker runs at one address: start() returns it, start(exact=True) on another port refuses."""
    running, other = _free_ports(2)
    with fake_running_broker(tmp_path, running) as address:
        assert address == LocalKafka(tmp_path, port=other).start()
        assert address == LocalKafka(tmp_path, port=running).start(exact=True)
        with pytest.raises(AlreadyRunning) as raised:
            LocalKafka(tmp_path, port=other).start(exact=True)
    assert address in str(raised.value) and "--home" in str(raised.value) and "kafka stop" in str(raised.value)
    assert isinstance(raised.value, KafkaError)


def test_start_reports_each_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """progress gets a line for fetching the jars, formatting, starting and waiting (the steps themselves faked)."""
    port, controller = _free_ports(2)
    kafka = LocalKafka(tmp_path / "kafka", port=port, controller_port=controller, jars_dir=tmp_path / "jars")
    monkeypatch.setattr("casebridge.localkafka._find_java", lambda: "java")
    monkeypatch.setattr(kafka, "ensure_jars", lambda: tmp_path / "jars")
    monkeypatch.setattr(kafka, "_format_storage", lambda java, jars: None)
    monkeypatch.setattr(kafka, "_launch", lambda java, jars: None)
    monkeypatch.setattr(kafka, "_wait_until_ready", lambda process, timeout: None)
    lines: list[str] = []
    assert kafka.bootstrap == kafka.start(timeout=9, progress=lines.append)
    assert [line.split(" ", 1)[0] for line in lines] == ["fetching", "formatting", "starting", "waiting"]
    assert str(tmp_path / "jars") in lines[0] and f"127.0.0.1:{port}" in lines[3] and "9 s" in lines[3]


def test_port_in_use_names_only_options_kafka_start_has(listening_socket: socket.socket) -> None:
    """The message's options (--port, --controller-port) are options of `casebridge kafka start`."""
    from typer.testing import CliRunner

    from casebridge.cli import app

    message = str(PortInUse(listening_socket.getsockname()[1], "broker"))
    options = {word.strip("`.,()") for word in message.split() if word.startswith(("--", "`--", "(--"))}
    assert {"--port", "--controller-port"} == options
    helped = CliRunner().invoke(app, ["kafka", "start", "--help"]).stdout
    assert all(option in helped for option in options)
    assert 1 == len(message.splitlines())
