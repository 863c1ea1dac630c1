"""Broker outages (#19 items 3 and 7): the broker stopped and restarted mid-flow, down for a long while, and
SIGTERM while it is away, each against ``casebridge run --config FILE`` as a process of its own on North
Somerset's sandboxes (LCS, EHM) and a broker this module owns (not the session's: it is stopped and restarted
on the same ports).

After each fault every transfer reached its terminal state exactly once: one item in EHM's tray, one close of
its LCS record (LCS's own change feed), one ``delivered`` and one ``source-closed`` event (by event id: a
re-delivery after an outage writes the same event again, same id, which readers deduplicate), no dead letter;
``casebridge run`` is still alive, and its log stayed bounded. Each test prints its figures.

The long form (the broker down 2 minutes) is ``python -m bench.broker_outage``: it runs the down-for-a-while test
with ``CASEBRIDGE_FAULT_DOWN_SECONDS=120``; the default run keeps it to 35 s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import errors as kerr

from casebridge.localdeploy import LocalDeployment, free_port
from casebridge.localkafka import LocalKafka
from casebridge.scenarios import EhmSandboxClient, LcsSandboxClient
from casebridge.stack import Stack
from connectors._outage import is_transient_kafka_error
from router._outbox import OutputFailed
from tests.deployed import deployed
from tests.faults_support import leaks
from tests.support import Systems, transfer_events

#: how long the broker stays away in the down-for-a-while test (bench/broker_outage.py: 120)
DOWN_SECONDS = float(os.environ.get("CASEBRIDGE_FAULT_DOWN_SECONDS", "35"))
#: the log of ``casebridge run`` (at DEBUG, so the personal-data scan sees every line): a few lines per transfer
#: and per outage, never a line per retry. The bounds are about 5x what a run writes (measured: see the printed
#: figures); without the damping a 35 s outage alone wrote thousands of lines
MAX_LINES_PER_TRANSFER = 25
MAX_LINES_PER_OUTAGE = 60
MAX_BYTES_PER_LINE = 900


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of this module's own, in a temporary home, on ports outside the ephemeral range."""
    port, controller = free_port(), free_port()
    while controller == port:
        controller = free_port()
    kafka = LocalKafka(tmp_path_factory.mktemp("kafka-outages"), port=port, controller_port=controller)
    kafka.start(timeout=120)
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def running(broker: LocalKafka) -> LocalKafka:
    """The module's broker, started again if a test before left it stopped."""
    broker.start(timeout=120)
    return broker


def request_step_downs(lcs: LcsSandboxClient, n: int) -> dict[str, str]:
    """``n`` good North Somerset step-downs requested on LCS: transfer id -> child id."""
    found = {}
    for _ in range(n):
        child = lcs.create_child(locality="North")
        found[f"north-somerset-lcs-{lcs.request_stepdown(child)}".lower()] = child
    return found


def lcs_changes(lcs: LcsSandboxClient) -> list[dict[str, object]]:
    """LCS's whole change feed (every close of a record is one ``record_closed`` change)."""
    changes: list[dict[str, object]] = []
    after = 0
    while True:
        page = lcs.http.get("/api/changes", params={"after": after, "limit": 100}).json()
        changes += page["changes"]
        after = page["last_seq"]
        if not page["has_more"]:
            return changes


async def figures(
    d: LocalDeployment, lcs: LcsSandboxClient, ehm: EhmSandboxClient, transfers: dict[str, str], timeout: float
) -> dict[str, int]:
    """Wait until every transfer is closed on LCS (``source-closed``), then count what each one did."""
    by = await d.events.until({t: "source-closed" for t in transfers}, timeout)
    tray = Counter(str(i["transfer_id"]) for i in ehm.tray())
    closes = Counter(str(c["child_id"]) for c in lcs_changes(lcs) if c["kind"] == "record_closed")
    delivered = {t: {e.event_id for e in by.get(t, []) if e.event_type == "delivered"} for t in transfers}
    completed = {t: {e.event_id for e in by.get(t, []) if e.event_type == "source-closed"} for t in transfers}
    rewritten = sum(len(es) - len({e.event_id for e in es}) for t, es in by.items() if t in transfers)
    dead = await d.dead_letters(len(transfers) + 1, timeout=3)
    ours = [h for h in dead if h.get("casebridge.dlq.transfer.id") in transfers]
    return {
        "transfers": len(transfers),
        "delivered": sum(1 for t in transfers if len(delivered[t]) == 1 and tray[t] == 1),
        "closed": sum(1 for t in transfers if len(completed[t]) == 1 and closes[transfers[t]] == 1),
        "dead_lettered": len(ours),
        "duplicated": sum(1 for t in transfers if tray[t] > 1 or closes[transfers[t]] > 1 or len(delivered[t]) > 1),
        "lost": sum(1 for t in transfers if not completed[t] or tray[t] == 0 or closes[transfers[t]] == 0),
        "events_rewritten_same_id": rewritten,
    }


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: the CPU ``casebridge run`` may use while the broker is away (a share of one core; measured: see the figures)
MAX_CPU_WHILE_AWAY = 0.25


