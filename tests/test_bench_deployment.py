"""The deployment bench (bench/deployment.py) on the real broker: 1 and 2 members drain exactly once, a failover of 3
with one SIGKILLed loses nothing and its partitions are taken over, the idle members' CPU and the restore's figures
are in the same JSON; its checks bite (no timing asserts)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from bench._workload import BenchCheckFailed, Ledger, LedgerReader
from bench.deployment import (
    account,
    check_failover,
    cpu_verdict,
    main,
    owners_at,
    process_cpu_seconds,
    resumed_after,
)

N, FAILOVER_N = 300, 900


def test_bench_deployment_ledger_survives_a_cut_last_line_and_gives_owners_and_take_over_times(tmp_path: Path) -> None:
    """Each member's target writes (seq, time) are read back, a last line cut by a SIGKILL left for later; the owner
    of a partition at the kill is the last member to write one of its transfers, the take-over the first other."""
    paths = [tmp_path / f"member-{i}.ledger" for i in range(2)]
    for path, seqs in zip(paths, ([0, 2], [1, 3]), strict=True):
        ledger = Ledger(path)
        for seq in seqs:
            ledger.wrote(seq)
        ledger.close()
    with open(paths[0], "ab") as f:
        f.write(b"4 17")  # cut mid-line
    readers = [LedgerReader(p).poll() for p in paths]
    assert (Counter({0: 1, 2: 1}), Counter({1: 1, 3: 1})) == (readers[0].writes, readers[1].writes)
    with open(paths[0], "ab") as f:
        f.write(b".5\n")
    assert 1 == readers[0].poll().writes[4] and readers[0].times[-1] == (17.5, 4)

    partition = [0, 1, 0, 1, 0]  # seq -> partition
    killed_at = max(t for r in readers for t, _ in r.times) + 0.001
    time.sleep(0.01)
    assert {0: 0, 1: 1} == owners_at(readers, partition, killed_at)
    later = Ledger(paths[1])
    later.wrote(2)  # member 1 writes a transfer of member 0's partition 0 after the kill
    later.close()
    resumed = resumed_after([r.poll() for r in readers], partition, 0, {0}, killed_at)
    assert list(resumed) == [0] and 0 < resumed[0] < 60


def test_bench_deployment_accounts_lost_and_twice_written_transfers_and_fails_loudly_on_a_loss() -> None:
    writes = Counter({0: 1, 1: 2, 3: 1})
    assert {"lost": 1, "lost_first": [2], "delivered_twice": 1, "twice_first": [1]} == account(writes, 4)
    with pytest.raises(BenchCheckFailed, match=r"not published \(\[7\]\)"):
        account(Counter({7: 1}), 4)
    ok = {
        "transfers": 4, "lost": 0, "lost_first": [], "source_closed": 4, "every_transfer_completed": True,
        "committed": 4, "killed_partitions": [0], "resumed_s_by_partition": {"0": 6.5},
    }  # fmt: skip
    check_failover(ok)
    with pytest.raises(BenchCheckFailed, match=r"1 transfers never written to a target \(first \[2\]\)"):
        check_failover({**ok, "lost": 1, "lost_first": [2]})
    with pytest.raises(BenchCheckFailed, match="1 transfers without a source-closed event"):
        check_failover({**ok, "source_closed": 3, "every_transfer_completed": False})
    with pytest.raises(BenchCheckFailed, match=r"partitions \[0\] were not processed again"):
        check_failover({**ok, "resumed_s_by_partition": {}})


def test_bench_deployment_reads_a_processs_cpu_time_from_proc() -> None:
    before = process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn 0.2 s of CPU
        pass
    assert 0.1 <= process_cpu_seconds(os.getpid()) - before <= 1.0


def test_bench_deployment_cpu_verdict_is_the_most_members_over_one() -> None:
    median = {"1": {"cpu_us_per_transfer": 400.0}, "3": {"cpu_us_per_transfer": 436.0}}
    assert {"members": 3, "cpu_ratio_to_1": 1.09, "within_10pct": True} == cpu_verdict(median)
    assert not cpu_verdict({**median, "3": {"cpu_us_per_transfer": 448.0}})["within_10pct"]


def test_bench_deployment_members_drain_exactly_once_and_a_killed_member_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """G3 nothing lost, #16: 1 and 2 members of one group drain N step-downs, each written to a target exactly once
    (the bench raises otherwise) with the offsets committed; 3 members with one SIGKILLed a third of the way in:
    none lost, every one completed, the killed member's partitions processed again by another; the restore bench's
    figures in the same JSON."""
    out = tmp_path / "deployment.json"
    argv = ["--n", str(N), "--members", "1,2", "--failover-n", str(FAILOVER_N), "--idle-seconds", "1"]
    argv += ["--bootstrap", kafka_bootstrap]
    restore = ["--restore", "--restore-children", "200", "--restore-parked", "20", "--restore-repeats", "1"]
    assert 0 == main([*argv, *restore, "--out", str(out)])

    result = json.loads(out.read_text())
    runs = result["drains"]["runs"]
    assert [1, 2] == sorted(r["members"] for r in runs)
    for r in runs:
        assert r["verified"] and r["members"] == len(r["member_shares"])
        assert N == sum(sh["delivered"] for sh in r["member_shares"]), "every transfer written once, by one member"
        assert r["cpu_us_per_msg"] > 0 and r["msg_per_s"] > 0
    assert {"1", "2"} == set(result["drains"]["median"])
    assert {"members", "cpu_ratio_to_1", "within_10pct"} == set(result["verdicts"]["cpu"])

    f = result["failover"]
    assert (0, True, FAILOVER_N, FAILOVER_N) == (
        f["lost"],
        f["every_transfer_completed"],
        f["committed"],
        f["source_closed"],
    )
    assert f["killed_partitions"] and set(f["resumed_s_by_partition"]) <= {str(p) for p in f["killed_partitions"]}
    assert 0 < f["first_resumed_s"] <= f["all_resumed_s"]
    # a transfer written twice is one the killed member wrote (in flight) and its partition's new owner wrote again
    assert f["delivered_twice"] == f["twice_after_the_kill"] <= f["killed_member_wrote"]
    assert f["killed_after_transfers"] >= FAILOVER_N // 3
    assert isinstance(f["within_10_s"], bool)
    assert 3 == len(f["idle_cpu_s_per_s_per_member"])
    assert all(0 < c < 2 for c in f["idle_cpu_s_per_s_per_member"]), "a member polls and heartbeats when idle"
    assert result["restore"]["median"]["all"]["lifecycle_entries"] == 200
    assert isinstance(result["verdicts"]["restore_within_5_s"], bool)
