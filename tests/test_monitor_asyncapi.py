"""The AsyncAPI document: generated from the contracts, committed, served by the monitor."""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka.structs import ConsumerRecord

from connectors.kafka import SaslMechanism
from monitor import asyncapi_document
from monitor._asyncapi import ASYNCAPI_FILE, render
from tests.monitor_support import auth, running_monitor


def test_asyncapi_file_matches_the_contracts() -> None:
    """contracts/asyncapi.json is regenerated whenever a contract changes (python -m monitor.asyncapi)."""
    assert render() == ASYNCAPI_FILE.read_text(encoding="utf-8")


def test_asyncapi_document_names_every_topic_and_resolves_its_references() -> None:
    """AsyncAPI 3.0: each topic is a channel, each operation points at a channel, every $ref resolves."""
    doc = asyncapi_document()
    assert "3.0.0" == doc["asyncapi"]
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {
        "{prefix}.transfers",
        "{prefix}.events",
        "{prefix}.retry.{tier}",
        "{prefix}.dlq",
        "{prefix}.parking",
        "{prefix}.remap",
        "{prefix}.audit",
        "{prefix}.intake-audit",
        "{prefix}.retry-state",
        "{prefix}.lifecycle",
        "{prefix}.child-history",
        "{prefix}.pending-notices",
        "{prefix}.pending-closures",
        "{prefix}.feed-cursors",
    } == addresses
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref" and isinstance(v, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    for ref in refs:
        target: object = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]
    assert "milestone" in json.dumps(doc["components"]["schemas"]["MilestoneRecorded"])


async def test_monitor_serves_the_asyncapi_document(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """GET /asyncapi.json with a viewer token returns the committed document."""
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            served = (await client.get("/asyncapi.json", headers=auth())).json()
    assert json.loads(ASYNCAPI_FILE.read_text(encoding="utf-8")) == served


def _channel(doc: dict[str, Any], address: str) -> dict[str, Any]:
    [found] = [c for c in doc["channels"].values() if c["address"] == address]
    return found


def _record(topic: str, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 1, 7, 1_700_000_000_000, 0, b"k", b"{}", None, 1, 2, headers)


def test_every_topic_router_topics_creates_is_a_channel_with_its_kafka_binding() -> None:
    """Each topic ``router/topics.py`` creates is a channel whose binding states its partitions, cleanup policy
    and retention as created (the defaults of a deployment's [topics])."""
    from router.settings import RetrySettings, Topics, TopicSettings
    from router.topics import configs

    doc = asyncapi_document()
    topics, settings = Topics("{prefix}"), TopicSettings()
    tiers = len(RetrySettings().tiers)
    created = configs(topics, tiers, settings, 1)
    for name, config in created.items():
        address = "{prefix}.retry.{tier}" if name.startswith("{prefix}.retry.") else name
        binding = _channel(doc, address)["bindings"]["kafka"]
        topic_config = binding["topicConfiguration"]
        assert (1 if name == topics.feed_cursors else settings.partitions) == binding["partitions"], name
        assert config.get("cleanup.policy", "delete").split(",") == topic_config["cleanup.policy"], name
        assert config.get("retention.ms") == (
            str(topic_config["retention.ms"]) if "retention.ms" in topic_config else None
        )
    assert ["compact"] == _channel(doc, "{prefix}.pending-closures")["bindings"]["kafka"]["topicConfiguration"][
        "cleanup.policy"
    ]
    assert -1 == _channel(doc, "{prefix}.dlq")["bindings"]["kafka"]["topicConfiguration"]["retention.ms"]
    retry = _channel(doc, "{prefix}.retry.{tier}")["parameters"]["tier"]
    assert [str(i) for i in range(tiers)] == retry["enum"]


def test_every_dead_letter_retry_and_replay_header_is_declared() -> None:
    """The headers the router really writes (dead_letter_headers, the retry tiers' and a replay's) are declared."""
    from contracts.wire import DLQ_PREFIX
    from router._outbox import Failure, dead_letter_headers
    from router._retry import H_REPLAY_OF, H_REPLAY_OPERATOR, Origin

    doc = asyncapi_document()
    messages = doc["components"]["messages"]
    failure = Failure(stage="protocol", error_class="ProtocolRuleNotMet", message="NS-6", rule_ids=["NS-6"])
    written = {k for k, _ in dead_letter_headers(_record("p.transfers", []), "g", failure)}
    by_reference = {DLQ_PREFIX + "by.reference", DLQ_PREFIX + "original.size"}
    for name in ("DeadLetter", "ParkedDeadLetter"):
        declared = set(messages[name]["headers"]["properties"])
        assert written | by_reference <= declared, name
    retry = Origin.of(_record("p.transfers", [])).retry_headers(0, datetime.now(UTC), 1, datetime.now(UTC))
    assert {k for k, _ in retry} <= set(messages["RetriedTransfer"]["headers"]["properties"])
    for name in ("TransferMessage", "RetriedTransfer", "ParkedDeadLetter"):
        assert {H_REPLAY_OF, H_REPLAY_OPERATOR} <= set(messages[name]["headers"]["properties"]), name


def test_dead_letter_payload_is_described_as_it_is_not_as_a_transfer_message() -> None:
    """A dead letter's value: a TransferMessage, a source system's record, a pending closure, raw bytes, or none."""
    doc = asyncapi_document()
    assert "#/components/schemas/DeadLetterValue" == doc["components"]["messages"]["DeadLetter"]["payload"]["$ref"]
    value = doc["components"]["schemas"]["DeadLetterValue"]
    assert [
        "#/components/schemas/TransferMessage",
        "#/components/schemas/SourceSystemRecord",
        "#/components/schemas/PendingClosure",
        "#/components/schemas/UnreadableBytes",
        "#/components/schemas/ByReference",
    ] == [alt["$ref"] for alt in value["anyOf"]]
    assert "transfer_id" in doc["components"]["schemas"]["PendingClosure"]["properties"]
    for state in ("RetryState", "ChildHistory", "PendingNotice", "AllocationMark", "PendingClosure", "SignalMark"):
        assert "tombstone" in doc["components"]["messages"][state]["summary"], state


def test_asyncapi_council_server_names_every_way_casebridge_authenticates_to_kafka() -> None:
    """The secured server is kafka-secure with a security scheme per SASL mechanism of [kafka] and for a client
    certificate (AsyncAPI 3.0 types); the local plaintext server asks for none."""
    doc = asyncapi_document()
    schemes = doc["components"]["securitySchemes"]
    assert {"scramSha512": "scramSha512", "scramSha256": "scramSha256", "plain": "plain", "X509": "X509"} == {
        name: scheme["type"] for name, scheme in schemes.items()
    }
    said = {m for m in typing.get_args(SaslMechanism) for s in schemes.values() if f'"{m}"' in s["description"]}
    assert set(typing.get_args(SaslMechanism)) == said
    council = doc["servers"]["council"]
    assert ("kafka-secure", [f"#/components/securitySchemes/{n}" for n in schemes]) == (
        council["protocol"],
        [s["$ref"] for s in council["security"]],
    )
    assert ("kafka", None) == (doc["servers"]["local"]["protocol"], doc["servers"]["local"].get("security"))
