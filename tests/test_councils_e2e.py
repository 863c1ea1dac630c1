"""One step-down and one step-up per council, end to end on the real broker.

LCS and EHM are the sandbox services over HTTP; Care Director, TED and the team mailboxes
are in-memory stand-ins (``connectors.memory``) with the same Target / Source interface.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

from casebridge.stack import Stack
from connectors import Receipt, Source, Target
from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem, ClosureRecord, Person, TransferEvent, TransferMessage
from router import Settings
from router.allocations import allocate
from router.settings import RetrySettings
from tests.council_data import step_down, step_up
from tests.support import TOKEN, Systems, events_of, produce, read

WORKER = Person(name="Jo Madeup", role="Family Support Worker", organisation="Example Early Help Team")


class MemoryMailbox(MemoryTarget):
    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX


class MemoryTed(MemoryTarget):
    system: ClassVar[CaseSystem] = CaseSystem.TED


class ClosingSource(MemorySource):
    """A memory source that keeps the closure record it was asked to write."""

    def __init__(self) -> None:
        super().__init__()
        self.closures: dict[str, ClosureRecord | None] = {}

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        self.closures[transfer.source_record.record_id] = transfer.closure
        return await super().close(transfer, receipt)


class CareDirectorSource(ClosingSource):
    system: ClassVar[CaseSystem] = CaseSystem.CARE_DIRECTOR


class TedSource(ClosingSource):
    system: ClassVar[CaseSystem] = CaseSystem.TED


class MailboxSource(ClosingSource):
    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX


@dataclass
class Councils:
    stack: Stack
    systems: Systems
    mailbox: MemoryMailbox
    ted: MemoryTed
    care_director: CareDirectorSource
    ted_source: TedSource
    mailbox_source: MailboxSource


def _stack(settings: Settings, systems: Systems, state: Path, c: dict[str, Any]) -> Stack:
    targets: dict[CaseSystem, Target] = {CaseSystem.MAILBOX: c["mailbox"], CaseSystem.TED: c["ted"]}
    sources: dict[CaseSystem, Source] = {
        CaseSystem.CARE_DIRECTOR: c["care_director"],
        CaseSystem.TED: c["ted_source"],
        CaseSystem.MAILBOX: c["mailbox_source"],
    }
    return Stack(settings, state, systems=systems.deployed(),
        loops=False,
        extra_targets=targets,
        extra_sources=sources,
    )


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str, retry_settings: RetrySettings) -> Settings:
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
    )


@pytest.fixture
def memory() -> dict[str, Any]:
    return {
        "mailbox": MemoryMailbox(),
        "ted": MemoryTed(),
        "care_director": CareDirectorSource(),
        "ted_source": TedSource(),
        "mailbox_source": MailboxSource(),
    }


@pytest.fixture
async def councils(
    settings: Settings, systems: Systems, tmp_path: Path, memory: dict[str, Any]
) -> AsyncIterator[Councils]:
    async with _stack(settings, systems, tmp_path / "state", memory) as stack:
        yield Councils(stack=stack, systems=systems, **memory)


async def _send(settings: Settings, *docs: dict[str, Any]) -> None:
    items = []
    for doc in docs:
        first = doc["child"]["identifiers"][0]
        items.append((f"{first['system']}:{first['id']}".encode(), json.dumps(doc).encode()))
    await produce(settings.bootstrap_servers, settings.topics.transfers, items)


TERMINAL = {"source-closed", "source-kept-open", "dead-lettered"}


async def _outcomes(settings: Settings, *transfer_ids: str) -> dict[str, list[TransferEvent]]:
    """Each transfer's events, read until every one of them reached a terminal event."""

    def done(records: list[Any]) -> bool:
        ended = {e.transfer_id for e in events_of(records) if e.event_type in TERMINAL}
        return set(transfer_ids) <= ended

    records = await read(settings.bootstrap_servers, settings.topics.events, done, timeout=60)
    by: dict[str, list[TransferEvent]] = {t: [] for t in transfer_ids}
    for e in events_of(records):
        if e.transfer_id in by:
            by[e.transfer_id].append(e)
    return by


def _types(events: list[TransferEvent]) -> list[str]:
    return [e.event_type for e in events]


def _one(events: list[TransferEvent], kind: str) -> Any:
    [event] = [e for e in events if e.event_type == kind]
    return event


# -- North Somerset: LCS <-> EHM, both sandboxes ------------------------------------------------


