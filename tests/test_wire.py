"""contracts.wire is what is on the wire: the router's dead letters, events, retry tiers, a publisher's map-stage
dead letters and the AsyncAPI document use exactly its names, keys and ids; and no module spells them again."""

from __future__ import annotations

import ast
import json
import struct
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.structs import ConsumerRecord

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem, TransferMessage, parse_event, wire
from router import Topics
from tests.support import EXAMPLES, count_type, map_stage_headers, ns_transfer, produce, read, running_router

ROOT = Path(__file__).parent.parent
#: the packages that produce and read Kafka records (and the benchmark, which writes and reads them as they do)
PACKAGES = ("router", "connectors", "monitor", "casebridge", "bench")


def _record(
    topic: str, value: bytes | None, headers: list[tuple[str, bytes]], key: bytes | None = b"lcs:LCS-1"
) -> ConsumerRecord[bytes, bytes]:
    size = len(value or b"")
    return ConsumerRecord(topic, 2, 41, 1_790_000_000_000, 0, key, value, None, len(key or b""), size, headers)


async def test_the_router_writes_exactly_wires_dead_letter_and_event_headers_keys_and_ids(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Through a running router on a real broker: a malformed transfer's dead letter carries its own headers, then
    exactly wire.DLQ_HEADERS, then exactly wire.SPRING_DLT_HEADERS (partition and offset big-endian, as Spring
    writes them); every event is keyed by wire.event_key, carries wire.event_headers, and has the id wire derives
    (the same as the standard library's uuid5 in wire.EVENT_NS)."""
    topics = Topics(topic_prefix)
    good = ns_transfer(1)
    async with running_router(
        kafka_bootstrap, topic_prefix, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: MemorySource()}
    ):
        await produce(kafka_bootstrap, topics.transfers, [(b"lcs:LCS-9", b"{not json")], headers=[("x-source", b"s")])
        await produce(kafka_bootstrap, topics.transfers, [(b"lcs:LCS-1", json.dumps(good).encode())])
        records = await read(kafka_bootstrap, topics.events, count_type("source-closed", 1), timeout=60)
        [dead] = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 1, timeout=30)

    names = [k for k, _ in dead.headers]
    assert ["x-source", *wire.DLQ_HEADERS, *wire.SPRING_DLT_HEADERS] == names
    h = dict(dead.headers)
    origin = (
        h[wire.DLQ_ORIGINAL_TOPIC].decode(),
        int(h[wire.DLQ_ORIGINAL_PARTITION]),
        int(h[wire.DLQ_ORIGINAL_OFFSET]),
    )
    assert topics.transfers == origin[0]
    spring = (
        h[wire.DLT_ORIGINAL_TOPIC].decode(),
        struct.unpack(">i", h[wire.DLT_ORIGINAL_PARTITION])[0],
        struct.unpack(">q", h[wire.DLT_ORIGINAL_OFFSET])[0],
    )
    assert origin == spring
    assert (b"validate", b"MalformedJson") == (h[wire.DLQ_STAGE], h[wire.DLQ_ERROR_CLASS])

    events = [(r, parse_event(r.value)) for r in records]
    assert events and all(
        (r.key, list(r.headers)) == (wire.event_key(e), wire.event_headers(e.event_type)) for r, e in events
    )
    flow = [e for _, e in events if e.transfer_id == "ns-1"]
    assert {"requested", "validated", "delivered", "acknowledged", "source-closed"} <= {e.event_type for e in flow}
    for e in flow:  # the flow's events: one per kind of a message id
        expected = str(uuid.uuid5(wire.EVENT_NS, f"{good['message_id']}/{type(e).__name__}"))
        assert (expected, expected) == (e.event_id, wire.event_id(good["message_id"], type(e).__name__))
    [rejected] = [e for _, e in events if e.event_type == "rejected"]  # no readable transfer id: keyed by event id
    assert rejected.transfer_id is None and wire.event_key(rejected) == rejected.event_id.encode()
    assert str(uuid.uuid5(wire.EVENT_NS, "/".join(map(str, origin)) + "/rejected")) == rejected.event_id


