"""A local single-node Apache Kafka broker that needs no Docker.

The broker runs in KRaft mode (one process that is both broker and controller) on the
machine's Java 17+. Its jars are fetched once from Maven Central with ``mvn``, using the
pinned release in ``casebridge/kafka/pom.xml``; later fetches come from the local Maven
cache (``~/.m2``). Everything the broker writes lives under one *home* directory::

    <home>/server.properties   broker configuration, rewritten on every start
    <home>/log4j2.yaml         logging configuration, rewritten on every start
    <home>/data/               topics and messages; formatted once, kept across restarts
    <home>/logs/server.log     the broker's own log (rotated)
    <home>/kafka.out           the JVM's stdout and stderr
    <home>/kafka.pid           process id while the broker runs
    <home>/secure/             secured mode only (``secure=True``): CA, broker keystore, passwords,
                               each principal's ``[kafka]`` table; see casebridge.localkafka_secure

Process control uses POSIX signals, so this module targets Linux and macOS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError as AIOKafkaError

from connectors import kafka as clients
from connectors.kafka import KafkaConnection

from .localkafka_secure import ADMIN, PRINCIPALS, TLS_CLOSE_SECONDS, SecureFiles, acl_grants, create_acls

__all__ = [
    "AlreadyRunning",
    "BrokerStartTimeout",
    "JavaNotFound",
    "KafkaError",
    "KafkaStatus",
    "LocalKafka",
    "MavenNotFound",
    "PortInUse",
    "SecurityMismatch",
    "default_home",
    "default_jars_dir",
    "kafka_version",
]

POM_PATH = Path(__file__).with_name("kafka") / "pom.xml"
HOST = "127.0.0.1"

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_MARKER_JAR_GLOB = "kafka_2.13-*.jar"
_LOG_TAIL_LINES = 40
_POLL_INTERVAL = 0.25
_MVN_TIMEOUT = 600.0
_FORMAT_TIMEOUT = 120.0
_SECURE_LISTENER = "CLIENT"  # the secured mode's one client listener (SASL_SSL)
_T = TypeVar("_T")
_STARTED_LINE = "] Kafka Server started"  # KafkaRaftServer's line once every listener serves

# Logging goes to a rotated file under <home>/logs; the directory is passed to the JVM as
# the system property kafka.logs.dir, so this text never needs path quoting.
_LOG4J2_YAML = """\
Configuration:
  Appenders:
    RollingFile:
      - name: ServerLog
        fileName: "${sys:kafka.logs.dir}/server.log"
        filePattern: "${sys:kafka.logs.dir}/server.log.%i"
        PatternLayout:
          pattern: "[%d] %p %m (%c)%n"
        SizeBasedTriggeringPolicy:
          size: 10MB
        DefaultRolloverStrategy:
          max: 3
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: ServerLog
    Logger:
      - name: org.apache.kafka.common.config.AbstractConfig
        level: WARN
      - name: kafka.request.logger
        level: WARN
      - name: state.change.logger
        level: WARN
      - name: kafka.log.LogCleaner
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
"""


# --------------------------------------------------------------------------- errors


class KafkaError(Exception):
    """The local Kafka broker could not be prepared, started or stopped.

    The first line of the message says what went wrong and what to do (``summary``); any further
    lines are details (a log tail, a tool's output).
    """

    @property
    def summary(self) -> str:
        """The message's first line: what went wrong and what to do."""
        return str(self).strip().splitlines()[0] if str(self).strip() else type(self).__name__


class JavaNotFound(KafkaError):
    """No ``java`` executable was found."""

    def __init__(self) -> None:
        super().__init__(
            "Java 17 or newer is needed to run the local Kafka broker, but no `java` was "
            "found on PATH or in $JAVA_HOME/bin. Install a JDK or JRE (for example "
            "`sudo apt-get install openjdk-17-jre-headless` on Debian/Ubuntu, "
            "`brew install openjdk@17` on macOS), make sure `java -version` works, "
            "then retry."
        )


class MavenNotFound(KafkaError):
    """The Kafka jars are missing and ``mvn`` is not available to fetch them."""

    def __init__(self, jars_dir: Path) -> None:
        self.jars_dir = jars_dir
        super().__init__(
            f"The Kafka {kafka_version()} jars are not in {jars_dir}, and Maven (`mvn`), "
            "which fetches them once, was not found on PATH. Install Maven (for example "
            "`sudo apt-get install maven` or `brew install maven`) and retry, or set "
            "CASEBRIDGE_KAFKA_JARS to a directory that already holds the jars."
        )


class PortInUse(KafkaError):
    """A port the broker needs is already taken by another program."""

    def __init__(self, port: int, listener: str) -> None:
        self.port = port
        self.listener = listener
        super().__init__(
            f"Port {port} on {HOST} (the Kafka {listener} listener) is already in use. "
            "Stop the program that holds it, or pick another --port (the controller "
            "listener takes the next port; `casebridge kafka start` also takes "
            "--controller-port), e.g. `casebridge kafka start --port 19092`."
        )


class BrokerStartTimeout(KafkaError):
    """The broker did not answer in time, or its process exited during start-up."""


class AlreadyRunning(KafkaError):
    """The broker of this home already runs, at another address than the one asked for."""

    def __init__(self, home: Path, bootstrap: str) -> None:
        self.home = home
        self.bootstrap = bootstrap
        super().__init__(
            f"A broker of home {home} already runs at {bootstrap}: stop it first "
            f"(`casebridge kafka stop --home {home}`) or start another with --home DIR."
        )


class SecurityMismatch(KafkaError):
    """The home was formatted secured and is started plain, or the reverse."""

    def __init__(self, home: Path, secured: bool) -> None:
        self.home = home
        self.secured = secured
        if secured:
            line = (
                f"The broker home {home} was formatted secured (--secure): start it with --secure, "
                "or use a fresh home (--home DIR) for a plaintext broker."
            )
        else:
            line = (
                f"The broker home {home} was formatted plaintext (without --secure): start it without "
                "--secure, or use a fresh home (--home DIR) for a secured broker."
            )
        super().__init__(line)


# --------------------------------------------------------------------------- defaults


@cache
def kafka_version() -> str:
    """The Kafka release pinned by ``<kafka.version>`` in ``casebridge/kafka/pom.xml``."""
    element = ET.parse(POM_PATH).getroot().find("m:properties/m:kafka.version", _POM_NS)
    if element is None or not (element.text or "").strip():
        raise KafkaError(f"{POM_PATH} has no <kafka.version> property.")
    return (element.text or "").strip()


def default_home() -> Path:
    """``$CASEBRIDGE_HOME/kafka`` if that variable is set, else ``~/.casebridge/kafka``."""
    base = os.environ.get("CASEBRIDGE_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".casebridge"
    return root / "kafka"


def default_jars_dir() -> Path:
    """``$CASEBRIDGE_KAFKA_JARS`` if set, else ``~/.casebridge/kafka-jars/<kafka version>``."""
    configured = os.environ.get("CASEBRIDGE_KAFKA_JARS")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".casebridge" / "kafka-jars" / kafka_version()


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class KafkaStatus:
    """A snapshot of the local broker: whether it runs, its process id and address."""

    running: bool
    pid: int | None
    bootstrap: str | None
    home: Path
    #: the broker runs secured (SASL_SSL, SCRAM-SHA-512, ACLs); client settings in ``<home>/secure``
    secure: bool = False


# --------------------------------------------------------------------------- manager


class LocalKafka:
    """Formats, starts, stops and reports on one local single-node Kafka broker."""

    def __init__(
        self,
        home: Path,
        port: int = 9092,
        controller_port: int | None = None,
        jars_dir: Path | None = None,
        heap_mb: int = 512,
        *,
        secure: bool = False,
        topic_prefix: str = "casebridge",
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.secure = secure
        #: the topic prefix the secured mode's ACLs are granted on at start (``grant`` adds others)
        self.topic_prefix = topic_prefix
        self.port = port
        self.controller_port = port + 1 if controller_port is None else controller_port
        self.jars_dir = (jars_dir or default_jars_dir()).expanduser()
        self.heap_mb = heap_mb
        for value in (self.port, self.controller_port):
            if not 0 < value < 65536:
                raise ValueError(f"Port {value} is outside 1-65535.")
        if self.port == self.controller_port:
            raise ValueError("The broker port and the controller port must differ.")
        if heap_mb < 128:
            raise ValueError("heap_mb must be at least 128.")
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # the broker log's size at the last launch

    # ----------------------------------------------------------------- paths

    @property
    def bootstrap(self) -> str:
        """The address clients connect to, ``127.0.0.1:<port>``."""
        return f"{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        """The broker's own log file."""
        return self.home / "logs" / "server.log"

    @property
    def _stdout_file(self) -> Path:
        return self.home / "kafka.out"

    @property
    def _pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def _properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def _log4j_file(self) -> Path:
        return self.home / "log4j2.yaml"

    @property
    def secure_files(self) -> SecureFiles:
        """The secured mode's CA, keystore, passwords and client tables (``<home>/secure``)."""
        return SecureFiles(self.home / "secure")

    def formatted_secure(self) -> bool | None:
        """Whether this home's storage was formatted secured; None if it is not formatted yet."""
        if not (self.data_dir / "meta.properties").exists():
            return None
        return self.secure_files.exists()

    def grant(self, topic_prefix: str, timeout: float = 30.0) -> None:
        """Create the secured mode's ACLs on ``topic_prefix``'s topics and groups (the broker must run)."""
        if not self.secure:
            raise KafkaError("ACLs are granted only on a secured broker (start it with secure=True / --secure).")
        address = self.status().bootstrap or self.bootstrap
        _in_fresh_loop(create_acls(address, self.secure_files, acl_grants(topic_prefix), timeout))

    # ----------------------------------------------------------------- public API

    def ensure_jars(self) -> Path:
        """Return the jars directory, fetching the pinned Kafka release with Maven if needed."""
        _find_java()
        if _has_kafka_jars(self.jars_dir):
            return self.jars_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise MavenNotFound(self.jars_dir)
        self.jars_dir.mkdir(parents=True, exist_ok=True)
        # Download beside the target, then move the jars in with the Kafka jar last: its
        # presence is what marks the directory complete, so an interrupted fetch is redone.
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=self.jars_dir) as tmp:
            command = [
                mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM_PATH),
                "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
            ]  # fmt: skip
            result = _run(command, timeout=_MVN_TIMEOUT, what="Maven")
            fetched = sorted(Path(tmp).glob("*.jar"), key=lambda p: p.match(_MARKER_JAR_GLOB))
            if not any(p.match(_MARKER_JAR_GLOB) for p in fetched):
                raise KafkaError(f"Maven finished but fetched no Kafka jar into {self.jars_dir}.\n{_tail_text(result)}")
            for jar in fetched:
                os.replace(jar, self.jars_dir / jar.name)
        return self.jars_dir

    def start(
        self, timeout: float = 60.0, *, exact: bool = False, progress: Callable[[str], None] | None = None
    ) -> str:
        """Start the broker unless it runs already; return its bootstrap address.

        If this home's broker already runs, its address is returned; with ``exact`` it must be
        this one's (``self.bootstrap``), else AlreadyRunning. Raises PortInUse before launching
        anything if a port is taken, and BrokerStartTimeout (with the tail of the broker log) if
        the broker does not answer a metadata request within ``timeout`` seconds or its process
        exits. ``progress`` is called with a line per step (fetching the jars, formatting, ...).
        """
        say = progress or (lambda _line: None)
        formatted = self.formatted_secure()
        if formatted is not None and formatted != self.secure:
            raise SecurityMismatch(self.home, formatted)
        current = self.status()
        if current.running and current.bootstrap is not None:
            if exact and current.bootstrap != self.bootstrap:
                raise AlreadyRunning(self.home, current.bootstrap)
            if self.secure:  # idempotent; a running secured broker gains this topic prefix's ACLs
                say(f"creating the ACLs of the principals on the topics {self.topic_prefix}.* ...")
                self._grant_or_fail(stop=False)
            return current.bootstrap
        self._pid_file.unlink(missing_ok=True)  # stale: its process is gone

        java = _find_java()
        _check_port_free(self.port, "broker")
        _check_port_free(self.controller_port, "controller")
        if not _has_kafka_jars(self.jars_dir):
            say(f"fetching the Kafka {kafka_version()} jars with Maven into {self.jars_dir} (first start only) ...")
        jars = self.ensure_jars()

        self.home.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        fresh = formatted is None
        if self.secure and (fresh or not self.secure_files.exists()):
            say(f"generating a CA, the broker's certificate and SCRAM passwords in {self.secure_files.directory} ...")
            self.secure_files.generate()
        _write_private(self._properties_file, self._server_properties())  # secured: holds the admin password
        self._log4j_file.write_text(_LOG4J2_YAML, encoding="utf-8")
        if fresh:
            users = f" with the SCRAM users {', '.join((*PRINCIPALS, ADMIN))}" if self.secure else ""
            say(f"formatting the broker's storage in {self.data_dir}{users} ...")
            self._format_storage(java, jars)

        say(f"starting the broker (home {self.home}, controller port {self.controller_port}) ...")
        process = self._launch(java, jars)
        say(f"waiting for it to answer on {self.bootstrap} (up to {timeout:g} s) ...")
        self._wait_until_ready(process, timeout)
        if self.secure:
            say(f"creating the ACLs of the principals on the topics {self.topic_prefix}.* ...")
            self._grant_or_fail(stop=True, timeout=max(10.0, timeout / 2))
        return self.bootstrap

    def _grant_or_fail(self, *, stop: bool, timeout: float = 30.0) -> None:
        try:
            self.grant(self.topic_prefix, timeout=timeout)
        except Exception as exc:
            if stop:
                self.stop()
            stopped = ", so it was stopped" if stop else ""
            raise KafkaError(
                f"The secured broker runs but its ACLs could not be created ({type(exc).__name__}){stopped}; "
                f"see its log ({self.log_file}).\n{exc}"
            ) from exc

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        pid = self._read_pid()
        if pid is not None and self._is_alive(pid):
            _signal(pid, signal.SIGTERM)
            if not self._wait_for_exit(pid, timeout):
                _signal(pid, signal.SIGKILL)
                self._wait_for_exit(pid, 10.0)
        if self._process is not None and self._process.pid == pid:
            self._process = None
        self._pid_file.unlink(missing_ok=True)

    def status(self) -> KafkaStatus:
        """Report whether the broker of this home runs, and where clients reach it."""
        pid = self._read_pid()
        if pid is None or not self._is_alive(pid):
            secure = bool(self.formatted_secure())
            return KafkaStatus(running=False, pid=None, bootstrap=None, home=self.home, secure=secure)
        return KafkaStatus(
            running=True,
            pid=pid,
            bootstrap=self._running_bootstrap() or self.bootstrap,
            home=self.home,
            secure=bool(self.formatted_secure()),
        )

    # ----------------------------------------------------------------- start-up steps

    def _server_properties(self) -> str:
        client = _SECURE_LISTENER if self.secure else "PLAINTEXT"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{HOST}:{self.controller_port}",
            "listeners": f"{client}://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"{client}://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": self.data_dir.as_posix(),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        if self.secure:
            settings.update(self.secure_files.broker_properties(_SECURE_LISTENER, "CONTROLLER"))
        lines = ["# Written by casebridge on every start; edits here are overwritten."]
        lines += [f"{key}={value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    def _format_storage(self, java: str, jars: Path) -> None:
        # Like Kafka's own Uuid.randomUuid(): never an id starting with "-", which the tool reads as an option.
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        command = [
            java, "-cp", _classpath(jars), "kafka.tools.StorageTool", "format",
            "--standalone", "-t", cluster_id, "-c", str(self._properties_file),
        ]  # fmt: skip
        shown = list(command)
        if self.secure:
            command += self.secure_files.scram_arguments()
            shown += ["--add-scram", "(one per principal, passwords not shown)"]
        _run(command, timeout=_FORMAT_TIMEOUT, what="Formatting the Kafka storage", shown=shown)

    def _launch(self, java: str, jars: Path) -> subprocess.Popen[bytes]:
        try:
            self._log_offset = self.log_file.stat().st_size
        except FileNotFoundError:
            self._log_offset = 0
        command = [
            java,
            f"-Xms{min(256, self.heap_mb)}m",
            f"-Xmx{self.heap_mb}m",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.log_file.parent}",
            f"-Dlog4j2.configurationFile={self._log4j_file}",
            "-cp",
            _classpath(jars),
            "kafka.Kafka",
            str(self._properties_file),
        ]
        with open(self._stdout_file, "ab") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,  # survives the caller and its terminal
            )
        self._process = process
        tmp_pid = self._pid_file.with_suffix(".pid.tmp")
        tmp_pid.write_text(f"{process.pid}\n", encoding="utf-8")
        os.replace(tmp_pid, self._pid_file)
        return process

    def _wait_until_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Secured: probe only once the broker logged its start. A TLS + SASL probe cut short by its timeout
        # on a half-started broker leaves aiokafka's socket unclosed (a ResourceWarning in the caller).
        logged = not self.secure
        while True:
            code = process.poll()
            if code is not None:
                self._process = None
                self._pid_file.unlink(missing_ok=True)
                raise BrokerStartTimeout(
                    f"The Kafka broker exited with code {code} during start-up; see its log"
                    f" ({self.log_file}, {self._stdout_file}).\n{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            logged = logged or self._logged_since_launch(_STARTED_LINE)
            admin = self.secure_files.connection(self.bootstrap, ADMIN) if self.secure else None
            if (
                logged
                and _accepts_connections(self.port)
                and _broker_answers(self.bootstrap, remaining if self.secure else min(remaining, 5.0), admin)
            ):
                return
            time.sleep(_POLL_INTERVAL)
        self.stop()
        raise BrokerStartTimeout(
            f"The Kafka broker did not answer on {self.bootstrap} within {timeout:g} s, "
            f"so it was stopped. Retry with a longer timeout, or see its log ({self.log_file}).\n"
            f"{self._log_tail()}"
        )

    def _logged_since_launch(self, text: str) -> bool:
        """True if the broker log holds ``text`` after the point it had reached at launch."""
        try:
            with open(self.log_file, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(self._log_offset if self._log_offset <= size else 0)  # rotated: read the new file
                return text.encode() in handle.read()
        except FileNotFoundError:
            return False

    def _log_tail(self) -> str:
        parts = []
        for path in (self._stdout_file, self.log_file):
            lines = _tail_lines(path, _LOG_TAIL_LINES)
            if lines:
                parts.append(f"--- last lines of {path} ---\n" + "".join(lines).rstrip())
        return "\n".join(parts) if parts else f"(no broker output in {self.home})"

    # ----------------------------------------------------------------- process state

    def _read_pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            return None

    def _is_alive(self, pid: int) -> bool:
        """True if ``pid`` is this home's broker process and it has not exited."""
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        proc = Path("/proc") / str(pid)
        if not proc.is_dir():  # no procfs (macOS): trust the signal check
            return True
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return False
        if state in ("Z", "X"):
            return False
        # Guard against a recycled pid: the process must run this home's properties.
        return b"kafka.Kafka" in cmdline and os.fsencode(self._properties_file) in cmdline

    def _wait_for_exit(self, pid: int, timeout: float) -> bool:
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self._is_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _running_bootstrap(self) -> str | None:
        """The advertised address in the properties the running broker was started with."""
        try:
            text = self._properties_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "advertised.listeners":
                for listener in value.split(","):
                    name, _, address = listener.strip().partition("://")
                    if name in ("PLAINTEXT", _SECURE_LISTENER) and address:
                        return address
        return None


# --------------------------------------------------------------------------- helpers


def _find_java() -> str:
    java = shutil.which("java")
    if java is None:
        java_home = os.environ.get("JAVA_HOME")
        if java_home:
            java = shutil.which("java", path=str(Path(java_home) / "bin"))
    if java is None:
        raise JavaNotFound()
    return java


def _has_kafka_jars(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob(_MARKER_JAR_GLOB))


def _classpath(jars: Path) -> str:
    return str(jars / "*")  # expanded by the JVM itself


def _run(
    command: list[str], timeout: float, what: str, shown: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command``; a failure's message names ``shown`` (default the command), never a secret in it."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise KafkaError(f"{what} did not finish within {timeout:g} s.") from exc
    if result.returncode != 0:
        raise KafkaError(
            f"{what} failed (exit code {result.returncode}):\n{_tail_text(result)}\n"
            f"Command: {' '.join(shown or command)}"
        )
    return result


def _tail_text(result: subprocess.CompletedProcess[str]) -> str:
    output = (result.stdout or "") + (result.stderr or "")
    return "\n".join(output.strip().splitlines()[-_LOG_TAIL_LINES:]) or "(no output)"


def _tail_lines(path: Path, count: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return list(deque(handle, maxlen=count))
    except FileNotFoundError:
        return []


def _check_port_free(port: int, listener: str) -> None:
    if _accepts_connections(port):
        raise PortInUse(port, listener)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if sys.platform != "win32":
            # Like the JVM: tolerate TIME_WAIT leftovers of a broker that just stopped.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise PortInUse(port, listener) from exc


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by this user only (server.properties holds the secured mode's admin password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _in_fresh_loop(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to its end, on a worker thread with its own loop when called inside one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _broker_answers(bootstrap: str, timeout: float, secured: KafkaConnection | None = None) -> bool:
    """True if the broker at ``bootstrap`` answers a metadata request listing a broker (``secured``: as whom)."""
    return _in_fresh_loop(_probe_metadata(bootstrap, timeout, secured))


async def _probe_metadata(bootstrap: str, timeout: float, secured: KafkaConnection | None) -> bool:
    request_timeout_ms = max(1, int(timeout * 1000))
    if secured is not None:
        client = clients.client(secured, request_timeout_ms=request_timeout_ms)
    else:  # plaintext: the one client built outside the factory (tests/test_kafka_clients.py allows it)
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return bool(client.cluster.brokers())
    except (TimeoutError, AIOKafkaError, OSError):
        return False
    finally:
        await client.close()
        if secured is not None:  # TLS: let the close_notify exchange end before asyncio.run closes this loop
            await asyncio.sleep(TLS_CLOSE_SECONDS)


@contextlib.contextmanager
def temporary_broker(kind: type[LocalKafka] = LocalKafka, timeout: float = 120.0, **options: Any) -> Iterator[str]:
    """A broker of its own in a temporary home (a test session, a benchmark): its bootstrap address; stopped and its
    home removed after. ``options`` go to ``kind`` (``heap_mb``, ``secure``, ...)."""
    from .localdeploy import free_port  # outside the ephemeral range; localdeploy imports this module

    with tempfile.TemporaryDirectory(prefix="casebridge-kafka-") as home:
        port, controller = free_port(), free_port()
        while controller == port:
            controller = free_port()
        broker = kind(Path(home), port=port, controller_port=controller, **options)
        broker.start(timeout=timeout)
        try:
            yield broker.bootstrap
        finally:
            broker.stop()
