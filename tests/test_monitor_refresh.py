"""The monitor's refresh costs what is new (issue #18 item 4): the watch keeps its dead-letter listing up to date a
round at a time from the store's index, and that listing is, after every step, exactly the one listed afresh from
the whole store; ``/api/dead-letters`` answers a page, with the counts of them all."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from contracts import CaseSystem, Council, SourceClosed, TransferEvent
from monitor import DeadLetterIndex, Store, Tracker, Watch
from monitor._index import letters_of
from monitor._lag import OPEN_STATUSES, full_listing
from monitor._store import SCHEMA_VERSION, IndexEntries, Position
from router.deadletters import Status, expired_ids
from router.settings import Topics
from tests.monitor_support import OPERATOR_TOKEN, auth, get_json, running_monitor, wait_for
from tests.support import produce
from tests.test_monitor_browser import browser, csp_violations, text_of

__all__ = ["browser"]  # the real headless Chromium fixture, as tests/test_monitor_browser.py runs it


def _headers(transfer_id: str, reason: str, **context: str) -> list[tuple[str, bytes]]:
    fields = {
        "transfer.id": transfer_id,
        "council": "north-somerset",
        "error.class": "TargetRefused",
        "error.message": reason,
        "rule.ids": "NS-6",
        **context,
    }
    return [(f"casebridge.dlq.{k}", v.encode()) for k, v in fields.items()]


async def _dead_letter(
    bootstrap: str, topics: Topics, transfer_id: str, reason: str = "refused", **context: str
) -> None:
    value = b'{"pathway": {"direction": "step-down"}}'
    await produce(
        bootstrap, topics.dead_letter, [(transfer_id.encode(), value)], _headers(transfer_id, reason, **context)
    )


async def _to_partition_0(bootstrap: str, topic: str, keys: list[bytes]) -> None:
    """Records at offsets 0, 1, ... of partition 0 of a new topic."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n, key in enumerate(keys):
            sent = await producer.send_and_wait(topic, b"{}", key=key, partition=0)
            assert (0, n) == (sent.partition, sent.offset)
    finally:
        await producer.stop()


def _closed(transfer_id: str, at: datetime) -> TransferEvent:
    return SourceClosed(
        event_id=str(uuid.uuid4()),
        transfer_id=transfer_id,
        council=Council.NORTH_SOMERSET,
        occurred_at=at,
        source_system=CaseSystem.LCS,
        source_reference=f"LCS-{transfer_id}",
    )