async def test_a_dead_letter_too_big_to_write_whole_ends_with_wires_by_reference_headers() -> None:
    from router._outbox import Failure, Outbox

    outbox = Outbox("127.0.0.1:1", "t.events", "t.dlq", "g")  # never started: dead_letter only queues
    retried = [(wire.RETRY_ID, b"r"), (wire.RETRY_TIER, b"0"), (wire.DLT_ORIGINAL_TOPIC, b"an earlier one")]
    try:
        await outbox.dead_letter(
            _record("t.transfers", b"x" * 1_000_100, [("own", b"1"), *retried]), Failure("validate", "E", "m")
        )
        [(topic, _, value, headers)] = outbox._queued
    finally:
        await outbox.stop()
    names = [k for k, _ in headers]
    expected = ["own", *wire.DLQ_HEADERS, *wire.SPRING_DLT_HEADERS, *wire.DLQ_BY_REFERENCE_HEADERS]
    assert ("t.dlq", None, expected) == (topic, value, names)  # the retry tiers' and the old Spring headers left
    assert b"true" == dict(headers)[wire.DLQ_BY_REFERENCE]


def test_the_retry_tiers_write_and_read_back_exactly_wires_retry_headers() -> None:
    from router._retry import Origin, original_headers

    first = Origin.of(_record("t.transfers", b"{}", [("own", b"1")]))
    due = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    headers = first.retry_headers(1, due, 3, due)
    assert list(wire.RETRY_HEADERS) == [k for k, _ in headers]
    again = Origin.of(_record("t.retry.1", b"{}", [("own", b"1"), *headers]))  # read back from a tier
    assert (first.retry_id, "t.transfers", 2, 41, 3, due) == (
        again.retry_id, again.topic, again.partition, again.offset, again.attempts, again.first_failure,
    )  # fmt: skip
    assert [("own", b"1")] == original_headers(_record("t.retry.1", b"{}", [("own", b"1"), *headers]))


def test_a_publishers_map_stage_dead_letter_carries_exactly_wires_map_stage_headers() -> None:
    headers = map_stage_headers(7)
    assert list(wire.MAP_STAGE_HEADERS) == [k for k, _ in headers]
    h = dict(headers)
    assert (b"map", b"probe-changes/north-somerset", b"7") == (
        h[wire.DLQ_STAGE], h[wire.DLQ_PUBLISHER], h[wire.DLQ_FEED_POSITION],
    )  # fmt: skip
    assert 7 == struct.unpack(">q", h[wire.DLT_ORIGINAL_OFFSET])[0]
    assert b"p.remap" == h[wire.DLT_ORIGINAL_TOPIC]  # the publisher's remap topic: where a redrive remaps it


def test_the_asyncapi_document_declares_wires_headers_with_wires_meaning() -> None:
    """Every header the document declares is one wire defines, described as wire describes it; the dead letter's,
    the event's and the retry tier's are exactly wire's groups."""
    from monitor._asyncapi import asyncapi_document

    messages = asyncapi_document()["components"]["messages"]
    declared = {n: m["headers"]["properties"] for n, m in messages.items() if "headers" in m}
    for name, props in declared.items():
        assert {h: wire.MEANING.get(h) for h in props} == {h: p["description"] for h, p in props.items()}, name
    dead = {*wire.DLQ_HEADERS, *wire.DLQ_BY_REFERENCE_HEADERS, *wire.PUBLISHER_HEADERS, *wire.SPRING_DLT_HEADERS}
    assert dead == set(declared["DeadLetter"])
    assert set(wire.EVENT_HEADERS) == set(declared["TransferEvent"])
    assert {*wire.RETRY_HEADERS, *wire.REPLAY_HEADERS, *wire.TRACE_HEADERS} == set(declared["RetriedTransfer"])
    assert set(wire.MEANING) == set().union(*declared.values())  # nothing wire defines goes undocumented


