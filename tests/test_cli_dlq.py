"""The operator CLI on a real broker: `casebridge dlq list|show` and `casebridge replay`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition
from typer.testing import CliRunner

from casebridge.cli import app
from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem, wire
from router import Topics
from tests.support import count_type, ns_transfer, produce, read, running_router


async def _one_dead_letter(bootstrap: str, prefix: str) -> None:
    topics = Topics(prefix)
    async with running_router(bootstrap, prefix, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: MemorySource()}):
        bad = json.dumps(ns_transfer(7, surprise=1)).encode()
        await produce(bootstrap, topics.transfers, [(b"lcs:LCS-7", b"{not json"), (b"lcs:LCS-7", bad)])
        await read(bootstrap, topics.dead_letter, lambda r: len(r) >= 2)


def test_dlq_list_filters_show_and_replay_needs_an_operator(kafka_bootstrap: str, topic_prefix: str) -> None:
    """`dlq list --json` filters by error class, `dlq show` gives the context, `replay` without --operator exits 2."""
    asyncio.run(_one_dead_letter(kafka_bootstrap, topic_prefix))
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix]
    runner = CliRunner()

    listed = runner.invoke(app, ["dlq", "list", "--json", "--error-class", "ContractViolation", *where])
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert 0 == listed.exit_code
    assert [("ns-7", "validate", "surprise: extra_forbidden")] == [
        (r["transfer_id"], r["stage"], r["reason"]) for r in rows
    ]
    shown = runner.invoke(app, ["dlq", "show", rows[0]["id"], *where])
    assert 0 == shown.exit_code
    assert "ContractViolation" == json.loads(shown.stdout)["context"]["error.class"]
    table = runner.invoke(app, ["dlq", "list", *where])
    assert "2 dead letter(s)" in table.stdout

    refused = runner.invoke(app, ["replay", *where])
    assert 2 == refused.exit_code
    assert "operator" in refused.output
    dry = runner.invoke(app, ["replay", "--operator", "ops-tester", "--dry-run", "--transfer", "ns-7", *where])
    assert 0 == dry.exit_code
    lines = dry.stdout.splitlines()
    assert "would replay 1 dead letter(s):" == lines[0]
    assert ["id", "transfer_id", "council", "error_class", "rule_ids", "reason", "status"] == lines[1].split()
    assert [rows[0]["id"], "ns-7", "-", "ContractViolation", "-"] == lines[2].split()[:5]  # refused before its council
    assert lines[2].split()[-3:] == ["surprise:", "extra_forbidden", "waiting"]
    assert lines[3].startswith(f"router: none consuming (consumer group {topic_prefix}-router has no members)")


def _listed(where: list[str], *options: str) -> list[dict[str, Any]]:
    listed = CliRunner().invoke(app, ["dlq", "list", "--json", *options, *where])
    assert 0 == listed.exit_code, listed.output
    return [json.loads(line) for line in listed.stdout.splitlines()]


async def _ns07_held_then_reopened(bootstrap: str, prefix: str) -> None:
    """NS-7: LCS-7's record is closed out of band, so ns-7 is held and dead-lettered; the record is reopened and
    the transfer published again (as the LCS publisher does on ``record_reopened``): it completes. A keyless
    record is dead-lettered too, and nothing happens to it since."""
    topics = Topics(prefix)
    source = MemorySource()
    source.closed["LCS-7"] = "someone-else"  # closed on LCS, not by this transfer
    async with running_router(bootstrap, prefix, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: source}):
        held = json.dumps(ns_transfer(7)).encode()
        await produce(bootstrap, topics.transfers, [(b"lcs:LCS-7", held), (b"lcs:LCS-8", b"{not json")])
        await read(bootstrap, topics.dead_letter, lambda r: len(r) >= 2)
        del source.closed["LCS-7"]  # reopened
        await produce(bootstrap, topics.transfers, [(b"lcs:LCS-7", held)])
        await read(bootstrap, topics.events, count_type("source-closed", 1))


def test_ns07_held_transfer_that_later_completes_is_resolved_and_status_filters(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A dead letter whose transfer completed later is `resolved` in `dlq list` (JSON and table), one with nothing
    since is `waiting`; `--status` keeps one status and refuses a value outside the set (exit 2)."""
    asyncio.run(_ns07_held_then_reopened(kafka_bootstrap, topic_prefix))
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix]

    rows = sorted(_listed(where), key=lambda r: r["transfer_id"], reverse=True)
    assert [("ns-7", "resolved", ["NS-7"]), ("", "waiting", [])] == [
        (r["transfer_id"], r["status"], r["rule_ids"]) for r in rows
    ]
    assert rows[0]["reason"].startswith("protocol rules not met: NS-7")
    assert ["ns-7"] == [r["transfer_id"] for r in _listed(where, "--status", "resolved")]
    assert [rows[1]["id"]] == [r["id"] for r in _listed(where, "--status", "waiting")]
    assert [] == _listed(where, "--status", "replayed")

    table = CliRunner().invoke(app, ["dlq", "list", *where]).stdout.splitlines()
    assert ["id", "status", "last_failure", "council", "pathway", "transfer_id"] == table[0].split()[:6]
    [ns7] = [line for line in table if " ns-7 " in line]
    assert [rows[0]["id"], "resolved"] == ns7.split()[:2]
    assert "2 dead letter(s): 1 waiting, 1 resolved" == table[-1]
    wrong = CliRunner().invoke(app, ["dlq", "list", "--status", "done", *where])
    assert 2 == wrong.exit_code
    assert "--status" in wrong.stderr and "waiting" in wrong.stderr


