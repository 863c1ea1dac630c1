"""The monitor's access rules: no token, no page; viewers look; only operators replay (audited)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from prometheus_client import generate_latest

from casebridge.localdeploy import free_port
from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from monitor import Monitor
from router.app import ensure_topics
from router.lifecycle import Lifecycle
from router.settings import Settings, Topics
from tests.monitor_support import (
    OPERATOR_NAME,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    auth,
    get_json,
    monitor_settings,
    running_monitor,
    wait_for,
)
from tests.support import count_type, ns_transfer, produce, read, running_router
from tests.test_monitor_tracker import _events


async def test_no_token_no_page_and_no_api(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """Without a token the page redirects to the login form and the API, metrics and AsyncAPI answer 401."""
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            page = await client.get("/", follow_redirects=False)
            assert (303, "/login") == (page.status_code, page.headers["location"])
            for path in ["/api/overview", "/api/transfers", "/api/dead-letters", "/metrics", "/asyncapi.json"]:
                assert 401 == (await client.get(path)).status_code, path
            assert 401 == (await client.get("/api/overview", headers=auth("not-a-real-token-at-all"))).status_code
            refused = await client.post(
                "/login",
                data={"token": "wrong-token-wrong-token"},
                headers={"Origin": server.url},
                follow_redirects=False,
            )
            assert 401 == refused.status_code
            assert "casebridge_monitor" not in refused.cookies


async def test_login_sets_a_cookie_that_opens_the_page(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """A valid token at the login form gives an HttpOnly, SameSite=Strict session cookie (not the token); with it the
    page and API open."""
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            login = await client.post(
                "/login", data={"token": VIEWER_TOKEN}, headers={"Origin": server.url}, follow_redirects=False
            )
            assert 303 == login.status_code
            cookie = login.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert VIEWER_TOKEN.lower() not in cookie
            page = await client.get("/")
            assert 200 == page.status_code
            assert 'id="total-transfers"' in page.text
            me = (await client.get("/api/me")).json()
            assert ("viewer-1", "viewer") == (me["name"], me["role"])


async def test_g3_viewer_cannot_replay_operator_replay_is_audited_with_their_name(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """G3: replay from the monitor needs the operator role (viewer: 403) and writes the audit record."""
    topics = Topics(topic_prefix)
    doc = ns_transfer(1)
    headers = [
        ("casebridge.dlq.transfer.id", b"ns-1"),
        ("casebridge.dlq.council", b"north-somerset"),
        ("casebridge.dlq.stage", b"protocol"),
        ("casebridge.dlq.error.class", b"ProtocolRuleNotMet"),
        ("casebridge.dlq.error.message", b"protocol rules not met: NS-6"),
        ("casebridge.dlq.rule.ids", b"NS-6"),
    ]
    await produce(kafka_bootstrap, topics.dead_letter, [(b"lcs:LCS-1", json.dumps(doc).encode())], headers=headers)
    await produce(kafka_bootstrap, topics.audit, [])  # the topic exists, empty
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        waiting = await wait_for(f"{server.url}/api/dead-letters", lambda b: len(b["dead_letters"]) == 1)
        assert "ProtocolRuleNotMet (NS-6): protocol rules not met: NS-6" == waiting["top_reasons"][0]["reason"]
        [letter] = waiting["dead_letters"]
        assert ("ns-1", "protocol rules not met: NS-6", "waiting") == (
            letter["transfer_id"],
            letter["reason"],
            letter["status"],
        )
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            ops = auth(OPERATOR_TOKEN)
            preview = {"transfer_id": "ns-1", "dry_run": True}
            denied = await client.post("/api/replay", json=preview, headers=auth(VIEWER_TOKEN))
            assert 403 == denied.status_code
            # nothing replays without a filter, nor without confirming what a preview listed
            unfiltered = await client.post("/api/replay", json={"dry_run": True}, headers=ops)
            unconfirmed = await client.post("/api/replay", json={"transfer_id": "ns-1"}, headers=ops)
            assert (422, 422) == (unfiltered.status_code, unconfirmed.status_code)
            assert "at least one filter" in unfiltered.text and "preview first" in unconfirmed.text
            shown = (await client.post("/api/replay", json=preview, headers=ops)).json()
            [listed] = shown["letters"]
            assert (True, [letter["id"]], "none consuming") == (shown["dry_run"], shown["selected"], shown["router"])
            assert ("ns-1", "north-somerset", "protocol rules not met: NS-6", "waiting") == (
                listed["transfer_id"], listed["council"], listed["reason"], listed["status"],
            )  # fmt: skip
            by_council = {"council": "north-somerset", "rule_id": "NS-6", "dry_run": True}
            assert [letter["id"]] == (await client.post("/api/replay", json=by_council, headers=ops)).json()["selected"]
            # a confirmation replays exactly the ids it names among those matching: a stale or foreign id, none
            foreign = {"transfer_id": "ns-1", "dead_letter_ids": ["0:999"]}
            stale = await client.post("/api/replay", json=foreign, headers=ops)
            assert (200, []) == (stale.status_code, stale.json()["replayed"])
            confirm = {"transfer_id": "ns-1", "dead_letter_ids": shown["selected"]}
            done = await client.post("/api/replay", json=confirm, headers=ops)
            assert 200 == done.status_code
            assert 1 == len(done.json()["replayed"])
            again = await client.post("/api/replay", json=confirm, headers=ops)
            assert ([], done.json()["replayed"]) == (again.json()["replayed"], again.json()["already_replayed"])
        # no router here: replayed, and not (yet) resolved
        replayed = await wait_for(
            f"{server.url}/api/dead-letters?status=replayed", lambda b: len(b["dead_letters"]) == 1
        )
        assert (1, 0, []) == (
            replayed["by_status"]["replayed"],
            replayed["by_status"]["waiting"],
            replayed["top_reasons"],
        )
        assert [] == (await get_json(f"{server.url}/api/dead-letters?status=waiting"))["dead_letters"]
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert 422 == (await client.get("/api/dead-letters?status=done", headers=auth())).status_code
    [audit] = await read(kafka_bootstrap, topics.audit, lambda rs: len(rs) >= 1, timeout=30)
    record = json.loads(audit.value)
    assert (OPERATOR_NAME, "ns-1") == (record["operator"], record["transfer_id"])
    [replayed] = await read(kafka_bootstrap, topics.transfers, lambda rs: len(rs) >= 1, timeout=30)
    assert doc == json.loads(replayed.value)


async def test_ns04_overdue_meeting_shows_then_operator_records_it_met(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """NS-4: a step-down requested weeks ago is overdue; an operator's milestone meets it (late); viewers cannot."""
    topics = Topics(topic_prefix)
    events = _events("ns-old")  # requested on 2 Nov 2026: the meeting was due by 16 Nov
    await produce(kafka_bootstrap, topics.events, [(b"ns-old", e.model_dump_json().encode()) for e in events])
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        overview = await wait_for(f"{server.url}/api/overview", lambda o: o["total"] == 1)
        [overdue] = overview["overdue"]
        assert ("ns-old", "NS-4", "2026-11-16T09:00:00Z") == (
            overdue["transfer_id"],
            overdue["rule_id"],
            overdue["due_at"],
        )
        url = f"{server.url}/api/transfers/ns-old/milestones"
        async with httpx.AsyncClient(timeout=30) as client:
            meeting = {"milestone": "step-down-meeting-held"}
            assert 403 == (await client.post(url, json=meeting, headers=auth(VIEWER_TOKEN))).status_code
            unknown = await client.post(url, json={"milestone": "tea-break"}, headers=auth(OPERATOR_TOKEN))
            assert 422 == unknown.status_code
            assert unknown.json()["detail"].startswith("milestone:")
            swindons = await client.post(url, json={"milestone": "handover-held"}, headers=auth(OPERATOR_TOKEN))
            assert 422 == swindons.status_code  # SW26-6's milestone marks nothing for North Somerset
            recorded = await client.post(url, json=meeting, headers=auth(OPERATOR_TOKEN))
            assert (201, ["NS-4"], OPERATOR_NAME) == (
                recorded.status_code,
                recorded.json()["rule_ids"],
                recorded.json()["recorded_by"],
            )
        # the monitor wrote the audit record (who, when, which step); the router's closure scheduler writes the
        # event for it (the monitor's principal writes no events)
        [audit] = await read(kafka_bootstrap, topics.audit, lambda rs: len(rs) >= 1, timeout=30)
        assert (b"milestone/ns-old/step-down-meeting-held", OPERATOR_NAME) == (
            audit.key,
            json.loads(audit.value)["operator"],
        )
        settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=f"{topic_prefix}-r")
        await ensure_topics(
            kafka_bootstrap, [], compacted=[topics.pending_notices, topics.pending_closures, topics.history]
        )
        lifecycle = Lifecycle(settings, {}, {})
        scheduler = lifecycle.closures
        await lifecycle.start()
        try:
            for _ in range(20):
                await scheduler.poll_once()
                milestones = [r for r in await read(kafka_bootstrap, topics.events, lambda rs: False, timeout=1)
                              if dict(r.headers or ()).get("event_type") == b"milestone"]  # fmt: skip
                if milestones:
                    break
        finally:
            await lifecycle.stop()
        [milestone] = milestones
        assert OPERATOR_NAME.encode() not in (milestone.value or b"")  # the event names the step, not who
        detail = await wait_for(
            f"{server.url}/api/transfers/ns-old", lambda d: d["deadlines"] and d["deadlines"][0]["state"] == "met"
        )
        assert (True, "milestone") == (detail["deadlines"][0]["met_late"], detail["timeline"][-1]["event_type"])
        assert [] == (await wait_for(f"{server.url}/api/overview", lambda o: o["overdue"] == []))["overdue"]


