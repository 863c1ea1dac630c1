"""The operator CLI on a real broker: `casebridge dlq list|show` and `casebridge replay`."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from casebridge.cli import app
from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from router import Topics
from tests.support import ns_transfer, produce, read, running_router


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
    assert (0, f"would replay 1: {rows[0]['id']}") == (dry.exit_code, dry.stdout.strip())
