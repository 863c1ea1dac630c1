"""``casebridge demo``: real end-to-end handovers on a local Kafka with the sandbox systems.

Starts (or reuses) the local Apache Kafka broker, the sandbox LCS and EHM over HTTP,
the router, the LCS publisher and the EHM allocation reporter; creates synthetic children
with step-down requests, good ones and some that break North Somerset's rules; then one
flow per other council (Swindon 2026 and 2022, Luton, Barnsley) and a North Somerset
step-up that the Front Door then accepts on LCS (NS-12), and a Luton step-up whose early-help record the
closure scheduler closes 10 days later (LU-4; the demo moves the scheduler's clock on instead of waiting,
and says so). Care Director and TED are sandboxes over HTTP and the team mailboxes a STARTTLS SMTP
relay; two ends stay in memory (see ``StandIns``). Prints what became of each, read back from the events topic and
from the systems themselves.
"""

from __future__ import annotations

import email
import json
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr

from connectors import Receipt, Source, Target
from connectors.care_director import CareDirectorConnector
from connectors.mailbox import MailboxConnector, MailboxSettings
from connectors.memory import MemorySource, MemoryTarget
from connectors.ted import TedConnector, TedPublisher
from connectors.ted import transfer_id_for as ted_transfer_id
from contracts import CaseSystem, Council, TransferEvent, TransferMessage, parse_event
from router import Settings
from sandboxes import SmtpSandbox, create_care_director_app, create_ehm_app, create_lcs_app, create_ted_app, serve

from .registry import EhmSystem, LcsSystem
from .scenarios import EhmSandboxClient, LcsSandboxClient, step_down, step_up, synthetic_child
from .secrets import SecretRef
from .stack import Stack

TERMINAL = {"source-closed", "source-kept-open", "held", "dead-lettered"}


class _Ted(MemoryTarget):
    system: ClassVar[CaseSystem] = CaseSystem.TED


class _MailboxSource(MemorySource):
    """The early-help team whose mailbox a Luton step-up comes from; remembers the closure reason."""

    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX

    def __init__(self) -> None:
        super().__init__()
        self.closures: dict[str, str] = {}

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        self.closures[transfer.source_record.record_id] = transfer.closure.reason if transfer.closure else "closed"
        return await super().close(transfer, receipt)


@dataclass
class StandIns:
    """The two in-memory ends the demo still needs: TED receiving a step-up referral, and a team mailbox as
    the source of a step-up (Care Director, TED as a source, and sending mail are the real sandboxes)."""

    ted: _Ted = field(default_factory=_Ted)
    mailbox_source: _MailboxSource = field(default_factory=_MailboxSource)

    def targets(self) -> dict[CaseSystem, Target]:
        return {CaseSystem.TED: self.ted}

    def sources(self) -> dict[CaseSystem, Source]:
        return {CaseSystem.MAILBOX: self.mailbox_source}

    def closure(self, record_id: str) -> str | None:
        return self.mailbox_source.closures.get(record_id)