def _expected_reasons(full: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The top reasons as the page shows them, counted here from the full listing (ties by reason)."""
    reasons: Counter[str] = Counter()
    for d in full:
        if d["status"] in OPEN_STATUSES:
            rules = ", ".join(d["rule_ids"])
            reasons[f"{d['error_class']}{' (' + rules + ')' if rules else ''}: {d['reason']}"] += 1
    return [{"reason": r, "count": c} for r, c in sorted(reasons.items(), key=lambda rc: (-rc[1], rc[0]))[:10]]


async def _same_as_full(watch: Watch, store: Store, kafka: str) -> dict[str, str]:
    """A round, then the watch's listing against the whole store listed afresh; returns transfer id -> status."""
    await watch.refresh()
    letters = letters_of(store.indexed_dead_letters())
    full = full_listing(store, letters, frozenset(await expired_ids(kafka, letters)))
    assert full == watch.dead_letters
    counts = Counter(d["status"] for d in full)
    assert {s.value: counts[s.value] for s in Status} == watch.by_status()
    assert _expected_reasons(full) == watch.top_reasons(10)
    assert sorted(d["id"] for d in full if d["status"] == "expired") == list(watch.expired_ids())
    for transfer_id in {d["transfer_id"] for d in full}:
        assert [d for d in full if d["transfer_id"] == transfer_id] == watch.of_transfer(transfer_id)
    assert full[::-1] == watch.page(limit=1000)[0]
    return {d["transfer_id"]: d["status"] for d in full}


async def test_the_listing_kept_up_to_date_is_the_full_listing_after_every_step(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Dead letters, a replay, a parking, completions (before and after their dead letters), a record held by
    reference deleted by retention, dead letters forgotten by the store: after each, the watch's listing (kept up to
    date) equals the full one, and a round with nothing new lists nothing again."""
    topics = Topics(topic_prefix)
    kafka = kafka_bootstrap
    store = Store(tmp_path / "m.sqlite3")
    tracker = Tracker(store, kafka, topics)
    index = DeadLetterIndex(store, kafka, topics)
    watch = Watch(kafka, topics, tracker, 1.0, index)
    await tracker.start()
    await index.start()
    try:
        # the record a dead letter held by reference points at (too big to dead-letter whole)
        await _to_partition_0(kafka, topics.transfers, [b"lcs:LCS-4", b"lcs:LCS-44"])
        for transfer_id in ("t-1", "t-2", "t-3"):
            await _dead_letter(kafka, topics, transfer_id, f"refused {transfer_id[-1:]}")
        by_reference = {"by.reference": "true", "original.topic": topics.transfers, "original.partition": "0"}
        await _dead_letter(kafka, topics, "t-4", "too big", **by_reference, **{"original.offset": "0"})
        await _dead_letter(kafka, topics, "t-44", "too big", **by_reference, **{"original.offset": "1"})
        statuses = await _same_as_full(watch, store, kafka)
        assert {"t-1", "t-2", "t-3", "t-4", "t-44"} == set(statuses) and {"waiting"} == set(statuses.values())
        ids = {d["transfer_id"]: d["id"] for d in watch.dead_letters}

        await produce(kafka, topics.audit, [(ids["t-1"].encode(), b"{}")])  # replayed
        assert "replayed" == (await _same_as_full(watch, store, kafka))["t-1"]

        await produce(kafka, topics.parking, [(b"k", b"{}")], [("casebridge.replay.of", ids["t-2"].encode())])
        assert "parked" == (await _same_as_full(watch, store, kafka))["t-2"]

        # t-3 completes after its dead letter; t-5 completed before its dead letter's failure (stays waiting) and
        # t-6 after it, both stored before their dead letters are indexed
        now = datetime.now(UTC)
        await store.write([_closed("t-3", now + timedelta(seconds=1)), _closed("t-5", now - timedelta(days=1))])
        await store.write([_closed("t-6", now + timedelta(days=1))])
        assert "resolved" == (await _same_as_full(watch, store, kafka))["t-3"]
        failed = {"last.failure": now.isoformat()}
        await _dead_letter(kafka, topics, "t-5", "refused 5", **failed)
        await _dead_letter(kafka, topics, "t-6", "refused 6", **failed)
        statuses = await _same_as_full(watch, store, kafka)
        assert ("waiting", "resolved") == (statuses["t-5"], statuses["t-6"])
        await store.write([_closed("t-5", now + timedelta(seconds=5))])  # now it completes after the failure
        assert "resolved" == (await _same_as_full(watch, store, kafka))["t-5"]

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:  # retention deletes the first record of the partition t-4 and t-44 point at
            await admin.delete_records({TopicPartition(topics.transfers, 0): RecordsToDelete(1)})
        finally:
            await admin.close()
        statuses = await _same_as_full(watch, store, kafka)
        assert ("expired", "waiting") == (statuses["t-4"], statuses["t-44"])

        listed = watch.dead_letters
        for _ in range(2):  # nothing new: the same listing, not listed again
            await _same_as_full(watch, store, kafka)
            assert listed is watch.dead_letters

        [(partition, offset)] = [tuple(map(int, ids["t-1"].split(":")))]
        assert 1 == store.forget_dead_letters_before(partition, offset + 1)  # dropped from the store (retention)
        statuses = await _same_as_full(watch, store, kafka)
        assert "t-1" not in statuses and 6 == len(statuses)

        await _dead_letter(kafka, topics, "t-7", "refused 7")
        await produce(kafka, topics.audit, [(ids["t-3"].encode(), b"{}")])  # a resolved one replayed: still resolved
        statuses = await _same_as_full(watch, store, kafka)
        assert ("waiting", "resolved") == (statuses["t-7"], statuses["t-3"])
    finally:
        await index.stop()
        await tracker.stop()
        store.close()


_VERSION_0 = """
CREATE TABLE dead_letters (id TEXT PRIMARY KEY, partition INTEGER NOT NULL, offset INTEGER NOT NULL, timestamp INTEGER,
    transfer_id TEXT, pathway TEXT, context TEXT NOT NULL);
CREATE TABLE replayed (id TEXT PRIMARY KEY);
CREATE TABLE parked (id TEXT PRIMARY KEY);
"""


async def test_a_store_of_the_earlier_layout_keeps_its_rows_and_gets_their_order(tmp_path: Path) -> None:
    """A store file written before ``seq`` existed: opened, its rows are kept and ordered as they were inserted, and
    what is indexed after comes after them (the watch's position)."""
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    con.executescript(_VERSION_0)
    context = '{"transfer.id": "t-old", "error.class": "TargetRefused", "error.message": "refused"}'
    for offset in (0, 1):
        con.execute(
            "INSERT INTO dead_letters VALUES (?, 0, ?, 1000, 't-old', 'step-down', ?)", (f"0:{offset}", offset, context)
        )
    con.execute("INSERT INTO replayed VALUES ('0:1')")
    con.commit()
    con.close()
    store = Store(db)
    try:
        assert SCHEMA_VERSION == store._query("PRAGMA user_version")[0][0]
        assert [1, 2] == [r["seq"] for r in store.dead_letters_after(0)]
        assert [(1, "0:1")] == store.ids_after("replayed", 0)
        store.index(
            IndexEntries(dead_letters=[{"id": "0:2", "partition": 0, "offset": 2, "timestamp": 2000,
                                        "transfer_id": "t-new", "pathway": "step-down", "context": "{}"}],
                         parked=["0:0"]),
            [Position("dlq", 0, 3)],
        )  # fmt: skip
        assert [("0:2", 3)] == [(r["id"], r["seq"]) for r in store.dead_letters_after(2)]
        assert [(1, "0:0")] == store.ids_after("parked", 0)
        watch = Watch("127.0.0.1:1", Topics("t"), Tracker(store, "127.0.0.1:1", Topics("t")))
        await store.read(watch.listing.take, store)
        await store.read(watch.listing.settle, {})
        assert [("0:0", "parked"), ("0:1", "replayed"), ("0:2", "waiting")] == [
            (d["id"], d["status"]) for d in watch.dead_letters
        ]
    finally:
        store.close()
    assert [(1, "0:0")] == Store(db).ids_after("parked", 0)  # opened again: nothing to migrate, nothing changed


async def test_the_dead_letters_api_answers_a_page_with_the_counts_of_all(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """``/api/dead-letters``: newest first, ``limit`` and ``before`` (the last page's ``next_before``) walk every
    dead letter once, ``status`` and ``offset`` narrow it, the total and counts by status come with every page;
    a wrong ``limit`` or an unknown ``before`` is refused in one line."""
    topics = Topics(topic_prefix)
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        for n in range(5):
            await _dead_letter(kafka_bootstrap, topics, f"t-{n}", f"refused {n}")
        url = f"{server.url}/api/dead-letters"
        every = (await wait_for(f"{url}?limit=1000", lambda b: b["total"] == 5))["dead_letters"]
        assert sorted(every, key=lambda d: d["transfer_id"], reverse=True) == every  # newest first
        pages, before = [], None
        while True:
            page = await get_json(f"{url}?limit=2" + (f"&before={before}" if before else ""))
            assert (5, 5, {"waiting": 5}) == (
                page["total"],
                page["matching"],
                {k: v for k, v in page["by_status"].items() if v},
            )
            pages.append([d["id"] for d in page["dead_letters"]])
            before = page["next_before"]
            if before is None:
                break
        assert [[d["id"] for d in every[i : i + 2]] for i in (0, 2, 4)] == pages
        await produce(
            kafka_bootstrap, topics.audit, [(every[1]["id"].encode(), b"{}"), (every[3]["id"].encode(), b"{}")]
        )
        replayed = await wait_for(f"{url}?status=replayed", lambda b: b["matching"] == 2)
        assert ([every[1]["id"], every[3]["id"]], None) == (
            [d["id"] for d in replayed["dead_letters"]],
            replayed["next_before"],
        )
        waiting = await get_json(f"{url}?status=waiting&offset=1&limit=1")
        assert ([every[2]["id"]], every[2]["id"], 3) == (
            [d["id"] for d in waiting["dead_letters"]], waiting["next_before"], waiting["matching"]
        )  # fmt: skip
        overview = (await get_json(f"{server.url}/api/overview"))["dead_letters"]
        assert [d["id"] for d in every] == [d["id"] for d in overview["latest"]]
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for query in ("limit=0", "limit=1001", "offset=-1"):
                assert 422 == (await client.get(f"/api/dead-letters?{query}", headers=auth())).status_code, query
            gone = await client.get("/api/dead-letters?before=9:999", headers=auth())
            assert 404 == gone.status_code
            assert "no dead letter '9:999' is listed" in gone.json()["detail"]


async def test_the_page_shows_the_dead_letters_a_page_at_a_time_in_chromium(
    browser: webdriver.Chrome, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The page's dead-letter table: the 20 newest of 25, then the 5 older ones, back to the newest, one status
    only; the counts of all above it; no CSP violation."""
    topics = Topics(topic_prefix)
    for n in range(25):
        await _dead_letter(kafka_bootstrap, topics, f"t-{n:02d}", f"refused {n}")
    with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
        every = (await wait_for(f"{server.url}/api/dead-letters?limit=1000", lambda b: b["total"] == 25))[
            "dead_letters"
        ]
        await produce(kafka_bootstrap, topics.audit, [(every[21]["id"].encode(), b"{}")])
        await wait_for(f"{server.url}/api/dead-letters?status=replayed", lambda b: b["matching"] == 1)

        def shown() -> list[str]:
            script = (
                "return [...document.querySelectorAll('#dead-letters tr td:first-child')].map((c) => c.textContent)"
            )
            return [str(x) for x in browser.execute_script(script)]

        def until(ids: list[str], range_text: str) -> None:
            try:
                WebDriverWait(browser, 30, 0.3).until(
                    lambda _: shown() == ids and text_of(browser, "dead-letters-range") == range_text
                )
            except TimeoutException:
                raise AssertionError(f"shown {shown()}, {text_of(browser, 'dead-letters-range')!r}") from None

        def pages() -> None:
            browser.get(server.url + "/")
            browser.find_element(By.ID, "token").send_keys(OPERATOR_TOKEN)
            browser.find_element(By.ID, "sign-in").click()
            until([d["id"] for d in every[:20]], "newest first: 1 to 20 of 25")
            assert text_of(browser, "dead-letter-statuses").startswith("25 in all: 24 waiting · 1 replayed")
            browser.find_element(By.ID, "dead-letters-older").click()
            until([d["id"] for d in every[20:]], "newest first: 21 to 25 of 25")
            assert not browser.find_element(By.ID, "dead-letters-older").is_enabled()
            browser.find_element(By.ID, "dead-letters-newer").click()
            until([d["id"] for d in every[:20]], "newest first: 1 to 20 of 25")
            Select(browser.find_element(By.ID, "dead-letter-status")).select_by_visible_text("replayed")
            until([every[21]["id"]], "newest first: 1 to 1 of 1")
            assert [] == csp_violations(browser)

        await asyncio.to_thread(pages)
