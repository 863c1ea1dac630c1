"""The AsyncAPI document: generated from the contracts, committed, served by the monitor."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

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
        "{prefix}.audit",
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
