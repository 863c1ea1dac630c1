"""The router as a deployment runs it: 1, 2 and 3 members of one consumer group, a failover, the restore (issue 16).

    .venv/bin/python -m bench.deployment                       # N 20,000: 1, 2, 3 members, then a failover of 3
    .venv/bin/python -m bench.deployment --n 5000 --repeats 3 --restore

Each member is a process of its own running casebridge's Router from ``build_router`` with its state live, as
``casebridge run`` runs it (``bench/router_vs_pipe.py``'s router child, ``--members``): the transfers topic and both
retry tiers read by one consumer group with the co-partitioning assignor, the retry state and the lifecycle table
(completed transfers) restored per assigned partition from their compacted topics, the child history loaded and
written, every event produced, offsets committed by the router's scheme; an in-process idempotent target and source
stand in for EHM and LCS. Not in it: the notices and closures loops and the feeds (no pending notice or closure
in this workload: North Somerset step-downs close at once).

- **Drains** (``--members``, default 1,2,3): the members of a fresh group drain a pre-filled 6-partition topic of
  N synthetic North Somerset step-downs (``bench/_workload.py``), interleaved and repeated. Per member count: the
  throughput (transfers/s, first record to the group's last commit), CPU per transfer summed over the members, and
  each member's CPU per transfer (its process CPU time from its first record, over the transfers its target wrote).
  Every run checks that every sequence number was written to a target exactly once and that the committed offsets
  cover the topic, and fails loudly otherwise.
- **Failover** (``--failover-n``, default N; 0: none): 3 members start; once they own their partitions the N
  step-downs are published; a third of the way through, the member owning the most partitions is SIGKILLed. Every
  member appends each target write (sequence number, time) to a ledger file (one ``write(2)`` a line, so the
  killed one's survive it). Reported: seconds from the kill until each of its partitions is processed again (the
  first target write of one of its transfers by another member), transfers lost (no target write: must be 0),
  transfers written twice (the killed member's in flight), whether every transfer has its ``source-closed`` event
  and whether the committed offsets cover the topic.
- **Idle** (``--idle-seconds``): before the failover's step-downs are published, the CPU each of its members
  spends a second with nothing to do (its three consumers' polls and heartbeats, the membership lease): a cost per
  member and second that a drain's CPU per transfer includes.
- **Restore** (``--restore``): ``bench/restore.py`` (a member taking over partitions with 100,000 lifecycle
  entries), its figures embedded.

A broker is started from Apache Kafka's jars (its first rebalance of a group waits 3 s, so every member joins it)
unless ``--bootstrap`` or ``KAFKA_BOOTSTRAP_SERVERS`` names one. Results: a table, and JSON in
``bench/results/deployment.json`` with every run and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import restore as restore_bench
from bench._workload import BenchCheckFailed, LedgerReader, Workload
from bench.router_vs_pipe import (
    RESULTS,
    Bench,
    _committed_total,
    _load,
    _outcome_times,
    broker,
    machine,
    produce,
    produce_records,
    write_result,
)
from bench.router_vs_pipe import parse as bench_parse
from router import Topics
from router._reading import partition_for

PARTITIONS = 6
#: CPU per transfer with 3 members within this factor of 1 member's (issue 16)
CPU_TARGET = 1.10
#: a killed member's partitions processed again within this many seconds (issue 16)
FAILOVER_TARGET_S = 10.0


# ================================================================== drains: 1, 2, 3 members


async def drains(bench: Bench, n: int, members: Sequence[int], repeats: int) -> dict[str, Any]:
    """Each member count drains the same pre-filled topic with a fresh group, interleaved; medians per count."""
    topic = f"{bench.prefix}.deployment"
    await bench.create(topic, partitions=PARTITIONS)
    t = time.perf_counter()
    await produce(bench.bootstrap, topic, Workload(), n)
    print(f"pre-filled {n} step-downs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        order = [*members[rep % len(members) :], *members[: rep % len(members)]]  # each count in each position
        for k in order:
            r = await bench.run_members("router", topic, n, k, f"d{rep}")
            runs.append({**r, "repeat": rep})
            per_member = [sh["cpu_us_per_transfer"] for sh in r["member_shares"]]
            print(
                f"  repeat {rep} x{k} {r['msg_per_s']:>8.0f} transfers/s  cpu {r['cpu_us_per_msg']:>5.0f} us/transfer"
                f"  per member {per_member}  delivered {[sh['delivered'] for sh in r['member_shares']]}"
                f"  load {r['load_avg_1_5_15'][0]}",
                file=sys.stderr,
            )
    return {"topic_records": n, "partitions": PARTITIONS, "runs": runs, "median": summary(runs, members)}


def summary(runs: list[dict[str, Any]], members: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per member count: median throughput and CPU per transfer, and the members' own CPU per transfer (every run)."""
    out: dict[str, dict[str, Any]] = {}
    for k in members:
        mine = [r for r in runs if r["members"] == k]
        per_member = [sh["cpu_us_per_transfer"] for r in mine for sh in r["member_shares"] if sh["delivered"]]
        out[str(k)] = {
            "transfers_per_s": round(statistics.median(r["msg_per_s"] for r in mine), 1),
            "cpu_us_per_transfer": round(statistics.median(r["cpu_us_per_msg"] for r in mine), 1),
            "member_cpu_us_per_transfer_median": round(statistics.median(per_member), 1),
            "member_cpu_us_per_transfer_range": [min(per_member), max(per_member)],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "runs": len(mine),
        }
    return out


