"""``casebridge demo``: a real end-to-end handover on a local Kafka with the sandbox systems.

Starts (or reuses) the local Apache Kafka broker, the sandbox LCS and EHM over HTTP,
the router, the LCS publisher and the EHM allocation reporter; creates synthetic children
with step-down requests, good ones and some that break North Somerset's rules; prints
what became of each, read back from the events topic and from the systems themselves.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from contracts import TransferEvent, parse_event
from router import Settings
from sandboxes import create_ehm_app, create_lcs_app, serve

from .scenarios import EhmSandboxClient, LcsSandboxClient
from .stack import Stack

TERMINAL = {"source-closed", "held", "dead-lettered"}


@dataclass
class Case:
    title: str
    child_id: str
    transfer_id: str
    expect: str
    events: list[TransferEvent] = field(default_factory=list)

    @property
    def state(self) -> str:
        done = [e.event_type for e in self.events if e.event_type in TERMINAL]
        return done[-1] if done else "in flight"


class EventWatch:
    """Reads the events topic into per-transfer timelines."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        self.by_transfer: dict[str, list[TransferEvent]] = {}

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def wait(self, cases: list[Case], done: Callable[[Case], bool], timeout: float = 60) -> None:
        """Read events until ``done`` holds for every case (or the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            for c in cases:
                c.events = self.by_transfer.get(c.transfer_id, [])
            if all(done(c) for c in cases) or time.monotonic() > deadline:
                return
            for records in (await self.consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    e = parse_event(r.value)
                    if e.transfer_id:
                        self.by_transfer.setdefault(e.transfer_id, []).append(e)


def _describe(case: Case, lcs: LcsSandboxClient, tray: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"- {case.title}", f"    child {case.child_id}, transfer {case.transfer_id}"]
    lines.append("    events: " + " -> ".join(e.event_type for e in case.events))
    item = tray.get(case.transfer_id)
    held = [e for e in case.events if e.event_type == "held"]
    completed = case.state == "source-closed"
    lines.append(f"    outcome: {'completed' if completed else 'HELD (dead letter kept for replay)'}")
    if held:
        verb = "was held" if completed else "held"
        for v in held[-1].violations:
            lines.append(f"    {verb} by {v.rule_id}: {v.message}\n      fix: {v.fix}")
    if item:
        lines.append(
            f"    EHM tray: {item['tray_item_id']} ({item['status']}), assigned to {item['assigned_to']['role']}"
        )
    else:
        lines.append("    EHM tray: nothing")
    lines.append(f"    LCS record: {lcs.child(case.child_id)['record_state']}")
    return lines


async def run_demo(bootstrap: str, out: Any = print) -> bool:
    """Run the demo against the broker at ``bootstrap``; returns whether every case ended as expected."""
    token = secrets.token_urlsafe(16)
    prefix = f"demo-{int(time.time())}"
    with (
        tempfile.TemporaryDirectory(prefix="casebridge-demo-") as work,
        serve(create_lcs_app(Path(work) / "lcs.db", token), "127.0.0.1", 0) as lcs_server,
        serve(create_ehm_app(Path(work) / "ehm.db", token), "127.0.0.1", 0) as ehm_server,
    ):
        out(
            f"sandbox LCS at {lcs_server.url}, sandbox EHM at {ehm_server.url}, Kafka at {bootstrap}, topics {prefix}.*"
        )
        lcs, ehm = LcsSandboxClient(lcs_server.url, token), EhmSandboxClient(ehm_server.url, token)
        settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, group_id=f"{prefix}-router")
        stack = Stack(
            settings, lcs_server.url, SecretStr(token), ehm_server.url, SecretStr(token), Path(work) / "state"
        )
        watch = EventWatch(bootstrap, settings.topics.events)
        async with stack:
            await watch.start()
            try:
                cases = _scenarios(lcs, ehm)
                await watch.wait(cases, lambda c: c.state in TERMINAL)
                reopened = [c for c in cases if "closed out of band" in c.title]
                for c in reopened:
                    out(f"... reopening {c.child_id} on LCS (the held NS-7 transfer should now complete)")
                    lcs.reopen(c.child_id)
                await watch.wait(reopened, lambda c: "source-closed" in [e.event_type for e in c.events])
                tray = {i["transfer_id"]: i for i in ehm.tray()}
                out("")
                for c in cases:
                    out("\n".join(_describe(c, lcs, tray)))
                ok = all(c.state == c.expect for c in cases)
                out("")
                out(f"{sum(c.state == c.expect for c in cases)} of {len(cases)} cases ended as expected")
                return ok
            finally:
                await watch.stop()
                lcs.close()
                ehm.close()


def _scenarios(lcs: LcsSandboxClient, ehm: EhmSandboxClient) -> list[Case]:
    def tid(request_id: str) -> str:
        return f"north-somerset-lcs-{request_id}".lower()

    cases = []
    child = lcs.create_child(locality="North")
    cases.append(Case("good step-down, North", child, tid(lcs.request_stepdown(child)), "source-closed"))
    ehm.set_away("East", True)
    child = lcs.create_child(locality="East")
    cases.append(
        Case(
            "good step-down, East, Support Leader away (NS-2)", child, tid(lcs.request_stepdown(child)), "source-closed"
        )
    )
    child = lcs.create_child(locality="South")
    cases.append(Case("missing plan (NS-6, NS-8)", child, tid(lcs.request_stepdown(child, plan=None)), "dead-lettered"))
    child = lcs.create_child(locality="North")
    cases.append(
        Case("no consent recorded (G1)", child, tid(lcs.request_stepdown(child, consent=None)), "dead-lettered")
    )
    child = lcs.create_child(locality="South")
    cases.append(
        Case(
            "no management decision (NS-1)",
            child,
            tid(lcs.request_stepdown(child, management_decision=None)),
            "dead-lettered",
        )
    )
    child = lcs.create_child(locality="East")
    request = lcs.request_stepdown(child)
    lcs.close_record(child)
    cases.append(Case("LCS record closed out of band before the transfer (NS-7)", child, tid(request), "source-closed"))
    child = lcs.create_child(locality="North")
    req = lcs.request_stepdown(
        child, target_level="universal", family_hub_universal=True, meeting_notes=None, plan=None
    )
    cases.append(Case("supported step-down to universal in a Family Hub (NS-14)", child, tid(req), "source-closed"))
    return cases
