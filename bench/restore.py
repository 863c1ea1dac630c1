"""How long a router member takes to restore its partitions' state, and what the state costs in memory (issue 16).

    .venv/bin/python -m bench.restore                      # 100,000 children, 10,000 parked, 6 partitions, x3
    .venv/bin/python -m bench.restore --children 300000 --repeats 5

When a router process is assigned partitions it reads their part of two compacted topics to the end before it
handles any record of them (``router/app.py`` ``_assigned``): ``<prefix>.lifecycle`` (``CompletedTransfers``: per
child, every transfer it completed, the message id and a digest of the content) and ``<prefix>.retry-state``
(``RetryState``: the children parked in a retry tier). This bench writes both topics as the router writes them
(the values from ``CompletedTransfers.complete`` and ``RetryState.encode``, keyed by child, partitioned by the
producer's murmur2 over 6 partitions) and then, in a fresh process per run (so RSS is that run's), restores:

- ``all``: all 6 partitions (one member, or a restart);
- ``third``: partitions 0 and 3 of 6 (what a member of 3 takes over, ``p % 3``).

Each run times ``CompletedTransfers().restore`` + ``RetryState().restore`` (on uvloop, as ``casebridge run``),
reads RSS (``/proc/self/status`` VmRSS) before and after, and the tables' own memory (``tracemalloc``, in a
second, untimed restore in the same process); it then checks that the tables hold exactly the entries written for
those partitions (every child, every completed transfer, every parked message) and fails loudly otherwise. The
runs are interleaved and repeated; the medians are printed and written with every run to
``bench/results/restore.json``.

A broker is started from Apache Kafka's jars (as ``bench/router_vs_pipe.py`` does) unless ``--bootstrap`` or
``KAFKA_BOOTSTRAP_SERVERS`` names one. The data is synthetic (made-up child and request ids, digests of made-up
content); nothing is compacted during a run (the broker never compacts the active segment), so each record
written is read, as on a topic between two compactions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout whose venv predates bench/
    sys.path.insert(0, str(ROOT))

from bench._workload import BenchCheckFailed  # noqa: E402
from bench.router_vs_pipe import RESULTS, _load, _peak_rss_mb, broker, write_result  # noqa: E402
from connectors import kafka as clients  # noqa: E402
from router._lifecycle import CompletedTransfers, content_digest  # noqa: E402
from router._reading import partition_for  # noqa: E402
from router._retry import Parked, RetryState  # noqa: E402
from router.app import ensure_topics  # noqa: E402
from router.settings import Topics  # noqa: E402

PARTITIONS = 6
SCOPES: dict[str, list[int]] = {"all": list(range(PARTITIONS)), "third": [0, 3]}
RESULT = "RESTORE-RESULT "
COUNCIL = "north-somerset"


# ================================================================== the state written (deterministic)


@dataclass(frozen=True)
class Child:
    """One child's completed transfers, as the router's LCS step-downs name them (``connectors/lcs``)."""

    key: bytes
    #: (transfer id, message id, the transfer's bytes) in the order they completed
    transfers: tuple[tuple[str, str, bytes], ...]


def child(n: int, second_every: int) -> Child:
    """Child ``n``: one completed step-down; every ``second_every``-th child a second one (0: none)."""
    key = f"lcs:LCS-R{n:07d}".encode()
    requests = [n] if not second_every or n % second_every else [n, 10_000_000 + n]
    transfers = []
    for r in requests:
        transfer_id = f"{COUNCIL}-lcs-sdr-{r}"
        message_id = f"{transfer_id}-c{1 + r % 997}"
        value = f'{{"transfer_id":"{transfer_id}","message_id":"{message_id}","child":"LCS-R{n:07d}"}}'.encode()
        transfers.append((transfer_id, message_id, value))
    return Child(key, tuple(transfers))


def completed_of(c: Child) -> dict[str, tuple[str, str]]:
    """What ``CompletedTransfers`` must hold for the child once restored."""
    return {t: (m, content_digest(v, m)) for t, m, v in c.transfers}


def lifecycle_records(c: Child, partitions: int = PARTITIONS) -> list[bytes]:
    """The child's lifecycle records, one per completion, each the value ``CompletedTransfers.complete`` writes."""
    table = CompletedTransfers()
    p = partition_for(c.key, partitions)
    return [table.complete(c.key, t, v, m, p) for t, m, v in c.transfers]


def parked(n: int, topic: str) -> tuple[bytes, Parked]:
    """Parked child ``n`` (the first children are the parked ones): one or two messages waiting in tier 0 or 1."""
    key = f"lcs:LCS-R{n:07d}".encode()
    p = partition_for(key, PARTITIONS)
    pending = {f"{topic}/{p}/{1000 + n}"} | ({f"{topic}/{p}/{2_000_000 + n}"} if n % 4 == 0 else set())
    return key, Parked(n % 2, pending)


