"""`casebridge dlq list|show` and `replay` answer from a local index (casebridge/dlqindex.py, issue #18 item 4): each
call reads only what is new on the topics, the answers equal the topics read whole (`--no-index`) in every
status, a recreated topic rebuilds the index, a broken index file is rebuilt and an unusable one says so in one
line. On the real broker."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord
from typer.testing import CliRunner, Result

from casebridge.cli import app
from casebridge.dlqindex import FILE, IndexedSelection, deployment
from monitor._store import Position, Store
from router._outbox import Failure, dead_letter_headers
from router.settings import Topics
from tests.support import ns_transfer, produce

AN_HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


def _dead_letter(topics: Topics, n: int, **context: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A dead letter of transfer ns-<n> with the headers the router writes (``dead_letter_headers``), plus any
    ``context`` headers (``by.reference``...)."""
    key, value = f"lcs:LCS-{n}".encode(), json.dumps(ns_transfer(n)).encode()
    record = ConsumerRecord(topics.transfers, 0, n, 0, 0, key, value, None, len(key), len(value), [])
    failure = Failure(
        stage="protocol", error_class="ProtocolRuleNotMet", message=f"protocol rules not met: NS-6 ({n})",
        rule_ids=("NS-6",), first_failure=AN_HOUR_AGO, last_failure=AN_HOUR_AGO, transfer_id=f"ns-{n}",
        council="north-somerset",
    )  # fmt: skip
    headers = dead_letter_headers(record, f"{topics.prefix}-router", failure)
    headers += [(f"casebridge.dlq.{k}", v.encode()) for k, v in context.items()]
    return key, value, headers


async def _write(bootstrap: str, topics: Topics, numbers: list[int], **context: str) -> None:
    for n in numbers:
        key, value, headers = _dead_letter(topics, n, **context)
        await produce(bootstrap, topics.dead_letter, [(key, value)], headers)


