"""``casebridge demo``: each seed council deployed the way a council deploys it, and its handovers run for real.

For each of the five councils the demo starts that council's sandbox systems (LCS, EHM, Care Director, TED, a
STARTTLS SMTP relay for the team mailboxes), writes a deployment file for them and runs
``casebridge run --config FILE`` on it as a process of its own (``casebridge/localdeploy.py``). It then does only
what people do: a social worker or an early-help manager uses a case system's HTTP API, a team's form posts a
transfer to the intake, an operator runs the ``casebridge`` CLI (``casebridge allocate``); and it reads back what
happened from the council's events topic, the case systems and the relay's Maildir. No router is built in this
process and no clock is moved: what the protocol does later (Luton's LU-4 closure 10 days on) is said, not shown.

Every council has its own topic prefix, so no router sees another council's transfers.
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any, TypeVar

from connectors.care_director import transfer_id_for as cd_transfer_id
from connectors.ehm import stepup_transfer_id
from connectors.ted import transfer_id_for as ted_transfer_id
from contracts import Council, TransferEvent, wire

from .localdeploy import LocalDeployment, deployed
from .scenarios import (
    CareDirectorSandboxClient,
    EhmSandboxClient,
    LcsSandboxClient,
    TedSandboxClient,
    _SandboxClient,
    on_record,
    s47_step_up,
    step_down,
    step_up,
)

C = TypeVar("C", bound=_SandboxClient)
#: the events after which nothing more happens to a transfer unless someone acts
TERMINAL = {"source-closed", "source-kept-open", "held", "dead-lettered"}
#: short retry tiers, so what a target refuses or a rule holds settles in seconds (a council's own are longer)
QUICK_RETRY = {"attempts": 2, "initial_seconds": 0.05, "max_seconds": 0.2, "total_seconds": 2.0, "tiers": [3.0, 6.0]}
#: how long the demo waits for one step of a case before it calls the case not as expected
STEP_TIMEOUT = 45.0
#: what a fresh topic makes aiokafka log for a second (not why a case went wrong)
_NOISE = re.compile(r"NotLeaderForPartition|Marking the coordinator dead|GroupCoordinatorNotAvailable")
_RULE = re.compile(r"\b(?:NS|SW26|SW22|LU|BA)-\d+\b|\bG\d+\b")

COUNCILS = {
    "north-somerset": "North Somerset (LCS -> EHM, EHM -> LCS Front Door)",
    "swindon": "Swindon 2026 (LCS <-> EHM)",
    "swindon-2022": "Swindon 2022 (Care Director, team mailboxes, the intake)",
    "luton": "Luton (the intake, team mailboxes)",
    "barnsley": "Barnsley (TED, the early-help mailbox, the intake)",
}


@dataclass(eq=False)
class Case:
    """One transfer the demo makes, what it should end as, and where to look for where it landed."""

    title: str
    transfer_id: str
    #: the last of ``TERMINAL`` its timeline should reach
    expect: str
    #: other events its timeline must have (e.g. the LU-7 allocation notice, NS-14's completed-no-record)
    also: tuple[str, ...] = ()
    #: rule ids the hold or dead letter must name
    rules: tuple[str, ...] = ()
    #: lines saying where it landed, read from the systems (and whether that is as expected)
    landed: Callable[[], tuple[list[str], bool]] | None = None
    #: what the demo did to it along the way, and what it does not wait for
    notes: list[str] = field(default_factory=list)
    #: the transfer never reaches the router: look for it on the dead-letter topic (its context headers)
    dead_letter_only: bool = False
    dead_letter: dict[str, str] | None = None
    events: list[TransferEvent] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    where_ok: bool = True

    @property
    def types(self) -> list[str]:
        return [e.event_type for e in self.events]

    @property
    def state(self) -> str:
        if self.dead_letter is not None and not self.events:
            return "dead-lettered"  # dead-lettered by the source's publisher, before the router saw it
        done = [t for t in self.types if t in TERMINAL]
        return done[-1] if done else "in flight"

    @property
    def named_rules(self) -> set[str]:
        found: set[str] = set()
        for e in self.events:
            if e.event_type == "held":
                found |= {v.rule_id for v in e.violations}
            elif e.event_type == "dead-lettered":
                found |= set(e.rule_ids) | set(_RULE.findall(e.reason))
        if self.dead_letter is not None:
            found |= set(_RULE.findall(self.dead_letter.get(wire.DLQ_ERROR_MESSAGE, "")))
        return found

    @property
    def settled(self) -> bool:
        """Its timeline has reached what it should (whether or not the systems agree)."""
        return self.state == self.expect and all(self.types.count(t) >= n for t, n in Counter(self.also).items())

    @property
    def ok(self) -> bool:
        return self.settled and set(self.rules) <= self.named_rules and self.where_ok


@dataclass
class CouncilRun:
    council: str
    prefix: str
    cases: list[Case] = field(default_factory=list)
    mails: list[str] = field(default_factory=list)
    error: str | None = None


class Play:
    """What the demo does on one council's deployment: the cases it made, waited on step by step."""

    def __init__(self, d: LocalDeployment, out: Callable[[str], Any]) -> None:
        self.d = d
        self.out = out
        self.cases: list[Case] = []
        self.clients: list[_SandboxClient] = []

    def client(self, kind: type[C], system: str) -> C:
        """A person's client of the deployment's sandbox ``system`` (closed when the council is done)."""
        made = kind(self.d.systems.urls[system], self.d.systems.token)
        self.clients.append(made)
        return made

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def add(self, case: Case) -> Case:
        self.cases.append(case)
        return case

    def post(self, title: str, doc: dict[str, Any], expect: str, *notes: str) -> tuple[Case, int]:
        """A team's form posts ``doc`` to the intake: the case it becomes, and the intake's HTTP status."""
        status = self.d.post(doc).status_code
        note = f"posted by the team's form to the intake: HTTP {status}"
        return self.add(Case(title, doc["transfer_id"], expect, notes=[note, *notes])), status

    async def wait(self, wanted: Mapping[Case, str], timeout: float = STEP_TIMEOUT) -> bool:
        """Read the events topic until each case has its event (or the timeout); whether all did."""
        by = await self.d.events.until({c.transfer_id: kind for c, kind in wanted.items()}, timeout)
        for c in self.cases:
            c.events = list(by.get(c.transfer_id, []))
        return all(kind in c.types for c, kind in wanted.items())

    async def settle(self, timeout: float = STEP_TIMEOUT) -> None:
        """Wait for every case's expected end, then read where each landed."""
        deadline = time.monotonic() + timeout
        on_events = [c for c in self.cases if not c.dead_letter_only]
        while not all(c.settled for c in on_events) and time.monotonic() < deadline:
            by = await self.d.events.until({"": "-"}, 0.3)  # nothing has that: read for 0.3 s
            for c in self.cases:
                c.events = list(by.get(c.transfer_id, []))
        off = [c for c in self.cases if c.dead_letter_only]
        if off:
            dead = await self.d.dead_letters(sum(c.expect == "dead-lettered" for c in self.cases), timeout=10)
            for c in off:
                c.dead_letter = next((h for h in dead if h.get(wire.DLQ_TRANSFER_ID) == c.transfer_id), None)
        for c in self.cases:
            if c.landed is not None:
                try:
                    c.where, c.where_ok = c.landed()
                except Exception as exc:  # a system that cannot say where it landed is a case not as expected
                    c.where, c.where_ok = [f"could not read where it landed: {exc}"], False

    def mails_for(self, transfer_id: str) -> list[EmailMessage]:
        return [m for m in self.d.mails() if transfer_id in str(m["Subject"]) + str(m["X-Casebridge-Transfer-Id"])]

    def mailed(self, transfer_id: str, to: str) -> tuple[list[str], bool]:
        sent = sorted({str(m["To"]) for m in self.mails_for(transfer_id)})
        return [f"mailed to {', '.join(sent) or 'nobody'}"], to in sent


