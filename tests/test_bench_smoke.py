"""The benchmark script runs end to end on the real broker and its exactly-once check bites (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bench._workload import BenchCheckFailed, SeqCounter, Workload, seq_of
from bench.router_vs_pipe import VARIANTS, Bench, _latencies, parent_main, parse, work_budget
from contracts import TransferMessage
from router.app import ensure_topics

N = 300


def test_bench_workload_is_valid_transfers_of_2_to_8_kb_with_sequence_headers() -> None:
    """Every generated record validates against the contract, is 2-8 KB and carries its sequence number."""
    w = Workload()
    records = [w.record(seq) for seq in range(200)]
    assert list(range(200)) == [seq_of(r.headers) for r in records]
    assert all(2_000 <= len(r.value) <= 8_000 for r in records)
    assert 200 == len({TransferMessage.model_validate_json(r.value).transfer_id for r in records})


def test_bench_seq_counter_names_missing_and_duplicated_numbers() -> None:
    """The exactly-once check reports what is missing and what came twice."""
    counter = SeqCounter(10)
    for seq in [0, 1, 2, 3, 3, 5, 6, 7, 8, 9]:
        counter.add(seq)
    with pytest.raises(BenchCheckFailed, match=r"1 missing \(first \[4\]\), 1 duplicated \(first \[3\]\)"):
        counter.check("test")


def test_bench_latency_percentiles_leave_out_the_warm_up_and_still_report_every_records_p99() -> None:
    """Records produced in the first warmup_ms count in all_p99_ms and the worst-by-second list, not in p99."""
    produced = list(range(0, 4000))  # one record a millisecond for 4 s
    ms = [500 if ts < 1000 else 10 for ts in produced]  # a slow first second
    out = _latencies(ms, produced, warmup_ms=1000)
    assert (out["count"], out["p99_ms"], out["max_ms"]) == (3000, 10, 10)
    assert (out["all_p99_ms"], out["all_max_ms"]) == (500, 500)
    assert out["worst_ms_by_second"] == [500, 10, 10, 10]
    assert _latencies(ms, produced)["p99_ms"] == 500  # no warm-up: every record


def test_bench_work_budget_is_the_routers_time_over_the_floor_against_each_target() -> None:
    """raw 10,000/s, floor 8,000/s, router 2,000/s: the router works 500 - 125 us; ratio 0.6 leaves 166.7 - 125."""
    median = {"raw": {"msg_per_s": 10_000.0}, "floor": {"msg_per_s": 8_000.0}, "router": {"msg_per_s": 2_000.0}}
    assert work_budget(median) == {
        "router_work_us": 375.0,
        "allowed_for_60pct_of_raw_us": 41.7,
        "allowed_for_5000_per_s_us": 75.0,
    }


async def test_g3_bench_every_variant_sees_every_sequence_number_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """G3 nothing lost: raw, pydantic and router each drain all N records exactly once, offsets committed."""
    args = parse(["--n", str(N), "--repeats", "1", "--paced-seconds", "0", "--bootstrap", kafka_bootstrap])
    result = await parent_main(args)

    runs = result["drains"]["runs"]
    assert sorted(VARIANTS) == sorted(r["variant"] for r in runs)
    assert all(r["verified"] for r in runs)
    assert set(VARIANTS) == set(result["drains"]["median"])
    assert {"router_over_raw", "target_router_ge_60pct_of_raw", "budget"} <= set(result["verdicts"])
    json.dumps(result)  # the JSON report can be written


@pytest.mark.parametrize("variant", ["raw", "router"])
async def test_g3_bench_fails_loudly_on_a_missing_and_a_duplicated_sequence_number(
    kafka_bootstrap: str, variant: str
) -> None:
    """A topic where seq 8 is missing and seq 7 came twice fails the run, naming both; the router writes the second
    seq 7 off as a duplicate (the same transfer, the same content: router/_lifecycle.py) and delivers it once."""
    args = parse(["--n", str(N), "--bootstrap", kafka_bootstrap])
    bench = Bench(args, kafka_bootstrap)
    topic = f"{bench.prefix}.transfers"
    await ensure_topics(kafka_bootstrap, [topic, f"{bench.prefix}.raw-out"])
    w = Workload()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for seq in [s if s != 8 else 7 for s in range(N)]:
            r = w.record(seq)
            await producer.send(topic, r.value, key=r.key, headers=r.headers)
        await producer.flush()
    finally:
        await producer.stop()

    duplicated = r"1 duplicated \(first \[7\]\)" if variant == "raw" else r"0 duplicated \(first \[\]\)"
    with pytest.raises(BenchCheckFailed, match=r"1 missing \(first \[8\]\), " + duplicated):
        bench.run_child(variant, topic, N, "broken", timeout=120)
    await bench.cleanup()
