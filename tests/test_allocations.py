"""An allocation an operator records (router/allocations.py): one mechanism for LU-7, SW22-10 and BA-9.

The broker, the router, the notices loop and the closure scheduler are real; the team mailboxes and Care Director are
in-memory stand-ins that, like a real team mailbox, cannot say whom they allocated. BA-9 (TED) is
tests/test_ted_publisher_e2e.py's. All names are synthetic.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from casebridge.cli import app as cli_app
from casebridge.stack import Stack
from connectors import Source, Target
from connectors.memory import MemoryTarget
from contracts import CaseSystem, NoticeSent, Person, SourceClosed, TransferEvent
from router import Settings
from router.allocations import AllocationNotPending, AllocationRefused, allocate
from router.closures import KnowsAllocation
from router.lifecycle import Lifecycle
from router.notices import AllocationNotices
from router.settings import RetrySettings
from tests.council_data import step_down
from tests.monitor_support import OPERATOR_NAME, OPERATOR_TOKEN, VIEWER_TOKEN, auth, running_monitor
from tests.support import (
    CareDirector,
    MailboxSource,
    Systems,
    events_until,
    read,
    send_transfer,
)

WORKER = Person(name="Robin Madeup", role="Family Support Worker", organisation="Example Early Help Team")


class Mailbox(MemoryTarget):
    """A team mailbox: it holds what it is sent, and cannot say whom its team allocated."""

    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str, retry_settings: RetrySettings) -> Settings:
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
    )


@pytest.fixture
def parts() -> dict[str, Any]:
    return {"mailbox": Mailbox(), "mailbox_source": MailboxSource(), "care_director": CareDirector()}


def _stack(settings: Settings, systems: Systems, state: Path, parts: dict[str, Any]) -> Stack:
    targets: dict[CaseSystem, Target] = {CaseSystem.MAILBOX: parts["mailbox"]}
    sources: dict[CaseSystem, Source] = {
        CaseSystem.MAILBOX: parts["mailbox_source"],
        CaseSystem.CARE_DIRECTOR: parts["care_director"],
    }
    return Stack(
        settings,
        state,
        systems=systems.deployed(),
        loops=False,
        extra_targets=targets,
        extra_sources=sources,
    )


async def _all(settings: Settings, topic: str) -> bytes:
    """Every value on ``topic`` now, joined (to look for a name that must not be there)."""
    return b"".join(r.value or b"" for r in await read(settings.bootstrap_servers, topic, lambda r: False, timeout=3))


def _allocate_cli(settings: Settings, tid: str, *operator: str) -> Any:
    where = ["--bootstrap", settings.bootstrap_servers, "--prefix", settings.topic_prefix]
    args = ["allocate", tid, "--worker", WORKER.name, "--organisation", str(WORKER.organisation), *operator, *where]
    return CliRunner().invoke(cli_app, args)


async def _poll_notices(notices: AllocationNotices, until: int = 1, tries: int = 40) -> int:
    sent = 0
    for _ in range(tries):
        sent += await notices.poll_once()
        if sent >= until:
            break
    return sent


def _allocation_notices(events: list[TransferEvent]) -> list[NoticeSent]:
    return [e for e in events if isinstance(e, NoticeSent) and e.notice == "allocation"]


async def test_lu07_a_recorded_allocation_sends_the_allocation_notice_once_across_a_notices_restart(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """LU-7, Luton step-down to the Early Help Team mailbox: the receipt notice goes at once; no allocation notice
    until an operator records the allocation (``casebridge allocate``); the lifecycle loop reads it while the channel
    is down and restarts: the allocation notice then goes exactly once, and again nothing after another restart."""
    down = step_down("luton", 61)
    tid = down["transfer_id"]
    mailbox: Mailbox = parts["mailbox"]
    async with _stack(settings, systems, tmp_path / "state", parts) as stack:
        await send_transfer(settings, down)
        events = await events_until(settings, tid, "notice-sent", "source-closed")
        assert ["receipt"] == [e.notice for e in events if isinstance(e, NoticeSent)]
        assert 0 == sum([await stack.notices.poll_once() for _ in range(3)])  # not allocated: no notice
        assert f"{tid}-notice-allocation" not in mailbox.items

        mailbox.unavailable[f"{tid}-notice-allocation"] = 1  # the channel is down for the first try
        recorded = await asyncio.to_thread(_allocate_cli, settings, tid, "--operator", "ops-luton-1")
        said = recorded.stdout.strip().splitlines()[-1]
        assert (0, f"recorded: {tid} (LU-7)") == (recorded.exit_code, said.split(";")[0])
        for _ in range(40):  # the notices step reads the allocation; the notice cannot go yet
            await stack.lifecycle.poll_once()  # and the closures step emits the recorded allocation's ``allocated``
            if tid in stack.notices.marks:
                break
        assert tid in stack.notices.marks and f"{tid}-notice-allocation" not in mailbox.items
    for _ in range(2):  # the lifecycle loop restarted, twice
        lifecycle = Lifecycle(settings, {}, {CaseSystem.MAILBOX: mailbox})
        await lifecycle.start()
        try:
            await _poll_notices(lifecycle.notices)
            assert 0 == sum([await lifecycle.notices.poll_once() for _ in range(3)])
        finally:
            await lifecycle.stop()

    events = await events_until(settings, tid, "allocated", "notice-sent")
    [notice] = _allocation_notices(events)
    assert (["social_worker", "manager"], ["LU-7"]) == (notice.recipients, notice.rule_ids)
    assert [tid, f"{tid}-notice-receipt", f"{tid}-notice-allocation"] == mailbox.order
    [audit] = await read(settings.bootstrap_servers, settings.topics.audit, lambda rs: len(rs) >= 1, timeout=30)
    record = json.loads(audit.value or b"")
    assert ("ops-luton-1", tid, ["LU-7"], "luton", WORKER.organisation) == (
        record["operator"],
        record["transfer_id"],
        record["rule_ids"],
        record["council"],
        record["organisation"],
    )
    for topic in (settings.topics.events, settings.topics.audit):
        assert WORKER.name.encode() not in await _all(settings, topic)
    # the notice has gone: nothing is pending that an allocation serves
    refused = await asyncio.to_thread(_allocate_cli, settings, tid, "--operator", "ops-luton-1")
    [said] = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert (2, True) == (refused.exit_code, "nothing pending that an allocation serves" in said)


async def test_sw22_10_sw22_11_an_allocation_recorded_on_the_monitor_closes_care_director_naming_the_worker(
    settings: Settings, systems: Systems, tmp_path: Path, parts: dict[str, Any]
) -> None:
    """SW22-10, Swindon 2022 step-down to the Early Help Hub mailbox with no worker named: Care Director stays open;
    a viewer cannot record the allocation (403); an operator records it on the monitor's API, and the closure record
    (SW22-11) names that worker as the receiving worker, without asking the mailbox (which cannot say)."""
    assert not isinstance(parts["mailbox"], KnowsAllocation)
    down = step_down("swindon-2022", 62)
    down["professionals"] = {}
    tid = down["transfer_id"]
    url = f"/api/transfers/{tid}/allocation"
    body = {"worker": WORKER.name, "organisation": WORKER.organisation}
    async with _stack(settings, systems, tmp_path / "state", parts) as stack:
        await send_transfer(settings, down)
        kept = await events_until(settings, tid, "source-kept-open")
        assert ["SW22-10"] == next(e for e in kept if e.event_type == "source-kept-open").rule_ids  # type: ignore[union-attr]
        assert 0 == sum([await stack.closures.poll_once() for _ in range(3)])  # nobody named: still open
        with running_monitor(settings.bootstrap_servers, settings.topic_prefix, tmp_path / "m.sqlite3") as (web, _):
            async with httpx.AsyncClient(base_url=web.url, timeout=60) as client:
                viewer = await client.post(url, json=body, headers=auth(VIEWER_TOKEN))
                with capture_logs() as logs:
                    recorded = await client.post(url, json=body, headers=auth(OPERATOR_TOKEN))
        assert 403 == viewer.status_code
        assert (201, ["SW22-10"], True) == (
            recorded.status_code,
            recorded.json()["rule_ids"],
            recorded.json()["closure_due"],
        )
        assert WORKER.name not in recorded.text and WORKER.name not in json.dumps(logs, default=str)
        closed = 0
        for _ in range(20):
            closed += await stack.closures.poll_once()
            if closed:
                break
        assert 1 == closed
        assert 0 == sum([await stack.closures.poll_once() for _ in range(3)])  # once

    given = parts["care_director"].given[down["source_record"]["record_id"]]
    assert WORKER == given.professionals.family_support_worker
    assert given.closure is not None and ["SW22-11"] == given.closure.rule_ids
    events = await events_until(settings, tid, "allocated", "source-closed")
    [closed_event] = [e for e in events if isinstance(e, SourceClosed)]
    assert ["SW22-10"] == closed_event.rule_ids
    assert not [e for e in events if e.event_type in ("dead-lettered", "alert")]
    [audit] = await read(settings.bootstrap_servers, settings.topics.audit, lambda rs: len(rs) >= 1, timeout=30)
    record = json.loads(audit.value or b"")
    assert (f"allocation/{tid}".encode(), OPERATOR_NAME, ["SW22-10"], "swindon-2022") == (
        audit.key,
        record["operator"],
        record["rule_ids"],
        record["council"],
    )
    for topic in (settings.topics.events, settings.topics.audit):
        assert WORKER.name.encode() not in await _all(settings, topic)


async def test_an_allocation_for_a_transfer_with_nothing_pending_or_without_an_operator_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    """Nothing pending (no closure and no notice waiting for an allocation): refused with one line, nothing written
    (no audit record, no event); on the monitor the same refusal is a 409. Without an operator: refused too."""
    with pytest.raises(AllocationNotPending, match=r"^transfer_id: 'nobody-1' has nothing pending"):
        await allocate(settings.bootstrap_servers, settings.topics, "nobody-1", WORKER, "ops-1")
    with pytest.raises(AllocationRefused, match=r"^operator: required"):
        await allocate(settings.bootstrap_servers, settings.topics, "nobody-1", WORKER, " ")
    with running_monitor(settings.bootstrap_servers, settings.topic_prefix, tmp_path / "m.sqlite3") as (web, _):
        async with httpx.AsyncClient(base_url=web.url, timeout=60) as client:
            answer = await client.post(
                "/api/transfers/nobody-1/allocation",
                json={"worker": WORKER.name, "organisation": WORKER.organisation},
                headers=auth(OPERATOR_TOKEN),
            )
    assert (409, True) == (answer.status_code, "nothing pending" in answer.json()["detail"])
    assert b"" == await _all(settings, settings.topics.audit)
    assert b"" == await _all(settings, settings.topics.events)
