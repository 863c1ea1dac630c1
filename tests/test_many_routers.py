"""Many ``casebridge run`` processes of one deployment (issue #16, first slice): one consumer group, partition p of
the transfers topic, of every retry tier and of the retry state owned by one process (``router/_assignor.py``), the
retry state restored per assigned partition.

Each process is a real ``casebridge run --config FILE`` on the same deployment file (North Somerset on the LCS and
EHM sandboxes, 6 partitions, quick retries), against the session's broker. The test publishes the step-downs to the
transfers topic as the LCS publisher does (keyed by the child, ``lcs:<id>`` of its first identifier), several per
child: each one closes its own LCS record, so every one of them can complete. Order is read where it lands: the
EHM sandbox's tray lists items in the order it received them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from casebridge.localdeploy import (
    COUNCIL_SYSTEMS,
    Events,
    RunningDeployment,
    Sandboxes,
    casebridge_command,
    deployment_file,
    sandboxes,
)
from casebridge.scenarios import EhmSandboxClient, LcsSandboxClient, step_down
from contracts import TransferEvent, TransferRetryScheduled
from router._assignor import for_instance, plan_assignment
from router._outbox import murmur2
from router._reading import read_all
from tests.deployed import QUICK_RETRY

PARTITIONS = 6
#: the default run (about 400 and 600 step-downs) and the long form (2,000 each): ``pytest -m long_run``
SIZES = [pytest.param(False, id="default"), pytest.param(True, id="long", marks=pytest.mark.long_run)]


@dataclass
class Deployment:
    systems: Sandboxes
    config: Path
    env: dict[str, str]
    work: Path
    runs: list[RunningDeployment]

    def clients(self, stack: ExitStack) -> tuple[LcsSandboxClient, EhmSandboxClient]:
        """The LCS and EHM sandboxes' clients, closed with ``stack``."""
        return (
            stack.enter_context(closing(LcsSandboxClient(self.systems.urls["lcs"], self.systems.token))),
            stack.enter_context(closing(EhmSandboxClient(self.systems.urls["ehm"], self.systems.token))),
        )

    def start(self, n: int) -> None:
        for _ in range(n):
            i = len(self.runs)
            log = self.work / f"casebridge-run-{i}.log"
            # the same deployment file; each process its own state directory (its feeds' cursors), as
            # `casebridge run --state-dir` is for
            state = ["--state-dir", str(self.work / f"state-{i}")]
            self.runs.append(RunningDeployment(self.config, self.env, log, args=state).start(timeout=120))


@contextmanager
def deployment(work: Path, bootstrap: str, prefix: str) -> Iterator[Deployment]:
    with ExitStack() as stack:
        systems = stack.enter_context(sandboxes(work / "systems", COUNCIL_SYSTEMS["north-somerset"]))
        text, env = deployment_file(
            "north-somerset", systems, bootstrap=bootstrap, prefix=prefix, state_dir=work / "state", retry=QUICK_RETRY
        )
        config = work / "north-somerset.toml"
        config.write_text(text + f"\n[topics]\npartitions = {PARTITIONS}\n")
        d = Deployment(systems, config, env, work, [])
        try:
            yield d
        finally:
            for run in d.runs:
                if run.process is not None and run.process.poll() is None:
                    run.stop()


