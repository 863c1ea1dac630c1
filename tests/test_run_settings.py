"""``casebridge run --config FILE`` builds exactly what the deployment file names, and refuses a file it cannot run
with one line per problem: the file, the line, the key, never a value."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs
from typer.testing import CliRunner

from casebridge.cli import app
from casebridge.deployment import DeploymentError, load
from casebridge.stack import Stack, stack_from_deployment
from connectors import TargetRefused
from connectors.care_director import CareDirectorConnector, CareDirectorPublisher
from connectors.lcs import LcsPublisher
from connectors.mailbox import MailboxConnector
from connectors.ted import TedConnector, TedPublisher
from contracts import CaseSystem, Council
from router import Settings
from router.settings import RetrySettings
from tests.support import TOKEN, Systems

EXAMPLES = Path(__file__).parent.parent / "examples"
SECRETS = {
    "LCS_TOKEN": "t-lcs-0123456789",
    "EHM_TOKEN": "t-ehm-0123456789",
    "TED_TOKEN": "t-ted-0123456789",
    "CARE_DIRECTOR_TOKEN": "t-cd-0123456789",
    "SMTP_PASSWORD": "smtp-password-0123456789",
    "INTAKE_TOKEN_LUTON_FST": "intake-token-" + "x" * 32,
    "INTAKE_TOKEN_LUTON_EH": "intake-token-" + "y" * 32,
    "WEBHOOK_TOKEN": "webhook-token-0123456789",
}

BARNSLEY = """
councils = ["barnsley"]
bootstrap_servers = "127.0.0.1:1"   # never contacted: the stack is built, not started
topic_prefix = "t-run"

[systems.ted]
kind = "ted"
url = "http://127.0.0.1:1/ted"
token = { env = "TED_TOKEN" }

[systems.mail]
kind = "mailbox"
host = "127.0.0.1"
username = "casebridge"
password = { file = "smtp-password" }
sender = "casebridge@barnsley.example"
mailboxes = { "barnsley:step-down" = "earlyhelp@barnsley.example" }
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("CASEBRIDGE_")]:
        monkeypatch.delenv(name)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def _file(tmp_path: Path, text: str, name: str = "deployment.toml") -> Path:
    (tmp_path / "smtp-password").write_text("smtp-secret-from-a-file\n")
    path = tmp_path / name
    path.write_text(text)
    return path


