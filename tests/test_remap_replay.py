"""Map-stage dead letters are replayable to success (issue #17 item 8), on a council deployed as a council deploys
it: its sandboxes, a deployment file, ``casebridge run --config`` as a subprocess, and the ``casebridge`` CLI.

A step-down LCS accepts but the contract refuses (a malformed UPN) is dead-lettered by the LCS publisher at the
``map`` stage. Once the child's record is corrected on LCS, ``casebridge replay`` sends the dead letter to the
remap topic; the publisher in ``casebridge run`` maps it again, the router delivers it to EHM's tray, once; a
second replay is skipped. A dead letter still unmappable when replayed is parked with the new reason. Every dead
letter (the router's and the publisher's) carries Spring Kafka's ``kafka_dlt-*`` headers; a map-stage one names
the remap topic as its original topic, so a generic redrive tool that writes it back there remaps it too.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
from pathlib import Path

from aiokafka.structs import ConsumerRecord

from casebridge.scenarios import EhmSandboxClient, LcsSandboxClient
from connectors import kafka as clients
from contracts import TransferReplayed, synthetic_nhs_number, synthetic_upn
from tests.deployed import deployed, types
from tests.support import map_stage_headers

BAD_UPN = "abc1234567890"
UPN_RULE = "child.upn: string_pattern_mismatch"


async def _records(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``n`` records of ``topic`` (fewer if ``timeout`` passes first), headers as they are on the broker."""
    consumer = clients.consumer(bootstrap, topic, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found) < n and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                found += records
    finally:
        await consumer.stop()
    return found


def _headers(r: ConsumerRecord[bytes, bytes]) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in (r.headers or ())}


def _fix_child(db: Path, child_id: str, **fields: str) -> None:
    """What a social worker's correction on LCS does to the child's record (the sandbox's own store)."""
    pk = int(child_id.removeprefix("LCS-"))
    with sqlite3.connect(db, timeout=10) as conn:
        (data,) = conn.execute("SELECT data FROM children WHERE id = ?", (pk,)).fetchone()
        conn.execute("UPDATE children SET data = ? WHERE id = ?", (json.dumps({**json.loads(data), **fields}), pk))
    conn.close()


