"""The ``casebridge`` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import structlog
import typer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from aiokafka.errors import KafkaError as AIOKafkaError
from pydantic import ValidationError
from pydantic_settings import SettingsError
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer's own click
from typer.core import TyperGroup

from connectors import kafka as clients
from connectors.kafka import KafkaConnection
from connectors.kafka import principal as authenticated_principal
from contracts import Council, Direction
from router.deadletters import (
    DeadLetter,
    Filters,
    ReplayRefused,
    ReplayReport,
    Selection,
    Status,
    list_dead_letters,
    list_with_status,
    router_members,
)
from router.deadletters import replay as replay_dead_letters
from router.settings import Topics
from router.topics import TopicMisconfigured

from .logs import configure_logging

if TYPE_CHECKING:
    from router import Settings

    from .deployment import Deployment
    from .localkafka import LocalKafka

log = structlog.get_logger("casebridge.cli")

#: exit codes (README, CLI): 0 ok; 1 nothing found, not running (or an unexpected failure); 2 wrong use or
#: bad settings; 3 and 4 `casebridge run` only (the router halted, a loop died); 5 Kafka unreachable, could not start
EXIT_NOT_FOUND, EXIT_USAGE, EXIT_KAFKA = 1, 2, 5


class _State:
    """What the global options set for this invocation."""

    debug = False


def _debugging(args: Sequence[str] | None) -> bool:
    return _State.debug or "--debug" in (sys.argv[1:] if args is None else args)


def _usage_line(exc: ClickException) -> str:
    """A usage error as one line: what is wrong, and where the help is; a range says its bounds."""
    message = exc.format_message().replace("Value error, ", "")
    param = getattr(exc, "param", None)
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    name = param.opts[-1] if param is not None and getattr(param, "opts", None) else "the value"
    if re.search(r"should be (less|greater) than", message) and (low is not None or high is not None):
        if low is not None and high is not None:
            message = f"{name} must be {low}-{high}"
        else:
            message = f"{name} must be at least {low}" if low is not None else f"{name} must be at most {high}"
    message = " ".join(message.split())
    path = getattr(getattr(exc, "ctx", None), "command_path", None)
    return f"error: {message}" + (f" (see `{path} --help`)" if path else "")


class _Casebridge(TyperGroup):
    """The root command: every failure it did not foresee is still one line on stderr, never a traceback
    (unless --debug); a usage error is one line too, exit 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:  # the help has been printed
            sys.exit(exc.exit_code)
        except ClickException as exc:
            typer.echo(_usage_line(exc), err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(130)
        except Exception as exc:
            if _debugging(args):
                raise
            what = f"{exc.strerror} ({type(exc).__name__})" if isinstance(exc, OSError) and exc.strerror else ""
            typer.echo(
                f"error: unexpected {what or type(exc).__name__}; rerun with --debug for the traceback", err=True
            )
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"casebridge {package_version('casebridge')}")
        except PackageNotFoundError:  # pragma: no cover - run from a tree that was never installed
            typer.echo("casebridge (not installed: no version)")
        raise typer.Exit()


app = typer.Typer(
    cls=_Casebridge,
    help="casebridge: step-up / step-down handovers between children's case systems, over Kafka.\n\n"
    "Exit codes: 0 ok; 1 nothing found or not running; 2 wrong use or bad settings; 3 and 4 `run` only (see its"
    " help); 5 Kafka unreachable or something could not start.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # --debug tracebacks never print local values (tokens, passwords)
)