class DemoClock:
    """The closure scheduler's clock in the demo: real time, moved on by hand to show LU-4's 10 days pass."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@dataclass
class Case:
    title: str
    child_id: str
    transfer_id: str
    expect: str
    events: list[TransferEvent] = field(default_factory=list)
    #: where to look for the result: "ns" (EHM tray + LCS record), "contact" (LCS Front Door + EHM
    #: episode), "tray" (EHM tray + LCS closure reason), "memory" (stand-in systems)
    kind: str = "ns"

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


def _describe(
    case: Case, lcs: LcsSandboxClient, ehm: EhmSandboxClient, tray: dict[str, dict[str, Any]], mem: StandIns
) -> list[str]:
    lines = [f"- {case.title}", f"    child {case.child_id}, transfer {case.transfer_id}"]
    lines.append("    events: " + " -> ".join(e.event_type for e in case.events))
    held = [e for e in case.events if e.event_type == "held"]
    done = case.state in ("source-closed", "source-kept-open")
    lines.append(f"    outcome: {'completed' if done else 'HELD (dead letter kept for replay)'}")
    if held:
        verb = "was held" if done else "held"
        for v in held[-1].violations:
            lines.append(f"    {verb} by {v.rule_id}: {v.message}\n      fix: {v.fix}")
    for e in case.events:
        if e.event_type == "delivered":
            rules = ", ".join(e.rule_ids) or "-"
            lines.append(
                f"    delivered to {e.target_system.value}"
                + (f", team {e.team}" if e.team else "")
                + f", as {e.assigned_role}"
                + (" (URGENT)" if e.urgent else "")
                + f"; routing rules: {rules}"
            )
        elif e.event_type == "notice-sent":
            lines.append(f"    {e.notice} notice to {', '.join(e.recipients)} ({', '.join(e.rule_ids)})")
        elif e.event_type == "source-kept-open":
            lines.append(f"    source record kept open ({', '.join(e.rule_ids)})")
        elif e.event_type == "front-door-decision":
            lines.append(f"    Front Door decision on LCS: {e.decision} ({', '.join(e.rule_ids)})")
        elif e.event_type == "source-closed" and e.rule_ids:
            lines.append(f"    source record closed later ({', '.join(e.rule_ids)})")
    if case.kind == "ns":
        item = tray.get(case.transfer_id)
        if item:
            lines.append(
                f"    EHM tray: {item['tray_item_id']} ({item['status']}), assigned to {item['assigned_to']['role']}"
            )
        else:
            lines.append("    EHM tray: nothing")
        lines.append(f"    LCS record: {lcs.child(case.child_id)['record_state']}")
    elif case.kind == "tray":
        record = lcs.child(case.child_id)
        lines.append(f"    LCS record: {record['record_state']}, closure reason {record['closure_reason']!r}")
    elif case.kind == "contact":
        contact = lcs.contact(case.transfer_id)
        lines.append(f"    LCS Front Door: {contact['contact_id']} as a {contact['stage']}, urgent={contact['urgent']}")
        episode = ehm.episode(case.child_id)
        lines.append(
            f"    EHM episode: {episode['status']}"
            + (f" ({episode['closure_reason']})" if episode["closure_reason"] else "")
        )
    else:
        closure = mem.closure(case.child_id)
        if closure:
            lines.append(f"    source closure record: {closure!r}")
    return lines


async def run_demo(bootstrap: str, out: Any = print) -> bool:
    """Run the demo against the broker at ``bootstrap``; returns whether every case ended as expected."""
    token = secrets.token_urlsafe(16)
    prefix = f"demo-{int(time.time())}"
    with (
        tempfile.TemporaryDirectory(prefix="casebridge-demo-") as work,
        serve(create_lcs_app(Path(work) / "lcs.db", token), "127.0.0.1", 0) as lcs_server,
        serve(create_ehm_app(Path(work) / "ehm.db", token), "127.0.0.1", 0) as ehm_server,
        serve(create_ted_app(Path(work) / "ted.db", token), "127.0.0.1", 0) as ted_server,
        serve(create_care_director_app(Path(work) / "cd.db", token), "127.0.0.1", 0) as cd_server,
        SmtpSandbox(Path(work) / "smtp", "casebridge", token) as relay,
    ):
        out(
            f"sandbox LCS at {lcs_server.url}, sandbox EHM at {ehm_server.url}, Kafka at {bootstrap}, topics {prefix}.*"
        )
        lcs, ehm = LcsSandboxClient(lcs_server.url, token), EhmSandboxClient(ehm_server.url, token)
        settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, group_id=f"{prefix}-router")
        mem = StandIns()
        clock = DemoClock()
        records = _Records(ted_server.url, cd_server.url, token)
        mail = MailboxSettings(
            host="127.0.0.1",
            port=relay.port,
            username="casebridge",
            password=SecretStr(token),
            sender="casebridge@council.example",
            ca_file=relay.ca_file,
            mailboxes=DEMO_MAILBOXES,
        )
        out(f"sandbox TED at {ted_server.url}, Care Director at {cd_server.url}, SMTP relay on port {relay.port}")
        secret = SecretRef.given(token)
        stack = Stack(
            settings,
            Path(work) / "state",
            systems={
                "lcs": LcsSystem(url=lcs_server.url, token=secret),
                "ehm": EhmSystem(url=ehm_server.url, token=secret),
            },
            extra_targets={**mem.targets(), CaseSystem.MAILBOX: MailboxConnector(mail)},
            extra_sources={
                **mem.sources(),
                CaseSystem.TED: TedConnector(ted_server.url, SecretStr(token)),
                CaseSystem.CARE_DIRECTOR: CareDirectorConnector(cd_server.url, SecretStr(token)),
            },
            extra_publishers=[
                TedPublisher(
                    TedConnector(ted_server.url, SecretStr(token)),
                    bootstrap,
                    settings.topics.transfers,
                    settings.topics.dead_letter,
                    Path(work) / "state" / "ted-cursor.json",
                )
            ],
            clock=clock,
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
                councils = await _councils(lcs, ehm, records, settings)
                await watch.wait(councils, lambda c: c.state in TERMINAL)
                # NS-12: the Front Door manager accepts the step-up on LCS; only then does the EHM episode close
                for c in councils:
                    if c.kind == "contact" and c.expect == "source-closed":
                        out(f"... the Front Door accepts {c.transfer_id} on LCS (NS-12: only now does EHM close)")
                        decision = {"decision": "accepted", "decided_by": "Front Door manager (demo)"}
                        lcs.http.post(f"/api/contacts/{c.transfer_id}/decision", json=decision).raise_for_status()
                await watch.wait(councils, lambda c: c.state == c.expect)
                # LU-9: a Luton step-up after the step-down completed goes back to the team that stepped down
                later = await _luton_step_up(settings)
                await watch.wait(later, lambda c: c.state in TERMINAL)
                # LU-4: early help closes 10 days after social care accepted; the demo moves the scheduler's clock
                out("... moving the closure scheduler's clock 10 days on (demo only: LU-4 closes after 10 days)")
                clock.ahead = timedelta(days=10, minutes=1)
                await watch.wait(later, lambda c: c.state == c.expect)
                cases += councils + later
                tray = {i["transfer_id"]: i for i in ehm.tray()}
                out("")
                for c in cases:
                    out("\n".join(_describe(c, lcs, ehm, tray, mem)))
                ok = all(c.state == c.expect for c in cases)
                sent = sorted(str(email.message_from_bytes(m)["To"]) for m in relay.messages())
                out("")
                out(f"team mailboxes (SMTP, STARTTLS) received {len(sent)} mails: {', '.join(sent)}")
                out(f"{sum(c.state == c.expect for c in cases)} of {len(cases)} cases ended as expected")
                return ok
            finally:
                await watch.stop()
                lcs.close()
                ehm.close()
                records.close()


async def _publish(settings: Settings, *docs: dict[str, Any]) -> None:
    """Publish canonical transfers keyed by child, as a source connector does."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for doc in docs:
            first = doc["child"]["identifiers"][0]
            key = f"{first['system']}:{first['id']}".encode()
            await producer.send_and_wait(settings.topics.transfers, json.dumps(doc).encode(), key=key)
    finally:
        await producer.stop()


