"""The feeds of a deployment have one owner (issue #16, "feeds run in every process"): of the ``casebridge run``
processes of one deployment file, the one its ``<group_id>-feeds`` group gives partition 0 of
``<prefix>.feed-cursors`` runs the source feeds (LCS's change feed here), from the cursors on that topic; the others
run none. When the owner stops, another takes the feeds over and resumes from the shared cursor.

Real processes on the session's broker (``tests/test_many_routers.py``'s deployment: North Somerset on the LCS and
EHM sandboxes, each process its own state directory, so a process that read its own cursor file would start from
the beginning and publish every request again). What is counted is records on the transfers topic, not events.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from casebridge.localdeploy import Events, RunningDeployment
from casebridge.scenarios import LcsSandboxClient
from connectors._cursors import FileCursor, KafkaCursors
from router import topics as deployment_topics
from router.settings import Topics, TopicSettings
from tests.support import read
from tests.test_many_routers import Deployment, deployment, log_lines


async def _records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic``: (key, value); read from the beginning for a few seconds (the topics are small)."""
    return [(r.key, r.value) for r in await read(bootstrap, topic, lambda _: False, timeout=6)]


async def _published(bootstrap: str, topic: str) -> Counter[str]:
    """How many records the transfers topic holds per transfer id."""
    records = await _records(bootstrap, topic)
    return Counter(json.loads(v)["transfer_id"] for _, v in records if v is not None)


def _owning(run: RunningDeployment) -> bool:
    """Whether the run owns the feeds now: its last ``feeds_owned`` is later than its last ``feeds_released``."""
    return len(log_lines(run, "feeds_owned")) > len(log_lines(run, "feeds_released"))


async def _settled(runs: list[RunningDeployment], timeout: float) -> list[RunningDeployment]:
    """Once one run owns the feeds and every other one waits (``feeds_standby``): the owners."""
    deadline = time.monotonic() + timeout
    while True:
        owning = [r for r in runs if _owning(r)]
        waiting = [r for r in runs if not _owning(r) and log_lines(r, "feeds_standby")]
        if (len(owning) == 1 and len(waiting) == len(runs) - 1) or time.monotonic() > deadline:
            return owning
        await asyncio.sleep(0.2)


async def _two_processes(d: Deployment) -> tuple[RunningDeployment, RunningDeployment]:
    """Two `casebridge run` processes of the deployment, once one owns the feeds: (the owner, the other)."""
    d.start(2)
    owning = await _settled(d.runs, timeout=30)
    assert len(owning) == 1, f"one process owns the feeds: {[_owning(r) for r in d.runs]}"
    [owner] = owning
    return owner, next(r for r in d.runs if r is not owner)


def _requests(lcs: LcsSandboxClient, n: int) -> list[str]:
    """N step-down requests made in LCS (each of a new child): the transfer ids the LCS publisher gives them."""
    ids = [lcs.request_stepdown(lcs.create_child(locality="North")) for _ in range(n)]
    return [f"north-somerset-lcs-{r}".lower() for r in ids]


def _never_two_owners(runs: list[RunningDeployment]) -> None:
    """From the runs' logs: no two processes ever ran the feeds at the same time (each one's owned-to-released
    spans are disjoint from every other one's)."""
    spans = []
    for i, run in enumerate(runs):
        owned = [datetime.fromisoformat(x["timestamp"]) for x in log_lines(run, "feeds_owned")]
        released = [datetime.fromisoformat(x["timestamp"]) for x in log_lines(run, "feeds_released")]
        far = datetime.max.replace(tzinfo=UTC)
        spans += [(start, end, i) for start, end in zip(owned, [*released, *[far] * len(owned)], strict=False)]
    for (a0, a1, i), (b0, b1, j) in itertools.combinations(spans, 2):
        assert i == j or a1 <= b0 or b1 <= a0, f"processes {i} and {j} ran the feeds at the same time: {spans}"


