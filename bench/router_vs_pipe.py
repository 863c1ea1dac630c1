"""How close the casebridge router runs to the Kafka pipe it sits on (issue 7).

    .venv/bin/python bench/router_vs_pipe.py --n 50000          # drains + paced latency runs
    .venv/bin/python bench/router_vs_pipe.py --soak             # 1,000,000 through the router, RSS sampled

A broker is started from Apache Kafka's jars (``casebridge.localkafka``) on free ports in a
temporary directory, unless ``--bootstrap`` or ``KAFKA_BOOTSTRAP_SERVERS`` names one. One
topic is pre-filled with ``n`` canonical transfer messages (2-8 KB, a ``bench.seq``
header each). Then, interleaved and repeated, each variant drains exactly ``n`` from
``earliest`` with a fresh consumer group, in a process of its own (so CPU time and peak
RSS are that variant's), the clock starting at the first record:

- ``raw``: aiokafka consume -> produce (acks=all, idempotent), no decoding, offsets
  committed after each batch's writes are acknowledged;
- ``pydantic``: the same plus ``TransferMessage.model_validate_json``;
- ``floor``: the least any router with casebridge's outputs must do: validate, then write
  what the router writes for a completed transfer (its five events and the child history
  record, bytes captured once from the router's own flow, and the child's lifecycle record)
  through the router's own outbox, offsets committed once those writes are acknowledged. No protocol, no connectors, no
  event building: ``floor / raw`` is the ceiling of ``router / raw`` with these outputs;
- ``router``: casebridge's Router from ``build_router``: validation, the North Somerset
  protocol, an in-process target (idempotent write) and source, every event produced,
  offsets committed by the router's own scheme.

Each variant proves that all ``n`` sequence numbers arrived exactly once (raw: as
consumed and forwarded; router: the target's writes) and that the group's committed
offsets cover the topic; it fails loudly otherwise. Latency (produce timestamp to the
outcome record's Kafka timestamp; for the router its ``source-closed`` event) is measured
in paced runs: a producer paces new records at half the router's measured maximum while
each variant consumes live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout whose venv predates bench/
    sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from aiokafka.structs import ConsumerRecord  # noqa: E402

from bench._workload import (  # noqa: E402
    BenchCheckFailed,
    Ledger,
    Record,
    SeqCounter,
    Workload,
    seq_of,
    seq_of_message_id,
)
from casebridge.process import freeze_startup_heap  # noqa: E402
from connectors import Receipt, Target  # noqa: E402
from connectors.memory import MemorySource  # noqa: E402
from contracts import CaseSystem, TransferMessage, wire  # noqa: E402
from mappings import Route  # noqa: E402
from router import Settings, Topics, build_router  # noqa: E402
from router._lifecycle import CompletedTransfers  # noqa: E402
from router._outbox import Outbox, Queued  # noqa: E402
from router.app import ensure_topics  # noqa: E402
from router.settings import RetrySettings, TopicSettings  # noqa: E402

VARIANTS = ("raw", "pydantic", "floor", "router")
RESULTS = ROOT / "bench" / "results"
RESULT = "BENCH-RESULT "
READY = "BENCH-READY"
BATCH = 500  # the router's default batch size; the raw pipe takes the same
SOAK_POOL = 50_000  # distinct children / transfers in the soak (the in-process target stays bounded)


# ================================================================== the variants (child processes)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Clock:
    """Wall and CPU time from the first record to the last outcome (offsets committed)."""

    t0: float | None = None
    cpu0: float = 0.0
    t1: float = 0.0
    cpu1: float = 0.0

    epoch0: float = 0.0  # time.time() at the first record (members runs compare it across processes)

    def start(self) -> None:
        if self.t0 is None:
            self.t0, self.cpu0, self.epoch0 = time.perf_counter(), time.process_time(), time.time()

    def stop(self) -> None:
        self.t1, self.cpu1 = time.perf_counter(), time.process_time()

    def figures(self, n: int) -> dict[str, float]:
        wall = self.t1 - (self.t0 or self.t1)
        cpu = self.cpu1 - self.cpu0
        return {
            "seconds": round(wall, 3),
            "msg_per_s": round(n / wall, 1) if wall > 0 else 0.0,
            "cpu_seconds": round(cpu, 3),
            "cpu_us_per_msg": round(cpu / n * 1e6, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }


class GcPauses:
    """The garbage collector's pauses (the event loop stands still for each), by generation."""

    def __init__(self) -> None:
        self.ms: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.ms[info["generation"]].append((time.perf_counter() - self._began) * 1000)

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> dict[str, Any]:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)
        return {
            f"gen{g}": {"count": len(p), "total_ms": round(sum(p), 1), "max_ms": round(max(p, default=0.0), 1)}
            for g, p in self.ms.items()
        }