def cpu_verdict(median: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """CPU per transfer (summed over the members) with the most members against one member."""
    if "1" not in median or len(median) < 2:
        return {}
    most = max(median, key=int)
    ratio = median[most]["cpu_us_per_transfer"] / median["1"]["cpu_us_per_transfer"]
    return {"members": int(most), "cpu_ratio_to_1": round(ratio, 3), "within_10pct": ratio <= CPU_TARGET}


# ================================================================== failover: 3 members, one SIGKILLed


def process_cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def owners_at(readers: Sequence[LedgerReader], partition: Sequence[int], at: float) -> dict[int, int]:
    """partition -> the member whose target wrote the last of its transfers before ``at``."""
    last: dict[int, tuple[float, int]] = {}
    for i, reader in enumerate(readers):
        for when, seq in reader.times:
            p = partition[seq]
            if when <= at and when >= last.get(p, (0.0, -1))[0]:
                last[p] = (when, i)
    return {p: i for p, (_, i) in last.items()}


def resumed_after(
    readers: Sequence[LedgerReader], partition: Sequence[int], victim: int, theirs: set[int], at: float
) -> dict[int, float]:
    """Each of the victim's partitions: seconds from ``at`` until another member's target wrote one of its transfers
    (the first handled record there after the kill: the copies the victim had completed are written off sooner)."""
    out: dict[int, float] = {}
    for i, reader in enumerate(readers):
        if i == victim:
            continue
        for when, seq in reader.times:
            p = partition[seq]
            if p in theirs and when > at and (p not in out or when - at < out[p]):
                out[p] = round(when - at, 3)
    return out


def account(writes: Counter[int], n: int) -> dict[str, Any]:
    """The target's writes per transfer (every member's ledger): lost (none) and written more than once."""
    lost = [s for s in range(n) if writes[s] == 0]
    twice = [s for s in range(n) if writes[s] > 1]
    stray = sorted(s for s in writes if not 0 <= s < n)
    if stray:
        raise BenchCheckFailed(f"failover: target writes of {len(stray)} sequence numbers not published ({stray[:5]})")
    return {"lost": len(lost), "lost_first": lost[:10], "delivered_twice": len(twice), "twice_first": twice[:10]}


async def idle_cpu(pids: Sequence[int], seconds: float) -> list[float]:
    """CPU seconds a second each process spends over ``seconds``."""
    t0, cpu0 = time.monotonic(), [process_cpu_seconds(pid) for pid in pids]
    await asyncio.sleep(seconds)
    t1, cpu1 = time.monotonic(), [process_cpu_seconds(pid) for pid in pids]
    return [round((b - a) / (t1 - t0), 4) for a, b in zip(cpu0, cpu1, strict=True)]


async def failover(bench: Bench, n: int, k: int = 3, idle_seconds: float = 0.0) -> dict[str, Any]:
    """k members; the step-downs published once each owns its partitions (first, with ``idle_seconds``, the members'
    CPU with nothing to do); one SIGKILLed a third of the way in."""
    topic = f"{bench.prefix}.failover"
    await bench.create(topic, partitions=PARTITIONS)
    workload = Workload(seed=13)
    records = list(workload.records(0, n))  # made before the members start: the parent's CPU then stays out of it
    partition = [partition_for(r.key, PARTITIONS) for r in records]  # as the producer's default partitioner
    load = _load()
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as work:
        paths = [Path(work) / f"member-{i}.ledger" for i in range(k)]
        run_id, children, timeout = bench.start_members(
            "router", topic, n, k, "failover", extra=lambda i: ["--ledger", str(paths[i])]
        )
        readers = [LedgerReader(path) for path in paths]
        try:
            idle = await idle_cpu([c.proc.pid for c in children], idle_seconds) if idle_seconds else None
            producing = asyncio.create_task(produce_records(bench.bootstrap, topic, records))
            deadline = time.monotonic() + timeout
            while sum(sum(r.poll().writes.values()) for r in readers) < n // 3:
                if time.monotonic() > deadline or (producing.done() and producing.exception()):
                    raise BenchCheckFailed(f"failover: a third of {n} not written in {timeout:.0f} s")
                await asyncio.sleep(0.01)
            owners = owners_at([r.poll() for r in readers], partition, time.time())
            owned = Counter(owners.values())
            victim = max(range(k), key=lambda i: (owned[i], i == 1))
            children[victim].proc.send_signal(signal.SIGKILL)  # no goodbye to the group, nothing settled
            killed_at = time.time()
            children[victim].proc.communicate(timeout=30)  # reaped, its pipes closed
            theirs = {p for p, i in owners.items() if i == victim}
            done_at_kill = sum(sum(r.poll().writes.values()) for r in readers)
            await producing
            drained_at = await bench.until_committed(run_id, topic, n, timeout, "failover")
            committed = await _committed_total(bench.bootstrap, run_id, topic)
            survivors = [c for i, c in enumerate(children) if i != victim]
            for child in survivors:
                child.proc.send_signal(signal.SIGUSR1)
            shares = [child.result() for child in survivors]
        finally:
            for child in children:
                if child.proc.poll() is None:
                    child.proc.kill()
                    child.proc.communicate(timeout=30)
        for r in readers:
            r.poll()
    writes: Counter[int] = Counter()
    for r in readers:
        writes.update(r.writes)
    closed = await _outcome_times(bench.bootstrap, Topics(run_id).events, n, timeout=120)
    resumed = resumed_after(readers, partition, victim, theirs, killed_at)
    out: dict[str, Any] = {
        "members": k,
        "transfers": n,
        "load_avg_1_5_15": load,
        "killed_member": victim,
        "killed_after_transfers": done_at_kill,
        "killed_partitions": sorted(theirs),
        "resumed_s_by_partition": {str(p): s for p, s in sorted(resumed.items())},
        "all_resumed_s": max(resumed.values()) if resumed else None,
        "first_resumed_s": min(resumed.values()) if resumed else None,
        "partitions_nothing_left": sorted(theirs - set(resumed)),
        "drained_s_after_kill": round(drained_at - killed_at, 2),
        "every_transfer_completed": len(closed) == n,
        "source_closed": len(closed),
        "committed": committed,
        **account(writes, n),
        "killed_member_wrote": sum(readers[victim].writes.values()),
        # written twice: once by the killed member (in flight when it died), again by the one that took over
        "twice_after_the_kill": sum(1 for s, c in writes.items() if c > 1 and readers[victim].writes[s] == 1),
        "survivor_shares": shares,
        # before the step-downs were published: each member's polls, heartbeats and lease, a second
        "idle_cpu_s_per_s_per_member": idle,
    }
    out["within_10_s"] = out["all_resumed_s"] is not None and out["all_resumed_s"] <= FAILOVER_TARGET_S
    print(
        f"  failover: member {victim} SIGKILLed after {done_at_kill} of {n}, partitions {sorted(theirs)} processed"
        f" again after {resumed} s; lost {out['lost']}, written twice {out['delivered_twice']}, source-closed"
        f" {len(closed)} of {n}, committed {committed}  load {load[0]}",
        file=sys.stderr,
    )
    check_failover(out)
    return out


def check_failover(out: dict[str, Any]) -> None:
    """Fails loudly on a transfer lost, one not completed, offsets not covering the topic, or no take-over."""
    n = out["transfers"]
    failed = []
    if out["lost"]:
        failed.append(f"{out['lost']} transfers never written to a target (first {out['lost_first']})")
    if not out["every_transfer_completed"]:
        failed.append(f"{n - out['source_closed']} transfers without a source-closed event")
    if out["committed"] != n:
        failed.append(f"the group committed {out['committed']} offsets of {n}")
    if not out["killed_partitions"] or not out["resumed_s_by_partition"]:
        failed.append(f"the killed member's partitions {out['killed_partitions']} were not processed again by another")
    if failed:
        raise BenchCheckFailed("failover: " + "; ".join(failed))


# ================================================================== the report


def print_table(result: dict[str, Any]) -> None:
    d = result.get("drains")
    cpus = result["machine"]["cpus"]
    if d:
        print(
            f"\nthe router as a deployment: {d['topic_records']} step-downs, {d['partitions']} partitions, median of "
            f"{result['repeats']}; this machine has {cpus} cores shared with the broker (CPU per transfer is the"
            " comparable figure, not wall time)"
        )
        print(f"{'members':>8}{'transfers/s':>13}{'cpu us/transfer':>17}{'per member (median, range)':>30}")
        for k, m in d["median"].items():
            lo, hi = m["member_cpu_us_per_transfer_range"]
            each = f"{m['member_cpu_us_per_transfer_median']:.0f} ({lo:.0f}-{hi:.0f})"
            print(f"{k:>8}{m['transfers_per_s']:>13.0f}{m['cpu_us_per_transfer']:>17.0f}{each:>30}")
        v = result["verdicts"].get("cpu")
        if v:
            print(
                f"CPU per transfer, {v['members']} members over 1: {v['cpu_ratio_to_1']:.2f} (target <= 1.10:"
                f" {v['within_10pct']}); exactly once, offsets committed: every run"
            )
    f = result.get("failover")
    if f:
        print(
            f"failover: {f['members']} members, {f['transfers']} step-downs, member {f['killed_member']} SIGKILLed"
            f" after {f['killed_after_transfers']}: its partitions {f['killed_partitions']} processed again after"
            f" {f['first_resumed_s']}-{f['all_resumed_s']} s (target <= 10 s: {f['within_10_s']}); lost {f['lost']},"
            f" written twice {f['delivered_twice']}, every transfer completed: {f['every_transfer_completed']}"
        )
    if f and f["idle_cpu_s_per_s_per_member"]:
        idle = f["idle_cpu_s_per_s_per_member"]
        print(f"the failover's members idle before it (nothing to do), CPU seconds a second each: {idle}")
    if result.get("restore"):
        restore_bench.print_table(result["restore"])


async def run(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    bench = Bench(bench_args(args, bootstrap), bootstrap)
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "repeats": args.repeats,
        "members": list(args.members),
        "note": "shared 2-core machine: the broker and every member share the cores; see load averages per run",
        "verdicts": {},
    }
    try:
        if args.members:
            result["drains"] = await drains(bench, args.n, args.members, args.repeats)
            result["verdicts"]["cpu"] = cpu_verdict(result["drains"]["median"])
        if args.failover_n:
            result["failover"] = await failover(bench, args.failover_n, idle_seconds=args.idle_seconds)
            result["verdicts"]["failover_within_10_s"] = result["failover"]["within_10_s"]
    finally:
        await bench.cleanup()
    return result


def bench_args(args: argparse.Namespace, bootstrap: str) -> argparse.Namespace:
    """router_vs_pipe's settings for its members runs (its children take them)."""
    return bench_parse(
        ["--n", str(args.n), "--members", str(max(args.members, default=3)), "--members-partitions", str(PARTITIONS),
         "--bootstrap", bootstrap, "--log-level", args.log_level, "--loop", args.loop]
    )  # fmt: skip


def parent_main(args: argparse.Namespace) -> dict[str, Any]:
    # a broker of its own (unless given) whose groups' first rebalance waits for every member (router_vs_pipe's)
    with broker(argparse.Namespace(bootstrap=args.bootstrap, members=max(args.members, default=3))) as bootstrap:
        result = asyncio.run(run(args, bootstrap))
        if args.restore:
            restore_args = restore_bench.parse(
                ["--bootstrap", bootstrap, "--children", str(args.restore_children),
                 "--parked", str(args.restore_parked), "--repeats", str(args.restore_repeats)]
            )  # fmt: skip
            result["restore"] = restore_bench.parent_main(restore_args)
            result["verdicts"]["restore_within_5_s"] = result["restore"]["verdict"]["within_5_s"]
    result["machine"]["load_avg_1_5_15_at_end"] = _load()
    return result


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give member counts as numbers, e.g. 1,2,3") from None
    if any(c < 1 or c > PARTITIONS for c in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: member counts go from 1 to {PARTITIONS} (the partitions)")
    return counts


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="step-downs each drain reads (default 20000)")
    p.add_argument("--members", type=_counts, default=[1, 2, 3], help="member counts of the drains (default 1,2,3)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats of the drains (median reported)")
    p.add_argument(
        "--failover-n", type=int, default=None, help="step-downs of the failover run (default: --n; 0: no failover)"
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="the failover's members idle this long first: their CPU a second",
    )
    p.add_argument("--restore", action="store_true", help="also bench/restore.py (a member taking over partitions)")
    p.add_argument("--restore-children", type=int, default=100_000, help="the restore's lifecycle entries")
    p.add_argument("--restore-parked", type=int, default=10_000, help="the restore's parked children")
    p.add_argument("--restore-repeats", type=int, default=3)
    p.add_argument(
        "--bootstrap", default=None, help="a broker to use (default: KAFKA_BOOTSTRAP_SERVERS, else start one)"
    )
    p.add_argument("--log-level", default="INFO", help="the members' log level (their JSON lines go to /dev/null)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--out", type=Path, default=RESULTS / "deployment.json")
    args = p.parse_args(argv)
    if args.failover_n is None:
        args.failover_n = args.n
    if args.n < 1 or args.failover_n < 0:
        p.error("--n must be at least 1 and --failover-n at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    result = parent_main(args)
    print_table(result)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