async def test_ba15_run_builds_ted_and_the_mailbox_and_nothing_else_for_barnsley(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Barnsley has neither LCS nor EHM: the deployment runs TED (connector + publisher) and the mailbox only."""
    deployment = load(_file(tmp_path, BARNSLEY))
    assert (Council.BARNSLEY,) == deployment.councils
    mail = deployment.systems["mail"]
    assert "smtp-secret-from-a-file" not in repr(mail)  # the secret, read from its file, never prints
    assert "smtp-secret-from-a-file" == mail.password.value.get_secret_value()  # type: ignore[attr-defined]
    stack = stack_from_deployment(deployment, tmp_path / "state")
    [publisher] = stack.feeds
    assert isinstance(publisher, TedPublisher) and Council.BARNSLEY == publisher.council
    assert publisher.ted.base_url.startswith("http://127.0.0.1:1/ted")
    flow = stack.router.flow
    assert isinstance(flow.targets[CaseSystem.TED], TedConnector)
    assert isinstance(flow.sources[CaseSystem.TED], TedConnector)
    assert isinstance(flow.targets[CaseSystem.MAILBOX], MailboxConnector)
    assert {CaseSystem.TED, CaseSystem.MAILBOX} == set(flow.targets)
    assert [Council.BARNSLEY] == list(flow.protocols)  # only the councils served
    # one connector per use (each starts and stops its own HTTP client): none is shared by two users
    uses = [flow.targets[CaseSystem.TED], flow.sources[CaseSystem.TED], publisher.connector]
    assert 3 == len({id(c) for c in uses})
    await stack.stop()  # built, never started: closes its Kafka clients


async def test_sw22_10_run_builds_care_director_publishing_for_swindon_2022(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deployment = load(EXAMPLES / "swindon-2022.toml")
    stack = stack_from_deployment(deployment, tmp_path / "state")
    assert [CareDirectorPublisher] == [type(p) for p in stack.feeds]
    assert Council.SWINDON_2022 == stack.feeds[0].council
    assert isinstance(stack.router.flow.sources[CaseSystem.CARE_DIRECTOR], CareDirectorConnector)
    assert CaseSystem.LCS not in stack.router.flow.sources
    await stack.stop()


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_deployment_file_checks(env: pytest.MonkeyPatch, example: str) -> None:
    result = CliRunner().invoke(app, ["config", "check", str(EXAMPLES / example)])
    assert 0 == result.exit_code, result.output
    assert "routes:" in result.output and result.output.rstrip().endswith("ok")
    for secret in SECRETS.values():
        assert secret not in result.output


def test_five_example_files_one_per_seed_council() -> None:
    stems = {p.stem for p in EXAMPLES.glob("*.toml")}
    assert {"north-somerset", "swindon-2026", "swindon-2022", "luton", "barnsley"} <= stems


def test_a_typo_an_inline_secret_and_a_missing_credential_name_file_line_and_key_and_print_no_secret(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.delenv("TED_TOKEN")
    text = BARNSLEY.replace('topic_prefix = "t-run"', 'topic_prefix = "t-run"\nbatch_sise = 10').replace(
        'password = { file = "smtp-password" }', 'password = "hunter2-inline-secret"'
    )
    path = _file(tmp_path, text)
    with pytest.raises(DeploymentError) as raised:
        load(path)
    problems = raised.value.problems
    assert (
        "deployment.toml: line 5: batch_sise: unknown key (check its spelling against examples/ and the README)"
        in problems
    )
    assert any(p.startswith("deployment.toml: line 10: systems.ted.token: environment variable TED_TOKEN is not set")
               for p in problems)  # fmt: skip
    assert any(p.startswith("deployment.toml: line 16: systems.mail.password: a secret is never written inline")
               for p in problems)  # fmt: skip
    assert "hunter2" not in str(raised.value)
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert 2 == result.exit_code
    assert "hunter2" not in result.output and "Traceback" not in result.output
    assert 3 == len([line for line in result.output.splitlines() if line.startswith("error: deployment.toml:")])


def test_environment_overrides_the_file_and_an_unknown_variable_is_refused(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _file(tmp_path, BARNSLEY)
    env.setenv("CASEBRIDGE_BOOTSTRAP_SERVERS", "kafka.council.example:9093")
    env.setenv("CASEBRIDGE_SYSTEMS__TED__URL", "https://ted.council.example/api")
    env.setenv("CASEBRIDGE_RETRY__TIERS", "[10, 60, 600]")
    d = load(path)
    assert "kafka.council.example:9093" == d.settings.bootstrap_servers
    assert "https://ted.council.example/api" == d.systems["ted"].url  # type: ignore[attr-defined]
    assert [10.0, 60.0, 600.0] == d.settings.retry.tiers
    env.setenv("CASEBRIDGE_MAILBOX__HOST", "smtp.example")  # the old, unsupported spelling is not ignored
    env.setenv("CASEBRIDGE_RETRY__ATTEMPTS", "0")
    with pytest.raises(DeploymentError) as raised:
        load(path)
    assert (
        "deployment.toml: CASEBRIDGE_MAILBOX__HOST (environment): no such setting (a system is a [systems.NAME]"
        " block now; override one with CASEBRIDGE_SYSTEMS__NAME__HOST)"
    ) in raised.value.problems
    assert any(p.startswith("deployment.toml: CASEBRIDGE_RETRY__ATTEMPTS (environment): retry.attempts:")
               for p in raised.value.problems)  # fmt: skip


def test_a_pathway_no_system_serves_is_refused_naming_the_kind_to_add(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = BARNSLEY.split("[systems.mail]")[0]  # TED only: Barnsley's step-downs go to a mailbox
    with pytest.raises(DeploymentError) as raised:
        load(_file(tmp_path, text))
    assert [
        "deployment.toml: barnsley step-down: no system serves mailbox as target;"
        " add a [systems.NAME] block of kind mailbox"
    ] == raised.value.problems


def test_run_without_a_deployment_file_says_what_to_pass(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["run"])
    assert 2 == result.exit_code
    assert "no deployment file: pass --config FILE" in result.output


async def test_a_system_publishing_in_a_two_council_deployment_must_name_its_council(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = (
        (EXAMPLES / "north-somerset.toml")
        .read_text()
        .replace('councils = ["north-somerset"]', 'councils = ["north-somerset", "swindon"]')
    )
    with pytest.raises(DeploymentError) as raised:
        load(_file(tmp_path, text))
    assert 2 == len([p for p in raised.value.problems if "council is required here" in p])
    text = text.replace('kind = "lcs"', 'kind = "lcs"\ncouncil = "swindon"').replace(
        'kind = "ehm"', 'kind = "ehm"\ncouncil = "north-somerset"'
    )
    d = load(_file(tmp_path, text))
    stack = stack_from_deployment(d, tmp_path / "state")
    assert Council.SWINDON == stack.feed(LcsPublisher).council
    await stack.stop()


class _DyingFeed(TedPublisher):
    """A TED publisher whose feed answers something no retry can fix (a refusal that is not transient)."""

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def poll_once(self) -> int:
        raise TargetRefused("feed page refused for Jane Example", status=404)


async def test_a_loop_that_dies_stops_the_stack_and_says_which_without_its_message(
    systems: Systems, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, retry_settings: RetrySettings
) -> None:
    """A side loop (here TED's publisher) that dies is not left dead in a running process: the stack stops
    (``casebridge run`` exits 4 so its supervisor restarts it) and logs the loop and error class only."""
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
    )
    dying = _DyingFeed(
        TedConnector("http://127.0.0.1:1/ted", SecretStr(TOKEN)), kafka_bootstrap, "t", "d", tmp_path / "c"
    )
    stack = Stack(settings, tmp_path / "state", systems=systems.deployed(),
                  extra_publishers=[dying])  # fmt: skip
    with capture_logs() as logs:
        async with stack:
            await asyncio.wait_for(stack.router.stopped.wait(), timeout=30)
    assert "_DyingFeed" == stack.failed
    [failed] = [e for e in logs if e["event"] == "loop_failed"]
    assert ("_DyingFeed", "TargetRefused") == (failed["loop"], failed["error_class"])
    assert "Jane" not in repr(logs)


def test_run_with_kafka_unreachable_says_so_in_one_line_and_exits_5(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``casebridge run`` on a file whose broker does not answer: one line naming the address, no traceback."""
    import subprocess
    import sys

    local = BARNSLEY.replace('topic_prefix = "t-run"', 'topic_prefix = "t-run"\nlocal_development = true')
    path = _file(tmp_path, local)  # bootstrap_servers = "127.0.0.1:1": nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "casebridge", "run", "--config", str(path)],
        env={k: v for k, v in os.environ.items() if not k.startswith("CASEBRIDGE_")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 5 == done.returncode, done.stderr[-2000:]
    assert "error: cannot reach Kafka at 127.0.0.1:1 (bootstrap_servers)" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert SECRETS["TED_TOKEN"] not in done.stderr + done.stdout


def test_a_wrong_lcs_token_ends_run_with_one_line_naming_lcs_and_401(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The LCS feed answers 401: ``casebridge run`` exits 4 saying which system refused and what to check."""
    import time

    from casebridge.localdeploy import RunningDeployment, deployment_file, sandboxes

    with sandboxes(tmp_path / "systems", ("lcs", "ehm")) as systems:
        text, secrets = deployment_file("north-somerset", systems, bootstrap=kafka_bootstrap, prefix=topic_prefix,
                                        state_dir=tmp_path / "state")  # fmt: skip
        secrets["CB_LOCAL_LCS_SECRET"] = "not-the-lcs-token-0123456789"
        config = tmp_path / "ns.toml"
        config.write_text(text)
        run = RunningDeployment(config, secrets, tmp_path / "run.log").start()
        assert run.process is not None
        deadline = time.monotonic() + 60
        while run.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        code = run.stop()  # exited by itself already (else SIGTERM, and the exit code shows it)
    out = run.output()
    assert 4 == code, out[-2000:]
    [line] = [x for x in out.splitlines() if x.startswith("error:")]
    assert "answered 401: check the credentials casebridge uses for lcs (its token in the deployment file)" in line
    assert line.endswith("casebridge run exits 4")
    assert "not-the-lcs-token" not in out and "Traceback" not in out


def test_missing_credentials_are_each_one_line_and_nothing_else_is_blamed(env: pytest.MonkeyPatch) -> None:
    """Luton's example with none of its secrets set: one line per missing variable, and no knock-on complaint
    (the e-mail alert channel's mailbox system is there, only its password is missing)."""
    for name in SECRETS:
        env.delenv(name)
    with pytest.raises(DeploymentError) as raised:
        load(EXAMPLES / "luton.toml")
    assert 4 == len(raised.value.problems), raised.value.problems
    assert all("environment variable" in p and "is not set" in p for p in raised.value.problems)


def test_settings_that_let_a_batch_outlast_its_poll_interval_are_refused_in_one_line_naming_them(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue #19: batch_size / concurrency x calls a transfer x retry.total_seconds bounds how long a batch takes;
    over MAX_BATCH_SECONDS the deployment is refused at start, naming the settings, and within it the consumer's
    max.poll.interval.ms is derived from that bound, so a member working within its settings is never evicted."""
    from router.settings import CALLS_PER_TRANSFER, MAX_BATCH_SECONDS

    path = _file(tmp_path, BARNSLEY)
    env.setenv("CASEBRIDGE_BATCH_SIZE", "2000")
    env.setenv("CASEBRIDGE_CONCURRENCY", "4")
    result = CliRunner().invoke(app, ["run", "--config", str(path)])
    assert 0 != result.exit_code and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("error: deployment.toml: batch_size / concurrency x 6 calls x retry.total_seconds =")
    assert "2000 / 4 x 6 x 30 = 90000 s, over the 3600 s" in line and "lower batch_size" in line
    env.setenv("CASEBRIDGE_CONCURRENCY", "100")  # 20 rounds x 6 calls x 30 s = 3,600 s: within
    settings = load(path).settings
    worst = 20 * CALLS_PER_TRANSFER * 30.0
    assert worst <= MAX_BATCH_SECONDS
    assert (int((worst + 60) * 1000), int((300 + worst + 60) * 1000)) == (
        settings.max_poll_interval_ms(),
        settings.max_poll_interval_ms(300.0),
    )
    assert Settings().max_poll_interval_ms() > 16 * CALLS_PER_TRANSFER * 30 * 1000  # the defaults: 500 / 32 rounds
