"""A deployment file: everything ``casebridge run --config FILE`` runs, in one TOML file.

    councils = ["north-somerset"]          # the councils this deployment serves (their protocols apply)
    bootstrap_servers = "kafka:9092"
    topic_prefix = "casebridge"
    [kafka]                                # how to talk to Kafka (connectors/kafka.py): TLS, SASL
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"
    username = "router"
    password = { file = "/run/secrets/kafka-router" }
    ca_file = "/etc/casebridge/kafka-ca.pem"
    [retry]                                # in-process retries and the delayed tiers (router.settings)
    [metrics]                              # Prometheus metrics from casebridge run (off unless a port is given)
    port = 9464
    [tracing]                              # OpenTelemetry traces over OTLP/HTTP (off unless a collector is named)
    otlp_endpoint = "http://otel-collector:4318"
    [systems.lcs]                          # one block per case system or channel; ``kind`` picks the connector
    kind = "lcs"
    url = "https://lcs.council.example/api"
    token = { env = "LCS_TOKEN" }          # secrets by reference only: { env = ... } or { file = ... }

Validated at load, strictly: an unknown key is an error, each error names the file, the line and the key,
and no error prints a value (secrets included). ``CASEBRIDGE_*`` environment variables override the file,
with ``__`` between levels (``CASEBRIDGE_BOOTSTRAP_SERVERS``, ``CASEBRIDGE_SYSTEMS__LCS__URL``); an
unknown one is an error too, not ignored. ``casebridge run`` refuses a deployment whose Kafka traffic is
not encrypted (PLAINTEXT, SASL_PLAINTEXT) unless the file says ``local_development = true``.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.kafka import UNENCRYPTED, KafkaSecurity
from contracts import Council, Direction
from router.settings import RetrySettings, Settings, TopicSettings, batch_budget_problem

from .registry import KINDS, Kind, SystemConfig

#: ``CASEBRIDGE_*`` variables that belong to other commands, not to the deployment file
OTHER_VARIABLES = ("CASEBRIDGE_CONFIG", "CASEBRIDGE_HOME", "CASEBRIDGE_LOG_LEVEL", "CASEBRIDGE_MONITOR__",
                   "CASEBRIDGE_DEBUG")  # fmt: skip


class DeploymentError(Exception):
    """A deployment file that cannot run: one line per problem, each naming the file, line and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MetricsSettings(BaseModel):
    """The ``[metrics]`` table: where ``casebridge run`` serves ``GET /metrics`` (Prometheus) and ``GET /healthz``;
    off unless ``port`` is given (a port outside 32768-60999, Linux's ephemeral range, is recommended)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def address(self) -> str | None:
        """``http://HOST:PORT/metrics``, or None when metrics are off."""
        if self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