# -- the councils -------------------------------------------------------------------------------------------


async def _north_somerset(p: Play) -> None:
    lcs = p.client(LcsSandboxClient, "lcs")
    ehm = p.client(EhmSandboxClient, "ehm")
    p.out(f"  sandbox LCS at {lcs.http.base_url}, sandbox EHM at {ehm.http.base_url}")

    def tid(request_id: str) -> str:
        return f"north-somerset-lcs-{request_id}".lower()

    def stepdown(title: str, locality: str, expect: str, role: str | None, **request: Any) -> tuple[Case, str]:
        """A child on LCS and a social worker's step-down request; ``role``: whom the EHM tray item is for."""
        child = lcs.create_child(locality=locality)
        case = p.add(Case(title, tid(lcs.request_stepdown(child, **request)), expect))

        def landed() -> tuple[list[str], bool]:
            items = [i for i in ehm.tray() if i["transfer_id"] == case.transfer_id]
            record = lcs.child(child)
            lines = [
                f"EHM tray: {i['tray_item_id']} ({i['status']}), assigned to {i['assigned_to']['role']}" for i in items
            ] or ["EHM tray: nothing"]
            lines.append(f"LCS record: {record['record_state']}")
            placed = any(i["assigned_to"]["role"] == role for i in items) if role else not items
            return lines, placed and (record["record_state"] == "closed") == (expect == "source-closed")

        case.landed = landed
        return case, child

    stepdown("Good step-down, North: to the North Support Leader (NS-2)", "North", "source-closed", "support-leader")
    ehm.set_away("East", True)
    stepdown("Good step-down, East, whose Support Leader is away (NS-2)", "East", "source-closed", "team-manager")
    for title, rules, missing in (
        ("Missing plan (held: NS-6, NS-8)", ("NS-6", "NS-8"), {"plan": None}),
        ("No consent recorded (held: G1)", ("G1",), {"consent": None}),
        ("No management decision (held: NS-1)", ("NS-1",), {"management_decision": None}),
    ):
        stepdown(title, "South", "dead-lettered", None, **missing)[0].rules = rules
    closed, closed_child = stepdown(
        "LCS record closed out of band before its transfer (NS-7)", "East", "source-closed", "team-manager"
    )
    closed.also, closed.rules = ("alert",), ("NS-7",)
    lcs.close_record(closed_child)
    universal, _ = stepdown(
        "Supported step-down to universal in a Family Hub (NS-14: nothing is sent)",
        "North",
        "source-closed",
        None,
        target_level="universal",
        family_hub_universal=True,
        meeting_notes=None,
        plan=None,
    )
    universal.also = ("completed-no-record",)
    episode = ehm.open_episode(locality="East")
    up = p.add(
        Case(
            "Step-up EHM -> LCS Front Door, accepted there (NS-9, NS-12)",
            stepup_transfer_id(Council.NORTH_SOMERSET, ehm.request_stepup(episode)),
            "source-closed",
            also=("front-door-decision",),
        )
    )

    def contact() -> tuple[list[str], bool]:
        c, e = lcs.contact(up.transfer_id), ehm.episode(episode)
        reason = f" ({e['closure_reason']})" if e.get("closure_reason") else ""
        return [f"LCS Front Door: contact {c['contact_id']} ({c['stage']})", f"EHM episode: {e['status']}{reason}"], (
            e["status"] == "closed"
        )

    up.landed = contact
    # NS-7: held with an alert; the team manager reopens the record on LCS and LCS's feed publishes it again
    if await p.wait({closed: "alert"}):
        closed.notes.append("held NS-7 with an alert; the demo reopened the record on LCS, and it completed")
        lcs.reopen(closed_child)
    # NS-12: the step-up is a contact on LCS; only the Front Door's acceptance there closes the EHM episode
    if await p.wait({up: "source-kept-open"}):
        up.notes.append("the demo accepted the contact on LCS (POST /api/contacts/{id}/decision) as the Front Door")
        decision = {"decision": "accepted", "decided_by": "Front Door manager (demo)"}
        lcs.http.post(f"/api/contacts/{up.transfer_id}/decision", json=decision).raise_for_status()
    await p.settle()