async def test_north_somerset_step_down_then_ns09_ns10_ns12_step_up_to_the_front_door(councils: Councils) -> None:
    """Step-down LCS -> EHM tray; then a Step-Up request on EHM, published from EHM's feed, becomes an
    LCS contact naming that social worker (NS-10),
    and the EHM episode closed with a case note only once the Front Door accepted it on LCS (NS-12)."""
    lcs, ehm, stack = councils.systems.lcs_client, councils.systems.ehm_client, councils.stack
    child = lcs.create_child(locality="South")
    request = lcs.request_stepdown(child, requested_by="Riley Notreal (Social Worker)")
    assert 1 == await stack.publisher.poll_once()
    down = f"north-somerset-lcs-{request}".lower()
    await _outcomes(stack.settings, down)
    episode = ehm.open_episode(lcs_id=child, locality="South")
    stepup = ehm.request_stepup(episode)
    assert 1 == await stack.stepups.poll_once()  # EHM's step-up feed -> the transfers topic
    up = {"transfer_id": f"north-somerset-ehm-{stepup}".lower()}
    events = (await _outcomes(stack.settings, up["transfer_id"]))[up["transfer_id"]]

    assert ["requested", "validated", "delivered", "acknowledged", "source-kept-open"] == _types(events)
    assert ["NS-12"] == _one(events, "source-kept-open").rule_ids
    assert "open" == ehm.episode(episode)["status"]  # LCS holds the contact; the Front Door has not decided
    lcs.http.post(
        f"/api/contacts/{up['transfer_id']}/decision", json={"decision": "accepted", "decided_by": "A Manager"}
    ).raise_for_status()
    assert 1 == await stack.decisions.poll_once()  # LCS's decision feed -> a front-door-decision event
    closed_now = 0
    for _ in range(20):
        closed_now += await stack.closures.poll_once()
        if closed_now:
            break
    assert 1 == closed_now
    delivered = _one(events, "delivered")
    assert (CaseSystem.LCS, "Front Door", ["NS-10"]) == (delivered.target_system, delivered.team, delivered.rule_ids)
    contact = lcs.contact(up["transfer_id"])
    assert ("Riley Notreal (Social Worker)", "contact") == (contact["first_contact"], contact["stage"])
    assert {"step-up-form", "case-notes"} == set(contact["documents"])
    closed = ehm.episode(episode)
    assert ("closed", up["transfer_id"]) == (closed["status"], closed["closure_transfer_id"])
    assert "recording continues on LCS" in closed["case_notes"][-1]["text"]
    assert closed["closed_at"] >= contact["decided_at"] >= contact["received_at"]


# -- Swindon 2026: LCS <-> EHM ------------------------------------------------------------------


async def test_swindon_sw26_05_sw26_07_step_down_to_lead_practitioner_and_closure_wording(councils: Councils) -> None:
    """Step-down LCS -> EHM allocated to the Lead Practitioner; LCS closure reads "Step Down to SBC Early Help"."""
    lcs, ehm = councils.systems.lcs_client, councils.systems.ehm_client
    child = lcs.create_child(locality="North")
    doc = step_down("swindon", 7)
    doc["child"].update(identifiers=[{"system": "lcs", "id": child}], locality="North")
    doc["source_record"].update(record_id=child, request_id=lcs.request_stepdown(child))  # the LCS transfer request
    doc["documents"].append({"type": "meeting-notes", "content": "Transfer Meeting notes (synthetic)."})
    await _send(councils.stack.settings, doc)
    events = (await _outcomes(councils.stack.settings, doc["transfer_id"]))[doc["transfer_id"]]

    assert "source-closed" == events[-1].event_type
    [item] = ehm.tray()
    assert ("lead-professional", "Jo Leadpractitioner") == (item["assigned_to"]["role"], item["assigned_to"]["name"])
    record = lcs.child(child)
    assert ("closed", "Step Down to SBC Early Help") == (record["record_state"], record["closure_reason"])