def partition_of(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


@dataclass
class Plan:
    """M children, K step-downs each (each on its own open LCS record), in the order they are published."""

    transfers: list[tuple[str, str, dict[str, Any]]]  # (child key, transfer id, message)
    of_child: dict[str, list[str]]


def plan(lcs: LcsSandboxClient, children: int, per_child: int, tag: str) -> Plan:
    docs: list[tuple[str, str, dict[str, Any]]] = []
    of_child: dict[str, list[str]] = defaultdict(list)
    n = 0
    firsts = [lcs.create_child(locality="North") for _ in range(children)]
    for k in range(per_child):
        for c, first in enumerate(firsts):
            n += 1
            record = first if k == 0 else lcs.create_child(locality="North")
            tid = f"ns-many-{tag}-{c}-{k}"
            doc = step_down("north-somerset", n, transfer_id=tid, message_id=f"{tid}-m1", correlation_id=tid)
            doc["child"]["identifiers"] = [{"system": "lcs", "id": first}]
            doc["source_record"] = {"system": "lcs", "record_id": record, "state": "open"}
            docs.append((f"lcs:{first}", tid, doc))
            of_child[f"lcs:{first}"].append(tid)
    return Plan(docs, dict(of_child))


async def publish(bootstrap: str, topic: str, docs: list[tuple[str, str, dict[str, Any]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, _, doc in docs:  # in order: one child's step-downs one after the other, on one partition
            await producer.send(topic, json.dumps(doc).encode(), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


def distinct(events: list[TransferEvent], kind: str) -> int:
    return len({e.event_id for e in events if e.event_type == kind})


def check_exactly_once_and_order(p: Plan, by: dict[str, list[TransferEvent]], tray: list[dict[str, Any]]) -> None:
    tids = [tid for _, tid, _ in p.transfers]
    not_once = {t: (distinct(by.get(t, []), "delivered"), distinct(by.get(t, []), "source-closed")) for t in tids}
    not_once = {t: counts for t, counts in not_once.items() if counts != (1, 1)}
    assert not_once == {}, f"transfers not delivered and closed exactly once: {list(not_once.items())[:10]}"
    received = [i["transfer_id"] for i in tray if i["transfer_id"] in set(tids)]
    assert sorted(received) == sorted(tids), "the tray holds each transfer exactly once"
    position = {t: n for n, t in enumerate(received)}
    out_of_order = {c: ts for c, ts in p.of_child.items() if sorted(ts, key=position.__getitem__) != ts}
    assert out_of_order == {}, f"children whose step-downs reached EHM out of order: {list(out_of_order.items())[:5]}"


def log_lines(run: RunningDeployment, event: str) -> list[dict[str, Any]]:
    """The run's JSON log lines of one event."""
    out = []
    for line in run.output().splitlines():
        if f'"{event}"' in line:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("event") == event:
                    out.append(doc)
    return out


def restored_partitions(run: RunningDeployment) -> list[set[int]]:
    """Each ``partitions_restored`` line of a run's log: the partitions it took over."""
    return [set(doc["partitions"]) for doc in log_lines(run, "partitions_restored")]


def owned_now(run: RunningDeployment) -> set[int]:
    """The partitions a run owns after its last rebalance: restored, less revoked since."""
    owned: set[int] = set()
    for line in run.output().splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if doc.get("event") == "partitions_restored":
                owned |= set(doc["partitions"])
            elif doc.get("event") == "partitions_revoked":
                owned -= set(doc["partitions"])
    return owned


async def settled(runs: list[RunningDeployment], timeout: float = 90) -> list[set[int]]:
    """Until the processes' partitions are shared out (disjoint, every partition owned, none idle): each one's."""
    deadline = time.monotonic() + timeout
    while True:
        owned = [owned_now(r) for r in runs]
        shared = all(owned) and sum(map(len, owned)) == PARTITIONS and set().union(*owned) == set(range(PARTITIONS))
        if shared or time.monotonic() > deadline:
            return owned
        await asyncio.sleep(0.5)


def handled(run: RunningDeployment) -> int:
    """How many transfers-topic records a run's log says it handled."""
    return sum(d["records"] for d in log_lines(run, "batch_completed") if str(d.get("topic")).endswith(".transfers"))


@pytest.mark.parametrize("long", SIZES)
async def test_two_routers_keep_each_childs_order_and_queue_behind_only_where_a_transfer_waits(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, long: bool
) -> None:
    children, per_child, faulted = (500, 4, 50) if long else (100, 4, 10)
    with deployment(tmp_path, kafka_bootstrap, topic_prefix) as d, ExitStack() as clients:
        lcs, ehm = d.clients(clients)
        p = plan(lcs, children, per_child, "two")
        d.start(2)
        # both members in the group before anything is published: partition p to the p % 2-th of them
        owned = await settled(d.runs)
        assert sorted(map(sorted, owned)) == [[0, 2, 4], [1, 3, 5]], f"partitions per process: {owned}"
        # EHM unavailable for the first step-down of some children (its first three calls): those wait in a tier
        slow = sorted(p.of_child)[:faulted]
        for key in slow:
            ehm.inject_fault(status=503, count=3, path_prefix=f"/api/stepdown-tray/{p.of_child[key][0]}")
        started = time.monotonic()
        await publish(kafka_bootstrap, f"{topic_prefix}.transfers", p.transfers)
        events = Events(kafka_bootstrap, f"{topic_prefix}.events")
        try:
            by = await events.until({tid: "source-closed" for _, tid, _ in p.transfers}, timeout=240)
        finally:
            await events.stop()
        took = time.monotonic() - started
        check_exactly_once_and_order(p, by, ehm.tray())
        retried = {
            t: [e for e in es if isinstance(e, TransferRetryScheduled)]
            for t, es in by.items()
            if t in dict.fromkeys(tid for _, tid, _ in p.transfers)
        }
        failed = {t for t, es in retried.items() if any(not e.behind_earlier_transfer for e in es)}
        for key in slow:  # EHM refused them: each went to a tier, not behind anything
            assert p.of_child[key][0] in failed, f"{p.of_child[key][0]} (refused by EHM) entered a retry tier"
        # a step-down queued behind an earlier one only where an earlier step-down of its child had failed (EHM
        # refused it, or, on this loaded machine, did not answer in time): none behind for nothing
        needless = sorted(
            t
            for key, tids in p.of_child.items()
            for k, t in enumerate(tids)
            if any(e.behind_earlier_transfer for e in retried[t]) and not failed & set(tids[:k])
        )
        assert needless == [], f"step-downs queued behind an earlier one that never failed: {needless[:10]}"
        untouched = [tids for tids in p.of_child.values() if not failed & set(tids)]
        assert len(untouched) >= children - 2 * faulted, "most children never failed (else the test shows nothing)"
        assert all(not retried[t] for tids in untouched for t in tids), "their step-downs never entered the tiers"
        behind = sum(1 for es in retried.values() for e in es if e.behind_earlier_transfer)
        why = [line for r in d.runs for line in r.output().splitlines() if "loop_failed" in line]
        assert [r.process.poll() for r in d.runs if r.process] == [None, None], f"both still run: {why[-3:]}"
        work = [handled(r) for r in d.runs]
        assert all(w > 0 for w in work), f"both processes handled transfers: {work}"
        print(
            f"\n2 routers, {len(p.transfers)} step-downs of {children} children in {took:.1f} s; records handled per"
            f" process {work}; partitions {owned}; {len(failed)} step-downs failed at least once ({faulted} refused by"
            f" EHM on purpose); {behind} retry-scheduled behind an earlier failed one, none behind for nothing"
        )


@pytest.mark.parametrize("long", SIZES)
async def test_three_routers_one_killed_mid_flow_every_transfer_completes_once_in_order(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, long: bool
) -> None:
    children, per_child = (500, 4) if long else (150, 4)
    with deployment(tmp_path, kafka_bootstrap, topic_prefix) as d, ExitStack() as clients:
        lcs, ehm = d.clients(clients)
        p = plan(lcs, children, per_child, "kill")
        d.start(3)
        owned = await settled(d.runs)
        assert sorted(map(sorted, owned)) == [[0, 3], [1, 4], [2, 5]], f"partitions per process: {owned}"
        victim = d.runs[1]
        theirs = owned[1]
        all_tids = [tid for _, tid, _ in p.transfers]
        partition = {tid: partition_of(key) for key, tid, _ in p.transfers}
        await publish(kafka_bootstrap, f"{topic_prefix}.transfers", p.transfers)
        events = Events(kafka_bootstrap, f"{topic_prefix}.events")
        try:
            # mid-flow: a third of the step-downs done
            third = dict.fromkeys(all_tids[: len(all_tids) // 3], "source-closed")
            while sum(1 for t in all_tids if events.has({t: "source-closed"})) < len(all_tids) // 3:
                await events.until(third, timeout=2)
            victim.kill()  # SIGKILL: no goodbye to the group, nothing settled
            assert victim.stop() == -9  # reaped (its log closed)
            killed_at = datetime.now(UTC)
            done_before = {t for t in all_tids if events.has({t: "source-closed"})}
            left = [t for t in all_tids if partition[t] in theirs and t not in done_before]
            assert left, "the killed process had work left"
            by = await events.until({tid: "source-closed" for tid in all_tids}, timeout=240)
        finally:
            await events.stop()
        resumed = min(e.occurred_at for t in left for e in by.get(t, []) if e.occurred_at > killed_at)
        seconds = (resumed - killed_at).total_seconds()
        check_exactly_once_and_order(p, by, ehm.tray())
        survivors = [r.process.poll() for r in d.runs if r is not victim and r.process]
        why = [line for r in d.runs if r is not victim for line in r.output().splitlines() if "loop_failed" in line]
        assert survivors == [None, None], f"the other two still run: {why[-3:]}"
        total = sum(1 for t in all_tids if partition[t] in theirs)
        print(
            f"\n3 routers, {len(p.transfers)} step-downs, one SIGKILLed with {len(left)} of its partitions' {total}"
            f" step-downs not done: its partitions {sorted(theirs)}"
            f" processed again {seconds:.1f} s after the kill"
        )
        assert seconds < 10, f"the killed member's partitions were processed again only after {seconds:.1f} s"


async def test_a_completed_transfer_published_again_is_a_duplicate_even_after_its_partition_moved(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """#16: a transfer re-published with a new message id and the same content (a publisher's retry, a re-send, a
    second feed) is not run again: one ``delivered`` per transfer, and a ``duplicate`` event naming both message
    ids. The completed transfers are state per partition (``<prefix>.lifecycle``): the copies are read by the
    process that took the partitions over from one that stopped, and it knows them."""
    with deployment(tmp_path, kafka_bootstrap, topic_prefix) as d, ExitStack() as clients:
        lcs, ehm = d.clients(clients)
        p = plan(lcs, 20, 2, "dup")
        d.start(2)
        owned = await settled(d.runs)
        assert sorted(map(sorted, owned)) == [[0, 2, 4], [1, 3, 5]], f"partitions per process: {owned}"
        await publish(kafka_bootstrap, f"{topic_prefix}.transfers", p.transfers)
        events = Events(kafka_bootstrap, f"{topic_prefix}.events")
        try:
            await events.until({tid: "source-closed" for _, tid, _ in p.transfers}, timeout=180)
            leaving = d.runs[1]
            assert leaving.stop() == 0  # SIGTERM: it leaves the group; the other one takes its partitions over
            await settled([d.runs[0]])
            copies = [
                (key, tid, {**doc, "message_id": f"{tid}-m2"}) for key, tid, doc in p.transfers
            ]  # fmt: skip
            await publish(kafka_bootstrap, f"{topic_prefix}.transfers", copies)
            by = await events.until({tid: "duplicate" for _, tid, _ in p.transfers}, timeout=180)
        finally:
            await events.stop()
        check_exactly_once_and_order(p, by, ehm.tray())
        for _, tid, _ in p.transfers:
            duplicates = [e for e in by[tid] if e.event_type == "duplicate"]
            assert [(f"{tid}-m2", f"{tid}-m1")] == [
                (getattr(e, "message_id", None), getattr(e, "first_message_id", None)) for e in duplicates
            ], tid
        taken_over = {p for parts in restored_partitions(d.runs[0]) for p in parts}
        assert taken_over == set(range(PARTITIONS)), f"the remaining process restored {taken_over}"
        assert sum(d["records"] for d in log_lines(d.runs[0], "batch_completed")) >= len(p.transfers)


async def test_a_member_paused_past_its_session_timeout_is_fenced_when_it_resumes(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """#16 fencing (router/_fencing.py): one of two processes is SIGSTOPped mid-batch for longer than the session
    timeout, so the other takes its partitions over and runs their records; on SIGCONT the paused one still holds
    the rest of its batch. It handles none of it: it confirms its membership first, learns it was dropped, drops
    its unsent writes (those the producer still held too) and rejoins. Every transfer is delivered and closed once,
    in order, and no child's lifecycle state is overwritten by an older write. A second ``delivered`` record (the
    same event id) is printed, not bounded: the records the paused member had handled, its outputs acknowledged,
    but not yet committed are read again by the new owner, as after a SIGKILL (at-least-once; see README)."""
    concurrency = 4
    with deployment(tmp_path, kafka_bootstrap, topic_prefix) as d, ExitStack() as clients:
        d.config.write_text(f"concurrency = {concurrency}\n" + d.config.read_text())
        lcs, ehm = d.clients(clients)
        p = plan(lcs, 60, 2, "pause")
        d.start(2)
        owned = await settled(d.runs)
        assert sorted(map(sorted, owned)) == [[0, 2, 4], [1, 3, 5]], f"partitions per process: {owned}"
        paused, theirs = d.runs[1], owned[1]
        assert paused.process is not None
        partition = {tid: partition_of(key) for key, tid, _ in p.transfers}
        mine = [tid for _, tid, _ in p.transfers if partition[tid] in theirs]
        ehm.inject_fault(status=None, delay_ms=150)  # every EHM call slower: a batch takes many seconds
        await publish(kafka_bootstrap, f"{topic_prefix}.transfers", p.transfers)
        events = Events(kafka_bootstrap, f"{topic_prefix}.events")
        try:
            while sum(1 for t in mine if events.has({t: "source-closed"})) < 8:  # its batch under way
                await events.until({t: "source-closed" for t in mine}, timeout=1)
            os.killpg(paused.process.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            await settled([d.runs[0]], timeout=60)  # the other one took every partition over
            taken_over = time.monotonic() - stopped_at
            await asyncio.sleep(2)
            os.killpg(paused.process.pid, signal.SIGCONT)
            by = await events.until({tid: "source-closed" for _, tid, _ in p.transfers}, timeout=240)
            await asyncio.sleep(5)  # anything the resumed process still sent has landed
        finally:
            await events.stop()
        ehm.clear_faults()
        check_exactly_once_and_order(p, by, ehm.tray())
        fenced = log_lines(paused, "member_fenced")
        assert fenced, "the resumed process learnt it had been dropped from its group"
        assert log_lines(paused, "router_recovered"), "and rejoined as a fresh member"
        assert paused.process.poll() is None, "still running"
        # no newer state overwritten: the last lifecycle record of every child (what a member taking its partition
        # over restores) names every transfer of theirs that completed; an older write from the paused member landing
        # after the new owner's would lack the later ones (the outbox's gate fails what the producer still held)
        lifecycle = await read_all(kafka_bootstrap, f"{topic_prefix}.lifecycle")
        last = {r.key.decode(): json.loads(r.value)["completed"] for r in lifecycle if r.key and r.value}
        stale = {
            c: sorted(last.get(c, ())) for c, tids in p.of_child.items() if sorted(last.get(c, ())) != sorted(tids)
        }
        assert stale == {}, (
            f"children whose last lifecycle record lacks a completed transfer: {list(stale.items())[:5]}"
        )
        # every record read, not distinct event ids: a second delivery writes the same event id again
        twice = sorted(t for t, es in by.items() if sum(e.event_type == "delivered" for e in es) > 1)
        print(
            f"\npaused member: partitions {sorted(theirs)}, taken over {taken_over:.1f} s after SIGSTOP; fenced on"
            f" SIGCONT; delivered records twice for {len(twice)} transfers ({twice[:8]})"
        )
        # not bounded: a second `delivered` record (the same event id; the targets are idempotent) for what the paused
        # member handled but had not committed, read again by the new owner as after a SIGKILL (docs/scaling-out.md)


def test_the_assignor_gives_partition_p_of_every_topic_to_one_process_and_nothing_to_one_still_starting() -> None:
    topics = ["t.transfers", "t.retry.0", "t.retry.1"]
    members = {f"{i}-{t}": (f"proc-{i}".encode(), [t]) for i in (0, 1) for t in topics}
    members["2-t.transfers"] = (b"proc-2", ["t.transfers"])  # its tier consumers have not joined yet
    plan = plan_assignment(members, {t: list(range(PARTITIONS)) for t in topics})
    for i, mine in ((0, [0, 2, 4]), (1, [1, 3, 5])):
        assert {t: plan[f"{i}-{t}"][t] for t in topics} == dict.fromkeys(topics, mine)
    assert plan["2-t.transfers"] == {"t.transfers": []}
    once = sorted(p for m in plan.values() for ps in m.values() for p in ps)
    assert once == sorted(list(range(PARTITIONS)) * len(topics)), "every partition of every topic, once"


def test_a_process_that_said_which_topics_it_will_subscribe_takes_nothing_until_its_last_consumer_joined() -> None:
    """Alone in the group, a process whose transfers consumer joined before its tier consumers used to take the
    transfers' partitions at once; its first batch was then cut short by the next consumer's join (a rebalance, the
    batch read again). It now waits for the join of the last consumer it declared."""
    topics = ["t.transfers", "t.retry.0"]
    parts = {t: list(range(PARTITIONS)) for t in topics}
    declared = {b"proc-0": set(topics)}
    starting = plan_assignment({"0-t.transfers": (b"proc-0", ["t.transfers"])}, parts, declared)
    assert starting == {"0-t.transfers": {"t.transfers": []}}
    members = {f"0-{t}": (b"proc-0", [t]) for t in topics}
    assert plan_assignment(members, parts, declared) == {f"0-{t}": {t: list(range(PARTITIONS))} for t in topics}
    # one that did not say (another kind of consumer) is served as before: what it subscribes, at once
    assert plan_assignment({"x": (b"other", ["t.transfers"])}, parts) == {"x": {"t.transfers": list(range(6))}}


def test_the_assignors_metadata_carries_the_instance_and_its_topics_and_its_assignment_the_instance_only() -> None:
    assignor = for_instance("proc-a", ["t.transfers", "t.retry.0"])
    md = assignor.metadata(["t.transfers"])
    assert md.user_data == b"proc-a\nt.retry.0,t.transfers"

    class Cluster:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(PARTITIONS))

    alone = assignor.assign(Cluster(), {"m1": md})
    assert alone["m1"].assignment == [("t.transfers", [])], "the tier consumer has not joined yet"
    assert alone["m1"].user_data == b"proc-a", "the assignment names the process only (router_members counts them)"
    both = assignor.assign(Cluster(), {"m1": md, "m2": assignor.metadata(["t.retry.0"])})
    assert both["m1"].assignment == [("t.transfers", list(range(PARTITIONS)))]
    assert both["m2"].assignment == [("t.retry.0", list(range(PARTITIONS)))]


async def test_a_deployment_whose_topics_are_not_co_partitioned_is_refused_in_one_line(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:  # a retry-state topic made by hand with another partition count than the deployment's 6
        config = {"cleanup.policy": "compact"}
        await admin.create_topics([NewTopic(f"{topic_prefix}.retry-state", 2, 1, topic_configs=config)])
    finally:
        await admin.close()
    with deployment(tmp_path, kafka_bootstrap, topic_prefix) as d:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CASEBRIDGE_")}, **d.env}
        command = [*casebridge_command(), "run", "--config", str(d.config)]
        run = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert run.returncode == 5, run.stderr[-2000:]
    [line] = [x for x in run.stderr.splitlines() if x.startswith("error:")]
    assert f"{topic_prefix}.retry-state=2" in line and f"{topic_prefix}.transfers=6" in line
    assert "co-partitioning" in line and "Traceback" not in run.stderr