async def _swindon(p: Play) -> None:
    lcs = p.client(LcsSandboxClient, "lcs")
    ehm = p.client(EhmSandboxClient, "ehm")
    p.out(f"  sandbox LCS at {lcs.http.base_url}, sandbox EHM at {ehm.http.base_url}")
    child = lcs.create_child(locality="North")
    down = p.add(
        Case(
            "Step-down LCS -> EHM to the Lead Practitioner (SW26-4..7)",
            f"swindon-lcs-{lcs.request_stepdown(child, council='swindon')}".lower(),
            "source-closed",
        )
    )

    def tray() -> tuple[list[str], bool]:
        items = [i for i in ehm.tray() if i["transfer_id"] == down.transfer_id]
        record = lcs.child(child)
        lines = [
            f"EHM tray: {i['tray_item_id']} ({i['status']}), assigned to {i['assigned_to']['role']}" for i in items
        ]
        lines.append(f"LCS record: {record['record_state']}, closure reason {record['closure_reason']!r}")
        placed = any(i["assigned_to"]["role"] == "lead-professional" for i in items)
        return lines, placed and record["closure_reason"] == "Step Down to SBC Early Help"

    down.landed = tray
    episode = ehm.open_episode(locality="North")
    decision = {"decided_by": "Dana Dutymanager", "role": "Duty Manager", "decided_on": "2026-11-20",
                "rationale": "Escalating concerns; a referral is endorsed."}  # fmt: skip
    up = p.add(
        Case(
            "Urgent step-up EHM -> LCS endorsed by the Duty Manager: a referral, early help kept open (SW26-1..3)",
            stepup_transfer_id(Council.SWINDON, ehm.request_stepup(episode, management_decision=decision, urgent=True)),
            "source-kept-open",
        )
    )

    def contact() -> tuple[list[str], bool]:
        c, e = lcs.contact(up.transfer_id), ehm.episode(episode)
        return [
            f"LCS Front Door: contact {c['contact_id']} as a {c['stage']}, urgent={c['urgent']}",
            f"EHM episode: {e['status']}",
        ], e["status"] == "open"

    up.landed = contact
    await p.settle()