@app.callback()
def _global_options(
    debug: Annotated[
        bool, typer.Option("--debug", help="on an error, also print its traceback (exit codes unchanged)")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """The global options."""
    _State.debug = debug


def _refuse(line: str, code: int, exc: BaseException | None = None) -> NoReturn:
    """Print ``line`` (one line, never a value that may be secret) and exit ``code``; with --debug, the traceback."""
    if exc is not None and _State.debug:
        traceback.print_exception(exc, file=sys.stderr)
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code=code)


kafka_app = typer.Typer(help="A local single-node Apache Kafka (KRaft) that needs no Docker.", no_args_is_help=True)
sandbox_app = typer.Typer(
    help="Sandbox case systems (real HTTP services with their own storage).", no_args_is_help=True
)
dlq_app = typer.Typer(help="The dead-letter topic: list and inspect what could not be handled.", no_args_is_help=True)
config_app = typer.Typer(help="Deployment files: check one before running it.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(dlq_app, name="dlq")
app.add_typer(config_app, name="config")

HomeOpt = Annotated[
    Path | None, typer.Option(help="broker home (data, logs); default $CASEBRIDGE_HOME/kafka or ~/.casebridge/kafka")
]
PortOpt = Annotated[int, typer.Option(min=1, max=65535, help="client port; the controller listens on port+1")]


_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")  # as the deployment file's topic_prefix


def _broker(home: Path | None, port: int) -> LocalKafka:
    from .localkafka import LocalKafka, default_home

    return LocalKafka(home or default_home(), port=port)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


@kafka_app.command("start")
def kafka_start(
    home: HomeOpt = None,
    port: PortOpt = 9092,
    controller_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="controller port (default: --port + 1)")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for the broker to answer")] = 120.0,
    secure: Annotated[
        bool, typer.Option("--secure", help="TLS + SASL SCRAM-SHA-512, ACLs per principal (README: Deploying securely)")
    ] = False,
    prefix: Annotated[
        str, typer.Option(help="--secure: the topic prefix the principals' ACLs are granted on")
    ] = "casebridge",
) -> None:
    """Start the broker (fetching Kafka's jars with Maven the first time) and print its bootstrap address.

    Progress goes to stderr, the address to stdout; with --secure, then each principal's deployment-file
    [kafka] table (also in HOME/secure/PRINCIPAL.toml). Exits 2 if this home's broker already runs at another
    address, for a --controller-port equal to --port, or --secure on a home formatted plaintext (or the
    reverse); 5 if it could not start (a port taken, no Java, no Maven, no answer in time).
    """
    from .localkafka import AlreadyRunning, KafkaError, LocalKafka, SecurityMismatch, default_home
    from .localkafka_secure import PRINCIPALS as SECURE_PRINCIPALS

    if controller_port == port:
        _refuse("--controller-port must differ from --port", EXIT_USAGE)
    if secure and not _PREFIX_RE.fullmatch(prefix):
        _refuse("--prefix must be a topic prefix: a letter or digit, then letters, digits, '.', '_' or '-'", EXIT_USAGE)
    broker = LocalKafka(
        home or default_home(), port=port, controller_port=controller_port, secure=secure, topic_prefix=prefix
    )
    try:
        address = broker.start(timeout=timeout, exact=True, progress=lambda line: typer.echo(line, err=True))
    except (AlreadyRunning, SecurityMismatch) as exc:
        _refuse(exc.summary, EXIT_USAGE, exc)
    except KafkaError as exc:
        more = " (--debug shows the details)" if exc.summary != str(exc).strip() and not _State.debug else ""
        _refuse(f"{exc.summary}{more}", EXIT_KAFKA, exc)
    typer.echo(address)
    if secure:
        files = broker.secure_files
        for principal in SECURE_PRINCIPALS:
            typer.echo(f"\n# {principal} (topics {prefix}.*): {files.settings_file(principal)}")
            typer.echo(files.client_table(principal), nl=False)


@kafka_app.command("stop")
def kafka_stop(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Stop the broker; its data stays for the next start. Exits 0 also when it was not running."""
    broker = _broker(home, port)
    if not broker.status().running:
        typer.echo(f"not running (home {broker.home})")
        return
    broker.stop()
    typer.echo("stopped")


@kafka_app.command("status")
def kafka_status(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Say whether the broker runs, and where."""
    s = _broker(home, port).status()
    security = (
        f"secured: SASL_SSL, SCRAM-SHA-512, ACLs; client settings in {s.home / 'secure'}/*.toml"
        if s.secure
        else "plaintext"
    )
    typer.echo(f"running at {s.bootstrap} (pid {s.pid}), {security}" if s.running else f"not running (home {s.home})")
    if not s.running:
        raise typer.Exit(code=1)


SandboxPort = Annotated[int, typer.Option(min=1, max=65535, help="listen port")]


def _serve_sandbox(kind: str, db: Path, host: str, port: int, token: str | None) -> None:
    from sandboxes import create_care_director_app, create_ehm_app, create_lcs_app, create_ted_app, run_forever

    env = f"{kind.upper().replace('-', '_')}_SANDBOX_TOKEN"
    token = token or os.environ.get(env)
    if not token:
        raise _fail(ValueError(f"a token is required: --token or ${env}"))
    factories = {
        "lcs": create_lcs_app,
        "ehm": create_ehm_app,
        "care-director": create_care_director_app,
        "ted": create_ted_app,
    }
    _port_free(host, port)
    configure_logging()  # uvicorn's lines (its access log too) go through the redaction
    run_forever(factories[kind](db, token), host, port)


@sandbox_app.command("lcs")
def sandbox_lcs(
    db: Path = Path("lcs.db"), host: str = "127.0.0.1", port: SandboxPort = 8101, token: str | None = None
) -> None:
    """Serve the sandbox Liquidlogic LCS (social care)."""
    _serve_sandbox("lcs", db, host, port, token)


@sandbox_app.command("ehm")
def sandbox_ehm(
    db: Path = Path("ehm.db"), host: str = "127.0.0.1", port: SandboxPort = 8102, token: str | None = None
) -> None:
    """Serve the sandbox Liquidlogic EHM (early help)."""
    _serve_sandbox("ehm", db, host, port, token)


@sandbox_app.command("care-director")
def sandbox_care_director(
    db: Path = Path("care-director.db"), host: str = "127.0.0.1", port: SandboxPort = 8103, token: str | None = None
) -> None:
    """Serve the sandbox Care Director (Swindon 2022 social care)."""
    _serve_sandbox("care-director", db, host, port, token)


@sandbox_app.command("ted")
def sandbox_ted(
    db: Path = Path("ted.db"), host: str = "127.0.0.1", port: SandboxPort = 8104, token: str | None = None
) -> None:
    """Serve the sandbox TED (Barnsley social care)."""
    _serve_sandbox("ted", db, host, port, token)


@sandbox_app.command("smtp")
def sandbox_smtp(
    directory: Annotated[Path, typer.Option("--dir", help="Maildir and ca.pem go here")] = Path("smtp-sandbox"),
    host: str = "127.0.0.1",
    port: SandboxPort = 8025,
    user: str = "casebridge",
    password: str | None = None,
) -> None:
    """Serve a sandbox SMTP relay: STARTTLS and AUTH required, mail kept in a Maildir; prints the CA file to trust."""
    import time

    from sandboxes import SmtpSandbox

    password = password or os.environ.get("SMTP_SANDBOX_PASSWORD")
    if not password:
        raise _fail(ValueError("a password is required: --password or $SMTP_SANDBOX_PASSWORD"))
    _port_free(host, port)
    with SmtpSandbox(directory, user, password, host, port) as relay:
        typer.echo(f"smtp sandbox on {host}:{relay.port}; trust {relay.ca_file}; mail in {relay.maildir_path}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="the deployment file (TOML; default $CASEBRIDGE_CONFIG); see examples/"),
]


def _deployment(config: Path | None) -> Deployment:
    """The deployment file named by --config or $CASEBRIDGE_CONFIG, validated; one line per problem."""
    from .deployment import DeploymentError, load

    path = config or (Path(os.environ["CASEBRIDGE_CONFIG"]) if os.environ.get("CASEBRIDGE_CONFIG") else None)
    if path is None:
        raise _fail(ValueError("no deployment file: pass --config FILE (examples/ has one per council)"))
    try:
        return load(path)
    except DeploymentError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(code=2) from None


#: seconds ``casebridge run`` takes at most to stop after SIGINT/SIGTERM, in every state (the broker away too)
STOP_DEADLINE = 9.5


def _stop_overran() -> None:
    log.warning("stop_overran", seconds=STOP_DEADLINE)
    sys.stderr.flush()
    os._exit(0)


@app.command("run")
def run(
    config: ConfigOpt = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="where connector cursors are kept (default: the file's state_dir)")
    ] = None,
) -> None:
    """Run a deployment: the router, the closures and notices, and every system the deployment file names.

    Exits 0 when stopped (SIGINT, SIGTERM), 2 on a deployment file that cannot run, 3 when the router halted
    (a dead letter could not be written), 4 when a loop died, 5 when it could not start (Kafka unreachable, a
    port taken); a supervisor restarts it and it resumes.
    """
    import uvloop

    from .metrics import MetricsUnavailable, listening, serving
    from .process import freeze_startup_heap
    from .stack import stack_from_deployment

    deployment = _deployment(config)  # before logging is set up: a file that cannot run gets plain lines
    refused = deployment.unencrypted()
    if refused:
        _refuse(refused, EXIT_USAGE)
    configure_logging(level=os.environ.get("CASEBRIDGE_LOG_LEVEL", "INFO").upper())

    if deployment.tracing.otlp_endpoint:
        from connectors import _tracing as tracing

        tracing.configure_otlp(deployment.tracing.otlp_endpoint, deployment.tracing.service_name)

    async def main() -> None:
        metrics = await listening(deployment)  # the metrics port first: taken, nothing else is built
        stack = stack_from_deployment(deployment, state_dir)
        loop = asyncio.get_running_loop()
        stopped = stack.router.stopped  # the same event for every Router the stack runs (recovery keeps it)

        def on_signal() -> None:
            """Stop: every part's stop is bounded (the broker may be away); past STOP_DEADLINE seconds the process
            ends anyway with 0, committing nothing more (what was not acknowledged is read again at the next
            start)."""
            if not stopped.is_set():
                stopped.set()
                watchdog = threading.Timer(STOP_DEADLINE, _stop_overran)
                watchdog.daemon = True
                watchdog.start()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        async with serving(metrics, stack), stack:
            freeze_startup_heap()  # no ~100 ms full-collection pauses over start-up objects while routing
            councils, systems = [c.value for c in deployment.councils], sorted(deployment.systems)
            log.info("deployment_started", councils=councils, systems=systems,
                     loops=[type(f).__name__ for f in stack.feeds])  # fmt: skip
            # one plain line on stdout at any log level: a supervisor (or a test) knows the deployment is up
            served = f"; metrics on {deployment.metrics.address}" if deployment.metrics.address else ""
            line = f"councils {', '.join(councils)}; systems {', '.join(systems)}{served}"
            typer.echo(f"casebridge run: started ({line})")
            await stack.router.stopped.wait()
        if stack.router.halted:
            typer.echo("error: the router halted: an output could not be written (see the log); exits 3", err=True)
            sys.exit(3)
        if stack.failed:
            typer.echo(f"error: {stack.failed} stopped: {stack.failure}; casebridge run exits 4", err=True)
            sys.exit(4)

    try:
        uvloop.run(main())  # libuv's event loop: less CPU a transfer than asyncio's (docs/benchmark.md)
    except KafkaConnectionError:
        protocol = deployment.settings.kafka.security_protocol
        secured = (
            f"; if it runs, check [kafka] ({protocol}: ca_file, username, password)" if protocol != "PLAINTEXT" else ""
        )
        typer.echo(
            f"error: cannot reach Kafka at {deployment.settings.bootstrap_servers} (bootstrap_servers): start the"
            f" broker (casebridge kafka start) or correct the deployment file{secured}",
            err=True,
        )
        raise typer.Exit(code=5) from None
    except TopicMisconfigured as exc:
        typer.echo(f"error: casebridge run refuses to start: {exc}", err=True)
        raise typer.Exit(code=5) from None
    except MetricsUnavailable as exc:
        typer.echo(f"error: casebridge run: {exc}", err=True)
        raise typer.Exit(code=5) from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        typer.echo(f"error: casebridge run: {why} (a port taken, a file unreadable?)", err=True)
        raise typer.Exit(code=5) from None
    finally:
        if deployment.tracing.otlp_endpoint:
            from connectors import _tracing as tracing

            tracing.shutdown()  # the spans still buffered go to the collector (bounded: a collector away loses them)