async def _completed(bootstrap: str, topics: Topics, n: int) -> None:
    event = {"event_id": str(uuid.uuid4()), "transfer_id": f"ns-{n}", "occurred_at": datetime.now(UTC).isoformat()}
    await produce(
        bootstrap, topics.events, [(f"ns-{n}".encode(), json.dumps(event).encode())], [("event_type", b"source-closed")]
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def _json(result: Result) -> list[dict[str, Any]]:
    assert 0 == result.exit_code, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


async def _opened(bootstrap: str, topics: Topics, path: Path) -> int:
    """Open the index as the CLI does; how many records that read from Kafka."""
    selection = IndexedSelection(bootstrap, topics, path)
    try:
        await selection.open()
        return selection.records_read
    finally:
        await selection.close()


def test_each_call_reads_only_what_is_new_and_the_listing_comes_from_the_index(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The first call builds the index (its default place: under $XDG_STATE_HOME, per deployment), the next reads
    nothing from Kafka, one after new records reads just those; what `dlq list` shows is what the index holds
    (an entry changed in the file shows changed; `--no-index` shows the topic's); CASEBRIDGE_INDEX moves it."""
    topics = Topics(topic_prefix)
    asyncio.run(_write(kafka_bootstrap, topics, [1, 2, 3]))
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix]
    state = tmp_path / "state"

    first = _json(_cli("dlq", "list", "--json", *where, env={"XDG_STATE_HOME": str(state)}))
    assert ["ns-1", "ns-2", "ns-3"] == sorted(r["transfer_id"] for r in first)
    path = state / "casebridge" / deployment(kafka_bootstrap, topics) / FILE
    assert path.is_file()
    assert 0 == asyncio.run(_opened(kafka_bootstrap, topics, path))  # nothing new since the CLI's call

    async def more() -> None:
        await _write(kafka_bootstrap, topics, [4, 5])
        await produce(kafka_bootstrap, topics.audit, [(first[0]["id"].encode(), b"{}")])

    asyncio.run(more())
    assert 3 == asyncio.run(_opened(kafka_bootstrap, topics, path))  # two dead letters, one audit record
    assert 0 == asyncio.run(_opened(kafka_bootstrap, topics, path))

    with sqlite3.connect(path) as db:  # the index, not the topic, is what the listing reads
        db.execute(
            "UPDATE dead_letters SET context = json_set(context, '$.\"error.message\"', 'as the index has it') "
            "WHERE id = ?",
            (first[1]["id"],),
        )
    indexed = _json(_cli("dlq", "list", "--json", "--transfer", first[1]["transfer_id"], "--index", str(path), *where))
    assert ["as the index has it"] == [r["reason"] for r in indexed]
    whole = _json(_cli("dlq", "list", "--json", "--transfer", first[1]["transfer_id"], "--no-index", *where))
    assert [first[1]["reason"]] == [r["reason"] for r in whole]

    elsewhere = tmp_path / "elsewhere" / "index.sqlite3"
    listed = _json(_cli("dlq", "list", "--json", *where, env={"CASEBRIDGE_INDEX": str(elsewhere)}))
    assert 5 == len(listed) and elsewhere.is_file()
    assert (first[0]["id"], "replayed") in [(r["id"], r["status"]) for r in listed]


def test_the_index_answers_as_the_topics_read_whole_in_every_status(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Waiting, replayed, parked, resolved and expired, arriving after the index was first built: `dlq list` (JSON
    and table, with filters), `dlq show` and `replay --dry-run` print the same as with `--no-index`; a replay
    through the index replays the selected dead letter (fetched by its offset) and the next listing says so."""
    topics = Topics(topic_prefix)
    asyncio.run(_write(kafka_bootstrap, topics, [1, 2, 3, 4]))
    asyncio.run(_write(kafka_bootstrap, topics, [5], **{"by.reference": "true", "original.topic": "gone"}))
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix, "--index", str(tmp_path / "i.sqlite3")]
    built = {r["transfer_id"]: r for r in _json(_cli("dlq", "list", "--json", *where))}
    assert {"ns-1": "waiting", "ns-5": "expired"} == {t: built[t]["status"] for t in ("ns-1", "ns-5")}

    async def since() -> None:  # ns-2 replayed, ns-3 replayed and parked, ns-4 completed later
        await produce(kafka_bootstrap, topics.audit, [(built[t]["id"].encode(), b"{}") for t in ("ns-2", "ns-3")])
        await produce(
            kafka_bootstrap, topics.parking, [(b"k", b"{}")], [("casebridge.replay.of", built["ns-3"]["id"].encode())]
        )
        await _completed(kafka_bootstrap, topics, 4)
        await produce(kafka_bootstrap, topics.events, [(b"ns-1", b"{}")], [("event_type", b"validated")])

    asyncio.run(since())
    indexed = _json(_cli("dlq", "list", "--json", *where))
    assert {"ns-1": "waiting", "ns-2": "replayed", "ns-3": "parked", "ns-4": "resolved", "ns-5": "expired"} == {
        r["transfer_id"]: r["status"] for r in indexed
    }
    for options in ([], ["--transfer", "ns-3"], ["--status", "waiting"], ["--rule", "NS-6"], ["--pathway", "step-down"],
                    ["--council", "luton"], ["--since", f"{AN_HOUR_AGO:%Y-%m-%dT%H:%M:%S}"]):  # fmt: skip
        for shape in (["--json"], []):
            with_index = _cli("dlq", "list", *shape, *options, *where)
            without = _cli("dlq", "list", *shape, *options, *where, "--no-index")
            assert (0, 0) == (with_index.exit_code, without.exit_code), (with_index.output, without.output)
            assert without.stdout == with_index.stdout, options
    assert (
        "5 dead letter(s): 1 waiting, 1 replayed, 1 parked, 1 resolved, 1 expired"
        == (_cli("dlq", "list", *where).stdout.splitlines()[-1])
    )
    for dead_letter in (built["ns-2"]["id"], "9:9"):
        shown, whole = (
            _cli("dlq", "show", dead_letter, "--value", *where),
            _cli("dlq", "show", dead_letter, "--value", *where, "--no-index"),
        )
        assert (shown.exit_code, shown.stdout) == (whole.exit_code, whole.stdout)
    assert 1 == _cli("dlq", "show", "9:9", *where).exit_code
    assert "lcs:LCS-2" == json.loads(_cli("dlq", "show", built["ns-2"]["id"], *where).stdout)["key"]

    dry = _cli("replay", "--operator", "ops-tester", "--dry-run", *where)
    assert dry.stdout == _cli("replay", "--operator", "ops-tester", "--dry-run", *where, "--no-index").stdout
    assert dry.stdout.startswith("would replay 2 dead letter(s):")  # ns-1 and ns-4: never replayed, not by reference
    done = _cli("replay", "--operator", "ops-tester", "--transfer", "ns-1", "--rate", "500", *where)
    assert 0 == done.exit_code, done.output
    assert done.stdout.startswith("replayed 1 dead letter(s):")
    again = _json(_cli("dlq", "list", "--json", "--transfer", "ns-1", *where))
    assert [("replayed", True)] == [(r["status"], r["replayed"]) for r in again]
    assert again == _json(_cli("dlq", "list", "--json", "--transfer", "ns-1", *where, "--no-index"))


def test_a_replay_through_the_index_sends_the_original_record_fetched_by_its_offset(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The replayed record on the transfers topic is the dead letter's own key and value (fetched by partition and
    offset: the index keeps neither), with the replay headers."""
    from tests.support import read

    topics = Topics(topic_prefix)
    asyncio.run(_write(kafka_bootstrap, topics, [7, 8]))
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix, "--index", str(tmp_path / "i.sqlite3")]
    [letter] = _json(_cli("dlq", "list", "--json", "--transfer", "ns-8", *where))
    done = _cli("replay", "--operator", "ops-tester", "--transfer", "ns-8", "--rate", "500", *where)
    assert 0 == done.exit_code, done.output
    [replayed] = asyncio.run(read(kafka_bootstrap, topics.transfers, lambda r: len(r) >= 1))
    key, value, _ = _dead_letter(topics, 8)
    headers = dict(replayed.headers or ())
    assert (key, value) == (replayed.key, replayed.value)
    assert (letter["id"].encode(), b"ops-tester") == (
        headers["casebridge.replay.of"],
        headers["casebridge.replay.operator"],
    )


async def _recreate(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete ``topic`` and create it again with ``partitions`` (KRaft deletes a moment later: ask again)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        for _ in range(100):
            try:
                await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
                return
            except TopicAlreadyExistsError:
                await asyncio.sleep(0.2)
        raise AssertionError(f"{topic} was not recreated")
    finally:
        await admin.close()


def test_a_recreated_topic_rebuilds_the_index(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """Recreated with as many partitions (offsets back to 0, below the index's positions) and then with fewer: each
    time the index says it rebuilds (one line on stderr) and lists what the new topic holds, as `--no-index`."""
    topics = Topics(topic_prefix)
    asyncio.run(_write(kafka_bootstrap, topics, list(range(1, 10))))
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix, "--index", str(tmp_path / "i.sqlite3")]
    assert 9 == len(_json(_cli("dlq", "list", "--json", *where)))

    for partitions, numbers in ((3, [20]), (1, [30, 31])):
        asyncio.run(_recreate(kafka_bootstrap, topics.dead_letter, partitions))
        asyncio.run(_write(kafka_bootstrap, topics, numbers))
        listed = _cli("dlq", "list", "--json", *where)
        assert [f"ns-{n}" for n in numbers] == [r["transfer_id"] for r in _json(listed)]
        [line] = listed.stderr.splitlines()
        assert "a topic was recreated; rebuilding it from Kafka" in line
        assert listed.stdout == _cli("dlq", "list", "--json", *where, "--no-index").stdout
        again = _cli("dlq", "list", "--json", *where)
        assert (listed.stdout, "") == (again.stdout, again.stderr)  # rebuilt once, then read incrementally


def test_a_broken_index_is_rebuilt_and_an_unusable_one_says_so_in_one_line(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """An index file that is not SQLite: one line, rebuilt, the listing as `--no-index`. An index that cannot be
    made (its directory would be under a file): one line naming it and what to do, the topics read whole, exit 0;
    never a traceback."""
    topics = Topics(topic_prefix)
    asyncio.run(_write(kafka_bootstrap, topics, [1, 2]))
    base = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix]
    whole = _cli("dlq", "list", *base, "--no-index").stdout
    assert "2 dead letter(s): 2 waiting" == whole.splitlines()[-1]

    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(b"not a database, " * 512)
    listed = _cli("dlq", "list", *base, "--index", str(broken))
    assert (0, whole) == (listed.exit_code, listed.stdout)
    [line] = listed.stderr.splitlines()
    assert f"the dead-letter index {broken} is unreadable" in line and "rebuilding it from Kafka" in line
    assert "" == _cli("dlq", "list", *base, "--index", str(broken)).stderr  # sound again

    (tmp_path / "a-file").write_text("")
    unusable = tmp_path / "a-file" / "index.sqlite3"
    listed = _cli("dlq", "list", *base, "--index", str(unusable))
    assert (0, whole) == (listed.exit_code, listed.stdout)
    [line] = listed.stderr.splitlines()
    assert line.startswith(f"warning: cannot use the dead-letter index {unusable} (")
    assert "reading the topics whole instead" in line and "--no-index" in line and "Traceback" not in listed.output
    dry = _cli("replay", "--operator", "ops-tester", "--dry-run", *base, "--index", str(unusable))
    assert 0 == dry.exit_code and 1 == len(dry.stderr.splitlines())

    theirs = tmp_path / "monitor.sqlite3"  # a monitor's store named by mistake: neither dropped nor written
    store = Store(theirs)
    store.apply([], [Position(topics.events, 0, 42)])
    store.close()
    listed = _cli("dlq", "list", *base, "--index", str(theirs))
    assert (0, whole) == (listed.exit_code, listed.stdout)
    [line] = listed.stderr.splitlines()
    assert f"{theirs} is not a dead-letter index of `casebridge dlq`" in line
    store = Store(theirs)
    assert ({0: 42}, None) == (store.positions(topics.events), store.meta("deployment"))
    store.close()


def test_dead_letters_deleted_by_retention_leave_the_index(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Records deleted from the dead-letter topic (retention, or `kafka-delete-records`) are gone from the listing
    as they are from the topic, without a rebuild."""
    from aiokafka.admin import RecordsToDelete
    from aiokafka.structs import TopicPartition

    topics = Topics(topic_prefix)
    asyncio.run(_write(kafka_bootstrap, topics, [1, 2, 3, 4]))
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix, "--index", str(tmp_path / "i.sqlite3")]
    rows = _json(_cli("dlq", "list", "--json", *where))
    [(partition, offset)] = sorted({tuple(map(int, r["id"].split(":"))) for r in rows})[:1]

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(topics.dead_letter, partition): RecordsToDelete(offset + 1)})
        finally:
            await admin.close()

    asyncio.run(delete())
    listed = _cli("dlq", "list", "--json", *where)
    assert f"{partition}:{offset}" not in [r["id"] for r in _json(listed)]
    assert (3, "") == (len(_json(listed)), listed.stderr)
    assert listed.stdout == _cli("dlq", "list", "--json", *where, "--no-index").stdout