async def _swindon_2022(p: Play) -> None:
    cd = p.client(CareDirectorSandboxClient, "care-director")
    p.out(f"  sandbox Care Director at {cd.http.base_url}, intake on port {p.d.systems.intake_port}")

    def person_state(person: str, transfer_id: str, to: str, state: str) -> Callable[[], tuple[list[str], bool]]:
        def landed() -> tuple[list[str], bool]:
            lines, mailed = p.mailed(transfer_id, to)
            record = cd.person(person)
            closure = record.get("closure") or {}
            worker = (closure.get("early_help_worker") or {}).get("name")
            lines.append(
                f"Care Director record: {record['record_state']}"
                + (f", lead service {closure.get('lead_service')!r}, worker named: {bool(worker)}" if closure else "")
            )
            return lines, mailed and record["record_state"] == state

        return landed

    person = cd.create_person()
    hub = cd_transfer_id(Council.SWINDON_2022, cd.refer(person, "ASO-EHH"))
    p.add(
        Case(
            "Step-down from Care Director, outcome ASO-EHH: to the Early Help Hub mailbox (SW22-7, SW22-11)",
            hub,
            "source-closed",
            landed=person_state(person, hub, "ehhub@swindon.example", "closed"),
        )
    )
    unnamed = cd.create_person()
    waiting = cd_transfer_id(Council.SWINDON_2022, cd.refer(unnamed, "ASO-EHH", worker=None, lead=False))
    allocated = p.add(
        Case(
            "Step-down with no worker named: closed only once an operator records the allocation (SW22-10)",
            waiting,
            "source-closed",
            landed=person_state(unnamed, waiting, "ehhub@swindon.example", "closed"),
        )
    )
    other = cd.create_person()
    cin = p.add(
        Case(
            "Outcome ASO-CIN is no step-down: held at the map stage (SW22-7)",
            cd_transfer_id(Council.SWINDON_2022, cd.refer(other, "ASO-CIN")),
            "dead-lettered",
            rules=("SW22-7",),
            dead_letter_only=True,
        )
    )

    def cin_landed() -> tuple[list[str], bool]:
        reasons = [(cin.dead_letter or {}).get(wire.DLQ_ERROR_MESSAGE, "")]
        record = cd.person(other)
        nothing = not p.mails_for(cin.transfer_id)
        lines = [f"Care Director record: {record['record_state']}; nothing mailed: {nothing}"]
        return lines, nothing and any("ASO-CIN" in r for r in reasons) and record["record_state"] == "open"

    cin.landed = cin_landed
    s47 = s47_step_up(cd.create_person())
    up, posted = p.post(
        "s.47 step-up from FISS posted to the intake: to the MASH mailbox, urgent (SW22-1, SW22-6)", s47,
        "source-kept-open",
    )  # fmt: skip

    def mash() -> tuple[list[str], bool]:
        lines, mailed = p.mailed(up.transfer_id, "mash@swindon.example")
        urgent = any(e.event_type == "delivered" and e.urgent for e in up.events)
        return lines, mailed and urgent and posted == 202

    up.landed = mash
    if await p.wait({allocated: "source-kept-open"}):
        done = p.d.cli("allocate", waiting, "--worker", "Casey Hubworker", "--organisation", "Early Help Hub",
                       "--operator", "duty-operator")  # fmt: skip
        allocated.notes.append(
            f"kept open until the demo ran `casebridge allocate {waiting} --worker ... --organisation 'Early Help Hub'"
            f" --operator duty-operator` (exit {done.returncode})"
        )
    await p.settle()