async def test_ns07_held_transfer_that_later_completes_shows_resolved(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """NS-7: a transfer held because its LCS record was closed out of band is `waiting` in the API and the overview;
    once the record is reopened and the transfer completes, its dead letter is `resolved` and no longer a top
    reason or waiting."""
    topics = Topics(topic_prefix)
    source = MemorySource()
    source.closed["LCS-7"] = "someone-else"
    held = json.dumps(ns_transfer(7)).encode()
    systems = ({CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: source})
    async with running_router(kafka_bootstrap, topic_prefix, *systems):
        with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
            await produce(kafka_bootstrap, topics.transfers, [(b"lcs:LCS-7", held)])
            url = f"{server.url}/api/dead-letters"
            waiting = await wait_for(url, lambda b: len(b["dead_letters"]) == 1)
            [letter] = waiting["dead_letters"]
            assert ("ns-7", ["NS-7"], "waiting") == (letter["transfer_id"], letter["rule_ids"], letter["status"])
            assert letter["reason"].startswith("protocol rules not met: NS-7")
            assert 1 == (await get_json(f"{server.url}/api/overview"))["dead_letters"]["waiting"]

            del source.closed["LCS-7"]  # reopened; the LCS publisher publishes the request again
            await produce(kafka_bootstrap, topics.transfers, [(b"lcs:LCS-7", held)])
            await read(kafka_bootstrap, topics.events, count_type("source-closed", 1))
            resolved = await wait_for(url, lambda b: b["dead_letters"][0]["status"] == "resolved")
            assert ({"resolved": 1, "waiting": 0}, []) == (
                {k: resolved["by_status"][k] for k in ("resolved", "waiting")},
                resolved["top_reasons"],
            )
            assert [letter["id"]] == [d["id"] for d in (await get_json(f"{url}?status=resolved"))["dead_letters"]]
            overview = (await get_json(f"{server.url}/api/overview"))["dead_letters"]
            assert (0, "resolved") == (overview["waiting"], overview["latest"][0]["status"])


async def test_health_says_when_kafka_is_unreachable_and_clears_when_it_answers(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A round of the watch that cannot reach Kafka: /healthz's problems name the address and the metrics say 0;
    the same monitor pointed at a broker that answers: the problem is gone. Never from SQLite (answers locked)."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    monitor = Monitor(monitor_settings(tmp_path / "m.sqlite3"), dead, Topics(topic_prefix))
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever aiokafka raises for "cannot connect"
            await monitor.watch.refresh()
        health = monitor.health()
        assert "degraded" == health["status"]
        assert ["kafka-unreachable"] == [p["kind"] for p in health["problems"]]
        assert dead in health["problems"][0]["message"]
        assert False is health["kafka"]["reachable"]
        assert "casebridge_monitor_kafka_reachable 0.0" in generate_latest(monitor.registry).decode()
        monitor.watch.kafka = monitor.tracker.kafka = monitor.index.kafka = kafka_bootstrap  # Kafka answers
        await produce(
            kafka_bootstrap, Topics(topic_prefix).events, [(b"t-k", _events("t-k")[0].model_dump_json().encode())]
        )
        await monitor.tracker.start()
        await monitor.index.start()
        try:
            await monitor.tracker.catch_up(timeout=60)
            await monitor.watch.refresh()
        finally:
            await monitor.index.stop()
            await monitor.tracker.stop()
        health = monitor.health()
        assert ("ok", [], True, 0) == (
            health["status"],
            health["problems"],
            health["kafka"]["reachable"],
            health["tracker"]["lag"],
        )
    finally:
        monitor.store.close()


async def test_health_says_when_a_consumer_group_is_behind_and_clears_when_it_catches_up(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The router's group with committed offsets 5 behind on the transfers topic (threshold 2): a "consumer-behind"
    problem naming the group and topic; the group commits to the end: gone."""
    topics = Topics(topic_prefix)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(5):
            await producer.send_and_wait(topics.transfers, b"{}", key=b"k", partition=0)
    finally:
        await producer.stop()
    tp = TopicPartition(topics.transfers, 0)
    group = f"{topic_prefix}-router"
    settings = monitor_settings(tmp_path / "m.sqlite3").model_copy(update={"behind_threshold": 2})
    monitor = Monitor(settings, kafka_bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    await monitor.tracker.start()
    await monitor.index.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: 0})
        await monitor.watch.refresh()
        behind = [p for p in monitor.health()["problems"] if p["kind"] == "consumer-behind"]
        assert 1 == len(behind), monitor.health()
        assert f"Consumer group {group} is 5 message(s) behind on {topics.transfers}" in behind[0]["message"]
        await consumer.commit({tp: 5})
        await monitor.watch.refresh()
        assert ("ok", []) == (monitor.health()["status"], monitor.health()["problems"])
    finally:
        await monitor.index.stop()
        await monitor.tracker.stop()
        await consumer.stop()
        monitor.store.close()


def test_health_says_when_the_tracker_is_behind_and_clears_when_it_has_stored_everything(tmp_path: Path) -> None:
    """The tracker storing but 5 events behind the events topic's ends (threshold 2): a "tracker-behind" problem
    (the page's banner) saying how far; every event stored: gone. From memory: no broker asked."""
    import time

    settings = monitor_settings(tmp_path / "m.sqlite3").model_copy(update={"behind_threshold": 2})
    monitor = Monitor(settings, "127.0.0.1:1", Topics("behind"))
    try:
        monitor.tracker.ends, monitor.tracker.ends_at = {0: 4, 1: 3}, time.time()
        monitor.tracker.stored = {0: 1, 1: 1}
        health = monitor.health()
        assert (
            "degraded",
            [("tracker-behind", "The tracker is 5 event(s) behind the events topic (more than 2).")],
        ) == (
            health["status"],
            [(p["kind"], p["message"]) for p in health["problems"]],
        )
        monitor.tracker.stored = {0: 4, 1: 3}
        assert ("ok", []) == (monitor.health()["status"], monitor.health()["problems"])
    finally:
        monitor.store.close()