@config_app.command("check")
def config_check(
    config: Annotated[Path, typer.Argument(metavar="FILE", help="the deployment file to check")],
) -> None:
    """Validate a deployment file and print what would run (systems, loops, routes); starts nothing."""
    from .registry import KINDS

    d = _deployment(config)
    s = d.settings
    typer.echo(f"deployment {config}: councils {', '.join(c.value for c in d.councils)}")
    typer.echo(f"  kafka {s.bootstrap_servers}, topics {s.topic_prefix}.*, router group {s.group_id}")
    local = " (local_development = true)" if d.local_development else ""
    typer.echo(f"  kafka security: {s.kafka.describe()}{local}")
    typer.echo(f"  state in {d.state_dir}; retry tiers {', '.join(f'{t:g}s' for t in s.retry.tiers)}")
    typer.echo("systems:")
    for name, cfg in d.systems.items():
        kind = KINDS[cfg.kind]
        serves = [f"target for {t.value}" for t in kind.targets] + [f"source for {x.value}" for x in kind.sources]
        whose = f" (for {d.council_of(name).value})" if kind.publishes else ""
        loops = f"; loops: {kind.loops}{whose}" if kind.loops else ""
        typer.echo(f"  {name}: {cfg.kind} ({', '.join(serves)}){loops}")
    typer.echo("routes:")
    for council, direction, source, src_name, tgt_name, team in d.routes():
        to = f" to {team}" if team else ""
        typer.echo(f"  {council.value} {direction.value}: from {src_name} ({source}) -> {tgt_name}{to}")
    typer.echo(f"alerts: {', '.join(f'{n} ({c.kind})' for n, c in d.alerts.items()) or 'none (alert events only)'}")
    where = d.metrics.address
    typer.echo(f"metrics: {where} and /healthz" if where else "metrics: off (no [metrics] port)")
    collector = d.tracing.otlp_endpoint
    typer.echo(f"tracing: OTLP to {collector}/v1/traces" if collector else "tracing: off (no [tracing] otlp_endpoint)")
    refused = d.unencrypted()
    if refused:
        _refuse(f"casebridge run would refuse it: {refused}", EXIT_USAGE)
    typer.echo("ok")