def log_volume(d: LocalDeployment) -> tuple[int, int]:
    out = d.run.output()
    return out.count("\n"), len(out.encode())


def assert_exactly_once(found: dict[str, int]) -> None:
    n = found["transfers"]
    assert (n, n, 0, 0, 0) == (
        found["delivered"],
        found["closed"],
        found["dead_lettered"],
        found["duplicated"],
        found["lost"],
    ), found


#: what the LCS sandbox holds about a child that is personal data (``faults_support.personal_forms`` adds its forms)
PERSONAL = ("given_name", "family_name", "date_of_birth", "nhs_number", "upn", "postcode")


def assert_no_personal_data(d: LocalDeployment, lcs: LcsSandboxClient, transfers: dict[str, str]) -> None:
    """The whole log of every ``casebridge run`` of the test (at DEBUG, restarts included) holds none of the
    children's personal data, in any of its forms (``faults_support.leaks``)."""
    people = [{k: str(v) for k, v in lcs.child(c).items() if k in PERSONAL and v} for c in transfers.values()]
    assert all(p.get("family_name") and p.get("nhs_number") for p in people)  # the scan has something to find
    found = leaks(d.log.read_bytes().decode(errors="replace"), people)
    assert [] == found, f"{len(found)} personal value(s) in the log of casebridge run"


def assert_log_bounded(d: LocalDeployment, transfers: int, outages: int) -> tuple[int, int]:
    lines, size = log_volume(d)
    most = MAX_LINES_PER_TRANSFER * transfers + MAX_LINES_PER_OUTAGE * outages
    assert lines <= most, f"{lines} log lines (at most {most}):\n{d.run.output()[-3000:]}"
    assert size <= most * MAX_BYTES_PER_LINE, f"{size} bytes of log (at most {most * MAX_BYTES_PER_LINE})"
    return lines, size


