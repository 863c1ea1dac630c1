"""The ``casebridge`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import structlog
import typer
import uvloop
from aiokafka.errors import KafkaConnectionError

from router.deadletters import Filters, ReplayRefused, list_dead_letters
from router.deadletters import replay as replay_dead_letters
from router.settings import Topics
from router.topics import TopicMisconfigured

from .localkafka import KafkaError, LocalKafka, default_home
from .logs import configure_logging
from .process import freeze_startup_heap

if TYPE_CHECKING:
    from .deployment import Deployment

log = structlog.get_logger("casebridge.cli")

app = typer.Typer(
    help="casebridge: step-up / step-down handovers between children's case systems, over Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
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
PortOpt = Annotated[int, typer.Option(help="client port; the controller listens on port+1")]


def _broker(home: Path | None, port: int) -> LocalKafka:
    return LocalKafka(home or default_home(), port=port)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


@kafka_app.command("start")
def kafka_start(home: HomeOpt = None, port: PortOpt = 9092, timeout: float = 120.0) -> None:
    """Start the broker (fetching Kafka's jars with Maven the first time) and print its bootstrap address."""
    try:
        typer.echo(_broker(home, port).start(timeout=timeout))
    except KafkaError as exc:
        raise _fail(exc) from exc


@kafka_app.command("stop")
def kafka_stop(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Stop the broker; its data stays for the next start."""
    _broker(home, port).stop()
    typer.echo("stopped")


@kafka_app.command("status")
def kafka_status(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Say whether the broker runs, and where."""
    s = _broker(home, port).status()
    typer.echo(f"running at {s.bootstrap} (pid {s.pid})" if s.running else f"not running (home {s.home})")
    if not s.running:
        raise typer.Exit(code=1)


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
    configure_logging()  # uvicorn's lines (its access log too) go through the redaction
    run_forever(factories[kind](db, token), host, port)


@sandbox_app.command("lcs")
def sandbox_lcs(db: Path = Path("lcs.db"), host: str = "127.0.0.1", port: int = 8101, token: str | None = None) -> None:
    """Serve the sandbox Liquidlogic LCS (social care)."""
    _serve_sandbox("lcs", db, host, port, token)


@sandbox_app.command("ehm")
def sandbox_ehm(db: Path = Path("ehm.db"), host: str = "127.0.0.1", port: int = 8102, token: str | None = None) -> None:
    """Serve the sandbox Liquidlogic EHM (early help)."""
    _serve_sandbox("ehm", db, host, port, token)


@sandbox_app.command("care-director")
def sandbox_care_director(
    db: Path = Path("care-director.db"), host: str = "127.0.0.1", port: int = 8103, token: str | None = None
) -> None:
    """Serve the sandbox Care Director (Swindon 2022 social care)."""
    _serve_sandbox("care-director", db, host, port, token)


@sandbox_app.command("ted")
def sandbox_ted(db: Path = Path("ted.db"), host: str = "127.0.0.1", port: int = 8104, token: str | None = None) -> None:
    """Serve the sandbox TED (Barnsley social care)."""
    _serve_sandbox("ted", db, host, port, token)


@sandbox_app.command("smtp")
def sandbox_smtp(
    directory: Annotated[Path, typer.Option("--dir", help="Maildir and ca.pem go here")] = Path("smtp-sandbox"),
    host: str = "127.0.0.1",
    port: int = 8025,
    user: str = "casebridge",
    password: str | None = None,
) -> None:
    """Serve a sandbox SMTP relay: STARTTLS and AUTH required, mail kept in a Maildir; prints the CA file to trust."""
    import time

    from sandboxes import SmtpSandbox

    password = password or os.environ.get("SMTP_SANDBOX_PASSWORD")
    if not password:
        raise _fail(ValueError("a password is required: --password or $SMTP_SANDBOX_PASSWORD"))
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
    from .stack import stack_from_deployment

    deployment = _deployment(config)  # before logging is set up: a file that cannot run gets plain lines
    configure_logging(level=os.environ.get("CASEBRIDGE_LOG_LEVEL", "INFO").upper())

    async def main() -> None:
        stack = stack_from_deployment(deployment, state_dir)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stack.router.stopped.set)
        async with stack:
            freeze_startup_heap()  # no ~100 ms full-collection pauses over start-up objects while routing
            councils, systems = [c.value for c in deployment.councils], sorted(deployment.systems)
            log.info("deployment_started", councils=councils, systems=systems,
                     loops=[type(f).__name__ for f in stack.feeds])  # fmt: skip
            # one plain line on stdout at any log level: a supervisor (or a test) knows the deployment is up
            typer.echo(f"casebridge run: started (councils {', '.join(councils)}; systems {', '.join(systems)})")
            await stack.router.stopped.wait()
        if stack.router.halted:
            typer.echo("error: the router halted: an output could not be written (see the log); exits 3", err=True)
            sys.exit(3)
        if stack.failed:
            typer.echo(f"error: {stack.failed} stopped: {stack.failure}; casebridge run exits 4", err=True)
            sys.exit(4)

    try:
        uvloop.run(main())  # libuv's event loop: less CPU a transfer than asyncio's (README Benchmark)
    except KafkaConnectionError:
        typer.echo(
            f"error: cannot reach Kafka at {deployment.settings.bootstrap_servers} (bootstrap_servers): start the"
            " broker (casebridge kafka start) or correct the deployment file",
            err=True,
        )
        raise typer.Exit(code=5) from None
    except TopicMisconfigured as exc:
        typer.echo(f"error: casebridge run refuses to start: {exc}", err=True)
        raise typer.Exit(code=5) from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        typer.echo(f"error: casebridge run: {why} (a port taken, a file unreadable?)", err=True)
        raise typer.Exit(code=5) from None


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
    typer.echo(f"  state in {d.state_dir}; retry tiers {', '.join(f'{t:g}s' for t in s.retry.tiers)}")
    typer.echo("systems:")
    for name, cfg in d.systems.items():
        kind = KINDS[cfg.kind]
        serves = [f"target for {t.value}" for t in kind.targets] + [f"source for {x.value}" for x in kind.sources]
        loops = f"; loops: {kind.loops} (for {d.council_of(name).value})" if kind.loops else ""
        typer.echo(f"  {name}: {cfg.kind} ({', '.join(serves)}){loops}")
    typer.echo("routes:")
    for council, direction, source, src_name, tgt_name, team in d.routes():
        to = f" to {team}" if team else ""
        typer.echo(f"  {council.value} {direction.value}: from {src_name} ({source}) -> {tgt_name}{to}")
    typer.echo(f"alerts: {', '.join(f'{n} ({c.kind})' for n, c in d.alerts.items()) or 'none (alert events only)'}")
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

    from .demo import run_demo

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
CouncilOpt = Annotated[str | None, typer.Option(help="only this council, e.g. north-somerset")]
PathwayOpt = Annotated[str | None, typer.Option(help="only step-up or step-down")]
RuleOpt = Annotated[str | None, typer.Option("--rule", help="only dead letters naming this rule id, e.g. NS-7")]
ErrorOpt = Annotated[str | None, typer.Option("--error-class", help="only this error class, e.g. TargetRefused")]
TransferOpt = Annotated[str | None, typer.Option("--transfer", help="only this transfer id")]
SinceOpt = Annotated[datetime | None, typer.Option(help="last failure at or after (ISO 8601, UTC if no zone)")]
UntilOpt = Annotated[datetime | None, typer.Option(help="last failure at or before")]


def _where(bootstrap: str | None, prefix: str | None) -> tuple[str, Topics]:
    from router import Settings

    settings = Settings()
    return bootstrap or settings.bootstrap_servers, Topics(prefix or settings.topic_prefix)


def _filters(
    council: str | None, pathway: str | None, rule: str | None, error_class: str | None, transfer: str | None,
    since: datetime | None, until: datetime | None,
) -> Filters:  # fmt: skip
    return Filters(
        council=council, pathway=pathway, rule_id=rule, error_class=error_class, transfer_id=transfer,
        since=since, until=until,
    )  # fmt: skip


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
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List dead letters (no personal data: ids, council, pathway, stage, error, rules, reason)."""
    servers, topics = _where(bootstrap, prefix)
    found = asyncio.run(
        list_dead_letters(servers, topics, _filters(council, pathway, rule, error_class, transfer, since, until))
    )
    rows = [d.summary() for d in found]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    columns = ["id", "last_failure", "council", "pathway", "transfer_id", "stage", "error_class", "rule_ids", "reason"]
    table = [[", ".join(r[c]) if isinstance(r[c], list) else str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in table)]) for i, c in enumerate(columns)]
    for line in [columns, *table]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    typer.echo(f"{len(rows)} dead letter(s)")


@dlq_app.command("show")
def dlq_show(
    dead_letter_id: Annotated[str, typer.Argument(metavar="ID", help="PARTITION:OFFSET, as `dlq list` shows")],
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
    value: Annotated[bool, typer.Option(help="also print the message itself (it may hold personal data)")] = False,
) -> None:
    """One dead letter: its context headers, and with --value the original message."""
    servers, topics = _where(bootstrap, prefix)
    found = [d for d in asyncio.run(list_dead_letters(servers, topics)) if d.id == dead_letter_id]
    if not found:
        raise _fail(LookupError(f"no dead letter {dead_letter_id} in {topics.dead_letter}"))
    d = found[0]
    typer.echo(json.dumps({"id": d.id, "key": (d.key or b"").decode(errors="replace"), "context": d.context}, indent=2))
    if value:
        typer.echo((d.value or b"").decode(errors="replace"))


@app.command("replay")
def replay_cmd(
    operator: Annotated[str | None, typer.Option(help="who replays (required: every replay is audited)")] = None,
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
) -> None:
    """Replay dead letters through every check again, once each, audited; failures go to the parking topic."""
    servers, topics = _where(bootstrap, prefix)
    filters = _filters(council, pathway, rule, error_class, transfer, since, until)
    try:
        report = asyncio.run(
            replay_dead_letters(
                servers, topics, operator=operator, filters=filters, dry_run=dry_run, limit=limit, rate_per_second=rate
            )
        )
    except ReplayRefused as exc:
        raise _fail(exc) from exc
    verb = "would replay" if dry_run else "replayed"
    done = report.selected if dry_run else report.replayed
    typer.echo(f"{verb} {len(done)}: {', '.join(done) or '-'}")
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
    operator: Annotated[str | None, typer.Option(help="who records it (required: every allocation is audited)")] = None,
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Record that the receiving team allocated a worker, where its system cannot report it (a team mailbox).

    What waits for the allocation then goes: the allocation notice (LU-7), the closure naming the worker
    (SW22-10), the documents then the close (BA-9). Audited (who, when, which transfer and rules) on the
    audit topic; the worker's name is kept in the pending closure only (no event, audit record or log line).
    """
    from contracts import Person
    from router import Settings
    from router.allocations import AllocationRefused, record_allocation

    settings = Settings()
    settings = settings.model_copy(
        update={
            "bootstrap_servers": bootstrap or settings.bootstrap_servers,
            "topic_prefix": prefix or settings.topic_prefix,
        }
    )
    person = Person(name=worker, role="Family Support Worker", organisation=organisation)
    try:
        done = asyncio.run(record_allocation(settings, transfer_id, person, operator or ""))
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
    port: Annotated[int | None, typer.Option(help="listen port (default $CASEBRIDGE_MONITOR__PORT or 8100)")] = None,
    db: Annotated[Path | None, typer.Option(help="tracker database (default $CASEBRIDGE_MONITOR__DB)")] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="drop the tracker database and re-read the events topic")
    ] = False,
) -> None:
    """Serve the monitoring page, its JSON API, /metrics and /asyncapi.json, tracking the events topic.

    Tokens come from CASEBRIDGE_MONITOR__TOKENS, a JSON list of {"token", "name", "role"}
    with role viewer or operator, each token at least 32 characters; without any token nobody can sign in.
    A setting that cannot be used exits 2, naming the variable and the rule (never the value).
    """
    from monitor import Monitor, MonitorSettingsError, create_app, load_settings
    from sandboxes import run_forever

    try:
        settings = load_settings()  # one line per problem, naming the variable and the rule, never the value
    except MonitorSettingsError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(code=2) from None
    configure_logging()
    servers, topics = _where(bootstrap, prefix)
    settings = settings.model_copy(
        update={k: v for k, v in {"host": host, "port": port, "db": db}.items() if v is not None}
    )
    if not settings.tokens:
        typer.echo("warning: CASEBRIDGE_MONITOR__TOKENS is empty, so nobody can sign in", err=True)
    monitor = Monitor(settings, servers, topics, rebuild=rebuild)
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