@app.command("demo")
def demo(
    home: HomeOpt = None,
    port: PortOpt = 9092,
    bootstrap: Annotated[str | None, typer.Option(help="use this broker instead of starting the local one")] = None,
    keep_kafka: Annotated[bool, typer.Option(help="leave the local broker running afterwards")] = False,
) -> None:
    """Every seed council deployed with `casebridge run --config` on its sandboxes; prints each case's outcome.

    Exits 0 only if every case ended as expected. CASEBRIDGE_LOG_LEVEL below WARNING also writes each
    run's log to stderr.
    """
    import sys

    import uvloop

    from .demo import run_demo
    from .localkafka import KafkaError

    level = os.environ.get("CASEBRIDGE_LOG_LEVEL", "WARNING").upper()
    configure_logging(level="WARNING", json=False)
    # fresh demo topics make aiokafka log leader elections as errors for a second; not news for a demo
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    broker = None
    if bootstrap is None:
        broker = _broker(home, port)
        was_running = broker.status().running
        typer.echo("starting the local Kafka broker (the first start fetches Kafka's jars from Maven Central) ...")
        try:
            bootstrap = broker.start(timeout=180)
        except KafkaError as exc:
            raise _fail(exc) from exc
        if was_running:
            broker = None  # not ours to stop
    logs = sys.stderr if logging.getLevelName(level) in (logging.DEBUG, logging.INFO) else None
    try:
        ok = uvloop.run(run_demo(bootstrap, out=typer.echo, level=level, logs=logs))  # the loop `casebridge run` uses
    finally:
        if broker is not None and not keep_kafka:
            broker.stop()
            typer.echo("(the local broker is stopped now; `casebridge demo --keep-kafka` keeps it for those commands)")
    raise typer.Exit(code=0 if ok else 1)


BootstrapOpt = Annotated[
    str | None, typer.Option(help="Kafka bootstrap servers (default $CASEBRIDGE_BOOTSTRAP_SERVERS)")
]
PrefixOpt = Annotated[str | None, typer.Option(help="topic prefix (default $CASEBRIDGE_TOPIC_PREFIX or casebridge)")]
CouncilOpt = Annotated[Council | None, typer.Option(help="only this council")]
PathwayOpt = Annotated[Direction | None, typer.Option(help="only this pathway")]
RuleOpt = Annotated[str | None, typer.Option("--rule", help="only dead letters naming this rule id, e.g. NS-7")]
ErrorOpt = Annotated[str | None, typer.Option("--error-class", help="only this error class, e.g. TargetRefused")]
TransferOpt = Annotated[str | None, typer.Option("--transfer", help="only this transfer id")]
SinceOpt = Annotated[datetime | None, typer.Option(help="last failure at or after (ISO 8601, UTC if no zone)")]
UntilOpt = Annotated[datetime | None, typer.Option(help="last failure at or before")]
StatusOpt = Annotated[
    Status | None,
    typer.Option(
        help="only dead letters in this status: waiting (nothing since), replayed, parked (its replay failed"
        " again), resolved (its transfer completed later), expired (held by reference, its record gone)"
    ),
]