async def test_broker_stopped_and_restarted_mid_flow_three_times_every_transfer_completes_exactly_once(
    running: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    broker = running
    async with deployed("north-somerset", tmp_path, broker.bootstrap, topic_prefix, level="DEBUG") as d:
        lcs = LcsSandboxClient(d.systems.urls["lcs"], d.systems.token)
        ehm = EhmSandboxClient(d.systems.urls["ehm"], d.systems.token)
        transfers: dict[str, str] = {}
        restarted = 0.0
        for _ in range(3):
            transfers |= request_step_downs(lcs, 4)
            await asyncio.sleep(1.0)  # mid-flow: some published, some in the router, some closing
            await asyncio.to_thread(broker.stop)
            transfers |= request_step_downs(lcs, 2)  # while it is away: the LCS publisher cannot publish them
            await asyncio.sleep(4.0)
            assert d.run.process is not None and d.run.process.poll() is None, d.run.output()[-3000:]
            await asyncio.to_thread(broker.start, 120)
            restarted = time.monotonic()
            await asyncio.sleep(1.0)
        found = await figures(d, lcs, ehm, transfers, timeout=150)
        recovered = time.monotonic() - restarted
        assert d.run.process is not None and d.run.process.poll() is None, d.run.output()[-3000:]
        lines, size = log_volume(d)
        print(f"\nbroker stopped and restarted 3 times mid-flow: {found}, {recovered:.1f} s after the last restart"
              f" until every transfer was closed; casebridge run logged {lines} lines ({size} bytes)")  # fmt: skip
        assert_exactly_once(found)
        assert_log_bounded(d, len(transfers), outages=3)
        assert_no_personal_data(d, lcs, transfers)
        lcs.close()
        ehm.close()


async def test_broker_down_for_a_while_waited_out_logged_once_away_and_once_back(
    running: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    broker = running
    async with deployed("north-somerset", tmp_path, broker.bootstrap, topic_prefix, level="DEBUG") as d:
        lcs = LcsSandboxClient(d.systems.urls["lcs"], d.systems.token)
        ehm = EhmSandboxClient(d.systems.urls["ehm"], d.systems.token)
        transfers = request_step_downs(lcs, 4)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(broker.stop)
        stopped = time.monotonic()
        transfers |= request_step_downs(lcs, 4)
        assert d.run.process is not None
        await asyncio.sleep(3.0)
        cpu_from, cpu_since = cpu_seconds(d.run.process.pid), time.monotonic()
        while time.monotonic() - stopped < DOWN_SECONDS:
            await asyncio.sleep(1.0)
            assert d.run.process.poll() is None, d.run.output()[-3000:]
        cpu = (cpu_seconds(d.run.process.pid) - cpu_from) / (time.monotonic() - cpu_since)
        await asyncio.to_thread(broker.start, 120)
        restarted = time.monotonic()
        found = await figures(d, lcs, ehm, transfers, timeout=150)
        recovered = time.monotonic() - restarted
        late = time.monotonic() + LATE_LINES  # the "back" line waits for the broker to stay answering
        while '"kafka_reachable"' not in d.run.output() and time.monotonic() < late:
            await asyncio.sleep(0.5)
        out = d.run.output()
        away, back = out.count('"kafka_unreachable"'), out.count('"kafka_reachable"')
        lines, size = log_volume(d)
        print(f"\nbroker down {DOWN_SECONDS:.0f} s: {found}, {recovered:.1f} s after the restart until every transfer"
              f" was closed; casebridge run logged {lines} lines ({size} bytes), kafka_unreachable x{away},"
              f" kafka_reachable x{back}; CPU while away {cpu:.0%} of a core")  # fmt: skip
        assert d.run.process is not None and d.run.process.poll() is None, out[-3000:]
        assert_exactly_once(found)
        assert (1, 1) == (away, back), out[-3000:]
        assert cpu <= MAX_CPU_WHILE_AWAY, f"{cpu:.0%} of a core while the broker was away"
        assert_log_bounded(d, len(transfers), outages=1 + int(DOWN_SECONDS // 60))
        assert_no_personal_data(d, lcs, transfers)
        lcs.close()
        ehm.close()


#: seconds the outage tracker may take after the broker is back before it says so (its STEADY wait and probe)
LATE_LINES = 12.0


async def test_sigterm_while_the_broker_is_away_exits_0_within_10_s_and_nothing_is_lost(
    running: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    broker = running
    async with deployed("north-somerset", tmp_path, broker.bootstrap, topic_prefix, level="DEBUG") as d:
        lcs = LcsSandboxClient(d.systems.urls["lcs"], d.systems.token)
        ehm = EhmSandboxClient(d.systems.urls["ehm"], d.systems.token)
        transfers = request_step_downs(lcs, 2)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(broker.stop)
        transfers |= request_step_downs(lcs, 2)  # the publisher is now waiting on the broker to publish these
        await asyncio.sleep(5.0)
        began = time.monotonic()
        code = await asyncio.to_thread(d.run.stop, 15.0)
        took = time.monotonic() - began
        print(f"\nSIGTERM with the broker away: casebridge run exited {code} in {took:.1f} s")
        assert 0 == code, d.run.output()[-3000:]
        assert took < 10.0, d.run.output()[-3000:]
        # nothing it should not have committed: started again with the broker back, every transfer completes once
        await asyncio.to_thread(broker.start, 120)
        d.restart()
        found = await figures(d, lcs, ehm, transfers, timeout=150)
        print(f"after the broker and casebridge run were started again: {found}")
        assert_exactly_once(found)
        assert_no_personal_data(d, lcs, transfers)
        lcs.close()
        ehm.close()


# -- the router's in-process recovery, and which errors are transient ------------------------------------------


def test_which_kafka_errors_are_transient_and_which_halt() -> None:
    transient = [
        kerr.LeaderNotAvailableError(),
        kerr.NotEnoughReplicasError(),
        kerr.OutOfOrderSequenceNumber(),
        kerr.RequestTimedOutError(),
        kerr.KafkaTimeoutError(),
        kerr.KafkaConnectionError("gone"),
        kerr.NodeNotReadyError(),
        ConnectionRefusedError(),
    ]
    fatal = [
        kerr.MessageSizeTooLargeError(),
        kerr.RecordTooLargeError(),
        kerr.TopicAuthorizationFailedError(),
        kerr.ClusterAuthorizationFailedError(),
        ValueError("a bug"),
        PermissionError("state_dir not writable"),
    ]
    assert [True] * len(transient) == [is_transient_kafka_error(e) for e in transient]
    assert [False] * len(fatal) == [is_transient_kafka_error(e) for e in fatal]
    wrapped = OutputFailed("writes could not be sent")
    wrapped.__cause__ = kerr.LeaderNotAvailableError()
    assert is_transient_kafka_error(wrapped)  # the cause is looked through


async def test_outputs_failed_on_out_of_order_sequence_recover_the_router_in_process_exactly_once(
    stack: Stack, systems: Systems
) -> None:
    """The producer dies on OutOfOrderSequenceNumber as aiokafka's does after a broker restart (its sender ends,
    every pending and later write fails with it): the router does not halt; a fresh one reads on from the
    committed offsets, and every transfer completes once at EHM and LCS."""
    first = request_step_downs(systems.lcs_client, 2)
    assert 2 == await stack.publisher.poll_once()
    for t in first:
        await transfer_events(stack, t, "source-closed")
    old = stack.router
    producer = old.outbox._producer
    producer._message_accumulator.fail_all(kerr.OutOfOrderSequenceNumber())  # what aiokafka's dying sender does
    producer._sender.sender_task.cancel()
    later = request_step_downs(systems.lcs_client, 3)
    began = time.monotonic()
    assert 3 == await stack.publisher.poll_once()
    for t in later:
        await transfer_events(stack, t, "source-closed")
    recovered = time.monotonic() - began
    for _ in range(100):  # the fresh router reads on as soon as it has started: the stack counts it right after
        if stack.recoveries:
            break
        await asyncio.sleep(0.1)
    transfers = first | later
    tray = Counter(str(i["transfer_id"]) for i in systems.ehm_client.tray())
    closes = Counter(str(c["child_id"]) for c in lcs_changes(systems.lcs_client) if c["kind"] == "record_closed")
    print(f"\noutputs failed (OutOfOrderSequenceNumber): {stack.recoveries} recovery, router halted {old.halted},"
          f" {recovered:.1f} s until the 3 later transfers were closed; tray {dict(tray)}")  # fmt: skip
    assert (1, False, False) == (stack.recoveries, old.halted, stack.router.halted)
    assert stack.router is not old
    assert {t: 1 for t in transfers} == {t: tray[t] for t in transfers}
    assert {c: 1 for c in transfers.values()} == {c: closes[c] for c in transfers.values()}
    for t in later:
        events = await transfer_events(stack, t, "source-closed")
        assert 1 == len({e.event_id for e in events if e.event_type == "source-closed"})


async def test_a_record_the_broker_refuses_still_halts_the_router(stack: Stack) -> None:
    """Not every output failure is an outage: one no retry fixes halts the router (exit 3), as before."""
    router = stack.router

    async def refused() -> None:
        raise OutputFailed("1 of 1 writes were not acknowledged: MessageSizeTooLargeError", transient=False)

    with pytest.raises(OutputFailed):
        await router._settle(asyncio.ensure_future(refused()), _NoCommits(), {}, 1)
    assert (True, False, 0) == (router.halted, router.recovering, stack.recoveries)
    assert router.stopped.is_set()
    router.stopped.clear()  # the fixture stops the stack normally


class _NoCommits:
    async def commit(self, offsets: dict[object, int] | None = None) -> None:
        raise AssertionError("a batch whose outputs failed must not be committed")


async def test_a_publisher_whose_producer_died_on_out_of_order_sequence_renews_it_and_publishes_once(
    stack: Stack, systems: Systems
) -> None:
    """Today's exit 4: the LCS publisher's producer dies on OutOfOrderSequenceNumber after a broker restart. The
    loop waits it out, renews the producer and publishes from its cursor: the transfer completes once."""
    publisher = stack.publisher
    dead = publisher.producer
    dead._message_accumulator.fail_all(kerr.OutOfOrderSequenceNumber())  # what aiokafka's dying sender does
    dead._sender.sender_task.cancel()
    [(transfer, child)] = request_step_downs(systems.lcs_client, 1).items()
    stopping = False
    loop = asyncio.create_task(publisher.run(0.1, lambda: stopping))
    try:
        events = await transfer_events(stack, transfer, "source-closed")
    finally:
        stopping = True
        await asyncio.wait_for(loop, 5)  # it ended when told to (a loop that died would raise here)
    tray = [i for i in systems.ehm_client.tray() if i["transfer_id"] == transfer]
    closes = [c for c in lcs_changes(systems.lcs_client) if c["kind"] == "record_closed" and c["child_id"] == child]
    print(f"\npublisher's producer dead (OutOfOrderSequenceNumber): renewed {publisher.producer is not dead},"
          f" tray items {len(tray)}, LCS closes {len(closes)}")  # fmt: skip
    assert publisher.producer is not dead
    assert (1, 1) == (len(tray), len(closes))
    assert 1 == len({e.event_id for e in events if e.event_type == "delivered"})