class TracingSettings(BaseModel):
    """The ``[tracing]`` table: where ``casebridge run`` exports OpenTelemetry traces (OTLP over HTTP, to
    ``<otlp_endpoint>/v1/traces``), one trace per transfer (connectors/_tracing.py); off unless a collector is
    named."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    otlp_endpoint: str | None = None
    service_name: str = Field(default="casebridge", min_length=1, max_length=100)

    @field_validator("otlp_endpoint")
    @classmethod
    def _a_collector_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("the collector's http(s) base URL, e.g. http://otel-collector:4318")
        return value


class _Top(BaseModel):
    """The deployment file's own keys (each system block is validated by its kind's model)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    councils: list[Council] = Field(min_length=1)
    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    #: how to talk to Kafka: security_protocol, sasl_mechanism, username, password (by reference), ca_file,
    #: cert_file, key_file (checked by ``_kafka`` into a ``KafkaSecurity``)
    kafka: dict[str, Any] = Field(default_factory=dict)
    #: a deployment on one machine for development or a demo: the only kind that may talk to Kafka unencrypted
    local_development: bool = False
    topic_prefix: str = Field(default="casebridge", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
    #: the router's consumer group (default ``<topic_prefix>-router``)
    group_id: str | None = Field(default=None, min_length=1)
    #: connector cursors, the mailbox's sent ledger, the intake's store (relative to where run starts)
    state_dir: Path = Path(".casebridge/state")
    batch_size: int = Field(default=500, ge=1, le=10_000)
    batch_timeout_ms: int = Field(default=50, ge=0, le=10_000)
    concurrency: int = Field(default=32, ge=1, le=1_000)
    retry: RetrySettings = RetrySettings()
    #: how casebridge creates its topics and what existing ones must keep (router/topics.py)
    topics: TopicSettings = TopicSettings()
    systems: dict[str, dict[str, Any]] = Field(min_length=1)
    alerts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()


@dataclass(frozen=True)
class Deployment:
    """A validated deployment: the router's settings and the systems it talks to, by name."""

    path: Path | None
    councils: tuple[Council, ...]
    settings: Settings
    state_dir: Path
    systems: Mapping[str, SystemConfig]
    alerts: Mapping[str, Any]
    #: the file says it is a local development deployment (``local_development = true``)
    local_development: bool = False
    #: the ``[metrics]`` table (``metrics.port`` None: no metrics served)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: the ``[tracing]`` table (``tracing.otlp_endpoint`` None: no traces)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    def unencrypted(self) -> str | None:
        """Why ``casebridge run`` refuses this deployment's Kafka settings, or None: traffic that is not
        encrypted (PLAINTEXT, SASL_PLAINTEXT) only in a local development deployment."""
        protocol = self.settings.kafka.security_protocol
        if protocol not in UNENCRYPTED or self.local_development:
            return None
        where = self.path.name if self.path else "deployment"
        return (
            f"{where}: kafka.security_protocol is {protocol}: children's records would cross the network"
            ' unencrypted; set [kafka] security_protocol = "SASL_SSL" (or "SSL") with its settings (README,'
            " Deploying securely), or local_development = true for a deployment on one machine"
        )

    def kind(self, name: str) -> Kind:
        return KINDS[self.systems[name].kind]

    def council_of(self, name: str) -> Council:
        """The council whose requests a system's feeds publish."""
        return self.systems[name].council or self.councils[0]

    def serving(self, system: Any, role: str) -> list[str]:
        """Names of the configured systems that serve ``system`` as ``role`` ("target" or "source")."""
        return [n for n in self.systems if system in getattr(self.kind(n), f"{role}s")]

    def pathways(self) -> Iterator[tuple[Council, Direction, Any, Any]]:
        """Per council served and direction: (council, direction, the protocol's pathway, the protocol)."""
        from mappings import load_protocols

        protocols = load_protocols()
        for council in self.councils:
            protocol = protocols[council]
            for direction in Direction:
                pathway = protocol.systems(direction)
                if pathway is not None:
                    yield council, direction, pathway, protocol

    def routes(self) -> Iterator[tuple[Council, Direction, str, str | None, str | None, str | None]]:
        """Per council and pathway: (council, direction, source system, its configured name, target system's
        configured name, team) from the council's protocol; a name is None where nothing serves it."""
        for council, direction, pathway, _ in self.pathways():
            src = self.serving(pathway.source, "source")
            tgt = self.serving(pathway.target, "target")
            yield (council, direction, pathway.source.value, src[0] if src else None,
                   tgt[0] if tgt else None, pathway.team)  # fmt: skip

    def unserved(self) -> list[str]:
        """What the councils' protocols need that no configured system serves (one line each)."""
        problems = []
        where = self.path.name if self.path else "deployment"
        channels: dict[Council, set[Any]] = {}
        for council, direction, pathway, protocol in self.pathways():
            channels[council] = protocol.notice_channels() | protocol.routed_targets()
            for system, role in ((pathway.source, "source"), (pathway.target, "target")):
                if not self.serving(system, role):
                    kinds = [k.name for k in KINDS.values() if system in getattr(k, f"{role}s")]
                    problems.append(
                        f"{where}: {council.value} {direction.value}: no system serves {system.value} as {role};"
                        f" add a [systems.NAME] block of kind {' or '.join(kinds) or '(none yet)'}"
                    )
        for council, needed in channels.items():
            for channel in sorted(needed):
                if not self.serving(channel, "target"):
                    problems.append(
                        f"{where}: {council.value}: the protocol sends notices or routes to {channel.value}, and no"
                        f" system serves it; add a [systems.NAME] block of kind {channel.value}"
                    )
        return sorted(set(problems))


def _message(error: Any) -> str:
    """Pydantic's message for an error, in the deployment file's words (never the value)."""
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling against examples/ and the README)"
    return str(error["msg"])


