"""The dead-letter index (issue #18 item 4): the dead-letter, audit and parking topics read incrementally into
the monitor's store, resumable from its stored positions, never their values, none skipped when the store fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from monitor import DeadLetterIndex, Store
from router.settings import Topics
from tests.support import produce

#: a marker in the dead letters' values (the transfer, which holds personal data): it must never reach the store
IN_THE_VALUE = b"SYNTHETIC-VALUE-MARKER-9990000018"


def _dead_letter(transfer_id: str, reason: str) -> tuple[list[tuple[str, bytes]], bytes]:
    headers = [
        ("casebridge.dlq.transfer.id", transfer_id.encode()),
        ("casebridge.dlq.council", b"north-somerset"),
        ("casebridge.dlq.error.class", b"TargetRefused"),
        ("casebridge.dlq.error.message", reason.encode()),
        ("casebridge.dlq.rule.ids", b"NS-6"),
    ]
    value = b'{"pathway": {"direction": "step-down"}, "child": "' + IN_THE_VALUE + b'"}'
    return headers, value


async def _dead_letters(bootstrap: str, topics: Topics, ids: list[str]) -> None:
    for transfer_id in ids:
        headers, value = _dead_letter(transfer_id, f"refused {transfer_id}")
        await produce(bootstrap, topics.dead_letter, [(transfer_id.encode(), value)], headers)


async def test_index_reads_only_what_is_new_resumes_and_keeps_no_value(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    db = tmp_path / "m.sqlite3"
    await _dead_letters(kafka_bootstrap, topics, ["t-1", "t-2", "t-3"])
    await produce(kafka_bootstrap, topics.audit, [(b"allocation/t-9", b"{}")])  # not a replay: not indexed
    store = Store(db)
    index = DeadLetterIndex(store, kafka_bootstrap, topics)
    await index.start()
    try:
        assert 3 == await index.catch_up()
        rows = store.indexed_dead_letters()
        ids = [r["id"] for r in rows]
        assert 3 == len(set(ids))
        assert ["step-down"] * 3 == [r["pathway"] for r in rows]
        assert 0 == await index.catch_up()  # nothing new: nothing indexed twice
        replayed_id = ids[0]
        await produce(kafka_bootstrap, topics.audit, [(replayed_id.encode(), b"{}")])
        await produce(kafka_bootstrap, topics.parking, [(b"t-1", b"{}")], [("casebridge.replay.of", ids[1].encode())])
        await _dead_letters(kafka_bootstrap, topics, ["t-4"])
        assert 3 == await index.catch_up()  # one dead letter, one replay, one parking
        assert ({replayed_id}, {ids[1]}) == (store.indexed_ids("replayed"), store.indexed_ids("parked"))
    finally:
        await index.stop()
        store.close()
    store = Store(db)  # a restart resumes from the stored positions
    index = DeadLetterIndex(store, kafka_bootstrap, topics)
    await index.start()
    try:
        assert 0 == await index.catch_up()
        assert 4 == len(store.indexed_dead_letters())
    finally:
        await index.stop()
        store.close()
    for name in ("m.sqlite3", "m.sqlite3-wal"):
        if (tmp_path / name).exists():
            assert IN_THE_VALUE not in (tmp_path / name).read_bytes()  # ids and context headers only


async def test_index_skips_nothing_when_the_store_is_locked(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Another process holds the write lock: the round fails (and says so); released: everything is indexed."""
    topics = Topics(topic_prefix)
    db = tmp_path / "m.sqlite3"
    await _dead_letters(kafka_bootstrap, topics, ["t-1", "t-2"])
    store = Store(db, busy_timeout=0.2)
    index = DeadLetterIndex(store, kafka_bootstrap, topics)
    await index.start()
    try:
        lock = sqlite3.connect(str(db), isolation_level=None, timeout=5)
        lock.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await index.catch_up()
        lock.execute("COMMIT")
        lock.close()
        assert 2 == await index.catch_up()
        assert 2 == len(store.indexed_dead_letters())
    finally:
        await index.stop()
        store.close()