async def test_two_processes_publish_each_request_once_and_the_other_takes_the_feeds_over_from_the_shared_cursor(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    transfers = f"{topic_prefix}.transfers"
    with deployment(tmp_path, kafka_bootstrap, topic_prefix) as d, ExitStack() as clients:
        lcs, ehm = d.clients(clients)
        owner, other = await _two_processes(d)
        owned = log_lines(owner, "feeds_owned")[-1]  # (the feeds may have moved at the second one's join)
        assert "LcsPublisher" in owned["feeds"] and "DecisionReporter" in owned["feeds"]

        first = _requests(lcs, 5)
        events = Events(kafka_bootstrap, f"{topic_prefix}.events")
        try:
            by = await events.until(dict.fromkeys(first, "source-closed"), timeout=120)
            assert all(events.has({t: "source-closed"}) for t in first), "the first requests completed"
            await asyncio.sleep(2)  # a second publisher's copies, if there were one, have landed
            counts = await _published(kafka_bootstrap, transfers)
            assert {t: counts[t] for t in first} == dict.fromkeys(first, 1), "each request published once"

            assert owner.stop() == 0  # SIGTERM: it stops its feeds and leaves the feeds group
            stopped_at = time.monotonic()
            released = log_lines(owner, "feeds_released")
            assert released and released[-1]["reason"] == "stopping", "the owner released the feeds as it stopped"
            assert await _settled([other], timeout=30) == [other], "the other process took the feeds over"
            took_over = time.monotonic() - stopped_at

            second = _requests(lcs, 5)
            by = await events.until(dict.fromkeys(second, "source-closed"), timeout=120)
            assert all(events.has({t: "source-closed"}) for t in second), "the later requests completed"
            await asyncio.sleep(2)
            counts = await _published(kafka_bootstrap, transfers)
        finally:
            await events.stop()
        both = first + second
        # resumed from the shared cursor: its own state directory has no cursor, yet nothing was published again
        assert {t: counts[t] for t in both} == dict.fromkeys(both, 1), "every request published once, in all"
        delivered = {t: sum(e.event_type == "delivered" for e in by[t]) for t in both}  # records, not distinct ids
        assert delivered == dict.fromkeys(both, 1), "every transfer delivered once"
        assert sorted(i["transfer_id"] for i in ehm.tray() if i["transfer_id"] in both) == sorted(both)
        cursors = {k: json.loads(v) for k, v in await _records(kafka_bootstrap, f"{topic_prefix}.feed-cursors") if k
                   and v}  # fmt: skip
        assert b"lcs-stepdowns" in cursors and cursors[b"lcs-stepdowns"]["after"] > 0, sorted(cursors)
        _never_two_owners(d.runs)
        files = sorted(p.name for p in d.work.glob("state-*/*-cursor.json"))
        assert files == [], f"no cursor file under casebridge run: {files}"
        for run in d.runs:  # the lease's lines carry no personal data: the group and the loops' names
            for line in [*log_lines(run, "feeds_owned"), *log_lines(run, "feeds_released")]:
                assert set(line) <= {"event", "group_id", "feeds", "cursors", "records", "reason", "level",
                                     "timestamp", "logger", "correlation_id"}, line  # fmt: skip
        print(f"\nfeeds taken over {took_over:.1f} s after the owner's SIGTERM; 10 requests published once each")
        assert took_over < 10, f"the feeds were taken over only {took_over:.1f} s after the owner stopped"


async def test_the_cursor_topic_holds_each_feeds_last_cursor_and_a_feed_it_does_not_know_starts_from_its_file(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    await deployment_topics.prepare(kafka_bootstrap, topics, 1, TopicSettings(), only={topics.feed_cursors})
    writer = KafkaCursors(kafka_bootstrap, topics.feed_cursors)
    await writer.start()
    try:
        assert 0 == await writer.restore()
        lcs = writer.cursor(FileCursor(tmp_path / "lcs-stepdowns-cursor.json"))
        ehm = writer.cursor(FileCursor(tmp_path / "ehm-allocations-cursor.json"))
        await lcs.commit(5)
        await lcs.commit(7)
        await ehm.commit(3)
    finally:
        await writer.stop()
    upgraded = FileCursor(tmp_path / "ted-stepdowns-cursor.json")
    upgraded.save(11)  # a deployment upgraded from one process: its cursor file, never written to the topic
    FileCursor(tmp_path / "lcs-stepdowns-cursor.json").save(2)  # a stale file: the topic's cursor wins
    reader = KafkaCursors(kafka_bootstrap, topics.feed_cursors)
    assert 3 == await reader.restore()  # every record read, to the end
    assert {"lcs-stepdowns": 7, "ehm-allocations": 3} == reader.values
    assert (7, 3, 11) == tuple(
        reader.cursor(FileCursor(tmp_path / f"{n}-cursor.json")).load()
        for n in ("lcs-stepdowns", "ehm-allocations", "ted-stepdowns")
    )


async def test_when_the_feed_owner_is_killed_the_other_process_takes_the_feeds_over_and_no_request_is_lost(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL: the owner says no goodbye, so the other process takes the feeds over once the feeds group's session
    timeout drops it, from the shared cursor as far as the owner had committed it. Requests made just before the
    kill may be published twice (published, cursor not yet moved on): each is still delivered once, the copy being
    a ``duplicate`` (the completed transfers are state per partition). None is lost."""
    with deployment(tmp_path, kafka_bootstrap, topic_prefix) as d, ExitStack() as clients:
        lcs, ehm = d.clients(clients)
        owner, other = await _two_processes(d)

        first = _requests(lcs, 5)
        events = Events(kafka_bootstrap, f"{topic_prefix}.events")
        try:
            await events.until(dict.fromkeys(first, "source-closed"), timeout=120)
            late = _requests(lcs, 5)  # the owner is polling for these as it is killed
            owner.kill()
            assert owner.stop() == -9
            killed_at = time.monotonic()
            assert await _settled([other], timeout=60) == [other], "the other process took the feeds over"
            took_over = time.monotonic() - killed_at
            after = _requests(lcs, 5)
            every = first + late + after
            by = await events.until(dict.fromkeys(every, "source-closed"), timeout=180)
            await asyncio.sleep(2)
            counts = await _published(kafka_bootstrap, f"{topic_prefix}.transfers")
        finally:
            await events.stop()
        assert {t: counts[t] >= 1 for t in every} == dict.fromkeys(every, True), "every request published"
        once = {t: len({e.event_id for e in by[t] if e.event_type == "delivered"}) for t in every}
        assert once == dict.fromkeys(every, 1), "every transfer delivered once (distinct events)"
        assert sorted(i["transfer_id"] for i in ehm.tray() if i["transfer_id"] in every) == sorted(every)
        twice = sorted(t for t in every if counts[t] > 1)
        duplicates = sorted(t for t in twice if any(e.event_type == "duplicate" for e in by[t]))
        print(
            f"\nfeeds taken over {took_over:.1f} s after the owner's SIGKILL; {len(twice)} of {len(every)} requests"
            f" published twice, {len(duplicates)} of those written off as duplicate"
        )
        assert took_over < 20, f"the feeds were taken over only {took_over:.1f} s after the owner was killed"