def load(path: Path, environ: Mapping[str, str] | None = None) -> Deployment:
    """Read, override from the environment, and validate a deployment file; raises DeploymentError."""
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeploymentError([f"{path}: cannot be read ({exc.strerror}); pass an existing file to --config"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeploymentError([f"{path.name}: not valid TOML: {exc}"]) from None
    lines = _LineIndex(text)
    overridden = _override(data, environ)
    problems: list[str] = []

    def where(loc: tuple[str | int, ...]) -> str:
        key = ".".join(str(p) for p in loc) or "(top)"
        if loc[:1] and loc[0] in overridden.values():
            for var in overridden:
                if _loc_matches(var, loc):
                    return f"{path.name}: {var} (environment): {key}"
        line = lines.line_of(loc)
        return f"{path.name}: line {line}: {key}" if line else f"{path.name}: {key}"

    problems += [f"{path.name}: {v}" for v in overridden.get("__unknown__", ())]
    overridden.pop("__unknown__", None)
    context = {"base": path.parent}
    top: _Top | None = None
    try:
        top = _Top.model_validate(data, context=context)
    except ValidationError as exc:
        problems += [f"{where(tuple(e['loc']))}: {_message(e)}" for e in exc.errors(include_input=False)]
    systems: dict[str, SystemConfig] = {}
    for name, block in (data.get("systems") or {}).items() if isinstance(data.get("systems"), dict) else ():
        if not isinstance(block, dict):
            continue
        kind = KINDS.get(str(block.get("kind", "")))
        if kind is None:
            known = ", ".join(KINDS)
            problems.append(f"{where(('systems', name, 'kind'))}: unknown or missing kind (known: {known})")
            continue
        try:
            systems[name] = kind.config.model_validate(block, context=context)
        except ValidationError as exc:
            problems += [
                f"{where(('systems', name, *e['loc']))}: {_message(e)}" for e in exc.errors(include_input=False)
            ]
    alerts: dict[str, Any] = {}
    security = KafkaSecurity()
    if top is not None:
        alerts, alert_problems = _alerts(top.alerts, context, where)
        problems += alert_problems
        security, kafka_problems = _kafka(top.kafka, context, where)
        problems += kafka_problems
        batch = batch_budget_problem(top.batch_size, top.concurrency, top.retry)
        if batch is not None:
            problems.append(f"{path.name}: {batch}")
        named_kinds = {b.get("kind") for b in (data.get("systems") or {}).values() if isinstance(b, dict)}
        if any(getattr(c, "kind", "") == "email" for c in alerts.values()) and "mailbox" not in named_kinds:
            problems.append(f"{path.name}: an e-mail alert channel needs a [systems.NAME] block of kind mailbox")
        for name, cfg in systems.items():
            for i, caller in enumerate(getattr(cfg, "callers", ())):
                if caller.council not in top.councils:
                    at = where(("systems", name, "callers", i, "council"))
                    problems.append(f"{at}: {caller.council.value} is not in councils")
            kind = KINDS[cfg.kind]
            if cfg.council is not None and cfg.council not in top.councils:
                problems.append(f"{where(('systems', name, 'council'))}: {cfg.council.value} is not in councils")
            if cfg.council is None and kind.publishes and len(top.councils) > 1:
                problems.append(
                    f"{where(('systems', name))}: council is required here: the deployment serves"
                    f" {len(top.councils)} councils and this system's feeds publish for one"
                )
        for system, role in {(s, r) for k in systems.values() for r in ("target", "source")
                             for s in getattr(KINDS[k.kind], f"{r}s")}:  # fmt: skip
            names = [n for n, c in systems.items() if system in getattr(KINDS[c.kind], f"{role}s")]
            if len(names) > 1:
                problems.append(
                    f"{path.name}: systems {', '.join(names)} all serve {system.value} as {role}; one per deployment"
                )
    if problems or top is None:
        raise DeploymentError(problems)
    settings = Settings(
        bootstrap_servers=top.bootstrap_servers,
        kafka=security,
        topic_prefix=top.topic_prefix,
        group_id=top.group_id or f"{top.topic_prefix}-router",
        batch_size=top.batch_size,
        batch_timeout_ms=top.batch_timeout_ms,
        concurrency=top.concurrency,
        retry=top.retry,
        topic_config=top.topics.with_fitted_replication(top.local_development),
        council=top.councils[0],
    )
    deployment = Deployment(
        path,
        tuple(top.councils),
        settings,
        top.state_dir,
        systems,
        alerts,
        top.local_development,
        top.metrics,
        top.tracing,
    )
    unserved = deployment.unserved()
    if unserved:
        raise DeploymentError(unserved)
    return deployment


def _alerts(blocks: dict[str, dict[str, Any]], context: dict[str, Any], where: Any) -> tuple[dict[str, Any], list[str]]:
    """Alert channels by name (``[alerts.NAME]`` with ``kind = "email"`` or ``"webhook"``; a webhook's token by
    reference, like every secret)."""
    from router.alerts import CHANNEL_KINDS

    from .secrets import SecretRef

    models: dict[str, type[BaseModel]] = dict(CHANNEL_KINDS)
    channels: dict[str, Any] = {}
    problems: list[str] = []
    for name, block in blocks.items():
        model = models.get(str(block.get("kind", ""))) if isinstance(block, dict) else None
        if model is None:
            known = ", ".join(models)
            problems.append(f"{where(('alerts', name, 'kind'))}: unknown or missing kind (known: {known})")
            continue
        values = dict(block)
        try:
            if "token" in values:
                values["token"] = SecretRef.model_validate(values["token"], context=context).value
            channels[name] = model.model_validate(values, context=context)
        except ValidationError as exc:
            errors = exc.errors(include_input=False)
            inner = ("token",) if exc.title == "SecretRef" else ()
            problems += [f"{where(('alerts', name, *inner, *e['loc']))}: {_message(e)}" for e in errors]
    return channels, problems


def _kafka(block: dict[str, Any], context: dict[str, Any], where: Any) -> tuple[KafkaSecurity, list[str]]:
    """The ``[kafka]`` table: the password by reference, like every secret; the settings checked together."""
    from .secrets import SecretRef

    values = dict(block)
    if "password_file" in values:
        return KafkaSecurity(), [
            f'{where(("kafka", "password_file"))}: unknown key here: write password = {{ file = "PATH" }}'
            " (CASEBRIDGE_KAFKA__PASSWORD_FILE sets that too)"
        ]
    try:
        if "password" in values:
            values["password"] = SecretRef.model_validate(values["password"], context=context).value
        return KafkaSecurity.model_validate(values, context=context), []
    except ValidationError as exc:
        inner = ("password",) if exc.title == "SecretRef" else ()
        errors = exc.errors(include_input=False)
        return KafkaSecurity(), [f"{where(('kafka', *inner, *e['loc']))}: {_message(e)}" for e in errors]


def _override(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``CASEBRIDGE_*`` variables over the file; returns {variable: first key} (and unknown ones)."""
    done: dict[str, Any] = {}
    unknown: list[str] = []
    top_keys = set(_Top.model_fields)
    for var in sorted(environ):
        if not var.startswith("CASEBRIDGE_") or var.startswith(OTHER_VARIABLES):
            continue
        parts = var.removeprefix("CASEBRIDGE_").lower().split("__")
        if parts[0] not in top_keys:
            if parts[0] in KINDS or parts[0].replace("_", "-") in KINDS:
                key = parts[-1].upper()
                hint = f"a system is a [systems.NAME] block now; override one with CASEBRIDGE_SYSTEMS__NAME__{key}"
            elif parts[0] == "council":
                hint = "the deployment's councils are its `councils` key (CASEBRIDGE_COUNCILS='[\"luton\"]')"
            else:
                hint = f"the deployment file's keys: {', '.join(sorted(top_keys))}"
            unknown.append(f"{var} (environment): no such setting ({hint})")
            continue
        raw: Any = _value(environ[var])
        if parts == ["kafka", "password_file"]:  # the operator commands' variable names the same secret
            parts, raw = ["kafka", "password"], {"file": environ[var]}
        node: Any = data
        for part in parts[:-1]:
            if not isinstance(node, dict):
                break
            key = _existing(node, part)
            node = node.setdefault(key, {})
        if isinstance(node, dict):
            node[_existing(node, parts[-1])] = raw
            done[var] = parts[0]
    if unknown:
        done["__unknown__"] = unknown
    return done


def _existing(node: dict[str, Any], part: str) -> str:
    """The key of ``node`` an environment variable's part names (``care_director`` names ``care-director``)."""
    for key in node:
        if key.lower().replace("-", "_") == part:
            return key
    return part


def _value(raw: str) -> Any:
    """A variable's value: JSON where it is a list, table, number or boolean, else the string."""
    if raw[:1] in "[{" or raw in ("true", "false") or re.fullmatch(r"-?\d+(\.\d+)?", raw):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _loc_matches(var: str, loc: tuple[str | int, ...]) -> bool:
    parts = var.removeprefix("CASEBRIDGE_").lower().split("__")
    names = [str(p).lower().replace("-", "_") for p in loc]
    return names[: len(parts)] == parts or parts[: len(names)] == names


class _LineIndex:
    """Where each key of a TOML text is written (tomllib gives no positions): dotted path -> line."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*=""")

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        arrays: dict[tuple[str, ...], int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                path = tuple(self._parts(header.group(2)))
                if header.group(1) == "[[":
                    index = arrays.get(path, -1) + 1
                    arrays[path] = index
                    path = (*path, str(index))
                table = path
                self.lines.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                path = (*table, *self._parts(key.group(1)))
                self.lines.setdefault(path, number)
                for inner in re.finditer(r"([A-Za-z0-9_-]+)\s*=", line[key.end() :]):  # inline tables
                    self.lines.setdefault((*path, inner.group(1)), number)

    @staticmethod
    def _parts(dotted: str) -> list[str]:
        return [p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted)]

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        path = tuple(str(p) for p in loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None