def _variable(loc: Sequence[int | str]) -> str:
    """The environment variable of a settings field: ("retry", "tiers", 0) -> CASEBRIDGE_RETRY__TIERS[0]."""
    names = [str(part).upper() for part in loc if isinstance(part, str)]
    indexes = "".join(f"[{part}]" for part in loc if isinstance(part, int))
    return "CASEBRIDGE_" + ("__".join(names) or "*") + indexes


def _settings() -> Settings:
    """The CASEBRIDGE_* settings; a malformed one exits 2 with one line per problem, naming the variable and
    the rule, never the value."""
    from router import Settings

    try:
        return Settings()
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        for error in errors:
            message = error["msg"].removeprefix("Value error, ")
            typer.echo(f"error: {_variable(error['loc'])}: {message} (value not shown)", err=True)
        if _State.debug:
            traceback.print_exception(exc, file=sys.stderr)
        raise typer.Exit(code=EXIT_USAGE) from None
    except SettingsError as exc:  # a value that is not JSON where JSON is needed: pydantic-settings names the field
        found = re.search(r'field "([^"]+)"', str(exc))
        field = (found.group(1) if found else "").upper()
        prefix = f"CASEBRIDGE_{field}"
        named = sorted({k.upper() for k in os.environ if k.upper() == prefix or k.upper().startswith(prefix + "__")})
        named = named or [f"CASEBRIDGE_{field or '*'}"]
        for variable in named:
            typer.echo(f"error: {variable}: is not valid JSON, e.g. [30, 300] for a list (value not shown)", err=True)
        if _State.debug:
            traceback.print_exception(exc, file=sys.stderr)
        raise typer.Exit(code=EXIT_USAGE) from None


def _where(bootstrap: str | None, prefix: str | None) -> tuple[KafkaConnection, Topics]:
    """Where Kafka is and how to talk to it (--bootstrap or CASEBRIDGE_BOOTSTRAP_SERVERS; CASEBRIDGE_KAFKA__*
    for TLS and SASL), and the topics (--prefix or CASEBRIDGE_TOPIC_PREFIX)."""
    settings = _settings()
    kafka = KafkaConnection.of(bootstrap or settings.bootstrap_servers, settings.kafka)
    return kafka, Topics(prefix or settings.topic_prefix)


OperatorOpt = Annotated[
    str | None,
    typer.Option(
        help="who acts (audited). On an authenticated Kafka connection (SASL, or a client certificate) the audit names"
        " the authenticated principal, and --operator, if given, must be it; otherwise --operator is required"
    ),
]


def _operator(given: str | None, kafka: KafkaConnection, what: str) -> str:
    """Who the audit record names: the principal Kafka authenticated this command as, or (over an unauthenticated
    local connection) the name given. A name that is not the principal is refused: nobody acts as someone else."""
    authenticated = authenticated_principal(kafka)
    name = (given or "").strip()
    if authenticated is not None:
        if name and name != authenticated:
            _refuse(
                f"--operator {name!r} is not the principal Kafka authenticates this command as ({authenticated!r},"
                " CASEBRIDGE_KAFKA__USERNAME): leave --operator out, or sign in as that operator",
                EXIT_USAGE,
            )
        return authenticated
    if not name:
        _refuse(f"--operator must name who {what} (every such action is audited)", EXIT_USAGE)
    return name


#: a replay of at least this many dead letters shows a progress bar (stderr)
PROGRESS_FROM = 10

#: how long an operator command waits for Kafka to answer at all
REACH_TIMEOUT = 15.0


def _quiet_kafka_logs() -> None:
    """aiokafka logs each failed connection (and asyncio an unclosed consumer): the one error line says it."""
    if not _State.debug:
        for name in ("aiokafka", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _kafka(kafka: KafkaConnection) -> Iterator[None]:
    """Kafka unreachable (or failing) inside: one line naming the address, exit 5."""
    _quiet_kafka_logs()
    servers = kafka.bootstrap_servers
    secured = (
        f" If it runs, check its {kafka.security_protocol} settings (CASEBRIDGE_KAFKA__*: the CA, the user and"
        " password)"
        if kafka.security_protocol != "PLAINTEXT"
        else ""
    )
    try:
        yield
    except (KafkaConnectionError, TimeoutError) as exc:
        _refuse(
            f"cannot reach Kafka at {servers}: is it running? Start it (casebridge kafka start) or pass"
            f" --bootstrap HOST:PORT (default $CASEBRIDGE_BOOTSTRAP_SERVERS).{secured}",
            EXIT_KAFKA,
            exc,
        )
    except (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
        who = authenticated_principal(kafka)
        _refuse(
            f"Kafka at {servers} refused {'principal ' + repr(who) if who else 'this client'}: not authorized"
            f" ({type(exc).__name__}); this command needs the ACLs of the operator principal (README, Deploying"
            " securely): sign in as an operator (CASEBRIDGE_KAFKA__USERNAME) or ask for the ACL",
            EXIT_KAFKA,
            exc,
        )
    except AIOKafkaError as exc:
        _refuse(f"Kafka at {servers} failed: {type(exc).__name__}; retry, or see the broker's log", EXIT_KAFKA, exc)


async def _topics_on(kafka: KafkaConnection) -> set[str]:
    """The topics of the cluster (asking for all of them: a metadata request naming one may create it)."""
    client = clients.client(kafka, request_timeout_ms=int(REACH_TIMEOUT * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), REACH_TIMEOUT)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), REACH_TIMEOUT)
        return set(metadata.topics())
    finally:
        await client.close()