# ================================================================== writing the topics


async def write_state(bootstrap: str, topics: Topics, children: int, parked_children: int, second_every: int) -> int:
    """Create the two compacted topics (6 partitions) and write the state; returns the records written."""
    await ensure_topics(bootstrap, [], compacted=[topics.lifecycle, topics.retry_state], partitions=PARTITIONS)
    producer = clients.producer(bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    written = 0
    try:
        for n in range(children):
            c = child(n, second_every)
            for value in lifecycle_records(c):
                await producer.send(topics.lifecycle, value, key=c.key)  # the default partitioner: murmur2
                written += 1
        for n in range(parked_children):
            key, p = parked(n, topics.transfers)
            await producer.send(topics.retry_state, RetryState.encode(p), key=key)
            written += 1
        await producer.flush()
    finally:
        await producer.stop()
    return written


# ================================================================== one run (a child process)


def _vm_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def restore(bootstrap: str, topics: Topics, partitions: list[int]) -> tuple[CompletedTransfers, RetryState, int]:
    """What ``Router._assigned`` does for newly assigned partitions: the retry state, then the completed transfers."""
    retry, completed = RetryState(), CompletedTransfers()
    read = await retry.restore(bootstrap, topics.retry_state, partitions)
    read += await completed.restore(bootstrap, topics.lifecycle, partitions)
    return completed, retry, read


def check(
    completed: CompletedTransfers,
    retry: RetryState,
    partitions: Sequence[int],
    children: int,
    parked_children: int,
    second_every: int,
    topics: Topics,
) -> dict[str, int]:
    """The tables hold exactly the entries written for ``partitions``; ``BenchCheckFailed`` naming what differs."""
    owned = set(partitions)
    want_children = 0
    wrong: list[str] = []
    for n in range(children):
        c = child(n, second_every)
        p = partition_for(c.key, PARTITIONS)
        if p not in owned:
            continue
        want_children += 1
        if completed.entries.get(c.key) != completed_of(c) or completed.partition_of.get(c.key) != p:
            wrong.append(c.key.decode())
    want_parked = 0
    for n in range(parked_children):
        key, expected = parked(n, topics.transfers)
        if partition_for(key, PARTITIONS) not in owned:
            continue
        want_parked += 1
        got = retry.entries.get(key)
        if got is None or (got.tier, got.pending) != (expected.tier, expected.pending):
            wrong.append(f"parked {key.decode()}")
    if wrong or len(completed) != want_children or len(retry) != want_parked:
        raise BenchCheckFailed(
            f"restore of partitions {sorted(owned)}: {len(completed)} children restored of {want_children},"
            f" {len(retry)} parked of {want_parked}, {len(wrong)} wrong or missing (first {wrong[:3]})"
        )
    return {"children": want_children, "parked": want_parked}


async def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One measured restore of ``args.scope``'s partitions, its memory, and the check."""
    topics, partitions = Topics(args.prefix), SCOPES[args.scope]
    gc.collect()
    rss0 = _vm_rss_mb()
    t0, cpu0 = time.perf_counter(), time.process_time()
    completed, retry, read = await restore(args.bootstrap, topics, partitions)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    gc.collect()
    rss1 = _vm_rss_mb()
    out: dict[str, Any] = {
        "scope": args.scope,
        "partitions": partitions,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "records": read,
        "records_per_s": round(read / seconds) if seconds > 0 else 0,
        "lifecycle_entries": len(completed),
        "parked_entries": len(retry),
        "rss_before_mb": round(rss0, 1),
        "rss_after_mb": round(rss1, 1),
        "rss_delta_mb": round(rss1 - rss0, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    out["verified"] = check(completed, retry, partitions, args.children, args.parked, args.second_every, topics)
    if args.table_memory:
        # the same restore again under tracemalloc (slower, so untimed): what the tables hold once the reader is gone
        del completed, retry
        gc.collect()
        tracemalloc.start()
        try:
            again, again_retry, _ = await restore(args.bootstrap, topics, partitions)
            gc.collect()
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        out["table_memory_mb"] = round(held / 2**20, 1)
        out["restore_peak_traced_mb"] = round(peak / 2**20, 1)
        out["bytes_per_entry"] = round(held / max(len(again) + len(again_retry), 1))
    return out


def child_main(args: argparse.Namespace) -> None:
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(run_once(args))
    else:
        result = asyncio.run(run_once(args))
    print(RESULT + json.dumps(result), flush=True)


# ================================================================== the orchestration (parent process)


def run_child(args: argparse.Namespace, bootstrap: str, prefix: str, scope: str, table_memory: bool) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.restore", "--child", scope, "--bootstrap", bootstrap, "--prefix", prefix,
        "--children", str(args.children), "--parked", str(args.parked), "--second-every", str(args.second_every),
        "--loop", args.loop, *(["--table-memory"] if table_memory else []),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchCheckFailed(f"restore run {scope}: exit {done.returncode}: {tail[0]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT) :])
    result["load_avg_1_5_15"] = _load()
    return result


MEDIAN_FIGURES = (
    "seconds", "cpu_seconds", "records", "records_per_s", "lifecycle_entries", "parked_entries",
    "rss_before_mb", "rss_after_mb", "rss_delta_mb", "peak_rss_mb",
)  # fmt: skip


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for scope in SCOPES:
        mine = [r for r in runs if r["scope"] == scope]
        if not mine:
            continue
        fig = {k: statistics.median(r[k] for r in mine) for k in MEDIAN_FIGURES}
        for k in ("table_memory_mb", "bytes_per_entry"):
            measured = [r[k] for r in mine if k in r]
            if measured:
                fig[k] = statistics.median(measured)
        out[scope] = fig
    return out


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\nstate restore: {result['children']:,} children ({result['lifecycle_records']:,} lifecycle records),"
        f" {result['parked']:,} parked, {PARTITIONS} partitions; median of {result['repeats']}"
    )
    print(f"{'partitions':14}{'seconds':>9}{'records/s':>11}{'entries':>9}{'RSS before':>12}{'after':>8}"
          f"{'delta':>8}{'tables MB':>11}")  # fmt: skip
    for scope, fig in result["median"].items():
        label = "all 6" if scope == "all" else "2 of 6"
        entries = int(fig["lifecycle_entries"] + fig["parked_entries"])
        table = f"{fig['table_memory_mb']:.1f}" if "table_memory_mb" in fig else "-"
        print(
            f"{label:14}{fig['seconds']:>9.2f}{fig['records_per_s']:>11,.0f}{entries:>9,}{fig['rss_before_mb']:>12.0f}"
            f"{fig['rss_after_mb']:>8.0f}{fig['rss_delta_mb']:>8.0f}{table:>11}"
        )
    print(f"restore of {result['children']:,} lifecycle entries within 5 s: {result['verdict']['within_5_s']}")


def iterate(repeats: int) -> Iterator[tuple[int, str]]:
    for i in range(repeats):
        for scope in SCOPES:
            yield i, scope


async def _delete(bootstrap: str, topics: Topics) -> None:
    admin = clients.admin(bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topics.lifecycle, topics.retry_state])
    finally:
        await admin.close()


def parent_main(args: argparse.Namespace) -> dict[str, Any]:
    with broker(argparse.Namespace(bootstrap=args.bootstrap, members=0)) as bootstrap:
        topics = Topics(f"bench-restore-{uuid.uuid4().hex[:8]}")
        t0 = time.perf_counter()
        written = asyncio.run(write_state(bootstrap, topics, args.children, args.parked, args.second_every))
        print(f"wrote {written:,} state records in {time.perf_counter() - t0:.1f} s", flush=True)
        runs: list[dict[str, Any]] = []
        try:
            for i, scope in iterate(args.repeats):
                r = run_child(args, bootstrap, topics.prefix, scope, table_memory=i == 0)
                runs.append({"repeat": i, **r})
                print(
                    f"  repeat {i} {scope:6} {r['seconds']:6.2f} s {r['records_per_s']:>9,} records/s"
                    f"  RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB  load {r['load_avg_1_5_15'][0]:.1f}",
                    flush=True,
                )
        finally:
            asyncio.run(_delete(bootstrap, topics))
    median = medians(runs)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg_1_5_15_at_end": _load()},
        "children": args.children,
        "parked": args.parked,
        "second_every": args.second_every,
        "partitions": PARTITIONS,
        "lifecycle_records": written - args.parked,
        "repeats": args.repeats,
        "loop": args.loop,
        "note": "shared machine: figures are noisy, see load averages per run",
        "runs": runs,
        "median": median,
        "verdict": {"within_5_s": median["all"]["seconds"] <= 5.0 if "all" in median else None},
    }


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--children", type=int, default=100_000, help="children with completed transfers (entries)")
    p.add_argument("--parked", type=int, default=10_000, help="children parked in a retry tier")
    p.add_argument(
        "--second-every", type=int, default=5,
        help="every Nth child completed a second transfer (two records, as the router writes them; 0: none)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each scope (median reported)")
    p.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), help="a broker to use (default: start one)"
    )
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a run may take")
    p.add_argument("--out", type=Path, default=RESULTS / "restore.json")
    # one run's own process (internal)
    p.add_argument("--child", dest="scope", choices=sorted(SCOPES), help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--table-memory", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.scope:
        child_main(args)
        return 0
    result = parent_main(args)
    print_table(result)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
