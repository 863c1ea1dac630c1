"""The restore bench on the real broker: the tables it restores hold every entry written, its check bites, and its
JSON carries the figures (no timing asserts)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from bench._workload import BenchCheckFailed
from bench.restore import PARTITIONS, SCOPES, Topics, check, child, main, parked, restore, write_state
from connectors import kafka as clients
from router._reading import partition_for

CHILDREN, PARKED, SECOND_EVERY = 300, 40, 5


def _topics() -> Topics:
    return Topics(f"t-restore-{uuid.uuid4().hex[:10]}")


async def test_bench_restore_holds_every_completed_transfer_and_parked_message_of_the_partitions_read(
    kafka_bootstrap: str,
) -> None:
    """All 6 partitions: every transfer written is known as completed (the router's duplicate check), every parked
    child has its tier and pending messages; partitions 0 and 3: exactly their children, none of the others."""
    topics = _topics()
    written = await write_state(kafka_bootstrap, topics, CHILDREN, PARKED, SECOND_EVERY)
    assert CHILDREN + CHILDREN // SECOND_EVERY + PARKED == written

    completed, retry, read = await restore(kafka_bootstrap, topics, SCOPES["all"])
    assert (written, CHILDREN, PARKED) == (read, len(completed), len(retry))
    for n in range(CHILDREN):
        c = child(n, SECOND_EVERY)
        for transfer_id, message_id, value in c.transfers:
            assert message_id == completed.completed_by(c.key, transfer_id, value, message_id)
        assert partition_for(c.key, PARTITIONS) == completed.partition_of[c.key]
    assert 2 == len(child(0, SECOND_EVERY).transfers) == len(completed.entries[child(0, SECOND_EVERY).key])
    for n in range(PARKED):
        key, want = parked(n, topics.transfers)
        assert (want.tier, want.pending) == (retry.parked[key].tier, retry.parked[key].pending)

    third, third_retry, _ = await restore(kafka_bootstrap, topics, SCOPES["third"])
    keys = {child(n, SECOND_EVERY).key for n in range(CHILDREN)}
    mine = {k for k in keys if partition_for(k, PARTITIONS) in {0, 3}}
    assert 0 < len(mine) < CHILDREN
    assert mine == set(third.entries)
    assert {parked(n, topics.transfers)[0] for n in range(PARKED)} & mine == set(third_retry.entries)
    assert {"children": len(mine), "parked": len(third_retry)} == check(
        third, third_retry, SCOPES["third"], CHILDREN, PARKED, SECOND_EVERY, topics
    )


async def test_bench_restore_check_fails_loudly_on_an_entry_missing_from_the_topic(kafka_bootstrap: str) -> None:
    """A child forgotten on the topic (a tombstone) is missing from the restored table: the check names it."""
    topics = _topics()
    await write_state(kafka_bootstrap, topics, CHILDREN, PARKED, SECOND_EVERY)
    gone = child(7, SECOND_EVERY).key
    producer = clients.producer(kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topics.lifecycle, None, key=gone)
    finally:
        await producer.stop()

    completed, retry, _ = await restore(kafka_bootstrap, topics, SCOPES["all"])
    assert gone not in completed.entries
    with pytest.raises(
        BenchCheckFailed, match=rf"{CHILDREN - 1} children restored of {CHILDREN}, .*first \['lcs:LCS-R0000007'\]"
    ):
        check(completed, retry, SCOPES["all"], CHILDREN, PARKED, SECOND_EVERY, topics)


def test_bench_restore_writes_json_with_the_figures_of_each_scope(kafka_bootstrap: str, tmp_path: Path) -> None:
    """One run of each scope in its own process: verified, records read, entries, RSS, table memory, the verdict."""
    out = tmp_path / "restore.json"
    argv = ["--children", str(CHILDREN), "--parked", str(PARKED), "--second-every", str(SECOND_EVERY)]
    assert 0 == main([*argv, "--repeats", "1", "--bootstrap", kafka_bootstrap, "--out", str(out)])

    result = json.loads(out.read_text())
    assert ["all", "third"] == sorted(r["scope"] for r in result["runs"])
    everything = CHILDREN + CHILDREN // SECOND_EVERY + PARKED
    all_six, third = result["median"]["all"], result["median"]["third"]
    assert (everything, CHILDREN, PARKED) == (
        all_six["records"],
        all_six["lifecycle_entries"],
        all_six["parked_entries"],
    )
    assert 0 < third["records"] < everything
    for fig in (all_six, third):
        assert fig["seconds"] > 0 and fig["records_per_s"] > 0
        assert 0 < fig["rss_before_mb"] <= fig["peak_rss_mb"] and fig["rss_after_mb"] > 0
        assert fig["table_memory_mb"] > 0 and fig["bytes_per_entry"] > 0
    assert {r["scope"]: r["verified"]["children"] for r in result["runs"]}["all"] == CHILDREN
    assert isinstance(result["verdict"]["within_5_s"], bool)