async def test_swindon_sw26_01_sw26_03_sw22_01_step_up_referral_endorsed_urgent_first_episode_stays_open(
    councils: Councils,
) -> None:
    """Step-up EHM -> LCS: the Duty Manager's endorsement makes it a referral (SW26-1), the episode
    stays open (SW26-3), and an urgent step-up is first in the Front Door's queue (SW22-1)."""
    lcs, ehm = councils.systems.lcs_client, councils.systems.ehm_client
    routine, urgent = ehm.open_episode(), ehm.open_episode()
    docs = []
    for n, episode, urgency in ((1, routine, "routine"), (2, urgent, "urgent")):
        doc = step_up("swindon", n, urgency=urgency)
        doc["child"]["identifiers"] = [{"system": "ehm", "id": episode}]
        doc["source_record"]["record_id"] = episode
        docs.append(doc)
    docs[0]["management_decision"]["decided_by"]["role"] = "Early Intervention Manager"
    await _send(councils.stack.settings, docs[0])
    await _outcomes(councils.stack.settings, docs[0]["transfer_id"])
    await _send(councils.stack.settings, docs[1])
    out = await _outcomes(councils.stack.settings, docs[1]["transfer_id"])

    kept = _one(out[docs[1]["transfer_id"]], "source-kept-open")
    assert ["SW26-3"] == kept.rule_ids
    assert ("open", "open") == (ehm.episode(routine)["status"], ehm.episode(urgent)["status"])
    queue = lcs.contacts()
    assert [docs[1]["transfer_id"], docs[0]["transfer_id"]] == [c["transfer_id"] for c in queue]
    assert [("referral", "Duty Manager", True), ("contact", None, False)] == [
        (c["stage"], c["endorsed_by"], c["urgent"]) for c in queue
    ]


# -- Swindon 2022: Care Director -> team mailboxes ---------------------------------------------


async def test_swindon_2022_sw22_07_sw22_11_step_down_and_sw22_01_urgent_step_up_to_mash(councils: Councils) -> None:
    """Step-down: the outcome code picks the EH Hub mailbox, the closure names the lead professional;
    step-up on s.47: to the MASH mailbox, flagged urgent, FISS record kept open (SW22-6)."""
    down = step_down("swindon-2022", 1)
    up = step_up("swindon-2022", 2)
    up["pathway"].update(from_level="intensive-early-help", to_level="child-protection-s47")
    up["management_decision"]["forum"] = "Transfer Meeting"
    await _send(councils.stack.settings, down, up)
    out = await _outcomes(councils.stack.settings, down["transfer_id"], up["transfer_id"])

    sent = _one(out[down["transfer_id"]], "delivered")
    assert (CaseSystem.MAILBOX, "Early Help Hub", ["SW22-7"]) == (sent.target_system, sent.team, sent.rule_ids)
    closure = councils.care_director.closures["CARE-DIRECTOR-1"]
    assert closure is not None and closure.lead_professional is not None
    assert (["SW22-11"], "Casey Hubworker") == (closure.rule_ids, closure.lead_professional.name)
    escalated = _one(out[up["transfer_id"]], "delivered")
    assert ("MASH", True, ["SW22-1"]) == (escalated.team, escalated.urgent, escalated.rule_ids)
    assert ["SW22-6"] == _one(out[up["transfer_id"]], "source-kept-open").rule_ids
    assert {down["transfer_id"], up["transfer_id"]} == set(councils.mailbox.items)


# -- Luton: team mailboxes; LU-7 notices, LU-9 history across a restart ------------------------