DEMO_MAILBOXES = {
    "swindon-2022:Early Help Hub": "ehhub@swindon.example",
    "swindon-2022:MASH": "mash@swindon.example",
    "luton:Early Help Team": "earlyhelp-team@luton.example",
    "luton:Family Safeguarding Team": "family-safeguarding@luton.example",
    "luton:MASH": "mash@luton.example",
    "barnsley:Family Centre Development Team": "earlyhelp@barnsley.example",
}


class _Records:
    """Creates the synthetic source records on the TED and Care Director sandboxes."""

    def __init__(self, ted_url: str, cd_url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        self.ted = httpx.Client(base_url=ted_url, headers=headers, timeout=10)
        self.cd = httpx.Client(base_url=cd_url, headers=headers, timeout=10)

    def _child(self) -> dict[str, Any]:
        c = synthetic_child()
        return {k: c[k] for k in ("given_name", "family_name", "date_of_birth")}

    def ted_case(self) -> str:
        return str(self.ted.post("/api/cases", json=self._child()).raise_for_status().json()["id"])

    def ted_stepdown_request(self, reason_code: str) -> tuple[str, str]:
        """A TED case and the social worker's step-down request on it (TED's feed announces it)."""
        case_id = self.ted_case()
        doc = step_down("barnsley")
        decision = doc["management_decision"]
        lead = doc["professionals"]["lead_professional"]
        request = {
            "reason_code": reason_code,
            "purpose": doc["purpose"],
            "decided_by": decision["decided_by"],
            "decided_on": decision["decided_on"],
            "rationale": decision["rationale"],
            "lead_professional": {"name": lead["name"], "organisation": lead["organisation"]},
            "consent": doc["consent"],
            "documents": [{"type": d["type"], "content": d["content"]} for d in doc["documents"]],
            "requested_by": "Social worker (synthetic)",
        }
        r = self.ted.post(f"/api/cases/{case_id}/stepdown-requests", json=request).raise_for_status()
        return case_id, str(r.json()["request_id"])

    def cd_person(self) -> str:
        return str(self.cd.post("/api/persons", json=self._child()).raise_for_status().json()["id"])

    def close(self) -> None:
        self.ted.close()
        self.cd.close()


def _on(doc: dict[str, Any], system: str, record_id: str) -> dict[str, Any]:
    doc["child"]["identifiers"] = [{"system": system, "id": record_id}]
    doc["source_record"]["record_id"] = record_id
    return doc


async def _councils(lcs: LcsSandboxClient, ehm: EhmSandboxClient, records: _Records, settings: Settings) -> list[Case]:
    """One flow (or two) per council beyond North Somerset's step-downs."""
    cases: list[Case] = []
    docs: list[dict[str, Any]] = []

    def add(title: str, doc: dict[str, Any], expect: str, kind: str = "memory", record: str | None = None) -> None:
        docs.append(doc)
        cases.append(Case(title, record or doc["source_record"]["record_id"], doc["transfer_id"], expect, kind=kind))

    # Swindon 2026: LCS -> EHM step-down to the Lead Practitioner; EHM -> LCS step-up as an endorsed referral
    child = lcs.create_child(locality="North")
    down = step_down("swindon", 101)
    down["child"].update(identifiers=[{"system": "lcs", "id": child}], locality="North")
    # the demo's LCS publisher is North Somerset's and publishes this LCS request too: without a plan on LCS its
    # North Somerset copy is always held (NS-8) and never closes the record, so this Swindon transfer is not held
    # by a record the copy closed first (NS-7; a race the demo used to lose now and then)
    down["source_record"].update(record_id=child, request_id=lcs.request_stepdown(child, plan=None))
    down["documents"].append({"type": "meeting-notes", "content": "Transfer Meeting notes (synthetic)."})
    add("Swindon 2026 step-down LCS -> EHM, Lead Practitioner (SW26-4..7)", down, "source-closed", "tray", child)
    episode = ehm.open_episode(locality="North")
    up = step_up("swindon", 102, urgency="urgent")
    up["child"]["identifiers"] = [{"system": "ehm", "id": episode}]
    up["source_record"]["record_id"] = episode
    add("Swindon 2026 step-up EHM -> LCS, Duty Manager endorsed (SW26-1..3)", up, "source-kept-open", "contact")
    # Swindon 2022: Care Director -> the mailbox the assessment outcome selects; s.47 step-up to the MASH
    add(
        "Swindon 2022 step-down, outcome 'Refer to EHH Service' (SW22-7, SW22-11)",
        _on(step_down("swindon-2022", 103), "care-director", records.cd_person()),
        "source-closed",
    )
    s47 = _on(step_up("swindon-2022", 104), "care-director", records.cd_person())
    s47["pathway"].update(from_level="intensive-early-help", to_level="child-protection-s47")
    s47["management_decision"]["forum"] = "Transfer Meeting"
    add("Swindon 2022 s.47 step-up from FISS to the MASH (SW22-1, SW22-6)", s47, "source-kept-open")
    # Luton: Family Safeguarding step-down ratified at the CIN Panel, receipt notice (LU-6, LU-7)
    add("Luton step-down from Family Safeguarding (LU-6, LU-7)", step_down("luton", 105), "source-closed")
    # Barnsley: the step-downs start from TED's request feed (the TED publisher) -> early-help mailbox;
    # one coded "monitoring" is held by the protocol (BA-5)
    for title, reason, expect in (
        ("Barnsley step-down from TED's feed -> early-help mailbox (BA-5..7, BA-15)", "SD-EHS", "source-closed"),
        ("Barnsley step-down coded 'monitoring' on TED (held: BA-5)", "SD-MON", "dead-lettered"),
    ):
        case_id, request_id = records.ted_stepdown_request(reason)
        cases.append(Case(title, case_id, ted_transfer_id(Council.BARNSLEY, request_id), expect, kind="memory"))
    # North Somerset: EHM -> LCS Front Door step-up, EHM episode closed with a case note (NS-9, NS-12)
    episode = ehm.open_episode(locality="East")
    ns = step_up("north-somerset", 108)
    ns["child"]["identifiers"] = [{"system": "ehm", "id": episode}]
    ns["source_record"]["record_id"] = episode
    add("North Somerset step-up EHM -> LCS Front Door, accepted there (NS-9, NS-12)", ns, "source-closed", "contact")
    await _publish(settings, *docs)
    return cases


async def _luton_step_up(settings: Settings) -> list[Case]:
    up = step_up("luton", 109, requested_at="2026-12-20T09:00:00Z")
    up["child"]["identifiers"].append(step_down("luton", 105)["child"]["identifiers"][0])
    await _publish(settings, up)
    return [
        Case(
            "Luton step-up 7 weeks after its step-down: back to that team (LU-9), early help closes 10 days on (LU-4)",
            up["source_record"]["record_id"],
            up["transfer_id"],
            "source-closed",
            kind="memory",
        )
    ]


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