async def test_map_stage_dead_letter_replayed_after_the_fix_is_delivered_once_and_unfixed_one_is_parked(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with deployed("swindon", tmp_path, kafka_bootstrap, topic_prefix) as d:
        lcs = LcsSandboxClient(d.systems.urls["lcs"], d.systems.token)
        ehm = EhmSandboxClient(d.systems.urls["ehm"], d.systems.token)
        fixed_child = lcs.create_child(locality="North", upn=BAD_UPN)
        fixed = f"swindon-lcs-{lcs.request_stepdown(fixed_child, council='swindon')}".lower()
        still_child = lcs.create_child(locality="North", upn=BAD_UPN)
        still = f"swindon-lcs-{lcs.request_stepdown(still_child, council='swindon')}".lower()
        bare = lcs.create_child(locality="North")  # no assessment, no Lead Practitioner: the router holds it
        missing = {"assessment": None, "lead_practitioner": None, "lead_practitioner_organisation": None}
        held = f"swindon-lcs-{lcs.request_stepdown(bare, council='swindon', **missing)}".lower()

        letters = await _records(d.bootstrap, f"{topic_prefix}.dlq", 3)
        by_transfer = {_headers(r)["casebridge.dlq.transfer.id"].decode(): r for r in letters}
        assert {fixed, still, held} == set(by_transfer)

        # the publisher's dead letters: stage map, naming the publisher and the feed; Spring's headers beside
        for tid in (fixed, still):
            h = _headers(by_transfer[tid])
            assert (b"map", b"ContractViolation", UPN_RULE.encode()) == (
                h["casebridge.dlq.stage"], h["casebridge.dlq.error.class"], h["casebridge.dlq.error.message"]
            )  # fmt: skip
            assert b"lcs-changes/swindon" == h["casebridge.dlq.publisher"]
            assert f"{topic_prefix}.remap".encode() == h["kafka_dlt-original-topic"]  # where a redrive remaps it
            assert 0 == struct.unpack(">i", h["kafka_dlt-original-partition"])[0]
            position = int(h["casebridge.dlq.feed.position"])
            assert position > 0 and position == struct.unpack(">q", h["kafka_dlt-original-offset"])[0]
            assert (b"ContractViolation", UPN_RULE.encode()) == (
                h["kafka_dlt-exception-fqcn"], h["kafka_dlt-exception-message"]
            )  # fmt: skip
        # the router's dead letter: Spring's headers name the same record as casebridge's own
        h = _headers(by_transfer[held])
        assert (
            f"{topic_prefix}.transfers".encode() == h["kafka_dlt-original-topic"] == h["casebridge.dlq.original.topic"]
        )
        assert int(h["casebridge.dlq.original.partition"]) == struct.unpack(">i", h["kafka_dlt-original-partition"])[0]
        assert int(h["casebridge.dlq.original.offset"]) == struct.unpack(">q", h["kafka_dlt-original-offset"])[0]
        assert h["casebridge.dlq.error.class"] == h["kafka_dlt-exception-fqcn"]
        assert "casebridge.dlq.publisher" not in h

        # the child's UPN corrected on LCS; the other one gets a second mistake instead (an NHS number whose check
        # digit is wrong), so its replay fails for a new reason
        _fix_child(d.systems.work / "lcs.db", fixed_child, upn=synthetic_upn(424242))
        good = synthetic_nhs_number(7)
        _fix_child(d.systems.work / "lcs.db", still_child, nhs_number=good[:-1] + str((int(good[-1]) + 1) % 10))
        assert fixed not in [i["transfer_id"] for i in ehm.tray()]

        done = d.cli("replay", "--operator", "ops-remap", "--transfer", fixed)
        assert 0 == done.returncode, done.stderr
        assert "replayed 1 dead letter(s)" in done.stdout.lower(), done.stdout
        by = await d.wait({fixed: "source-closed"})
        assert "replayed" in types(by[fixed]) and "delivered" in types(by[fixed])
        replayed = [e for e in by[fixed] if isinstance(e, TransferReplayed)]
        assert {"ops-remap"} == {e.operator for e in replayed}
        assert 1 == len({e.event_id for e in replayed})  # the publisher's and the router's are one event (same id)
        assert 1 == len([i for i in ehm.tray() if i["transfer_id"] == fixed])

        again = d.cli("replay", "--operator", "ops-remap", "--transfer", fixed)
        assert 0 == again.returncode, again.stderr
        assert "skipped 1 already replayed" in again.stdout, again.stdout
        assert "replayed 0 dead letter(s)" in again.stdout.lower(), again.stdout

        parked_run = d.cli("replay", "--operator", "ops-remap", "--transfer", still)
        assert 0 == parked_run.returncode, parked_run.stderr
        [parked] = await _records(d.bootstrap, f"{topic_prefix}.parking", 1)
        p = _headers(parked)
        assert still.encode() == p["casebridge.dlq.transfer.id"]
        assert by_transfer[still].partition == int(p["casebridge.replay.of"].decode().split(":")[0])
        assert by_transfer[still].offset == int(p["casebridge.replay.of"].decode().split(":")[1])
        reason = p["casebridge.dlq.error.message"].decode()
        assert "child.nhs_number" in reason and UPN_RULE in reason  # the new reason, from the record as it is now
        assert good[:-1] not in reason  # named by field and rule, never the value

        listed = d.cli("dlq", "list", "--json")
        assert 0 == listed.returncode, listed.stderr
        status = {row["transfer_id"]: row["status"] for row in map(json.loads, listed.stdout.splitlines())}
        assert ("parked", "waiting") == (status[still], status[held])
        assert "resolved" == status[fixed]  # its transfer completed (source-closed) after it was dead-lettered

        # a map-stage dead letter whose value is no source record at all (not JSON): parked, the run goes on
        producer = clients.producer(d.bootstrap, acks="all")
        await producer.start()
        try:
            broken = [
                ("casebridge.dlq.stage", b"map"),
                ("casebridge.dlq.publisher", b"lcs-changes/swindon"),
                ("casebridge.dlq.transfer.id", b"swindon-lcs-broken"),
                ("casebridge.dlq.feed.position", b"1"),
            ]
            await producer.send_and_wait(f"{topic_prefix}.dlq", value=b"{not json", key=b"lcs:x", headers=broken)
        finally:
            await producer.stop()
        unreadable = d.cli("replay", "--operator", "ops-remap", "--transfer", "swindon-lcs-broken")
        assert 0 == unreadable.returncode, unreadable.stderr
        parked_both = await _records(d.bootstrap, f"{topic_prefix}.parking", 2)
        [junk] = [r for r in parked_both if _headers(r)["casebridge.dlq.transfer.id"] == b"swindon-lcs-broken"]
        assert b"{not json" == junk.value
        assert b"not the JSON object" in _headers(junk)["casebridge.dlq.error.message"]
        assert d.run.process is not None and d.run.process.poll() is None  # casebridge run still running

        await asyncio.sleep(3.0)  # the second replay published nothing: still one tray item
        assert 1 == len([i for i in ehm.tray() if i["transfer_id"] == fixed])
        assert 3 == len(await _records(d.bootstrap, f"{topic_prefix}.remap", 4, 5.0))  # one a replayed dead letter
        assert "Traceback" not in d.run.output()
        lcs.close()
        ehm.close()


async def test_map_stage_dead_letter_redriven_by_a_generic_tool_to_its_kafka_dlt_original_topic_is_delivered(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A generic redrive tool writes a map-stage dead letter (value, key and headers as they are) back to its
    ``kafka_dlt-original-topic``: that is the remap topic, so once the child's record is fixed on LCS the publisher
    maps it again and the router delivers it to EHM's tray, not to a topic where it can only fail."""
    async with deployed("swindon", tmp_path, kafka_bootstrap, topic_prefix) as d:
        lcs = LcsSandboxClient(d.systems.urls["lcs"], d.systems.token)
        ehm = EhmSandboxClient(d.systems.urls["ehm"], d.systems.token)
        child = lcs.create_child(locality="North", upn=BAD_UPN)
        tid = f"swindon-lcs-{lcs.request_stepdown(child, council='swindon')}".lower()
        [letter] = await _records(d.bootstrap, f"{topic_prefix}.dlq", 1)
        h = _headers(letter)
        assert (tid.encode(), f"{topic_prefix}.remap".encode()) == (
            h["casebridge.dlq.transfer.id"],
            h["kafka_dlt-original-topic"],
        )
        _fix_child(d.systems.work / "lcs.db", child, upn=synthetic_upn(434343))
        producer = clients.producer(d.bootstrap, acks="all")
        await producer.start()
        try:  # what a generic redrive does: the record as it is, to the topic its Spring header names
            await producer.send_and_wait(
                h["kafka_dlt-original-topic"].decode(), value=letter.value, key=letter.key, headers=list(letter.headers)
            )
        finally:
            await producer.stop()
        by = await d.wait({tid: "source-closed"})
        assert "delivered" in types(by[tid])
        assert 1 == len([i for i in ehm.tray() if i["transfer_id"] == tid])
        lcs.close()
        ehm.close()


def test_the_asyncapi_document_declares_the_remap_topic_and_every_map_stage_dead_letter_header() -> None:
    """What the publisher writes on a map-stage dead letter (and Spring's headers) is declared, and the remap
    topic is a channel created as transfers are (7 days)."""
    from monitor._asyncapi import asyncapi_document
    from router.settings import Topics

    written = {k for k, _ in map_stage_headers(7)}
    doc = asyncapi_document()
    messages = doc["components"]["messages"]
    for name in ("DeadLetter", "ParkedDeadLetter"):
        assert written <= set(messages[name]["headers"]["properties"]), name
    assert {"casebridge.dlq.publisher", "casebridge.replay.of"} <= set(messages["RemapRecord"]["headers"]["properties"])
    [remap] = [c for c in doc["channels"].values() if c["address"] == Topics("{prefix}").remap]
    assert 7 * 24 * 3600 * 1000 == remap["bindings"]["kafka"]["topicConfiguration"]["retention.ms"]