async def _held(bootstrap: str, prefix: str, source: MemorySource) -> None:
    topics = Topics(prefix)
    async with running_router(bootstrap, prefix, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: source}):
        await produce(bootstrap, topics.transfers, [(b"lcs:LCS-9", json.dumps(ns_transfer(9)).encode())])
        await read(bootstrap, topics.dead_letter, lambda r: len(r) >= 1)


def test_replayed_dead_letter_is_replayed_then_resolved_and_the_dry_run_names_it(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """With no router running, the dry run names the dead letter (id, transfer, council, error, rules, reason,
    status) and says no router is consuming; once replayed it is `replayed`, and once the router is back and the
    transfer completes, `resolved`. A router running is seen as consuming."""
    topics = Topics(topic_prefix)
    source = MemorySource()
    source.closed["LCS-9"] = "someone-else"
    asyncio.run(_held(kafka_bootstrap, topic_prefix, source))
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix]
    [letter] = _listed(where)
    assert ("ns-9", "waiting") == (letter["transfer_id"], letter["status"])
    del source.closed["LCS-9"]  # reopened: a replay now completes

    runner = CliRunner()
    dry = runner.invoke(app, ["replay", "--operator", "ops-tester", "--dry-run", *where])
    assert 0 == dry.exit_code, dry.output
    lines = dry.stdout.splitlines()
    assert "would replay 1 dead letter(s):" == lines[0]
    cells = lines[2].split()
    assert [letter["id"], "ns-9", "north-somerset", "ProtocolRuleNotMet", "NS-7"] == cells[:5]
    assert letter["reason"] in lines[2] and "waiting" == cells[-1]
    assert lines[3].startswith("router: none consuming")
    assert "waiting" == _listed(where)[0]["status"]  # a dry run changes nothing

    done = runner.invoke(app, ["replay", "--operator", "ops-tester", *where])
    assert 0 == done.exit_code, done.output
    assert "replayed" == _listed(where)[0]["status"]
    # the operator's replay writes no event (on a secured broker it may not): the router writes `replayed`
    before = asyncio.run(read(kafka_bootstrap, topics.events, lambda r: False, timeout=3))
    assert [] == [r for r in before if dict(r.headers or ()).get("event_type") == b"replayed"]

    async def router_back() -> tuple[str, list[Any]]:
        async with running_router(
            kafka_bootstrap, topic_prefix, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: source}
        ):
            records = await read(kafka_bootstrap, topics.events, count_type("source-closed", 1))
            again = await asyncio.to_thread(
                runner.invoke, app, ["replay", "--operator", "ops-tester", "--dry-run", *where]
            )
            return again.stdout, records

    again, records = asyncio.run(router_back())
    replayed = [json.loads(r.value) for r in records if dict(r.headers or ()).get("event_type") == b"replayed"]
    assert [("ns-9", "ops-tester", int(letter["id"].split(":")[1]))] == [
        (e["transfer_id"], e["operator"], e["dead_letter_offset"]) for e in replayed
    ]
    assert "would replay 0 dead letter(s)" in again
    # one router process: its transfers consumer and each retry tier's, members of the one group
    # one casebridge run is three members of its group (transfers and two retry tiers): counted as one process
    assert f"router: consuming (consumer group {topic_prefix}-router: 1 casebridge run process(es))" in again
    [resolved] = _listed(where)
    assert (letter["id"], "resolved", True) == (resolved["id"], resolved["status"], resolved["replayed"])


