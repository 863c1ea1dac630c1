"""``casebridge run``'s own Prometheus metrics (``[metrics] port``): the router and its loops observable without the
monitor. The deployment file's ``[metrics]`` table is strict; a taken port is one line, exit 5; a deployment run as
a council runs it (sandboxes, its file, ``casebridge run --config`` as a process) is scraped during its flow, and
the figures move: case-system calls, batches, outcomes, loops, Kafka, lag; a target made unavailable moves the
errors by class and the retries. No transfer id or personal datum appears anywhere in a scrape.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from casebridge.cli import app
from casebridge.deployment import DeploymentError, load
from casebridge.localdeploy import (
    COUNCIL_SYSTEMS,
    Events,
    LocalDeployment,
    RunningDeployment,
    casebridge_command,
    deployment_file,
    free_port,
    sandboxes,
)
from casebridge.metrics import ConsumerLag, StackCollector
from casebridge.scenarios import EhmSandboxClient, LcsSandboxClient
from casebridge.stack import stack_from_deployment
from connectors._outage import OUTAGE
from tests.deployed import QUICK_RETRY

NORTH_SOMERSET = """
councils = ["north-somerset"]
bootstrap_servers = "127.0.0.1:1"   # never reached in these checks
local_development = true
topic_prefix = "t-metrics"

[systems.lcs]
kind = "lcs"
url = "http://127.0.0.1:1/lcs"
token = { env = "LCS_TOKEN" }