async def _luton(p: Play) -> None:
    p.out(f"  intake on port {p.d.systems.intake_port}")
    doc = step_down("luton", 1)
    down, _ = p.post(
        "Step-down from the Family Safeguarding Team posted to the intake: receipt, then allocation (LU-6, LU-7)",
        doc, "source-closed",
    )  # fmt: skip

    def notices() -> tuple[list[str], bool]:
        mails = p.mails_for(down.transfer_id)
        lines = [f"mailed to {', '.join(sorted({str(m['To']) for m in mails}))}"]
        kinds = [str(m["Subject"]) for m in mails if "notice" in str(m["Subject"]).lower()]
        sent = [e.notice for e in down.events if e.event_type == "notice-sent"]
        lines.append(f"notices: {', '.join(sent) or 'none'} ({len(kinds)} notice mails)")
        status = p.d.post_status(down.transfer_id)["status"]
        lines.append(f"the intake tells the team: {status}")
        return lines, sorted(sent) == ["allocation", "receipt"] and status == "closed"

    down.landed = notices
    if await p.wait({down: "notice-sent"}) and await p.wait({down: "source-closed"}):
        done = p.d.cli("allocate", down.transfer_id, "--worker", "Kit Supportworker", "--organisation",
                       "Early Help Team", "--operator", "duty-operator")  # fmt: skip
        down.notes.append(
            f"the receipt notice went at acknowledgement; the demo then ran `casebridge allocate {down.transfer_id}"
            f" --worker ... --organisation 'Early Help Team' --operator duty-operator` (exit {done.returncode})"
        )
        await p.wait({down: "allocated"})
    # LU-9: weeks later the child comes back up; the step-up shares the child's identifier with the step-down
    up_doc = step_up("luton", 2, requested_at="2026-12-20T09:00:00Z")
    up_doc["child"]["identifiers"].append(doc["child"]["identifiers"][0])
    up, _ = p.post(
        "Step-up seven weeks after that step-down: back to the Family Safeguarding Team (LU-9), "
        "early help kept open (LU-4)",
        up_doc,
        "source-kept-open",
        "LU-4: early help closes 10 days after social care acknowledged; `casebridge run`'s closure "
        "scheduler will do that then. The demo does not wait 10 days and moves no clock.",
    )

    def back() -> tuple[list[str], bool]:
        lines, mailed = p.mailed(up.transfer_id, "family-safeguarding@luton.example")
        team = [e.team for e in up.events if e.event_type == "delivered"]
        return lines, mailed and team == ["Family Safeguarding Team"]

    up.landed = back
    down.also = ("allocated", "notice-sent", "notice-sent")
    await p.settle()