class RssSampler:
    """Samples the process's RSS every ``every`` seconds (the soak)."""

    def __init__(self, progress: list[int], every: float = 1.0) -> None:
        self.progress = progress
        self.every = every
        self.samples: list[tuple[float, int, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        t0 = time.perf_counter()
        while True:
            self.samples.append((round(time.perf_counter() - t0, 2), self.progress[0], round(_rss_mb(), 1)))
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        if self._task is not None:
            self.samples.append((self.samples[-1][0] if self.samples else 0.0, self.progress[0], round(_rss_mb(), 1)))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _committed_total(bootstrap: str, group: str, topic: str, admin: Any = None) -> int:
    own = admin is None
    if own:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        if own:
            await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def _await_assignment(consumer: AIOKafkaConsumer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise BenchCheckFailed("the consumer got no partitions within 60 s")
        await asyncio.sleep(0.02)


def _latencies(ms: Sequence[int], produced: Sequence[int] = (), warmup_ms: int = 0) -> dict[str, Any]:
    """Percentiles, and (given produce timestamps) the worst latency of each second of the run.

    With ``warmup_ms``, the percentiles are of the records produced after the first ``warmup_ms`` of the
    run (the steady state), and ``all_p99_ms`` / ``all_max_ms`` are of every record, warm-up included.
    """
    if not ms:
        return {}
    start = min(produced) if produced else 0
    steady = [lat for lat, ts in zip(ms, produced, strict=True) if ts >= start + warmup_ms] if warmup_ms else ms
    if len(steady) < 2:  # the warm-up took the whole run: say so rather than fail on the percentiles
        raise BenchCheckFailed(f"only {len(steady)} records after the {warmup_ms} ms warm-up: pace for longer")
    q = statistics.quantiles(steady, n=100, method="inclusive")
    out: dict[str, Any] = {
        "count": len(steady),
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
        "max_ms": max(steady),
        "warmup_ms": warmup_ms,
        "all_p99_ms": statistics.quantiles(ms, n=100, method="inclusive")[98],
        "all_max_ms": max(ms),
    }
    if produced:
        worst: dict[int, int] = {}
        for lat, ts in zip(ms, produced, strict=True):
            second = (ts - start) // 1000
            worst[second] = max(worst.get(second, 0), lat)
        out["worst_ms_by_second"] = [worst.get(i, 0) for i in range(max(worst) + 1)]
    return out


def _stop_on_sigusr1() -> asyncio.Event:
    """Members runs: the parent says when the group as a whole has committed every record (SIGUSR1)."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stop.set)
    return stop


def _member_figures(clock: Clock, counter: SeqCounter, done: int) -> dict[str, Any]:
    """One member's share: its records, CPU, first-record time and which sequence numbers it saw."""
    return {
        "records": done,
        "epoch0": clock.epoch0,
        "cpu_seconds": round(clock.cpu1 - clock.cpu0, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "counts": counter.counts.hex(),
        "out_of_range": counter.out_of_range,
    }


async def run_pipe(args: argparse.Namespace, validate: bool) -> dict[str, Any]:
    """Variants raw / pydantic: consume -> (validate) -> produce -> acknowledged -> commit, per batch."""
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True, linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:

        async def forward(r: ConsumerRecord[bytes, bytes], ts: int) -> Any:
            if validate:
                TransferMessage.model_validate_json(r.value or b"")
            return await producer.send(args.out_topic, r.value, key=r.key, headers=list(r.headers), timestamp_ms=ts)

        async def settle(pending: list[Any]) -> None:
            await asyncio.gather(*pending)

        return await _drain(args, forward, settle)
    finally:
        await producer.stop()


async def run_floor(args: argparse.Namespace) -> dict[str, Any]:
    """Variant floor: consume -> validate -> the router's writes of a completed transfer -> acknowledged -> commit."""
    writes = await _router_writes(args)
    outbox = Outbox(args.bootstrap, args.out_topic, args.out_topic, args.group)
    await outbox.start()
    try:

        async def forward(r: ConsumerRecord[bytes, bytes], ts: int) -> None:
            key = TransferMessage.model_validate_json(r.value or b"").transfer_id.encode()
            for _topic, _key, value, headers in writes:  # each to its own topic in the router; one topic here
                await outbox.send(args.out_topic, key, value, headers)

        async def settle(pending: list[Any]) -> None:
            await (await outbox.hand_over())

        return await _drain(args, forward, settle)
    finally:
        await outbox.stop()


class _Capture:
    """A flow sink that keeps the writes instead of sending them."""

    def __init__(self) -> None:
        self.writes: list[Queued] = []

    async def emit(self, event: Any) -> None:
        raise AssertionError(f"the bench transfer's {event.event_type} event was not built from its template")

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        self.writes.append(("events", transfer_id.encode(), value, wire.event_headers(event_type)))

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], failure: Any) -> None:
        raise AssertionError(f"the bench transfer was dead-lettered: {failure.error_class}")

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        self.writes.append((topic, key, value, headers))


async def _router_writes(args: argparse.Namespace) -> list[Queued]:
    """What the router writes for the workload's first transfer: from its own flow (events and history), and the
    child's lifecycle record (the router's, after the flow)."""
    settings = _BenchSettings(
        bootstrap_servers=args.bootstrap, topic_prefix=args.run_prefix, group_id=args.group, input_topic=args.topic
    )
    router = build_router(settings, {CaseSystem.EHM: BenchTarget(SeqCounter(1))}, {CaseSystem.LCS: MemorySource()})
    r = Workload().record(0)
    capture = _Capture()
    record = ConsumerRecord(args.topic, 0, 0, 0, 0, r.key, r.value, None, len(r.key), len(r.value), r.headers)
    outcome = await router.flow.run(record, capture)
    await router.outbox.stop()  # never started: closes the producer object
    if outcome.state != "completed" or len(capture.writes) != 6:
        raise BenchCheckFailed(f"floor: the router's flow gave {outcome.state} with {len(capture.writes)} writes")
    # and the child's lifecycle record the router writes once the flow completed it (router/app.py, _lifecycle.py)
    transfer = TransferMessage.model_validate_json(r.value)
    done = CompletedTransfers().complete(r.key, transfer.transfer_id, r.value, transfer.message_id, 0)
    return [*capture.writes, (settings.topics.lifecycle, r.key, done, [])]


async def _drain(
    args: argparse.Namespace,
    forward: Callable[[ConsumerRecord[bytes, bytes], int], Awaitable[Any]],
    settle: Callable[[list[Any]], Awaitable[None]],
) -> dict[str, Any]:
    """Drain n records: each forwarded, each batch settled (its writes acknowledged), then its offsets committed."""
    n = args.n
    counter = SeqCounter(n)
    clock = Clock()
    latency = array("q", [-1]) * n if args.paced else None
    produced_at = array("q", [-1]) * n if args.paced else None
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        stop = _stop_on_sigusr1() if args.members else None
        await _await_assignment(consumer)
        print(READY, flush=True)
        done = 0
        deadline = time.monotonic() + args.timeout
        while done < n if stop is None else not stop.is_set():
            if time.monotonic() > deadline:
                counter.check(f"{args.variant}: timed out after {args.timeout:.0f} s with {done} of {n}")
            batches = await consumer.getmany(timeout_ms=50, max_records=BATCH)
            if not batches:
                continue
            clock.start()
            pending = []
            for records in batches.values():
                for r in records:
                    seq = seq_of(r.headers)
                    counter.add(seq)
                    ts = int(time.time() * 1000)
                    pending.append(await forward(r, ts))
                    if latency is not None and produced_at is not None and 0 <= seq < n:
                        latency[seq] = ts - r.timestamp
                        produced_at[seq] = r.timestamp
                    done += 1
            await settle(pending)
            await consumer.commit()
        clock.stop()
    finally:
        await consumer.stop()
    if args.members:
        return _member_figures(clock, counter, done)
    counter.check(args.variant)
    committed = await _committed_total(args.bootstrap, args.group, args.topic)
    if committed != n:
        raise BenchCheckFailed(f"{args.variant}: the group committed {committed} offsets, expected {n}")
    out: dict[str, Any] = {**clock.figures(n), "verified": True}
    if latency is not None and produced_at is not None:
        out["latency"] = _latencies(list(latency), list(produced_at), int(args.warmup * 1000))
    return out


@dataclass(frozen=True)
class _BenchTopics(Topics):
    """The router's topics under a per-run prefix, except that it reads the bench's input topic."""

    input_topic: str = ""

    @property
    def transfers(self) -> str:
        return self.input_topic


class _BenchSettings(Settings):
    input_topic: str

    @property
    def topics(self) -> Topics:
        return _BenchTopics(self.topic_prefix, self.input_topic)


class BenchTarget(Target):
    """An in-process EHM: an idempotent write keyed by transfer id that keeps the receipt only.

    (``connectors.memory.MemoryTarget`` keeps every delivered message, which would put the
    target's storage into the router process's RSS.) Counts each delivery's sequence number.
    """

    system: ClassVar[CaseSystem] = CaseSystem.EHM

    def __init__(self, counter: SeqCounter, ledger: Ledger | None = None) -> None:
        self.counter = counter
        self.written: dict[str, str] = {}
        #: members runs: every write also on a file, which outlives a SIGKILL (bench/deployment.py's failover)
        self.ledger = ledger

    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        seq = seq_of_message_id(transfer.message_id)
        self.counter.add(seq)
        if self.ledger is not None:
            self.ledger.wrote(seq)
        created = transfer.transfer_id not in self.written
        if created:
            self.written[transfer.transfer_id] = f"MEM-{transfer.transfer_id}"
        return Receipt(self.system, self.written[transfer.transfer_id], created=created)

    async def confirm(self, transfer: TransferMessage) -> Receipt:
        ref = self.written.get(transfer.transfer_id)
        return Receipt(self.system, ref or "none", created=False, acknowledged=ref is not None)

    async def leader_away(self, locality: str) -> bool | None:
        return False


async def _outcome_times(bootstrap: str, events_topic: str, n: int, timeout: float) -> dict[int, int]:
    """seq -> Kafka timestamp of the transfer's ``source-closed`` event (paced runs: transfer bench-<seq>)."""
    consumer = AIOKafkaConsumer(events_topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    out: dict[int, int] = {}
    try:
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for r in records:
                    if dict(r.headers).get(wire.EVENT_TYPE) == b"source-closed":
                        tid = json.loads(r.value or b"{}")["transfer_id"]
                        out.setdefault(int(tid.rsplit("-", 1)[1]), r.timestamp)
    finally:
        await consumer.stop()
    return out


async def run_router(args: argparse.Namespace) -> dict[str, Any]:
    """Variant router: casebridge's Router end to end, timed around its batch handler."""
    n = args.n
    counter = SeqCounter(n)
    clock = Clock()
    progress = [0]
    produced_at = array("q", [-1]) * n if args.paced else None
    settings = _BenchSettings(
        bootstrap_servers=args.bootstrap,
        topic_prefix=args.run_prefix,
        group_id=args.group,
        input_topic=args.topic,
        retry=RetrySettings(),
        # the router's own topics as many partitions as the input topic: it refuses to run otherwise (co-partitioned)
        topic_config=TopicSettings(partitions=args.partitions),
    )
    ledger = Ledger(args.ledger) if args.ledger else None
    target, source = BenchTarget(counter, ledger), MemorySource()
    router = build_router(settings, {CaseSystem.EHM: target}, {CaseSystem.LCS: source})
    finished = asyncio.Event()
    handle_batch = router._on_batch

    async def timed(msg: Any, tier: int | None) -> None:
        records: tuple[ConsumerRecord[bytes, bytes], ...] = tuple(msg.raw_message)
        entered = time.time()
        if tier is None:
            clock.start()
            if produced_at is not None:
                for r in records:
                    s = seq_of(r.headers)
                    if 0 <= s < n:
                        produced_at[s] = r.timestamp
        await handle_batch(msg, tier)  # returns with the batch processed; it settles (acks, commit) meanwhile
        if tier is None and args.paced:
            age = max(int(entered * 1000) - r.timestamp for r in records)
            batches.append((len(records), age, round((time.time() - entered) * 1000, 1)))
        if tier is None:
            progress[0] += len(records)
            if progress[0] >= n and not args.members:
                await router.settled()  # the clock stops once the last outputs are acknowledged and offsets committed
                clock.stop()
                finished.set()

    batches: list[tuple[int, int, float]] = []  # paced runs: records, oldest record's age at entry (ms), handling ms
    router._on_batch = timed  # type: ignore[method-assign]
    sampler = RssSampler(progress) if args.sample_rss else None
    gc_pauses = GcPauses()
    await router.start()
    freeze_startup_heap()  # as `casebridge run` does once its stack has started
    gc_pauses.start()
    try:
        [sub] = [s for s in router.broker.subscribers if args.topic in getattr(s, "topic_names", ())]
        await _await_assignment(sub.consumer)  # type: ignore[attr-defined]
        if args.members:  # the parent says when the group is done
            stop = _stop_on_sigusr1()
            asyncio.get_running_loop().create_task(_finish_when(stop, router, clock, finished))
        print(READY, flush=True)
        if sampler is not None:
            sampler.start()
        try:
            await asyncio.wait_for(finished.wait(), timeout=args.timeout)
        except TimeoutError:
            counter.check(f"router: timed out after {args.timeout:.0f} s with {progress[0]} of {n}")
            raise
        if sampler is not None:
            await sampler.stop()
    finally:
        await router.stop()
    if args.members:
        # a duplicate: a record another member completed (its outputs acknowledged) but had not committed when its
        # partition moved here; written off, not delivered (router/_lifecycle.py)
        if set(router.outcomes) - {"completed", "duplicate"}:
            raise BenchCheckFailed(f"router member: outcomes other than completed: {dict(router.outcomes)}")
        return {**_member_figures(clock, counter, progress[0]), "outcomes": dict(router.outcomes)}
    counter.check("router")
    outcomes = dict(router.outcomes)
    if outcomes != {"completed": n}:
        raise BenchCheckFailed(f"router: expected {n} completed transfers, got {outcomes}")
    committed = await _committed_total(args.bootstrap, args.group, args.topic)
    if committed != n:
        raise BenchCheckFailed(f"router: the group committed {committed} offsets, expected {n}")
    out: dict[str, Any] = {**clock.figures(n), "verified": True}
    if produced_at is not None:
        closed = await _outcome_times(args.bootstrap, settings.topics.events, n, timeout=60)
        if len(closed) != n:
            raise BenchCheckFailed(f"router: {len(closed)} source-closed events of {n}")
        out["latency"] = _latencies(
            [closed[s] - produced_at[s] for s in range(n)], list(produced_at), int(args.warmup * 1000)
        )
    out["gc_pauses"] = gc_pauses.stop()
    if sampler is not None:
        out["rss_samples"] = sampler.samples
    if batches:
        out["batches"] = {
            "count": len(batches),
            "records_median": statistics.median(b[0] for b in batches),
            "oldest_age_at_entry_ms_median": statistics.median(b[1] for b in batches),
            "handling_ms_median": statistics.median(b[2] for b in batches),
            "handling_ms_max": max(b[2] for b in batches),
        }
    return out


async def _finish_when(stop: asyncio.Event, router: Any, clock: Clock, finished: asyncio.Event) -> None:
    await stop.wait()
    await router.settled()
    clock.stop()
    finished.set()


async def child_main(args: argparse.Namespace) -> None:
    if args.variant == "router":
        result = await run_router(args)
    elif args.variant == "floor":
        result = await run_floor(args)
    else:
        result = await run_pipe(args, validate=args.variant == "pydantic")
    print(RESULT + json.dumps(result), flush=True)


# ================================================================== the orchestration (parent process)


async def produce(bootstrap: str, topic: str, workload: Workload, n: int) -> None:
    """Pre-fill: n records as fast as the broker takes them."""
    await produce_records(bootstrap, topic, workload.records(0, n))


async def produce_records(bootstrap: str, topic: str, records: Iterable[Record]) -> None:
    """The records, as fast as the broker takes them (keyed by child: the default partitioner, murmur2)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1024 * 1024, max_request_size=2**22
    )
    await producer.start()
    try:
        pending = []
        for r in records:
            pending.append(await producer.send(topic, r.value, key=r.key, headers=r.headers))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def produce_paced(bootstrap: str, topic: str, records: list[Record], rate: float) -> float:
    """Send the records at ``rate`` per second (a tick every 5 ms); returns the achieved rate."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2**22)
    await producer.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending = []
        i = 0
        while i < len(records):
            due = int((loop.time() - start) * rate) + 1
            while i < min(due, len(records)):
                r = records[i]
                pending.append(await producer.send(topic, r.value, key=r.key, headers=r.headers))
                i += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        return len(records) / (loop.time() - start)
    finally:
        await producer.stop()


class Child:
    """One variant run in a process of its own."""

    def __init__(self, variant: str, common: list[str], extra: list[str], timeout: float) -> None:
        cmd = [sys.executable, "-m", "bench.router_vs_pipe", "--child", variant, *common, *extra]
        self.variant = variant
        self.timeout = timeout
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == READY:
                return
        self.result()  # it died before it was ready: raise with its output

    def result(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=self.timeout + 120)
        for line in out.splitlines():
            if line.startswith(RESULT):
                parsed: dict[str, Any] = json.loads(line[len(RESULT) :])
                return parsed
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise BenchCheckFailed(f"{self.variant} run failed (exit {self.proc.returncode}):\n{tail}")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}"
        self.topics: list[str] = []

    def common(self, topic: str, n: int) -> list[str]:
        return [
            "--bootstrap", self.bootstrap, "--topic", topic, "--n", str(n),
            "--out-topic", f"{self.prefix}.raw-out", "--log-level", self.args.log_level, "--loop", self.args.loop,
            *(["--profile", str(self.args.profile)] if self.args.profile else []),
        ]  # fmt: skip

    def run_child(
        self, variant: str, topic: str, n: int, label: str, extra: Sequence[str] = (), timeout: float | None = None
    ) -> dict[str, Any]:
        timeout = timeout or max(300.0, n / 100)
        run_id = f"{self.prefix}-{label}-{variant}"
        extra = [*extra, "--group", run_id, "--run-prefix", run_id, "--timeout", str(timeout)]
        load = _load()
        result = Child(variant, self.common(topic, n), extra, timeout).result()
        return {"variant": variant, "load_avg_1_5_15": load, **result}

    async def create(self, topic: str, partitions: int = 3) -> None:
        await ensure_topics(self.bootstrap, [topic, f"{self.prefix}.raw-out"], partitions=partitions)
        self.topics.append(topic)

    async def cleanup(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if mine:
                await admin.delete_topics(mine)
        except Exception as exc:  # leftovers on a broker of one's own are harmless; say so and go on
            print(f"note: could not delete the bench topics ({type(exc).__name__})", file=sys.stderr)
        finally:
            await admin.close()

    # -- drains and paced runs ----------------------------------------------------------

    async def drains(self) -> dict[str, Any]:
        a = self.args
        topic = f"{self.prefix}.transfers"
        await self.create(topic)
        t = time.perf_counter()
        await produce(self.bootstrap, topic, Workload(), a.n)
        print(f"pre-filled {a.n} transfers in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        runs: list[dict[str, Any]] = []
        for rep in range(a.repeats):
            k = len(a.variants)
            order = a.variants[rep % k :] + a.variants[: rep % k]  # interleaved, each variant in each position
            for variant in order:
                r = self.run_child(variant, topic, a.n, f"d{rep}")
                r["repeat"] = rep
                runs.append(r)
                print(
                    f"  repeat {rep} {variant:8} {r['msg_per_s']:>9.0f} msg/s  cpu {r['cpu_us_per_msg']:>6.0f} us/msg"
                    f"  peak rss {r['peak_rss_mb']:>5.0f} MB  load {r['load_avg_1_5_15'][0]}",
                    file=sys.stderr,
                )
        summary = {v: _median_of([r for r in runs if r["variant"] == v]) for v in a.variants}
        return {"topic_records": a.n, "runs": runs, "median": summary}

    async def paced(self, rate: float) -> dict[str, Any]:
        a = self.args
        n = max(int(rate * (a.warmup + a.paced_seconds)), 100)
        workload = Workload(seed=11)
        records = [workload.record(seq) for seq in range(n)]
        out: dict[str, Any] = {"rate_target_msg_per_s": round(rate, 1), "records": n}
        for variant in a.variants:
            topic = f"{self.prefix}.paced-{variant}"
            await self.create(topic)
            run_id = f"{self.prefix}-paced-{variant}"
            timeout = (a.warmup + a.paced_seconds) * 3 + 120
            extra = [
                "--paced", "--warmup", str(a.warmup), "--group", run_id, "--run-prefix", run_id,
                "--timeout", str(timeout),
            ]  # fmt: skip
            load = _load()
            child = Child(variant, self.common(topic, n), extra, timeout)
            child.wait_ready()
            achieved = await produce_paced(self.bootstrap, topic, records, rate)
            result = child.result()
            out[variant] = {"load_avg_1_5_15": load, "rate_achieved_msg_per_s": round(achieved, 1), **result}
            lat = result.get("latency", {})
            print(
                f"  paced {variant:8} at {achieved:.0f} msg/s: p50 {lat.get('p50_ms')} p95 {lat.get('p95_ms')}"
                f" p99 {lat.get('p99_ms')} ms (with the {a.warmup:.0f} s warm-up: p99 {lat.get('all_p99_ms')},"
                f" max {lat.get('all_max_ms')} ms)  load {load[0]}"
                + (f"  gc pauses max {result['gc_pauses']['gen2']['max_ms']} ms" if "gc_pauses" in result else ""),
                file=sys.stderr,
            )
        return out

    # -- several group members (processes) --------------------------------------------

    async def members(self) -> dict[str, Any]:
        """Each variant run as 1 and as ``--members`` processes of one consumer group, on a topic of more partitions.

        A separate figure: the headline ratio stays one process against one process.
        """
        a = self.args
        topic = f"{self.prefix}.members"
        await self.create(topic, partitions=a.members_partitions)
        await produce(self.bootstrap, topic, Workload(), a.n)
        runs: list[dict[str, Any]] = []
        for rep in range(a.repeats):
            for variant in a.variants:
                for k in (1, a.members):
                    r = await self.run_members(variant, topic, a.n, k, f"m{rep}")
                    r["repeat"] = rep
                    runs.append(r)
                    print(
                        f"  repeat {rep} {variant:8} x{k} {r['msg_per_s']:>9.0f} msg/s  cpu {r['cpu_us_per_msg']:>6.0f}"
                        f" us/msg  shares {r['records_per_member']}  load {r['load_avg_1_5_15'][0]}",
                        file=sys.stderr,
                    )
        median = {
            f"{v}x{k}": _median_of([r for r in runs if r["variant"] == v and r["members"] == k])
            for v in a.variants
            for k in (1, a.members)
        }
        return {"partitions": a.members_partitions, "members": a.members, "runs": runs, "median": median}

    def start_members(
        self, variant: str, topic: str, n: int, k: int, label: str, extra: Callable[[int], list[str]] = lambda i: []
    ) -> tuple[str, list[Child], float]:
        """k processes of one fresh group (member i with ``extra(i)``), each started and assigned partitions."""
        run_id = f"{self.prefix}-{label}-{variant}-x{k}"
        timeout = max(300.0, n / 100)
        common = [
            "--members", str(k), "--group", run_id, "--run-prefix", run_id, "--timeout", str(timeout),
            "--partitions", str(self.args.members_partitions),
        ]  # fmt: skip
        children = [Child(variant, self.common(topic, n), [*common, *extra(i)], timeout) for i in range(k)]
        for child in children:
            child.wait_ready()
        return run_id, children, timeout

    async def until_committed(self, run_id: str, topic: str, n: int, timeout: float, what: str) -> float:
        """Until the group's committed offsets cover the topic's n records; the time (``time.time()``) they did."""
        deadline = time.monotonic() + timeout
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            while (committed := await _committed_total(self.bootstrap, run_id, topic, admin)) < n:
                if time.monotonic() > deadline:
                    raise BenchCheckFailed(f"{what}: the group committed {committed} of {n} in {timeout:.0f} s")
                await asyncio.sleep(0.02)
            return time.time()
        finally:
            await admin.close()

    async def run_members(self, variant: str, topic: str, n: int, k: int, label: str) -> dict[str, Any]:
        """k processes in one fresh group drain the topic; done when the group's committed offsets cover it."""
        load = _load()
        run_id, children, timeout = self.start_members(variant, topic, n, k, label)
        done_at = await self.until_committed(run_id, topic, n, timeout, f"{variant} x{k}")
        committed = await _committed_total(self.bootstrap, run_id, topic)
        for child in children:
            child.proc.send_signal(signal.SIGUSR1)
        shares = [child.result() for child in children]
        counter = SeqCounter(n)
        for share in shares:
            for seq, count in enumerate(bytes.fromhex(share["counts"])):
                for _ in range(count):
                    counter.add(seq)
            counter.out_of_range += share["out_of_range"]
        counter.check(f"{variant} x{k}")  # every sequence number exactly once across the members
        if committed != n:
            raise BenchCheckFailed(f"{variant} x{k}: the group committed {committed} offsets, expected {n}")
        wall = done_at - min(sh["epoch0"] for sh in shares if sh["records"])
        cpu = sum(sh["cpu_seconds"] for sh in shares)
        return {
            "variant": variant,
            "members": k,
            "load_avg_1_5_15": load,
            "seconds": round(wall, 3),
            "msg_per_s": round(n / wall, 1),
            "cpu_seconds": round(cpu, 3),
            "cpu_us_per_msg": round(cpu / n * 1e6, 1),
            "peak_rss_mb": max(sh["peak_rss_mb"] for sh in shares),
            "records_per_member": [sh["records"] for sh in shares],
            "member_shares": [member_share(sh) for sh in shares],
            "verified": True,
        }

    # -- soak ---------------------------------------------------------------------------

    async def soak(self) -> dict[str, Any]:
        a = self.args
        topic = f"{self.prefix}.soak"
        await self.create(topic)
        t = time.perf_counter()
        await produce(self.bootstrap, topic, Workload(pool=SOAK_POOL), a.soak_n)
        print(f"pre-filled {a.soak_n} transfers in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        r = self.run_child("router", topic, a.soak_n, "soak", ["--sample-rss"], timeout=a.soak_n / 100)
        samples = r.pop("rss_samples")
        return {"messages": a.soak_n, "pool": SOAK_POOL, **r, **soak_summary(samples), "rss_samples": samples}


def member_share(share: dict[str, Any]) -> dict[str, Any]:
    """One member's figures: the transfers its target wrote, its CPU (from its first record) and CPU per transfer."""
    delivered = sum(bytes.fromhex(share["counts"]))
    return {
        "delivered": delivered,
        "records": share["records"],
        "cpu_seconds": share["cpu_seconds"],
        "cpu_us_per_transfer": round(share["cpu_seconds"] / delivered * 1e6, 1) if delivered else None,
        "peak_rss_mb": share["peak_rss_mb"],
        **({"outcomes": share["outcomes"]} if "outcomes" in share else {}),
    }


def soak_summary(samples: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Start / peak / end RSS and the least-squares slope of RSS against messages after the first 10%."""
    total = max(s[1] for s in samples) or 1
    tail = [s for s in samples if s[1] >= total * 0.1] or list(samples)
    xs, ys = [s[1] for s in tail], [s[2] for s in tail]
    slope = statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0
    per_100k = slope * 100_000
    return {
        "rss_start_mb": samples[0][2],
        "rss_at_10pct_mb": tail[0][2],
        "rss_peak_mb": max(s[2] for s in samples),
        "rss_end_mb": samples[-1][2],
        "rss_slope_mb_per_100k_msgs": round(per_100k, 3),
        # flat: after warm-up, RSS grows by less than 1 MB per 100,000 messages (10 bytes a message)
        "memory_flat": abs(per_100k) < 1.0,
    }


def _median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("msg_per_s", "seconds", "cpu_seconds", "cpu_us_per_msg", "peak_rss_mb")
    return {k: round(statistics.median(r[k] for r in runs), 1) for k in keys}


def verdicts(drains: dict[str, Any], paced: dict[str, Any] | None) -> dict[str, Any]:
    m = drains["median"]
    ratio = m["router"]["msg_per_s"] / m["raw"]["msg_per_s"]
    out: dict[str, Any] = {
        "router_over_raw": round(ratio, 3),
        "router_over_pydantic": round(m["router"]["msg_per_s"] / m["pydantic"]["msg_per_s"], 3),
        # the ceiling of router / raw for any router that writes what casebridge's router writes
        "floor_over_raw": round(m["floor"]["msg_per_s"] / m["raw"]["msg_per_s"], 3),
        "target_router_ge_60pct_of_raw": ratio >= 0.6,
        "target_router_ge_5000_per_s": m["router"]["msg_per_s"] >= 5000,
        "budget": work_budget(m),
    }
    if paced is not None:
        p99 = paced["router"]["latency"]["p99_ms"]
        out["router_p99_ms_at_half_max"] = p99
        out["target_p99_lt_100ms_at_half_max"] = p99 < 100
    return out


def work_budget(median: dict[str, dict[str, float]]) -> dict[str, float]:
    """The router's own work per transfer (wall time over the floor's), and what each throughput target allows.

    The floor consumes, validates and writes the router's outputs, so the router's time per transfer is the
    floor's plus its own work (protocol, connectors, events, history). For router / raw >= 0.6 a transfer may
    take 1 / (0.6 * raw rate); for 5,000/s, 200 us. Less the floor's time, that is the room for the router's work.
    """
    us = {v: 1e6 / median[v]["msg_per_s"] for v in ("raw", "floor", "router")}
    return {
        "router_work_us": round(us["router"] - us["floor"], 1),
        "allowed_for_60pct_of_raw_us": round(us["raw"] / 0.6 - us["floor"], 1),
        "allowed_for_5000_per_s_us": round(1e6 / 5000 - us["floor"], 1),
    }


def print_table(result: dict[str, Any]) -> None:
    d = result["drains"]
    paced = result.get("paced") or {}
    print(f"\nrouter vs the Kafka pipe: n={d['topic_records']}, {result['repeats']} repeats (median), {result['note']}")
    head = f"{'variant':10}{'msg/s':>10}{'cpu us/msg':>12}{'cpu s':>8}{'peak RSS MB':>13}{'p50 ms':>9}"
    print(head + f"{'p95 ms':>9}{'p99 ms':>9}")
    for v, m in d["median"].items():
        lat = (paced.get(v) or {}).get("latency", {})
        cells = [f"{lat.get(k, float('nan')):>9.1f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
        print(
            f"{v:10}{m['msg_per_s']:>10.0f}{m['cpu_us_per_msg']:>12.0f}{m['cpu_seconds']:>8.1f}"
            f"{m['peak_rss_mb']:>13.0f}{''.join(cells)}"
        )
    if paced:
        print(
            f"latency: produce timestamp -> outcome record, paced at {paced['rate_target_msg_per_s']:.0f} msg/s, "
            f"after a {result['warmup_s']:.0f} s warm-up (every record's p99: "
            + ", ".join(f"{v} {(paced.get(v) or {}).get('latency', {}).get('all_p99_ms')} ms" for v in d["median"])
            + ")"
        )
    v = result["verdicts"]
    if not v:
        return
    print(
        f"router/raw {v['router_over_raw']:.2f} (target >= 0.60: {v['target_router_ge_60pct_of_raw']}; "
        f"floor/raw, its ceiling with these outputs: {v['floor_over_raw']:.2f}), "
        f"router >= 5,000/s: {v['target_router_ge_5000_per_s']}"
        + (f", p99 < 100 ms at half max: {v['target_p99_lt_100ms_at_half_max']}" if paced else "")
    )
    b = v["budget"]
    print(
        f"router's own work over the floor: {b['router_work_us']:.0f} us/transfer; room for it at router/raw 0.60: "
        f"{b['allowed_for_60pct_of_raw_us']:.0f} us, at 5,000/s: {b['allowed_for_5000_per_s_us']:.0f} us"
    )


def print_soak(s: dict[str, Any]) -> None:
    print(
        f"\nsoak: {s['messages']} transfers through the router at {s['msg_per_s']:.0f} msg/s; RSS start "
        f"{s['rss_start_mb']} MB, at 10% {s['rss_at_10pct_mb']} MB, peak {s['rss_peak_mb']} MB, end "
        f"{s['rss_end_mb']} MB; slope {s['rss_slope_mb_per_100k_msgs']} MB per 100k messages; "
        f"flat: {s['memory_flat']}"
    )


def print_members(m: dict[str, Any]) -> None:
    print(
        f"\nconsumer-group members (a separate figure; the headline ratio is one process each), "
        f"{m['partitions']} partitions, median of repeats; wall clock from the first record to the group's last commit"
    )
    for name, fig in m["median"].items():
        print(f"{name:12}{fig['msg_per_s']:>10.0f} msg/s{fig['cpu_us_per_msg']:>8.0f} cpu us/msg")


@contextlib.contextmanager
def broker(args: argparse.Namespace) -> Iterator[str]:
    given = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from casebridge.localkafka import LocalKafka, temporary_broker

    class _GroupsWaitForMembers(LocalKafka):
        """Members runs: a new group's first rebalance waits 3 s (Kafka's default) so every member joins it.

        (casebridge's broker for tests sets 0; then the first member would start alone, and the
        rebalance when the second joined would hand records to both.)
        """

        def _server_properties(self) -> str:
            return (
                super()
                ._server_properties()
                .replace("group.initial.rebalance.delay.ms=0", "group.initial.rebalance.delay.ms=3000")
            )

    kind = _GroupsWaitForMembers if args.members > 1 else LocalKafka
    with temporary_broker(kind, timeout=120, heap_mb=1024) as bootstrap:
        yield bootstrap


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "load_avg_1_5_15_at_start": _load(),
    }


async def parent_main(args: argparse.Namespace) -> dict[str, Any]:
    with broker(args) as bootstrap:
        bench = Bench(args, bootstrap)
        result: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "repeats": args.repeats,
            "warmup_s": args.warmup,
            "note": "shared machine: figures are noisy, see load averages per run",
        }
        try:
            if args.soak:
                result["soak"] = await bench.soak()
                print_soak(result["soak"])
            elif args.members > 1:
                result["members"] = await bench.members()
                print_members(result["members"])
            elif args.paced_rate:
                result["paced"] = await bench.paced(args.paced_rate)
            else:
                result["drains"] = await bench.drains()
                router_max = result["drains"]["median"]["router"]["msg_per_s"]
                result["paced"] = await bench.paced(router_max * 0.5) if args.paced_seconds > 0 else None
                complete = set(VARIANTS) <= set(args.variants)
                result["verdicts"] = verdicts(result["drains"], result["paced"]) if complete else {}
                print_table(result)
        finally:
            await bench.cleanup()
        result["machine"]["load_avg_1_5_15_at_end"] = _load()
        return result


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000, help="records each drain reads (default 50000)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the drains (median reported)")
    p.add_argument("--paced-seconds", type=float, default=20.0, help="length of each paced run (0: none)")
    p.add_argument("--paced-rate", type=float, default=None, help="only paced runs, at this rate (msg/s)")
    p.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="paced runs: seconds paced before the measured --paced-seconds; their records count for exactly-once "
        "and for all_p99_ms, not for the percentiles",
    )
    p.add_argument(
        "--variants", type=lambda v: v.split(","), default=list(VARIANTS), help="comma-separated (default: all)"
    )
    p.add_argument("--soak", action="store_true", help="only the soak: --soak-n transfers through the router")
    p.add_argument("--soak-n", type=int, default=1_000_000)
    p.add_argument(
        "--members",
        type=int,
        default=0,
        help="only a scaling run: each variant as 1 and as MEMBERS processes of one group (a separate figure)",
    )
    p.add_argument("--members-partitions", type=int, default=6, help="partitions of the members run's topic")
    p.add_argument(
        "--bootstrap", default=None, help="a broker to use (default: KAFKA_BOOTSTRAP_SERVERS, else start one)"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--log-level", default="INFO", help="the router's log level (its JSON lines go to /dev/null)")
    p.add_argument("--profile", type=Path, default=None, help="cProfile the router runs into this file (slower)")
    p.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="every variant's event loop (default uvloop, as `casebridge run`; asyncio for an A/B)",
    )
    # a variant's own process (internal)
    p.add_argument("--child", dest="variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--out-topic", help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    p.add_argument("--run-prefix", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    p.add_argument("--paced", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sample-rss", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--partitions", type=int, default=3, help=argparse.SUPPRESS)  # the input topic's
    p.add_argument("--ledger", type=Path, default=None, help=argparse.SUPPRESS)  # members: the target's writes
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.variant:
        if args.variant == "router":
            from casebridge.logs import configure_logging

            devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the process's life: the loggers write to it
            with contextlib.redirect_stderr(devnull):
                configure_logging(level=args.log_level)  # as `casebridge run` logs (JSON lines), written nowhere
        run = uvloop.run if args.loop == "uvloop" else asyncio.run
        if args.profile and args.variant == "router":
            import cProfile

            with cProfile.Profile() as prof:
                run(child_main(args))
            prof.dump_stats(args.profile)
        else:
            run(child_main(args))
        return 0
    write_result(args.out, asyncio.run(parent_main(args)))
    return 0


def write_result(path: Path, result: dict[str, Any]) -> None:
    """The run's figures as JSON (under ``bench/results/`` by default), and where they went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