async def test_luton_lu07_receipt_notice_and_lu09_step_up_returns_to_the_team_after_a_restart(
    settings: Settings, systems: Systems, tmp_path: Path, memory: dict[str, Any]
) -> None:
    """Step-down FST -> Early Help with receipt and allocation notices to the social worker and manager; a router
    restarted later still remembers it, so a step-up 2 months on goes back to that team (LU-9)."""
    down = step_down("luton", 1)
    async with _stack(settings, systems, tmp_path / "state", memory) as stack:
        await _send(stack.settings, down)
        events = (await _outcomes(settings, down["transfer_id"]))[down["transfer_id"]]
        assert 0 == await stack.notices.poll_once()  # not allocated yet: nothing to say
        # the team mailbox cannot report an allocation: an operator records it (an ``allocated`` event alone
        # would prove nothing, tests/test_notices_restart.py)
        await allocate(settings.bootstrap_servers, settings.topics, down["transfer_id"], WORKER, "ops-luton")
        sent = 0
        for _ in range(40):
            sent += await stack.notices.poll_once()
            if sent:
                break
        assert 1 == sent
        later = (await _outcomes(settings, down["transfer_id"]))[down["transfer_id"]]
        [allocation] = [e for e in later if e.event_type == "notice-sent" and e.notice == "allocation"]  # type: ignore[union-attr]
        assert (["social_worker", "manager"], ["LU-7"]) == (allocation.recipients, allocation.rule_ids)  # type: ignore[union-attr]
        assert f"{down['transfer_id']}-notice-allocation" in memory["mailbox"].items
    [notice] = [e for e in events if e.event_type == "notice-sent"]
    assert ("receipt", ["social_worker", "manager"], ["LU-7"]) == (notice.notice, notice.recipients, notice.rule_ids)
    assert _types(events).index("acknowledged") < _types(events).index("notice-sent")
    sent, route = memory["mailbox"].items[f"{down['transfer_id']}-notice-receipt"]
    assert ([], "notice-receipt", "Family Safeguarding Team") == (sent.documents, route.role, route.team)

    memory["mailbox"] = MemoryMailbox()
    up = step_up("luton", 2, requested_at="2026-12-20T09:00:00Z")
    up["child"]["identifiers"].append(down["child"]["identifiers"][0])
    async with _stack(settings, systems, tmp_path / "state", memory) as stack:  # a new router process
        await _send(stack.settings, up)
        events = (await _outcomes(settings, up["transfer_id"]))[up["transfer_id"]]
    delivered = _one(events, "delivered")
    assert ("Family Safeguarding Team", ["LU-9"]) == (delivered.team, delivered.rule_ids)
    assert ["LU-4"] == _one(events, "source-kept-open").rule_ids


# -- Barnsley: TED <-> early-help mailbox --------------------------------------------------------


async def test_barnsley_ba15_ba10_step_down_closes_ted_after_sending_and_ba03_step_up_closes_the_eha(
    councils: Councils,
) -> None:
    """Step-down TED -> EH mailbox with no worker allocated yet (BA-10: never refused for capacity),
    TED closed only after the mailbox holds it (BA-15); step-up EHA -> TED referral closes the EHA (BA-3)."""
    down = step_down("barnsley", 1)
    up = step_up("barnsley", 2)
    await _send(councils.stack.settings, down, up)
    out = await _outcomes(councils.stack.settings, down["transfer_id"], up["transfer_id"])

    types = _types(out[down["transfer_id"]])
    assert types.index("acknowledged") < types.index("source-closed")
    assert "TED-1" in councils.ted_source.closed
    assert down["transfer_id"] in councils.mailbox.items
    assert up["transfer_id"] in councils.ted.items
    closure = councils.ted_source.closures["EH-2"]
    assert closure is not None and ("step up to social care", ["BA-3"]) == (closure.reason, closure.rule_ids)


async def test_ba09_without_lead_professional_the_request_goes_without_documents_and_ted_stays_open(
    councils: Councils,
) -> None:
    """BA-9 / G4: no lead professional yet: a targeted-support request with no documents; TED kept open."""
    doc = step_down("barnsley", 4)
    doc["professionals"] = {}
    await _send(councils.stack.settings, doc)
    events = (await _outcomes(councils.stack.settings, doc["transfer_id"]))[doc["transfer_id"]]

    assert ["BA-9"] == _one(events, "source-kept-open").rule_ids
    sent, route = councils.mailbox.items[doc["transfer_id"]]
    assert ([], "targeted-support-request") == (sent.documents, route.role)
    assert {} == councils.ted_source.closed


async def test_g3_ba05_held_transfer_is_kept_with_its_reason_and_nothing_is_sent(councils: Councils) -> None:
    """G3 / BA-5: a step-down "for monitoring" is held: dead letter with the rule, nothing delivered, TED open."""
    doc = step_down("barnsley", 3, purpose="so that the school can monitor attendance")
    await _send(councils.stack.settings, doc)
    events = (await _outcomes(councils.stack.settings, doc["transfer_id"]))[doc["transfer_id"]]

    assert ["BA-5"] == [v.rule_id for v in _one(events, "held").violations]
    dead = await read(
        councils.stack.settings.bootstrap_servers, councils.stack.settings.topics.dead_letter, lambda r: len(r) >= 1
    )
    headers = {k: bytes(v).decode() for k, v in dead[0].headers}
    assert ("BA-5", doc["transfer_id"]) == (headers["casebridge.dlq.rule.ids"], headers["casebridge.dlq.transfer.id"])
    assert ({}, {}) == (councils.mailbox.items, councils.ted_source.closed)


