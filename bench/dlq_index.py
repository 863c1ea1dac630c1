"""`casebridge dlq list --transfer ID` over 100,000 dead letters: the local index against reading the topics whole.

    .venv/bin/python -m bench.dlq_index                      # a broker of its own (casebridge's local Kafka)
    .venv/bin/python -m bench.dlq_index --bootstrap HOST:PORT --count 100000

Writes ``--count`` synthetic dead letters (North Somerset step-downs from the contract's example, NHS numbers from
the 999 range; the headers exactly as the router writes them, ``router._outbox.dead_letter_headers``) to a fresh
prefix, with replays on the audit topic, parkings and completion events for a few of them, then measures and
prints: the first index build (the first `dlq list` call), `dlq list --transfer ID` afterwards (as a subprocess,
the whole command, and in-process, the command without the interpreter's start), a call after ``--more`` new
dead letters (incremental), and the full read (`--no-index`) for comparison. `casebridge --version` as a
subprocess is printed too: the interpreter's start and imports, which every command pays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord

from connectors import kafka as clients
from contracts import wire
from router._outbox import Failure, dead_letter_headers
from router.settings import Topics, TopicSettings
from router.topics import prepare

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = json.loads((ROOT / "contracts" / "examples" / "north-somerset.step-down.lcs-ehm.json").read_text())
#: dead letters per transfer (a transfer dead-lettered, replayed, dead-lettered again)
PER_TRANSFER = 2


def _transfer(n: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(EXAMPLE))
    doc.update(transfer_id=f"ns-{n}", message_id=f"ns-{n}-m1", correlation_id=f"ns-{n}")
    doc["child"]["identifiers"] = [{"system": "lcs", "id": f"LCS-{n}"}]
    return doc


def _dead_letter(seq: int, topics: Topics, at: datetime) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    n = seq // PER_TRANSFER
    key, value = f"lcs:LCS-{n}".encode(), json.dumps(_transfer(n)).encode()
    record = ConsumerRecord(
        topics.transfers, seq % 3, seq, int(at.timestamp() * 1000), 0, key, value, None, len(key), len(value),
        [("correlation_id", f"ns-{n}".encode())],
    )  # fmt: skip
    failure = Failure(
        stage="protocol", error_class="ProtocolRuleNotMet", message="protocol rules not met: NS-6",
        attempts=3, rule_ids=("NS-6",), first_failure=at, last_failure=at, transfer_id=f"ns-{n}",
        council="north-somerset",
    )  # fmt: skip
    return key, value, dead_letter_headers(record, f"{topics.prefix}-router", failure)


async def _write(bootstrap: str, topics: Topics, start: int, stop: int) -> list[str]:
    """Dead letters ``start`` to ``stop``; of the first batch, every 100th replayed (an audit record), every 1000th
    parked, every 50th transfer completed after; returns the dead letters' ids."""
    producer = clients.producer(bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    ids: list[str] = []
    try:
        base = datetime.now(UTC) - timedelta(hours=1)
        futures = []
        for seq in range(start, stop):
            key, value, headers = _dead_letter(seq, topics, base + timedelta(milliseconds=seq))
            futures.append(await producer.send(topics.dead_letter, value=value, key=key, headers=headers))
        for f in futures:
            meta = await f
            ids.append(f"{meta.partition}:{meta.offset}")
        if start == 0:
            for i, dl_id in enumerate(ids):
                if i % 100 == 0:
                    audit = {"operator": "bench", "dead_letter": dl_id}
                    await producer.send(topics.audit, json.dumps(audit).encode(), key=dl_id.encode())
                if i % 1000 == 1:
                    await producer.send(topics.parking, b"{}", key=b"k", headers=[(wire.REPLAY_OF, dl_id.encode())])
            later = datetime.now(UTC).isoformat()
            for n in range(0, stop // PER_TRANSFER, 50):
                event = {"event_id": str(uuid.uuid4()), "transfer_id": f"ns-{n}", "occurred_at": later}
                await producer.send(
                    topics.events, json.dumps(event).encode(), key=f"ns-{n}".encode(),
                    headers=wire.event_headers("source-closed"),
                )  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()
    return ids


def _cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("casebridge")), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    return time.perf_counter() - started, done


def _in_process(*args: str) -> tuple[float, str]:
    from typer.testing import CliRunner

    from casebridge.cli import app

    started = time.perf_counter()
    result = CliRunner().invoke(app, list(args))
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(f"casebridge {' '.join(args)} exited {result.exit_code}: {result.output[-500:]}")
    return elapsed, result.stdout


@contextmanager
def _broker(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from casebridge.localkafka import temporary_broker

    with temporary_broker(timeout=180) as bootstrap:
        yield bootstrap


async def _monitor_refresh(bootstrap: str, topics: Topics, db: Path, runs: int, more: int = 0) -> None:
    """The monitor's background round (``Watch.refresh``: lag, then the dead letters from its index) and the two
    answers the page asks for on each refresh (``/api/overview``, ``/api/dead-letters``), over every dead letter
    written: the first round builds the monitor's index, the later ones read only what is new."""
    from monitor import DeadLetterIndex, Store, Tracker, Watch, overview
    from monitor._views import dead_letter_page

    kafka = clients.KafkaConnection.of(bootstrap)
    store = Store(db)
    tracker = Tracker(store, kafka, topics)
    index = DeadLetterIndex(store, kafka, topics)
    watch = Watch(kafka, topics, tracker, 5.0, index)
    await tracker.start()
    await index.start()
    try:
        started = time.perf_counter()
        await watch.refresh()
        print(f"monitor: first round (builds its index, {len(watch.dead_letters)} dead letters): "
              f"{time.perf_counter() - started:.2f} s")  # fmt: skip
        rounds, pages, lists, filtered = [], [], [], []
        for _ in range(runs):
            started = time.perf_counter()
            await watch.refresh()
            rounds.append(time.perf_counter() - started)
            started = time.perf_counter()
            body = json.dumps(overview(store, watch))
            pages.append(time.perf_counter() - started)
            started = time.perf_counter()
            listed = json.dumps(dead_letter_page(watch))  # what GET /api/dead-letters answers: a page, the counts
            lists.append(time.perf_counter() - started)
            started = time.perf_counter()
            rare = json.dumps(dead_letter_page(watch, "parked"))  # a status few have: the whole listing scanned
            filtered.append(time.perf_counter() - started)
        print(f"monitor: a later round (every {watch.interval:.0f} s, nothing new): {_median(rounds)}")
        print(f"monitor: /api/overview answered ({len(body)} bytes): {_median(pages)}")
        print(f"monitor: /api/dead-letters answered (a page, {len(listed) / 1e3:.0f} kB): {_median(lists)}")
        print(f"monitor: /api/dead-letters?status=parked answered ({len(rare) / 1e3:.0f} kB): {_median(filtered)}")
        if more:
            total = len(watch.dead_letters)
            await _write(bootstrap, topics, total, total + more)
            started = time.perf_counter()
            await watch.refresh()
            print(f"monitor: the round after {more} more dead letters ({len(watch.dead_letters)} in all): "
                  f"{time.perf_counter() - started:.3f} s")  # fmt: skip
    finally:
        await index.stop()
        await tracker.stop()
        store.close()


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="a running broker (default: start one of its own)")
    parser.add_argument("--count", type=int, default=100_000, help="dead letters written first")
    parser.add_argument("--more", type=int, default=1_000, help="dead letters written before the incremental call")
    parser.add_argument("--runs", type=int, default=5, help="timed calls of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="casebridge-bench-index-") as state, _broker(args.bootstrap) as bootstrap:
        os.environ["XDG_STATE_HOME"] = state  # the default index location, for the subprocesses too
        topics = Topics(f"bench-{uuid.uuid4().hex[:8]}")
        asyncio.run(prepare(bootstrap, topics, 2, TopicSettings()))
        started = time.perf_counter()
        asyncio.run(_write(bootstrap, topics, 0, args.count))
        print(f"wrote {args.count} dead letters to {topics.dead_letter}: {time.perf_counter() - started:.1f} s")
        where = ["--bootstrap", bootstrap, "--prefix", topics.prefix]
        wanted = f"ns-{args.count // PER_TRANSFER // 2}"
        query = ["dlq", "list", "--transfer", wanted, *where]

        took, first = _cli(*query)
        assert first.returncode == 0, first.stderr
        print(f"first call (builds the index; subprocess): {took:.2f} s  [{first.stderr.strip() or 'no stderr'}]")
        print(f"  -> {first.stdout.splitlines()[-1]}")
        version = [_cli("--version")[0] for _ in range(args.runs)]
        print(f"`casebridge --version` (interpreter start + imports; subprocess): {_median(version)}")
        sub = []
        for _ in range(args.runs):
            took, done = _cli(*query)
            assert done.returncode == 0 and done.stdout == first.stdout, (done.stderr, done.stdout)
            sub.append(took)
        print(f"`dlq list --transfer {wanted}` after the build (subprocess): {_median(sub)}")
        inproc = []
        for _ in range(args.runs):
            took, out = _in_process(*query)
            assert out == first.stdout
            inproc.append(took)
        print(f"`dlq list --transfer {wanted}` after the build (in-process): {_median(inproc)}")

        asyncio.run(_write(bootstrap, topics, args.count, args.count + args.more))
        took, done = _cli(*query)
        assert done.returncode == 0, done.stderr
        print(f"after {args.more} more dead letters, the next call (subprocess, reads only those): {took:.3f} s")
        took, _ = _in_process(*query)
        print(f"  and the one after (in-process, nothing new): {took:.3f} s")

        took, full = _cli(*query, "--no-index")
        if full.returncode == 0:
            same = "same output" if full.stdout == done.stdout else "DIFFERENT OUTPUT"
            print(f"full read (--no-index; subprocess): {took:.2f} s ({same})")
        else:
            print(
                f"full read (--no-index; subprocess): exit {full.returncode} after {took:.1f} s: {full.stderr.strip()}"
            )
        took, whole = _cli("dlq", "list", "--json", *where)
        print(f"`dlq list --json` of all {len(whole.stdout.splitlines())} from the index (subprocess): {took:.2f} s")
        asyncio.run(_monitor_refresh(bootstrap, topics, Path(state) / "monitor.sqlite3", args.runs, args.more))
    return 0


if __name__ == "__main__":
    sys.exit(main())