def _reach(kafka: KafkaConnection) -> set[str]:
    """Ask Kafka at ``kafka`` for its topics; unreachable: one line, exit 5; not HOST:PORT: exit 2."""
    servers = kafka.bootstrap_servers
    if not all(re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}|[\w.-]+", part.strip()) for part in servers.split(",")):
        _refuse(
            f"Kafka bootstrap servers {servers!r} are not HOST:PORT[,HOST:PORT] (--bootstrap or"
            " CASEBRIDGE_BOOTSTRAP_SERVERS)",
            EXIT_USAGE,
        )
    with _kafka(kafka):
        try:
            return asyncio.run(_topics_on(kafka))
        except ValueError as exc:
            _refuse(f"Kafka bootstrap servers {servers!r} are not HOST:PORT[,HOST:PORT]", EXIT_USAGE, exc)


def _port_free(host: str, port: int) -> None:
    """Exit 5 with one line if ``host:port`` cannot be listened on (before a server logs its own traceback)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            _refuse(f"cannot listen on {host}:{port}: {why}; stop what holds it or pick another --port", EXIT_KAFKA)


def _dead_letter_topic(kafka: KafkaConnection, topics: Topics) -> None:
    """Exit 1 with a hint when the dead-letter topic does not exist (a wrong prefix, most often)."""
    if topics.dead_letter not in _reach(kafka):
        _refuse(
            f"no dead-letter topic {topics.dead_letter} on {kafka.bootstrap_servers}: is the prefix right? (the"
            " deployment file's topic_prefix; --prefix or CASEBRIDGE_TOPIC_PREFIX)",
            EXIT_NOT_FOUND,
        )


def _filters(
    council: Council | None, pathway: Direction | None, rule: str | None, error_class: str | None,
    transfer: str | None, since: datetime | None, until: datetime | None,
) -> Filters:  # fmt: skip
    return Filters(
        council=council.value if council else None, pathway=pathway.value if pathway else None, rule_id=rule,
        error_class=error_class, transfer_id=transfer, since=since, until=until,
    )  # fmt: skip


#: what `dlq list` shows, in this order (the JSON lines carry these and `replayed`)
LIST_COLUMNS = [
    "id", "status", "last_failure", "council", "pathway", "transfer_id", "stage", "error_class", "rule_ids", "reason",
]  # fmt: skip
#: what `replay --dry-run` shows of each dead letter it would replay
REPLAY_COLUMNS = ["id", "transfer_id", "council", "error_class", "rule_ids", "reason", "status"]


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], indent: str = "") -> list[str]:
    """Rows as aligned text columns; an empty cell is ``-`` (a dead letter with no transfer id says so)."""
    cells = [[(", ".join(r[c]) if isinstance(r[c], list) else str(r[c])) or "-" for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [list(columns), *cells]
    ]


IndexOpt = Annotated[
    Path | None,
    typer.Option(
        "--index",
        envvar="CASEBRIDGE_INDEX",
        help="the local dead-letter index file, brought up to date on each call (default: under $XDG_STATE_HOME"
        " or ~/.local/state, casebridge/<bootstrap+prefix hash>/)",
        show_envvar=True,
    ),
]
NoIndexOpt = Annotated[bool, typer.Option("--no-index", help="read the topics whole instead of the local index")]


async def _selection(kafka: KafkaConnection, topics: Topics, index: Path | None, no_index: bool) -> Selection | None:
    """The local dead-letter index brought up to date (casebridge/dlqindex.py), or None: ``--no-index``, or an
    index that cannot be used (one line on stderr; the topics are then read whole). The caller closes it."""
    if no_index:
        return None
    from .dlqindex import IndexedSelection, IndexUnusable, default_path

    def say(line: str) -> None:
        typer.echo(line, err=True)

    selection = IndexedSelection(kafka, topics, index or default_path(kafka, topics), say=say)
    try:
        await selection.open()
    except IndexUnusable as exc:
        say(f"warning: {exc}")
        return None
    except BaseException:
        await selection.close()
        raise
    return selection


async def _closing(selection: Selection | None) -> None:
    close = getattr(selection, "close", None)
    if close is not None:
        await close()


@dlq_app.command("list")
def dlq_list(
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
    council: CouncilOpt = None,
    pathway: PathwayOpt = None,
    rule: RuleOpt = None,
    error_class: ErrorOpt = None,
    transfer: TransferOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    index: IndexOpt = None,
    no_index: NoIndexOpt = False,
) -> None:
    """List dead letters with their status (no personal data: ids, status, council, pathway, stage, error, rules,
    reason). The status comes from the audit, parking and events topics: waiting, replayed, parked, resolved, expired.
    They are read through a local index that each call brings up to date with what is new (--no-index: read whole).

    Exits 1 if there is no dead-letter topic under the prefix, 5 if Kafka cannot be reached.
    """
    kafka, topics = _where(bootstrap, prefix)
    _dead_letter_topic(kafka, topics)
    filters = _filters(council, pathway, rule, error_class, transfer, since, until)

    async def listing() -> list[dict[str, Any]]:
        selection = await _selection(kafka, topics, index, no_index)
        try:
            return await list_with_status(kafka, topics, filters, status, selection)
        finally:
            await _closing(selection)

    with _kafka(kafka):
        rows = asyncio.run(listing())
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    for line in _table(rows, LIST_COLUMNS):
        typer.echo(line)
    counts = ", ".join(f"{n} {s}" for s in Status if (n := sum(r["status"] == s for r in rows)))
    typer.echo(f"{len(rows)} dead letter(s)" + (f": {counts}" if counts else ""))


@dlq_app.command("show")
def dlq_show(
    dead_letter_id: Annotated[str, typer.Argument(metavar="ID", help="PARTITION:OFFSET, as `dlq list` shows")],
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
    value: Annotated[bool, typer.Option(help="also print the message itself (it may hold personal data)")] = False,
    index: IndexOpt = None,
    no_index: NoIndexOpt = False,
) -> None:
    """One dead letter: its context headers, and with --value the original message.

    Exits 1 if there is no such dead letter (or no dead-letter topic), 2 for an ID that is not PARTITION:OFFSET.
    """
    if not re.fullmatch(r"\d+:\d+", dead_letter_id):
        _refuse("a dead letter id is PARTITION:OFFSET, e.g. 0:12 (as `casebridge dlq list` shows)", EXIT_USAGE)
    kafka, topics = _where(bootstrap, prefix)
    _dead_letter_topic(kafka, topics)

    async def finding() -> list[DeadLetter]:
        from .dlqindex import IndexedSelection

        selection = await _selection(kafka, topics, index, no_index)
        try:
            if isinstance(selection, IndexedSelection):  # looked up in the index, then fetched by its offset
                one = await selection.find(dead_letter_id)
                return [one] if one is not None else []
            return [d for d in await list_dead_letters(kafka, topics) if d.id == dead_letter_id]
        finally:
            await _closing(selection)

    with _kafka(kafka):
        found = asyncio.run(finding())
    if not found:
        _refuse(f"no dead letter {dead_letter_id} in {topics.dead_letter} (see `casebridge dlq list`)", EXIT_NOT_FOUND)
    d = found[0]
    typer.echo(json.dumps({"id": d.id, "key": (d.key or b"").decode(errors="replace"), "context": d.context}, indent=2))
    if value:
        typer.echo((d.value or b"").decode(errors="replace"))


@app.command("replay")
def replay_cmd(
    operator: OperatorOpt = None,
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
    council: CouncilOpt = None,
    pathway: PathwayOpt = None,
    rule: RuleOpt = None,
    error_class: ErrorOpt = None,
    transfer: TransferOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be replayed; change nothing")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="replay at most this many")] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="messages per second at most")] = 20.0,
    router_group: Annotated[
        str | None,
        typer.Option(help="the router's consumer group, to say whether it is consuming (default PREFIX-router)"),
    ] = None,
    index: IndexOpt = None,
    no_index: NoIndexOpt = False,
) -> None:
    """Replay dead letters through every check again, once each, audited; failures go to the parking topic.

    --dry-run prints one line per dead letter it would replay (id, transfer, council, error, rules, reason, status)
    and whether a router is consuming the transfers topic (its consumer group has members).

    Exits 1 if there is no dead-letter topic under the prefix, 2 without an operator, 5 if Kafka cannot be reached.
    """
    kafka, topics = _where(bootstrap, prefix)
    operator = _operator(operator, kafka, "replays")
    filters = _filters(council, pathway, rule, error_class, transfer, since, until)
    _dead_letter_topic(kafka, topics)
    group = router_group or f"{topics.prefix}-router"

    bar: Any = None

    def progress(done: int, total: int) -> None:
        """A progress bar on stderr for a replay of more than a few (stdout keeps the report)."""
        nonlocal bar
        if total < PROGRESS_FROM:
            return
        if bar is None:
            bar = typer.progressbar(length=total, label="replaying", file=sys.stderr, show_pos=True, show_eta=True)
            bar.__enter__()
        bar.update(1)

    async def replaying() -> tuple[ReplayReport, int | None]:
        members = await router_members(kafka, group)
        selection = await _selection(kafka, topics, index, no_index)
        try:
            report = await replay_dead_letters(
                kafka, topics, operator=operator, filters=filters, dry_run=dry_run, limit=limit, rate_per_second=rate,
                progress=progress, selection=selection,
            )  # fmt: skip
        finally:
            await _closing(selection)
        return report, members

    try:
        with _kafka(kafka):
            report, members = asyncio.run(replaying())
    except ReplayRefused as exc:
        raise _fail(exc) from exc
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    verb = "would replay" if dry_run else "replayed"
    done = report.selected if dry_run else report.replayed
    typer.echo(f"{verb} {len(done)} dead letter(s)" + (":" if done else ""))
    if done:
        for line in _table([report.letters[i] for i in done], REPLAY_COLUMNS, indent="  "):
            typer.echo(line)
    if members is None:
        typer.echo(f"router: cannot tell whether one is consuming (Kafka did not describe consumer group {group})")
    elif members:
        typer.echo(f"router: consuming (consumer group {group}: {members} casebridge run process(es))")
    else:
        typer.echo(
            f"router: none consuming (consumer group {group} has no members): replayed messages wait on"
            f" {topics.transfers} until `casebridge run` starts"
        )
    if report.already_replayed:
        typer.echo(f"skipped {len(report.already_replayed)} already replayed: {', '.join(report.already_replayed)}")
    if report.by_reference:
        typer.echo(
            f"skipped {len(report.by_reference)} too big to replay (held by reference; `casebridge dlq show ID` names"
            f" the original topic, partition and offset): {', '.join(report.by_reference)}"
        )


@app.command("allocate")
def allocate_cmd(
    transfer_id: Annotated[
        str, typer.Argument(help="the transfer waiting for its allocation (LU-7 notice, SW22-10 or BA-9 closure)")
    ],
    worker: Annotated[str, typer.Option(help="the allocated worker's name (named on the closure record)")],
    organisation: Annotated[str, typer.Option(help="the worker's organisation (BA-6)")],
    operator: OperatorOpt = None,
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Record that the receiving team allocated a worker, where its system cannot report it (a team mailbox).

    What waits for the allocation then goes: the allocation notice (LU-7), the closure naming the worker
    (SW22-10), the documents then the close (BA-9). Audited (who, when, which transfer and rules) on the
    audit topic; the worker's name is kept in the pending closure only (no event, audit record or log line).
    """
    from contracts import Person
    from router.allocations import AllocationRefused, record_allocation

    settings = _settings()
    settings = settings.model_copy(
        update={
            "bootstrap_servers": bootstrap or settings.bootstrap_servers,
            "topic_prefix": prefix or settings.topic_prefix,
        }
    )
    kafka = settings.connection
    operator = _operator(operator, kafka, "records the allocation")
    try:
        person = Person(name=worker, role="Family Support Worker", organisation=organisation)
    except ValidationError as exc:
        fields = ", ".join(sorted({"--" + str(e["loc"][0]) for e in exc.errors() if e["loc"]})) or "--worker"
        _refuse(f"{fields.replace('--name', '--worker')}: not a usable name (value not shown)", EXIT_USAGE)
    _reach(kafka)
    try:
        with _kafka(kafka):
            done = asyncio.run(record_allocation(settings, transfer_id, person, operator))
    except AllocationRefused as exc:
        raise _fail(exc) from exc
    serves = [*(["the closure falls due"] if done.closure else []), *(["the notice goes"] if done.notice else [])]
    typer.echo(f"recorded: {done.transfer_id} ({', '.join(done.rule_ids)}); {' and '.join(serves)} on the next poll")


