"""The router's own CPU per transfer, with Kafka stubbed out (a quick, quiet-machine-independent figure).

    .venv/bin/python -m bench.flow_cpu --n 5000                 # CPU us per transfer, median of rounds
    .venv/bin/python -m bench.flow_cpu --n 5000 --profile FILE  # cProfile of one round

Drives ``Router._on_batch`` (the handler FastStream calls) over batches of the bench's
workload, exactly as the bench's router variant does, but the outbox's producer is a stub
that builds aiokafka's real record batches and acknowledges them at once, and the
consumer's commit is a no-op. What is left is the router's work: validation, protocol,
target and source calls, events, logs, the outbox. The Kafka client's own cost (fetching,
decoding, sending) is what the full bench adds on top. CPU time is ``time.process_time``,
so other processes on the machine change it little.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from bench._workload import SeqCounter, Workload
from bench.router_vs_pipe import BATCH, BenchTarget
from connectors.memory import MemorySource
from contracts import CaseSystem
from router import Settings, build_router


class _StubProducer:
    """AIOKafkaProducer's send side without a broker: real record batches, acknowledged at once."""

    def __init__(self, real: Any) -> None:
        self.create_batch = real.create_batch
        self.records = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def _done(self) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[object]:
        self.records += batch.record_count()
        return self._done()

    async def send(self, topic: str, value: Any = None, key: Any = None, **_: Any) -> asyncio.Future[object]:
        self.records += 1
        return self._done()

    async def stop(self) -> None:
        return None


class _Consumer:
    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        return None


class _Batch:
    def __init__(self, records: tuple[ConsumerRecord[bytes, bytes], ...]) -> None:
        self.raw_message = records
        self.consumer = _Consumer()

    async def ack(self) -> None:
        return None


def _records(n: int, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for seq, r in enumerate(Workload().records(0, n)):
        out.append(
            ConsumerRecord(
                topic,
                seq % 3,
                seq // 3,
                1_790_000_000_000,
                0,
                r.key,
                r.value,
                None,
                len(r.key),
                len(r.value),
                r.headers,
            )
        )
    return out


async def one_round(records: Sequence[ConsumerRecord[bytes, bytes]], topic: str) -> float:
    """CPU seconds for the router to handle ``records`` in batches of BATCH (fresh router, fresh target)."""
    settings = Settings(bootstrap_servers="127.0.0.1:1", topic_prefix="cpu", group_id="cpu")
    router = build_router(
        settings, {CaseSystem.EHM: BenchTarget(SeqCounter(len(records)))}, {CaseSystem.LCS: MemorySource()}
    )
    real = router.outbox._producer
    router.outbox._producer = _StubProducer(real)
    await real.stop()  # never started: closes the client object
    for p in range(3):  # the partitions the records are on, as if assigned (and restored) by the group
        router._owners[p].add(topic)
    cpu0 = time.process_time()
    for i in range(0, len(records), BATCH):
        await router._on_batch(_Batch(tuple(records[i : i + BATCH])), None)  # type: ignore[arg-type]
    await router.settled()
    cpu = time.process_time() - cpu0
    if router.outcomes != {"completed": len(records)}:
        raise AssertionError(f"expected {len(records)} completed, got {dict(router.outcomes)}")
    return cpu


async def main_async(args: argparse.Namespace) -> None:
    topic = "cpu.transfers"
    records = _records(args.n, topic)
    await one_round(records[: min(1000, args.n)], topic)  # warm-up: imports, caches
    if args.profile:
        with cProfile.Profile() as prof:
            await one_round(records, topic)
        prof.dump_stats(args.profile)
        print(f"profile written to {args.profile}")
        return
    rounds = [await one_round(records, topic) / args.n * 1e6 for _ in range(args.rounds)]
    print(
        f"router CPU per transfer (Kafka stubbed): median {statistics.median(rounds):.1f} us "
        f"(rounds: {', '.join(f'{r:.1f}' for r in rounds)}), n={args.n}, load {os.getloadavg()[0]:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", type=Path, default=None)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    from casebridge.logs import configure_logging

    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the process's life: the loggers write to it
    with contextlib.redirect_stderr(devnull):
        configure_logging(level=args.log_level)  # as the bench's router variant: JSON lines, written nowhere
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
