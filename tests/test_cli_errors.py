"""Every wrong use of a `casebridge` command is one line on stderr naming what is wrong and what to do, with a
documented exit code (README, CLI): never a traceback (unless --debug), never a secret."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from casebridge.cli import _topics_on, app
from tests.conftest import free_port

UNREACHABLE = "127.0.0.1:1"
ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _logger_levels() -> Iterator[None]:
    """The operator commands quiet aiokafka's and asyncio's loggers; put them back for the other tests."""
    levels = {name: logging.getLogger(name).level for name in ("aiokafka", "asyncio")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(autouse=True)
def _no_casebridge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CASEBRIDGE_"):
            monkeypatch.delenv(name)


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, args, env=env)


def one_error_line(result: Result) -> str:
    """The single stderr line (no traceback anywhere); returns it."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "list"],
        ["dlq", "show", "0:1"],
        ["replay", "--operator", "ops", "--dry-run"],
        ["allocate", "T-1", "--worker", "A Worker", "--organisation", "Org", "--operator", "ops"],
        ["monitor", "--port", "1"],  # never listened on: Kafka is asked first
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_kafka_unreachable_is_one_line_exit_5(args: list[str]) -> None:
    result = invoke([*args, "--bootstrap", UNREACHABLE])
    line = one_error_line(result)
    assert 5 == result.exit_code
    assert line.startswith(f"error: cannot reach Kafka at {UNREACHABLE}: ")
    assert "casebridge kafka start" in line and "--bootstrap" in line


@pytest.mark.parametrize(
    ("env", "variables"),
    [
        ({"CASEBRIDGE_RETRY__TIERS": "30,300"}, ["CASEBRIDGE_RETRY__TIERS"]),
        ({"CASEBRIDGE_BATCH_SIZE": "abc"}, ["CASEBRIDGE_BATCH_SIZE"]),
        ({"CASEBRIDGE_RETRY__ATTEMPTS": "-7", "CASEBRIDGE_COUNCIL": "atlantis"}, None),
        ({"CASEBRIDGE_RETRY__TIERS": '["soon"]'}, ["CASEBRIDGE_RETRY__TIERS[0]"]),
    ],
)
@pytest.mark.parametrize("command", [["dlq", "list"], ["allocate", "T-1", "--worker", "W", "--organisation", "O",
                                                     "--operator", "ops"]])  # fmt: skip
def test_a_malformed_setting_names_the_variable_and_rule_never_the_value(
    env: dict[str, str], variables: list[str] | None, command: list[str]
) -> None:
    result = invoke(command, env=env)
    assert 2 == result.exit_code
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    expected = variables or ["CASEBRIDGE_RETRY__ATTEMPTS", "CASEBRIDGE_COUNCIL"]
    assert len(lines) == len(expected)
    for line, variable in zip(sorted(lines), sorted(expected), strict=True):
        assert line.startswith(f"error: {variable}: ") and line.endswith("(value not shown)")
    for value in env.values():
        assert value not in result.output.replace("[30, 300]", "")  # the rule's example, not the value


def test_an_empty_monitor_token_list_is_refused_by_name() -> None:
    result = invoke(["monitor"], env={"CASEBRIDGE_MONITOR__TOKENS": ""})
    assert (2, "error: CASEBRIDGE_MONITOR__TOKENS: is not valid JSON (value not shown)") == (
        result.exit_code,
        one_error_line(result),
    )