@app.command("monitor")
def monitor_cmd(
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
    host: Annotated[
        str | None, typer.Option(help="listen address (default $CASEBRIDGE_MONITOR__HOST or 127.0.0.1)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="listen port (default $CASEBRIDGE_MONITOR__PORT or 8100)")
    ] = None,
    db: Annotated[Path | None, typer.Option(help="tracker database (default $CASEBRIDGE_MONITOR__DB)")] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="drop the tracker database and re-read the events topic")
    ] = False,
) -> None:
    """Serve the monitoring page, its JSON API, /metrics and /asyncapi.json, tracking the events topic.

    Tokens come from CASEBRIDGE_MONITOR__TOKENS, a JSON list of {"token", "name", "role"}
    with role viewer or operator, each token at least 32 characters; without any token nobody can sign in.
    A setting that cannot be used exits 2, naming the variable and the rule (never the value); Kafka
    unreachable exits 5.
    """
    from monitor import Monitor, MonitorSettingsError, create_app, load_settings
    from sandboxes import run_forever

    try:
        settings = load_settings()  # one line per problem, naming the variable and the rule, never the value
    except MonitorSettingsError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(code=2) from None
    kafka, topics = _where(bootstrap, prefix)
    _reach(kafka)  # before logging is set up: an unreachable broker gets one plain line, exit 5
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)
    logging.getLogger("asyncio").setLevel(logging.NOTSET)
    configure_logging(level=os.environ.get("CASEBRIDGE_LOG_LEVEL", "INFO").upper())
    settings = settings.model_copy(
        update={k: v for k, v in {"host": host, "port": port, "db": db}.items() if v is not None}
    )
    _port_free(settings.host, settings.port)
    if not settings.tokens:
        typer.echo("warning: CASEBRIDGE_MONITOR__TOKENS is empty, so nobody can sign in", err=True)
    monitor = Monitor(settings, kafka, topics, rebuild=rebuild)
    typer.echo(
        f"casebridge monitor on http://{settings.host}:{settings.port}/ (events {topics.events}, db {settings.db})"
    )
    run_forever(create_app(monitor), settings.host, settings.port)


@app.command("schema")
def schema() -> None:
    """Write the contracts' JSON Schema files (contracts/schemas) and contracts/asyncapi.json."""
    from contracts.schema import main as export
    from monitor.asyncapi import main as export_asyncapi

    export()
    export_asyncapi()


def main() -> None:
    app()