async def _barnsley(p: Play) -> None:
    ted = p.client(TedSandboxClient, "ted")
    p.out(f"  sandbox TED at {ted.http.base_url}, intake on port {p.d.systems.intake_port}")
    case = ted.create_case()
    down = p.add(
        Case(
            "Step-down request SD-EHS on TED, from TED's feed: to the early-help mailbox, TED closed (BA-15)",
            ted_transfer_id(Council.BARNSLEY, ted.request_stepdown(case, "SD-EHS")),
            "source-closed",
        )
    )

    def closed() -> tuple[list[str], bool]:
        lines, mailed = p.mailed(down.transfer_id, "earlyhelp@barnsley.example")
        state = ted.case(case)["record_state"]
        return [*lines, f"TED case: {state}"], mailed and state == "closed"

    down.landed = closed
    watched = ted.create_case()
    held = p.add(
        Case(
            "Step-down request coded SD-MON ('monitoring') on TED: held (BA-5)",
            ted_transfer_id(Council.BARNSLEY, ted.request_stepdown(watched, "SD-MON")),
            "dead-lettered",
            rules=("BA-5",),
        )
    )

    def kept() -> tuple[list[str], bool]:
        state = ted.case(watched)["record_state"]
        return [f"TED case: {state}; nothing mailed: {not p.mails_for(held.transfer_id)}"], state == "open"

    held.landed = kept
    eha = ted.open_eha(ted.create_case())
    doc = on_record(step_up("barnsley", 1), "ted", eha)
    up, _ = p.post(
        "Step-up from an open EHA on TED posted to the intake: a TED referral, the EHA closed (BA-3)", doc,
        "source-closed",
    )  # fmt: skip

    def referral() -> tuple[list[str], bool]:
        r, e = ted.referral(up.transfer_id), ted.eha(eha)
        return [f"TED referral for {r['transfer_id']}", f"TED early-help assessment: {e['status']}"], (
            e["status"] == "closed"
        )

    up.landed = referral
    await p.settle()


PLAYS: dict[str, Callable[[Play], Awaitable[None]]] = {
    "north-somerset": _north_somerset,
    "swindon": _swindon,
    "swindon-2022": _swindon_2022,
    "luton": _luton,
    "barnsley": _barnsley,
}


# -- output ----------------------------------------------------------------------------------------------------


def _describe(case: Case) -> list[str]:
    mark = "as expected" if case.ok else f"NOT AS EXPECTED (expected {case.expect})"
    lines = [f"- {case.title}", f"    transfer {case.transfer_id}"]
    before = " (its source's publisher dead-lettered it; the router never saw it)" if case.dead_letter else ""
    lines.append("    events: " + (" -> ".join(case.types) or "none" + before))
    held = [e for e in case.events if e.event_type == "held"]
    dead = [e for e in case.events if e.event_type == "dead-lettered"]
    if case.state in ("source-closed", "source-kept-open"):
        outcome = "completed" + (", source record kept open" if case.state == "source-kept-open" else "")
    elif case.state in ("held", "dead-lettered"):
        outcome = "HELD (dead letter kept for replay)"
    else:
        outcome = "in flight"
    lines.append(f"    outcome: {outcome} ({mark})")
    if held:
        verb = "was held" if case.state in ("source-closed", "source-kept-open") else "held"
        for v in held[-1].violations:
            lines.append(f"    {verb} by {v.rule_id}: {v.message}\n      fix: {v.fix}")
    elif dead:
        lines.append(f"    dead-lettered at the {dead[-1].stage} stage: {dead[-1].reason}")
    elif case.dead_letter is not None:
        h = case.dead_letter
        lines.append(f"    dead-lettered at the {h.get(wire.DLQ_STAGE)} stage: {h.get(wire.DLQ_ERROR_MESSAGE)}")
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
        elif e.event_type == "alert":
            lines.append(f"    alert ({e.severity}): {e.summary}")
    lines += [f"    {w}" for w in case.where]
    lines += [f"    note: {n}" for n in case.notes]
    return lines