async def test_a_transfer_from_a_system_the_protocol_does_not_name_is_dead_lettered(councils: Councils) -> None:
    """The protocol names each direction's source system: a Barnsley step-down claiming to come from
    Care Director is dead-lettered with a reason naming the file and the field, nothing sent."""
    doc = step_down("barnsley", 5)
    doc["pathway"]["from_system"] = "care-director"
    doc["source_record"]["system"] = "care-director"
    await _send(councils.stack.settings, doc)
    events = (await _outcomes(councils.stack.settings, doc["transfer_id"]))[doc["transfer_id"]]

    dead = _one(events, "dead-lettered")
    assert "MappingError" == dead.error_class
    assert "barnsley.toml" in dead.reason and "pathway.from_system" in dead.reason
    assert {} == councils.mailbox.items


async def test_ba07_sw22_07_shipped_protocols_with_real_ted_care_director_and_smtp_team_mailboxes(
    settings: Settings, systems: Systems, tmp_path: Path
) -> None:
    """With the real TED and Care Director sandboxes and an SMTP relay (STARTTLS, AUTH): a Barnsley
    step-down mails the early-help team and TED closes after (BA-7, BA-15); a Swindon 2022 step-down
    goes to the mailbox its assessment outcome names (SW22-7) and Care Director writes its closure."""
    import email

    import httpx

    from connectors.care_director import CareDirectorConnector
    from connectors.mailbox import MailboxConnector, MailboxSettings
    from connectors.ted import TedConnector
    from sandboxes import SmtpSandbox, create_care_director_app, create_ted_app, serve

    headers = {"Authorization": f"Bearer {TOKEN}"}
    child = {"given_name": "Robin", "family_name": "Exampleton", "date_of_birth": "2016-04-09"}
    with (
        SmtpSandbox(tmp_path / "smtp", "casebridge", "e2e-secret") as relay,
        serve(create_ted_app(tmp_path / "ted.db", TOKEN), "127.0.0.1", 0) as ted_server,
        serve(create_care_director_app(tmp_path / "cd.db", TOKEN), "127.0.0.1", 0) as cd_server,
    ):
        ted_http = httpx.AsyncClient(base_url=ted_server.url, headers=headers)
        cd_http = httpx.AsyncClient(base_url=cd_server.url, headers=headers)
        mail = MailboxSettings(
            host="127.0.0.1",
            port=relay.port,
            username="casebridge",
            password=SecretStr("e2e-secret"),
            sender="casebridge@council.example",
            ca_file=relay.ca_file,
            mailboxes={
                "barnsley:Family Centre Development Team": "earlyhelp@barnsley.example",
                "swindon-2022:Early Help Hub": "ehhub@swindon.example",
            },
        )
        case_id = (await ted_http.post("/api/cases", json=child)).json()["id"]
        person_id = (await cd_http.post("/api/persons", json=child)).json()["id"]
        ba = step_down("barnsley", 8)
        ba["child"]["identifiers"] = [{"system": "ted", "id": case_id}]
        ba["source_record"]["record_id"] = case_id
        sw = step_down("swindon-2022", 8)
        sw["child"]["identifiers"] = [{"system": "care-director", "id": person_id}]
        sw["source_record"]["record_id"] = person_id
        stack = Stack(settings, tmp_path / "state", systems=systems.deployed(),
            loops=False,
            extra_targets={CaseSystem.MAILBOX: MailboxConnector(mail)},
            extra_sources={
                CaseSystem.TED: TedConnector(ted_server.url, SecretStr(TOKEN)),
                CaseSystem.CARE_DIRECTOR: CareDirectorConnector(cd_server.url, SecretStr(TOKEN)),
            },
        )
        async with stack:
            await _send(settings, ba, sw)
            out = await _outcomes(settings, ba["transfer_id"], sw["transfer_id"])
        assert ("source-closed", "source-closed") == (
            out[ba["transfer_id"]][-1].event_type,
            out[sw["transfer_id"]][-1].event_type,
        )
        recipients = sorted(email.message_from_bytes(m)["To"] for m in relay.messages())
        assert ["earlyhelp@barnsley.example", "ehhub@swindon.example"] == recipients
        assert "closed" == (await ted_http.get(f"/api/cases/{case_id}")).json()["record_state"]
        person = (await cd_http.get(f"/api/persons/{person_id}")).json()
        await ted_http.aclose()
        await cd_http.aclose()
        assert ("closed", "Early Help Hub") == (person["record_state"], person["closure"]["lead_service"])
