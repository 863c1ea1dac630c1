"""The monitor's alerts: GET /api/alerts lists them open, then resolved once the transfer recovers or completes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from contracts import AlertRaised, SourceClosed, SourceKeptOpen, TransferEvent
from monitor import Store
from router.settings import Topics
from tests.monitor_support import auth, running_monitor, wait_for
from tests.support import produce

RETRY = "target unavailable: transfer entered the retry tiers"
RECOVERED = "transfer recovered after retry and completed"
NS7 = "source record closed before its transfer; transfer held, reopen the record"
CLOSURE = "source record kept open: its later closure failed (TargetUnavailable)"


def _id() -> str:
    return str(uuid.uuid4())


def alert(tid: str, summary: str, severity: Any = "critical", rule_ids: list[str] | None = None) -> AlertRaised:
    return AlertRaised(event_id=_id(), transfer_id=tid, severity=severity, rule_ids=rule_ids or [], summary=summary)


def closed(tid: str) -> SourceClosed:
    return SourceClosed(event_id=_id(), transfer_id=tid, council="north-somerset", source_system="lcs",
                        source_reference="LCS-7")  # fmt: skip


def kept_open(tid: str) -> SourceKeptOpen:
    return SourceKeptOpen(event_id=_id(), transfer_id=tid, council="luton", source_system="ehm", rule_ids=["LU-4"])


async def publish(bootstrap: str, topics: Topics, *events: TransferEvent) -> None:
    for e in events:
        value = e.model_dump_json().encode()
        key = (e.transfer_id or "").encode()
        await produce(bootstrap, topics.events, [(key, value)], headers=[("event_type", e.event_type.encode())])


def by_transfer(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in body["alerts"]:
        out.setdefault(a["transfer_id"], []).append(a)
    return out


async def test_api_alerts_shows_alerts_open_then_resolved(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    retry, ns7, closure = alert("ns-1", RETRY, "warning"), alert("ns-7", NS7, rule_ids=["NS-7"]), alert("lu-3", CLOSURE)
    # lu-3's source was kept open before its alert: an earlier completion resolves nothing
    await publish(kafka_bootstrap, topics, retry, closed("ns-7-other"), ns7, kept_open("lu-3"), closure)
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        url = f"{server.url}/api/alerts"
        body = await wait_for(url, lambda b: b["open"] == 3)
        assert body["resolved"] == 0
        assert {a["event_id"]: a["status"] for a in body["alerts"]} == {
            retry.event_id: "open",
            ns7.event_id: "open",
            closure.event_id: "open",
        }
        [shown] = by_transfer(body)["ns-7"]
        assert (shown["severity"], shown["rule_ids"], shown["summary"]) == ("critical", ["NS-7"], NS7)
        assert shown["resolved_at"] is None

        recovered = alert("ns-1", RECOVERED, "info")
        await publish(kafka_bootstrap, topics, recovered, closed("ns-7"))
        body = await wait_for(url, lambda b: b["resolved"] == 3)
        assert body["open"] == 1
        status = {a["event_id"]: (a["status"], a["resolved_by"]) for a in body["alerts"]}
        assert status == {
            retry.event_id: ("resolved", "alert"),  # the later "recovered" alert
            recovered.event_id: ("resolved", "alert"),  # says it recovered: nothing to act on
            ns7.event_id: ("resolved", "source-closed"),
            closure.event_id: ("open", None),
        }
        only_open = await wait_for(f"{url}?status=open", lambda b: True)
        assert [a["event_id"] for a in only_open["alerts"]] == [closure.event_id]
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert 401 == (await client.get("/api/alerts")).status_code
            assert 422 == (await client.get("/api/alerts?status=maybe", headers=auth())).status_code
            page = await client.get("/", headers=auth())
            script = await client.get("/static/monitor.js")  # the page's script, outside it (the CSP)
            assert 'id="alerts"' in page.text and "/api/alerts" in script.text


def test_store_resolves_only_by_later_events_of_the_same_transfer() -> None:
    store = Store(":memory:")
    a1 = alert("t-1", "dead-lettered: TargetRefused")
    store.apply([alert("t-2", RECOVERED, "info"), closed("t-2"), a1])  # t-2's completion is not t-1's
    assert [(a["transfer_id"], a["status"]) for a in store.alerts()] == [("t-1", "open"), ("t-2", "resolved")]
    store.apply([kept_open("t-1")])
    assert [(a["transfer_id"], a["status"], a["resolved_by"]) for a in store.alerts()] == [
        ("t-1", "resolved", "source-kept-open"),
        ("t-2", "resolved", "alert"),
    ]
    store.close()
