"""Failure as a first-class path, end to end: real Kafka, sandbox LCS and EHM with injected faults."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from casebridge.stack import Stack
from contracts import TransferEvent
from router.deadletters import ReplayRefused, list_dead_letters, list_with_status, replay
from router.settings import RetrySettings
from tests.support import Systems, events_of, read


@pytest.fixture
def retry_settings() -> RetrySettings:
    """Tiers that together outlast a 20 s outage: 4 s, 8 s, 16 s."""
    return RetrySettings(attempts=2, initial_seconds=0.05, max_seconds=0.2, total_seconds=2.0, tiers=[4.0, 8.0, 16.0])


def _tid(request_id: str) -> str:
    return f"north-somerset-lcs-{request_id}".lower()


async def _closed(stack: Stack, transfer_ids: set[str], timeout: float = 90) -> list[TransferEvent]:
    def done(records: list[object]) -> bool:
        closed = {e.transfer_id for e in events_of(records) if e.event_type == "source-closed"}  # type: ignore[arg-type]
        return transfer_ids <= closed

    records = await read(stack.settings.bootstrap_servers, stack.settings.topics.events, done, timeout=timeout)
    return events_of(records)


async def test_ehm_503_for_20s_all_delivered_after_recovery_none_dead_lettered_none_duplicated(
    stack: Stack, systems: Systems
) -> None:
    """EHM's tray answers 503 for 20 s: everything lands once after recovery, nothing is dead-lettered, and
    transfers that do not need the tray (NS-14) keep completing during the outage."""
    systems.ehm_client.inject_fault(status=503, seconds=20, path_prefix="/api/stepdown-tray")
    outage_ends = time.monotonic() + 20
    lcs = systems.lcs_client
    good = {_tid(lcs.request_stepdown(lcs.create_child(locality=loc))) for loc in ["North", "East", "South"] * 2}
    no_record = {
        _tid(lcs.request_stepdown(lcs.create_child(), target_level="universal", family_hub_universal=True))
        for _ in range(2)
    }
    await stack.publisher.poll_once()

    await _closed(stack, no_record, timeout=15)
    assert time.monotonic() < outage_ends, "transfers that do not touch EHM waited for the outage"
    events = await _closed(stack, good)

    assert sorted(good) == sorted(i["transfer_id"] for i in systems.ehm_client.tray())
    assert [] == await read(stack.settings.bootstrap_servers, stack.settings.topics.dead_letter, bool, timeout=3)
    assert not [e for e in events if e.event_type == "dead-lettered"]
    tiers = {e.tier for e in events if e.event_type == "retry-scheduled"}  # type: ignore[union-attr]
    assert {0, 1} <= tiers


async def test_4xx_is_dead_lettered_at_once_then_replay_delivers_exactly_once(stack: Stack, systems: Systems) -> None:
    """A 4xx from EHM: dead letter at once (kcat shows its headers), the router keeps consuming; once the cause
    is fixed, replay delivers once, a second replay nothing new, --dry-run nothing, no operator is refused."""
    lcs, ehm = systems.lcs_client, systems.ehm_client
    first_child = lcs.create_child()
    first = _tid(lcs.request_stepdown(first_child))
    ehm.inject_fault(status=400, path_prefix=f"/api/stepdown-tray/{first}")
    second = _tid(lcs.request_stepdown(lcs.create_child()))
    await stack.publisher.poll_once()
    await _closed(stack, {second})
    bootstrap, topics = stack.settings.bootstrap_servers, stack.settings.topics

    [letter] = await list_dead_letters(bootstrap, topics)
    assert ("deliver", "TargetRefused", 1, first) == (
        letter.context["stage"],
        letter.context["error.class"],
        int(letter.context["attempts"]),
        letter.context["transfer.id"],
    )
    assert "open" == lcs.child(first_child)["record_state"]
    kcat = await asyncio.create_subprocess_exec(
        *[shutil.which("kcat") or "kcat", "-b", bootstrap, "-C", "-t", topics.dead_letter],
        *["-o", "beginning", "-e", "-q", "-f", "%h\n"],
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(kcat.communicate(), 30)
    assert 0 == kcat.returncode
    assert "casebridge.dlq.error.class=TargetRefused" in out.decode()
    assert f"casebridge.dlq.original.topic={topics.transfers}" in out.decode()

    with pytest.raises(ReplayRefused):
        await replay(bootstrap, topics, operator=None)
    dry = await replay(bootstrap, topics, operator="ops-tester", dry_run=True)
    assert ([letter.id], []) == (dry.selected, dry.replayed)
    await asyncio.sleep(2)
    assert [second] == [i["transfer_id"] for i in ehm.tray()]

    ehm.clear_faults()
    done = await replay(bootstrap, topics, operator="ops-tester")
    assert [letter.id] == done.replayed
    await _closed(stack, {first})
    again = await replay(bootstrap, topics, operator="ops-tester")
    assert ([], [letter.id]) == (again.replayed, again.already_replayed)
    await asyncio.sleep(2)
    assert sorted([first, second]) == sorted(i["transfer_id"] for i in ehm.tray())
    assert "closed" == lcs.child(first_child)["record_state"]


async def test_replay_that_fails_again_goes_to_parking_not_back_to_the_dead_letters(
    stack: Stack, systems: Systems
) -> None:
    """A replay whose cause is not fixed lands in the parking topic, once; the dead-letter topic is unchanged."""
    lcs, ehm = systems.lcs_client, systems.ehm_client
    first = _tid(lcs.request_stepdown(lcs.create_child()))
    ehm.inject_fault(status=400, path_prefix=f"/api/stepdown-tray/{first}")
    await stack.publisher.poll_once()
    bootstrap, topics = stack.settings.bootstrap_servers, stack.settings.topics
    await read(bootstrap, topics.dead_letter, lambda r: len(r) >= 1)

    await replay(bootstrap, topics, operator="ops-tester")
    parked = await read(bootstrap, topics.parking, lambda r: len(r) >= 1, timeout=30)

    assert 1 == len(parked)
    assert b"ops-tester" == dict(parked[0].headers)["casebridge.replay.operator"]
    assert 1 == len(await list_dead_letters(bootstrap, topics))
    assert [(first, "parked")] == [(r["transfer_id"], r["status"]) for r in await list_with_status(bootstrap, topics)]


async def test_lcs_publisher_waits_out_an_lcs_outage_and_then_publishes(stack: Stack, systems: Systems) -> None:
    """LCS answering 503 does not stop the publisher loop: it backs off, then publishes the waiting request."""
    request = systems.lcs_client.request_stepdown(systems.lcs_client.create_child())
    systems.lcs_client.inject_fault(status=503, count=3, path_prefix="/api/changes")
    await asyncio.wait_for(stack.publisher.run(0.1, stop=lambda: stack.publisher.published > 0), timeout=60)
    await _closed(stack, {_tid(request)})