[systems.ehm]
kind = "ehm"
url = "http://127.0.0.1:1/ehm"
token = { env = "EHM_TOKEN" }
"""
SECRETS = {"LCS_TOKEN": "t-lcs-0123456789", "EHM_TOKEN": "t-ehm-0123456789"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("CASEBRIDGE_")]:
        monkeypatch.delenv(name)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def _file(tmp_path: Path, metrics: str) -> Path:
    path = tmp_path / "north-somerset.toml"
    path.write_text(NORTH_SOMERSET + metrics)
    return path


# -- the [metrics] table -------------------------------------------------------------------------------------


def test_metrics_are_off_without_a_port_and_served_where_the_table_says(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert None is load(_file(tmp_path, "")).metrics.address
    assert None is load(_file(tmp_path, "\n[metrics]\nhost = '0.0.0.0'\n")).metrics.address
    given = load(_file(tmp_path, "\n[metrics]\nport = 29464\n")).metrics
    assert ("127.0.0.1", 29464) == (given.host, given.port)
    assert "http://127.0.0.1:29464/metrics" == given.address
    env.setenv("CASEBRIDGE_METRICS__PORT", "29465")  # the environment overrides the file, as for every key
    env.setenv("CASEBRIDGE_METRICS__HOST", "::1")
    assert "http://[::1]:29465/metrics" == load(_file(tmp_path, "\n[metrics]\nport = 29464\n")).metrics.address


@pytest.mark.parametrize("port", ["0", "65536", "-1", "'many'"])
def test_a_metrics_port_out_of_range_is_one_line_naming_the_key(
    env: pytest.MonkeyPatch, tmp_path: Path, port: str
) -> None:
    with pytest.raises(DeploymentError) as caught:
        load(_file(tmp_path, f"\n[metrics]\nport = {port}\n"))
    [problem] = caught.value.problems
    assert problem.startswith("north-somerset.toml: line 18: metrics.port: "), problem
    assert "\n" not in problem


def test_an_unknown_metrics_key_is_one_line_naming_it_in_the_file_and_the_environment(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(DeploymentError) as caught:
        load(_file(tmp_path, "\n[metrics]\nport = 29464\nprot = 29465\n"))
    assert ["north-somerset.toml: line 19: metrics.prot: unknown key (check its spelling against examples/ and the"
            " README)"] == caught.value.problems  # fmt: skip
    env.setenv("CASEBRIDGE_METRICS__PATH", "/metrics")
    with pytest.raises(DeploymentError) as caught:
        load(_file(tmp_path, ""))
    [problem] = caught.value.problems
    assert "CASEBRIDGE_METRICS__PATH (environment): metrics.path: unknown key" in problem, problem


def test_config_check_prints_where_metrics_are_served(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on = CliRunner().invoke(app, ["config", "check", str(_file(tmp_path, "\n[metrics]\nport = 29464\n"))])
    assert 0 == on.exit_code, on.output
    assert "metrics: http://127.0.0.1:29464/metrics and /healthz\n" in on.output
    off = CliRunner().invoke(app, ["config", "check", str(_file(tmp_path, ""))])
    assert 0 == off.exit_code, off.output
    assert "metrics: off (no [metrics] port)\n" in off.output


def test_a_taken_metrics_port_is_one_line_exit_5(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The metrics port is listened on before anything else starts: taken, one line naming it and the setting."""
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        config = _file(tmp_path, f"\n[metrics]\nport = {port}\n")
        done = subprocess.run([*casebridge_command(), "run", "--config", str(config)], env={**os.environ},
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert 5 == done.returncode, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: casebridge run: cannot serve metrics on 127.0.0.1:{port}: "), line
    assert "[metrics] port" in line and "Traceback" not in done.stderr


async def test_kafka_away_and_a_halted_router_show_in_the_scrape_and_healthz(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Read from memory at each scrape: the process's outage tracker and the router's state (the stack is built,
    not started: nothing is contacted)."""
    deployment = load(_file(tmp_path, "\n[metrics]\nport = 29464\n"))
    stack = stack_from_deployment(deployment, tmp_path / "state")
    collector = StackCollector(stack, deployment, ConsumerLag(deployment))

    def collected() -> Scrape:
        registry = CollectorRegistry()
        registry.register(collector)
        return Scrape(generate_latest(registry).decode())

    assert not OUTAGE.away
    outages = collected().value("casebridge_kafka_outages_total")
    assert 1 == collected().value("casebridge_kafka_reachable")
    try:
        OUTAGE.failed("test", "KafkaConnectionError")
        away = collected()
        assert 0 == away.value("casebridge_kafka_reachable")
        assert outages + 1 == away.value("casebridge_kafka_outages_total")
        assert 0 < away.value("casebridge_kafka_unreachable_seconds")
    finally:
        OUTAGE.answered("test")
        await OUTAGE.close()  # its probe of the bootstrap addresses, if it started one
    assert 1 == collected().value("casebridge_kafka_reachable")
    assert 0 == collected().value("casebridge_kafka_unreachable_seconds")
    assert (False, "failing") == (collector.health()[0], collector.health()[1]["status"])  # not started yet
    assert 1 == collected().value("casebridge_router_state", state="running")
    stack.router.halted = True
    assert 1 == collected().value("casebridge_router_state", state="halted")
    assert 0 == collected().value("casebridge_router_state", state="running")
    assert "halted" == collector.health()[1]["router"]
    assert 1 == collected().value("casebridge_council_served", council="north-somerset")
    await stack.stop()  # built, never started: closes its Kafka clients


# -- casebridge run scraped during a flow --------------------------------------------------------------------


class Scrape:
    """One scrape of ``/metrics``: its text and its samples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (0 when there is none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def labels(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def scrape(port: int) -> Scrape:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert 200 == answer.status_code
    assert answer.headers["content-type"].startswith("text/plain")
    return Scrape(answer.text)


async def scraped_until(port: int, ready: Any, timeout: float = 60.0) -> Scrape:
    """Scrape until ``ready(scrape)`` holds (figures read in the background, such as the lag, come in rounds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(scrape, port)
        if ready(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


def personal(value: Any, keys: frozenset[str]) -> Iterator[str]:
    """Every string under ``keys`` anywhere in ``value`` (a child's names, NHS number, UPN, date of birth, postcode,
    the transfer id)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in keys and isinstance(v, str) and len(v) >= 3:
                yield v
            yield from personal(v, keys)
    elif isinstance(value, list):
        for v in value:
            yield from personal(v, keys)


PERSONAL_KEYS = frozenset({"given_name", "family_name", "nhs_number", "upn", "date_of_birth", "postcode",
                           "address", "transfer_id", "record_id", "request_id", "name"})  # fmt: skip


def assert_nothing_personal(text: str, values: set[str]) -> None:
    for value in values:
        assert not re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text), f"{value!r} appears in the scrape"


async def test_casebridge_run_metrics_move_during_a_flow_and_name_errors_and_retries_when_a_target_fails(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    council = "north-somerset"
    port = free_port()
    with sandboxes(tmp_path / "systems", COUNCIL_SYSTEMS[council]) as systems:
        text, secrets_env = deployment_file(council, systems, bootstrap=kafka_bootstrap, prefix=topic_prefix,
                                            state_dir=tmp_path / "state", retry=QUICK_RETRY)  # fmt: skip
        config = tmp_path / f"{council}.toml"
        config.write_text(text + f"\n[metrics]\nport = {port}\n")
        log = tmp_path / "casebridge-run.log"
        run = RunningDeployment(config, secrets_env, log).start()
        d = LocalDeployment(council, systems, kafka_bootstrap, topic_prefix, config, secrets_env, log, run,
                            Events(kafka_bootstrap, f"{topic_prefix}.events"))  # fmt: skip
        lcs = LcsSandboxClient(systems.urls["lcs"], systems.token)
        ehm = EhmSandboxClient(systems.urls["ehm"], systems.token)
        try:
            assert f"metrics on http://127.0.0.1:{port}/metrics" in run.output()
            transfers = f"{topic_prefix}.transfers"
            before = await scraped_until(port, lambda s: s.value("casebridge_loop_up", loop="LcsPublisher") == 1)
            children = [lcs.create_child(locality="North") for _ in range(3)]
            downs = [f"{council}-lcs-{lcs.request_stepdown(c)}".lower() for c in children]
            await d.wait(dict.fromkeys(downs, "source-closed"))
            after = await scraped_until(
                port,
                lambda s: (
                    s.value("casebridge_router_outcomes_total", topic=transfers, state="completed") >= 3
                    and s.value("casebridge_router_consumer_lag", group=f"{topic_prefix}-router", topic=transfers) == 0
                    and f"{topic_prefix}-router" in s.labels("casebridge_router_consumer_lag", "group")
                ),
            )

            # per case system: each call measured by system and operation (ids blanked)
            tray = "PUT /api/stepdown-tray/{id}"
            seconds = "casebridge_case_system_request_seconds_count"
            assert {"lcs", "ehm"} <= after.labels(seconds, "system")
            assert 3 <= after.value(seconds, system="ehm", operation=tray) - before.value(seconds, operation=tray)
            assert after.value(seconds, system="lcs") > before.value(seconds, system="lcs")
            assert 0 < after.value("casebridge_case_system_request_seconds_sum", system="ehm", operation=tray)
            assert all("{id}" in op or not re.search(r"\d", op) for op in after.labels(seconds, "operation"))
            # the router's batches: how many, how big, how they ended
            batches = "casebridge_router_batch_records_count"
            assert after.value(batches, topic=transfers) > before.value(batches, topic=transfers)
            assert 3 <= after.value("casebridge_router_batch_records_sum", topic=transfers)
            assert 1 <= after.value("casebridge_router_batch_seconds_count", topic=transfers)
            assert 3 <= after.value("casebridge_router_outcomes_total", topic=transfers, state="completed")
            # the loops up, polling; the router running; Kafka reachable; the deployment named
            loops = {"Router", "Lifecycle", "LcsPublisher", "StepUpPublisher",
                     "AllocationReporter", "DecisionReporter"}  # fmt: skip
            assert loops <= after.labels("casebridge_loop_up", "loop")
            assert all(1 == after.value("casebridge_loop_up", loop=name) for name in loops)
            polled = after.value("casebridge_loop_last_success_timestamp_seconds", loop="LcsPublisher")
            assert time.time() - 30 < polled <= time.time()
            assert 1 == after.value("casebridge_router_state", state="running")
            assert 1 == after.value("casebridge_kafka_reachable")
            # consumer lag of the router's groups, from committed and end offsets: all read, nothing behind
            groups = after.labels("casebridge_router_consumer_lag", "group")
            assert f"{topic_prefix}-router" in groups and all(g.startswith(topic_prefix) for g in groups), groups
            assert 0 == after.value("casebridge_router_consumer_lag", group=f"{topic_prefix}-router", topic=transfers)
            assert time.time() - 60 < after.value("casebridge_router_consumer_lag_refreshed_timestamp_seconds")
            assert 1 == after.value("casebridge_council_served", council=council)
            assert 1 == after.value("casebridge_deployment_info", topic_prefix=topic_prefix)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                health = await client.get("/healthz")
                assert 200 == health.status_code and "ok" == health.json()["status"], health.text
                assert {"Router": True, "LcsPublisher": True}.items() <= health.json()["loops"].items()
                assert 404 == (await client.get("/")).status_code

            # EHM's tray unavailable: errors by class, retries, the retry tier
            ehm.inject_fault(status=503, path_prefix="/api/stepdown-tray", seconds=4)
            child = lcs.create_child(locality="North")
            late = f"{council}-lcs-{lcs.request_stepdown(child)}".lower()
            await d.wait({late: "retry-scheduled"})
            scheduled = "casebridge_router_retry_scheduled_total"
            failing = await scraped_until(port, lambda s: s.value(scheduled, topic=transfers, reason="transient") >= 1)
            errors = "casebridge_case_system_errors_total"
            assert 1 <= failing.value(errors, system="ehm", operation=tray, error_class="5xx")
            assert 0 == after.value(errors, system="ehm", operation=tray, error_class="5xx")
            assert 1 <= failing.value("casebridge_case_system_retries_total", system="ehm", operation=tray)
            assert 1 <= failing.value(scheduled, topic=transfers, reason="transient")
            assert 1 <= failing.value("casebridge_router_outcomes_total", topic=transfers, state="transient")
            # the fault ends: the retry tier completes it, and the tier's batches are counted under its topic
            await d.wait({late: "source-closed"})
            recovered = await scraped_until(
                port, lambda s: s.value("casebridge_router_outcomes_total", state="completed") >= 4
            )
            outcomes = [s for s in recovered.samples if s.name == "casebridge_router_outcomes_total"]
            tiers = {s.labels["topic"] for s in outcomes if s.labels["state"] == "completed" and s.value >= 1}
            assert tiers & {f"{topic_prefix}.retry.0", f"{topic_prefix}.retry.1"}, tiers

            # nothing personal, no transfer id, in any scrape
            held = set()
            for item in ehm.tray():
                held |= set(personal(item, PERSONAL_KEYS))
            for c in [*children, child]:
                held |= set(personal(lcs.child(c), PERSONAL_KEYS)) | {c}
            assert {*downs, late} <= held
            assert any(re.fullmatch(r"999\d{7}", v) for v in held), held  # the NHS numbers are among them
            for s in (before, after, failing, recovered):
                assert_nothing_personal(s.text, held)
        finally:
            lcs.close()
            ehm.close()
            await d.events.stop()
            code = run.stop()
    assert 0 == code, run.output()[-3000:]  # SIGTERM stops the metrics server with the rest
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not count
        again.bind(("127.0.0.1", port))  # nothing listens on it any more
        again.listen()