async def _run_council(
    council: str, work: Path, bootstrap: str, prefix: str, level: str, out: Callable[[str], Any], logs: IO[str] | None
) -> CouncilRun:
    result = CouncilRun(council, prefix)
    out("")
    out(f"== {COUNCILS[council]}: topics {prefix}.*")
    started = time.monotonic()
    try:
        async with deployed(council, work, bootstrap, prefix, retry=QUICK_RETRY, level=level) as d:
            pid = d.run.process.pid if d.run.process else "-"
            out(f"  casebridge run --config {d.config} (a process of its own, pid {pid}; the file is temporary)")
            play = Play(d, out)
            try:
                await PLAYS[council](play)
            finally:
                play.close()
                result.cases = play.cases
                result.mails = [str(m["To"]) for m in d.mails()]
                if logs is not None:
                    logs.write(d.run.output())
                if not all(c.ok for c in play.cases):
                    out("  the end of its log:")
                    tail = [line for line in d.run.output().splitlines() if not _NOISE.search(line)][-15:]
                    out("\n".join("    " + line for line in tail))
    except Exception as exc:  # a council that could not be deployed or driven: said, counted, and the demo goes on
        result.error = f"{type(exc).__name__}: {str(exc)[:1500]}"
    for c in result.cases:
        out("\n".join(_describe(c)))
    if result.error:
        out(f"  FAILED: {result.error}")
    by_box = ", ".join(f"{to}" + (f" x{n}" if n > 1 else "") for to, n in sorted(Counter(result.mails).items()))
    out(f"  team mailboxes (SMTP, STARTTLS) received {len(result.mails)} mails" + (f": {by_box}" if by_box else ""))
    out(f"  ({time.monotonic() - started:.0f} s)")
    return result


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while n:
        n, d = divmod(n, 36)
        text = digits[d] + text
    return text or "0"


async def run_demo(
    bootstrap: str, out: Callable[[str], Any] = print, *, level: str = "WARNING", logs: IO[str] | None = None
) -> bool:
    """Deploy each seed council on its sandboxes with ``casebridge run --config`` against the broker at
    ``bootstrap`` and run its handovers; whether every case ended as expected. ``level`` is the runs' log level;
    ``logs``, when given, receives each run's log."""
    # aiosmtpd (the sandbox relay) warns about its own use of deprecated asyncio APIs: not the demo's news
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"aiosmtpd(\..*)?")
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd logs its own deprecations there, too
    stamp = _base36(int(time.time()))  # letters and digits: the runs' logs mask long digit runs as personal data
    started = time.monotonic()
    out(f"Kafka at {bootstrap}; each council deployed with `casebridge run --config FILE` on its own sandboxes")
    runs: list[CouncilRun] = []
    with tempfile.TemporaryDirectory(prefix="casebridge-demo-") as work:
        for council in PLAYS:
            prefix = f"demo-{stamp}-{council}"
            runs.append(await _run_council(council, Path(work) / council, bootstrap, prefix, level, out, logs))
    cases = [c for r in runs for c in r.cases]
    good = sum(c.ok for c in cases)
    out("")
    out("Summary")
    for r in runs:
        mark = "" if r.error is None and all(c.ok for c in r.cases) else "  <- not as expected"
        ok = sum(c.ok for c in r.cases)
        out(f"  {COUNCILS[r.council].split(' (')[0]}: {ok} of {len(r.cases)} cases, {len(r.mails)} mails{mark}")
    out(f"{good} of {len(cases)} cases ended as expected ({time.monotonic() - started:.0f} s)")
    out("")
    out(f"To look at what it did (Kafka at {bootstrap}, while the broker runs):")
    for r in runs:
        out(f"  {r.council}: topic prefix {r.prefix}")
        out(f"    casebridge dlq list --bootstrap {bootstrap} --prefix {r.prefix}")
    out("  the monitoring page of one council (tokens: CASEBRIDGE_MONITOR__TOKENS, see the README's Monitoring):")
    first = runs[0].prefix if runs else "PREFIX"
    token = secrets.token_urlsafe(32)  # a fresh one: the monitor refuses tokens of fewer than 32 random bytes
    out(f'    CASEBRIDGE_MONITOR__TOKENS=\'[{{"token": "{token}", "name": "me", "role": "viewer"}}]\' \\')
    out(f"    casebridge monitor --bootstrap {bootstrap} --prefix {first} --db /tmp/{first}.sqlite3")
    return all(r.error is None for r in runs) and good == len(cases)