def test_a_dead_letter_held_by_reference_whose_record_is_gone_is_expired(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """By reference, a dead letter is only as good as the record it names: deleted by retention (or its topic
    gone), it is `expired`; while the record is there, `waiting`."""
    topics = Topics(topic_prefix)

    def by_reference(topic: str, offset: int, transfer_id: str) -> list[tuple[str, bytes]]:
        context = {
            "original.topic": topic, "original.partition": "0", "original.offset": str(offset),
            "transfer.id": transfer_id, "council": "north-somerset", "error.class": "ContractViolation",
            "error.message": "too big", "by.reference": "true", "original.size": "1048000",
        }  # fmt: skip
        return [(f"casebridge.dlq.{k}", v.encode()) for k, v in context.items()]

    async def setup() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:  # two records on partition 0 of the transfers topic, offsets 0 and 1
            for child in (b"lcs:LCS-1", b"lcs:LCS-2"):
                await producer.send_and_wait(topics.transfers, b"{}", key=child, partition=0)
        finally:
            await producer.stop()
        for topic, offset, tid in [(topics.transfers, 0, "ns-1"), (topics.transfers, 1, "ns-2"), ("gone", 0, "ns-3")]:
            await produce(kafka_bootstrap, topics.dead_letter, [(b"k", b"")], headers=by_reference(topic, offset, tid))
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:  # retention deleted the first record
            await admin.delete_records({TopicPartition(topics.transfers, 0): RecordsToDelete(before_offset=1)})
        finally:
            await admin.close()

    asyncio.run(setup())
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix]
    assert [("ns-1", "expired"), ("ns-2", "waiting"), ("ns-3", "expired")] == [
        (r["transfer_id"], r["status"]) for r in _listed(where)
    ]
    assert ["ns-2"] == [r["transfer_id"] for r in _listed(where, "--status", "waiting")]


def test_a_long_replay_shows_its_progress_and_reports_every_step(kafka_bootstrap: str, topic_prefix: str) -> None:
    """A replay of many dead letters tells its caller after each one (the CLI draws a progress bar on stderr from
    it, stdout keeping the report), from 1 to all of them, in order."""
    from router.deadletters import replay

    topics = Topics(topic_prefix)
    letters = []
    for n in range(12):
        doc = ns_transfer(100 + n)
        context = {"transfer.id": doc["transfer_id"], "council": "north-somerset", "stage": "protocol",
                   "error.class": "ProtocolRuleNotMet", "error.message": "protocol rules not met: NS-6",
                   "rule.ids": "NS-6"}  # fmt: skip
        headers = [(f"casebridge.dlq.{k}", v.encode()) for k, v in context.items()]
        letters.append((f"lcs:LCS-{100 + n}".encode(), json.dumps(doc).encode(), headers))

    async def write() -> None:
        for key, value, headers in letters:
            await produce(kafka_bootstrap, topics.dead_letter, [(key, value)], headers=headers)
        await produce(kafka_bootstrap, topics.audit, [])

    asyncio.run(write())
    seen: list[tuple[int, int]] = []
    first = asyncio.run(
        replay(kafka_bootstrap, topics, operator="ops-tester", limit=2, rate_per_second=500,
               progress=lambda done, total: seen.append((done, total)))
    )  # fmt: skip
    assert (2, [(1, 2), (2, 2)]) == (len(first.replayed), seen)
    where = ["--bootstrap", kafka_bootstrap, "--prefix", topic_prefix]
    rest = CliRunner().invoke(app, ["replay", "--operator", "ops-tester", "--rate", "500", *where])
    assert 0 == rest.exit_code, rest.output
    assert rest.stdout.startswith("replayed 10 dead letter(s):") and "skipped 2 already replayed" in rest.stdout
    assert "replaying" in rest.stderr and "replaying" not in rest.stdout  # the bar (10 or more) on stderr only
    again = CliRunner().invoke(app, ["replay", "--operator", "ops-tester", *where])
    assert ("replayed 0 dead letter(s)", "") == (again.stdout.splitlines()[0], again.stderr)  # nothing left: no bar


def test_a_forged_replay_header_gets_no_replayed_event_but_an_alert_and_the_transfer_is_handled_as_any(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A raw producer puts replay headers on a transfer naming a dead letter and an operator no audit record names:
    the router writes no ``replayed`` event naming that operator, raises a critical alert "replay without audit
    record", and carries the transfer as any other (delivered, the source closed)."""
    topics = Topics(topic_prefix)
    forged = [(wire.REPLAY_OF, b"0:5"), (wire.REPLAY_OPERATOR, b"Director-of-Childrens-Services")]

    async def forge() -> list[Any]:
        async with running_router(
            kafka_bootstrap, topic_prefix, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: MemorySource()}
        ):
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
            await producer.start()
            try:
                value = json.dumps(ns_transfer(31)).encode()
                await producer.send_and_wait(topics.transfers, value, key=b"lcs:LCS-31", headers=forged)
            finally:
                await producer.stop()
            return await read(kafka_bootstrap, topics.events, count_type("source-closed", 1))

    events = [(dict(r.headers or ()).get("event_type"), json.loads(r.value)) for r in asyncio.run(forge())]
    assert [] == [e for kind, e in events if kind == b"replayed"]
    alerts = [e for kind, e in events if kind == b"alert" and e["summary"].startswith("replay without audit record")]
    assert [("ns-31", "critical")] == [(a["transfer_id"], a["severity"]) for a in alerts]
    assert "Director-of-Childrens-Services" not in json.dumps(alerts)
    assert {b"delivered", b"source-closed"} <= {kind for kind, _ in events}