def test_a_transfers_key_is_its_first_identifiers_child_key_in_every_example() -> None:
    for path in sorted(EXAMPLES.glob("*.json")):
        raw = json.loads(path.read_text())
        first = raw["child"]["identifiers"][0]
        transfer = TransferMessage.model_validate(raw)
        assert f"{first['system']}:{first['id']}".encode() == wire.transfer_key(transfer), path.name
        assert wire.transfer_key(transfer) == wire.child_key(CaseSystem(first["system"]), first["id"]).encode()


def test_event_ids_are_uuid5_in_wires_namespaces() -> None:
    from connectors.ehm._connector import allocation_events
    from connectors.lcs._connector import decision_events

    for base, kind in [("ns-1-m1", "TransferRequested"), ("t.transfers/0/12", "rejected"), ("é/ü", "")]:
        hasher = wire.event_id_hasher(base)
        hasher.update(kind.encode())
        assert {str(uuid.uuid5(wire.EVENT_NS, f"{base}/{kind}"))} == {
            wire.event_id(base, kind),
            wire.uuid5_text(hasher),
        }
    [allocated] = allocation_events([{"seq": 7, "transfer_id": "t-1", "tray_item_id": "T1", "episode_id": "E1"}])
    assert str(uuid.uuid5(wire.EHM_EVENT_NS, "ehm-allocation/7")) == allocated.event_id
    at = "2026-12-02T09:30:00+00:00"
    [decided] = decision_events(
        [{"seq": 3, "transfer_id": "t-1", "contact_id": "C1", "decision": "accepted", "at": at}]
    )
    assert str(uuid.uuid5(wire.LCS_EVENT_NS, "lcs-front-door-decision/3")) == decided.event_id
    spaces = [wire.EVENT_NS, wire.EHM_EVENT_NS, wire.LCS_EVENT_NS, wire.MAILBOX_MESSAGE_NS]
    assert len(set(spaces)) == len(spaces)


# -- the vocabulary is stated once ----------------------------------------------------------------------------


def _is_event_type(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value == wire.EVENT_TYPE


def spelled_header_names(source: str) -> list[tuple[int, str]]:
    """Where ``source`` spells a header name, a header family's prefix or a record key's prefix wire defines,
    instead of taking it from wire. ``event_type`` is also the events' payload field and the store's column, so it
    counts only where it is a header: a ``(name, value)`` pair, a ``.get`` on headers, a comparison with a name."""
    names = set(wire.MEANING) - {wire.EVENT_TYPE}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            v = node.value
            if (
                v in names
                or v in wire.PREFIXES
                or v in wire.KEY_PREFIXES
                or (v.startswith(wire.PREFIXES) and not any(c.isspace() for c in v))
            ):
                found.append((node.lineno, v))
        elif isinstance(node, ast.Tuple) and len(node.elts) == 2 and _is_event_type(node.elts[0]):
            found.append((node.lineno, wire.EVENT_TYPE))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            if node.args and _is_event_type(node.args[0]) and "headers" in ast.unparse(node.func.value):
                found.append((node.lineno, wire.EVENT_TYPE))
        elif isinstance(node, ast.Compare) and any(_is_event_type(n) for n in [node.left, *node.comparators]):
            found.append((node.lineno, wire.EVENT_TYPE))
    return found


def test_the_check_finds_each_way_of_spelling_a_header_name() -> None:
    source = """
headers = [("event_type", b"alert")]
kind = dict(r.headers or ()).get("event_type")
same = k == "event_type"
stage = h["casebridge.dlq.stage"]
kept = [k for k, _ in headers if not k.startswith("casebridge.retry.")]
spring = "kafka_dlt-original-offset"
DLQ = "casebridge.dlq."
MARK = "allocated:"
# not header names: the payload field, a column, a docstring that names a header
row["event_type"]; Field(discriminator="event_type"); x = "sets casebridge.dlq.stage to map"
"""
    assert [2, 3, 4, 5, 6, 7, 8, 9] == sorted(line for line, _ in spelled_header_names(source))


def test_no_module_spells_a_header_name_or_key_prefix_wire_defines() -> None:
    spelled = {
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in spelled_header_names(path.read_text(encoding="utf-8"))
    }
    assert set() == spelled, "take these names from contracts.wire"