@pytest.mark.parametrize(
    "args",
    [
        ["kafka", "start"],
        ["kafka", "stop"],
        ["kafka", "status"],
        ["sandbox", "lcs"],
        ["sandbox", "ehm"],
        ["sandbox", "care-director"],
        ["sandbox", "ted"],
        ["sandbox", "smtp"],
        ["monitor"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize("port", ["99999", "0"])
def test_a_port_out_of_range_is_refused(args: list[str], port: str) -> None:
    result = invoke([*args, "--port", port])
    assert 2 == result.exit_code
    assert one_error_line(result).startswith("error: --port must be 1-65535 (see `")


def test_kafka_start_controller_port_is_an_option_and_checked() -> None:
    result = invoke(["kafka", "start", "--port", "19092", "--controller-port", "19092"])
    assert (2, "error: --controller-port must differ from --port") == (result.exit_code, one_error_line(result))
    assert "--controller-port" in invoke(["kafka", "start", "--help"]).stdout


def test_version() -> None:
    from importlib.metadata import version

    result = invoke(["--version"])
    assert (0, f"casebridge {version('casebridge')}") == (result.exit_code, result.stdout.strip())


@pytest.mark.parametrize(
    ("args", "option"),
    [
        # --operator is required only without an authenticated Kafka principal (tests/test_kafka_clients.py)
        (["allocate", "T-1", "--operator", "ops", "--organisation", "O"], "--worker"),
        (["allocate", "T-1", "--operator", "ops", "--worker", "W"], "--organisation"),
    ],
)
def test_required_options_are_required_and_shown_so(args: list[str], option: str) -> None:
    result = invoke(args)
    assert 2 == result.exit_code
    assert f"Missing option '{option}'" in one_error_line(result)
    help_lines = [line for line in invoke([args[0], "--help"]).stdout.splitlines() if f" {option} " in line]
    assert help_lines and "*" in help_lines[0]  # typer marks a required option with *


@pytest.mark.parametrize("command", [["dlq", "list"], ["replay", "--operator", "ops"]])
def test_enum_options_are_checked(command: list[str]) -> None:
    pathway = invoke([*command, "--pathway", "sideways"])
    assert 2 == pathway.exit_code
    assert "'step-up', 'step-down'" in one_error_line(pathway)
    council = invoke([*command, "--council", "atlantis"])
    assert 2 == council.exit_code
    assert "'north-somerset'" in one_error_line(council)
    assert "step-up|step-down" in invoke([command[0], *([command[1]] if command[0] == "dlq" else []), "--help"]).stdout


def test_blank_operator_and_malformed_ids_are_wrong_use() -> None:
    blank = invoke(["replay", "--operator", " ", "--bootstrap", UNREACHABLE])
    assert (2, "error: --operator must name who replays (every such action is audited)") == (
        blank.exit_code,
        one_error_line(blank),
    )
    bad_id = invoke(["dlq", "show", "seven", "--bootstrap", UNREACHABLE])
    assert 2 == bad_id.exit_code and "PARTITION:OFFSET" in one_error_line(bad_id)
    bad_servers = invoke(["dlq", "list", "--bootstrap", "a:b:c"])
    assert 2 == bad_servers.exit_code and "HOST:PORT" in one_error_line(bad_servers)


def test_unknown_commands_and_options_are_one_line() -> None:
    for args in (["frobnicate"], ["dlq", "list", "--nope"]):
        result = invoke(args)
        assert 2 == result.exit_code
        assert "--help`)" in one_error_line(result)


def test_a_taken_listen_port_is_one_line_exit_5() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        result = invoke(["sandbox", "lcs", "--port", port, "--token", "t-0123456789"])
    assert 5 == result.exit_code
    assert one_error_line(result).startswith(f"error: cannot listen on 127.0.0.1:{port}: ")


def test_dlq_list_with_a_prefix_that_has_no_dead_letter_topic(kafka_bootstrap: str, topic_prefix: str) -> None:
    """Exit 1 with a hint; and asking creates no topic (a broker that auto-creates topics would make one)."""
    for args in (["dlq", "list"], ["dlq", "show", "0:1"], ["replay", "--operator", "ops", "--dry-run"]):
        result = invoke([*args, "--bootstrap", kafka_bootstrap, "--prefix", topic_prefix])
        assert 1 == result.exit_code
        assert one_error_line(result) == (
            f"error: no dead-letter topic {topic_prefix}.dlq on {kafka_bootstrap}: is the prefix right? (the"
            " deployment file's topic_prefix; --prefix or CASEBRIDGE_TOPIC_PREFIX)"
        )
    assert f"{topic_prefix}.dlq" not in asyncio.run(_topics_on(kafka_bootstrap))


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CASEBRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "casebridge", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_the_real_entry_point_prints_no_traceback_unless_debug() -> None:
    """Through `python -m casebridge` (the installed script's main): one line, the exit code; --debug adds it."""
    cases = [
        (["dlq", "list", "--bootstrap", UNREACHABLE], None, 5, "error: cannot reach Kafka at 127.0.0.1:1: "),
        (["dlq", "list"], {"CASEBRIDGE_BATCH_SIZE": "abc"}, 2, "error: CASEBRIDGE_BATCH_SIZE: "),
        (["kafka", "status", "--port", "99999"], None, 2, "error: --port must be 1-65535"),
        (["replay", "--operator", "ops", "--pathway", "sideways"], None, 2, "error: Invalid value for '--pathway'"),
    ]
    for args, env, code, start in cases:
        done = _run_cli(*args, env=env)
        assert code == done.returncode, (args, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert 1 == len(lines) and lines[0].startswith(start), (args, lines)
        assert "abc" not in done.stderr
    debug = _run_cli("--debug", "dlq", "list", "--bootstrap", UNREACHABLE)
    assert 5 == debug.returncode
    assert "Traceback" in debug.stderr and "KafkaConnectionError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: cannot reach Kafka at 127.0.0.1:1: ")


def test_kafka_start_refuses_a_second_port_for_a_running_home(tmp_path: Path) -> None:
    """A broker of this home runs at one address: `kafka start --port OTHER` exits 2 naming it and what to do."""
    from tests.test_localkafka import fake_running_broker

    with fake_running_broker(tmp_path, port=free_port()) as address:
        result = invoke(["kafka", "start", "--home", str(tmp_path), "--port", str(free_port())])
        assert 2 == result.exit_code
        assert one_error_line(result) == (
            f"error: A broker of home {tmp_path.resolve()} already runs at {address}: stop it first (`casebridge"
            f" kafka stop --home {tmp_path.resolve()}`) or start another with --home DIR."
        )
        port = address.rsplit(":", 1)[1]
        same = invoke(["kafka", "start", "--home", str(tmp_path), "--port", port])
        assert (0, address) == (same.exit_code, same.stdout.strip())
