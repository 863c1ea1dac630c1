"""The intake (connectors/intake): a team with no case system posts a transfer over authenticated HTTP.

Real broker, real HTTP over loopback (port 0), synthetic data only (NHS numbers in the 999 range)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import ValidationError

from connectors import Receipt
from connectors.intake import IntakeServer, IntakeSettings, IntakeSource
from connectors.memory import MemoryTarget
from contracts import CaseSystem, ClosureRecord, RecordState, SourceClosed, TransferMessage
from router.settings import RetrySettings, Topics
from tests.council_data import step_down
from tests.support import events_of, read, running_router

TERMINAL = {"source-closed", "source-kept-open", "dead-lettered", "held"}

LUTON_TOKEN = "luton-fst-form-tool-" + "a" * 32
BARNSLEY_TOKEN = "barnsley-eh-team-" + "b" * 32
#: a synthetic child: its name and NHS number must never come back in an answer or an audit record
CHILD_NAME = "Quillon Zephyrine-Testchild"
NHS = "9990000026"


def luton(n: int = 1, **changes: Any) -> dict[str, Any]:
    doc = step_down("luton", n, **changes)
    doc["child"] = {**doc["child"], "given_name": CHILD_NAME, "nhs_number": NHS}
    return doc


def settings(**changes: Any) -> IntakeSettings:
    callers = [
        {"name": "luton-fst-forms", "token": LUTON_TOKEN, "council": "luton"},
        {"name": "barnsley-eh", "token": BARNSLEY_TOKEN, "council": "barnsley"},
    ]
    return IntakeSettings.model_validate({"host": "127.0.0.1", "port": 0, "callers": callers, **changes})


def auth(token: str = LUTON_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def intake(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> AsyncIterator[IntakeServer]:
    async with IntakeServer(settings(), kafka_bootstrap, Topics(topic_prefix), tmp_path / "intake.sqlite3") as server:
        yield server


@pytest.fixture
async def http(intake: IntakeServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=intake.url, timeout=30) as client:
        yield client


async def audits(server: IntakeServer, n: int) -> list[dict[str, Any]]:
    """The intake's ``n`` audit records, from ``<prefix>.intake-audit``; none of them on the operators' audit topic
    (under ACLs only the operator and the monitor may write that, not the ``casebridge run`` principal)."""
    records = await read(server.kafka, server.topics.intake_audit, lambda rs: len(rs) >= n, timeout=30)
    assert all(r.key is not None and r.key.startswith(b"intake/") for r in records)
    assert [] == await read(server.kafka, server.topics.audit, lambda rs: len(rs) >= 1, timeout=1)
    return [json.loads(r.value) for r in records if r.value is not None]


def no_personal_data(text: str) -> None:
    assert CHILD_NAME not in text and NHS not in text and "Exampleton" not in text


async def test_a_valid_luton_step_down_is_published_keyed_by_child_and_audited_and_posting_it_again_is_idempotent(
    intake: IntakeServer, http: httpx.AsyncClient
) -> None:
    doc = luton(1)
    answer = await http.post("/api/transfers", json=doc, headers=auth())
    assert (202, {"transfer_id": "luton-sd-1", "status": "accepted"}) == (answer.status_code, answer.json())

    [record] = await read(intake.kafka, intake.topics.transfers, lambda rs: len(rs) >= 1, timeout=30)
    assert b"mailbox:MAILBOX-1" == record.key  # <system>:<id> of the first child identifier, as every publisher
    assert TransferMessage.model_validate(doc) == TransferMessage.model_validate_json(record.value)

    again = await http.post("/api/transfers", json={**doc, "message_id": "luton-sd-1-m2"}, headers=auth())
    assert (200, "already received") == (again.status_code, again.json()["status"])
    changed = await http.post("/api/transfers", json={**doc, "urgency": "urgent"}, headers=auth())
    assert (409, "conflict") == (changed.status_code, changed.json()["error"])

    accepted, repeated, conflict = await audits(intake, 3)  # one key, one partition: in order
    assert ("intake-post", "luton-fst-forms", "luton-sd-1", "accepted", 202, "luton") == (
        accepted["action"],
        accepted["caller"],
        accepted["transfer_id"],
        accepted["outcome"],
        accepted["status"],
        accepted["council"],
    )
    assert accepted["at"]
    assert [("already-received", 200), ("conflict", 409)] == [(a["outcome"], a["status"]) for a in (repeated, conflict)]
    for a in (accepted, repeated, conflict):
        no_personal_data(json.dumps(a))
    # only the first post was published
    records = await read(intake.kafka, intake.topics.transfers, lambda rs: len(rs) >= 2, timeout=3)
    assert 1 == len(records)


async def test_a_bad_body_is_422_naming_field_and_rule_never_the_value(
    intake: IntakeServer, http: httpx.AsyncClient
) -> None:
    doc = luton(2)
    doc["child"] = {**doc["child"], "gender": f"{CHILD_NAME} (not a gender)", "nhs_number": "999-NOT-TEN"}
    answer = await http.post("/api/transfers", json=doc, headers=auth())
    assert 422 == answer.status_code
    body = answer.json()
    assert "invalid-transfer" == body["error"]
    assert {("child.gender", "enum"), ("child.nhs_number", "string_pattern_mismatch")} == {
        (e["field"], e["rule"]) for e in body["errors"]
    }
    no_personal_data(answer.text)
    assert "999-NOT-TEN" not in answer.text

    not_json = await http.post("/api/transfers", content=b"{not json " + CHILD_NAME.encode(), headers=auth())
    assert 422 == not_json.status_code
    assert ["json_invalid"] == [e["rule"] for e in not_json.json()["errors"]]
    no_personal_data(not_json.text)

    elsewhere = luton(3, pathway={**luton(3)["pathway"], "from_system": "lcs"})
    refused = await http.post("/api/transfers", json=elsewhere, headers=auth())
    assert 422 == refused.status_code
    assert ("pathway.from_system", "intake_source") in {(e["field"], e["rule"]) for e in refused.json()["errors"]}

    found = {a["transfer_id"]: a for a in await audits(intake, 3)}
    invalid, malformed = found["luton-sd-2"], found[None]
    assert ("luton-fst-forms", "luton-sd-2", "refused-invalid", 422) == (
        invalid["caller"],
        invalid["transfer_id"],
        invalid["outcome"],
        invalid["status"],
    )
    assert {"child.gender: enum", "child.nhs_number: string_pattern_mismatch"} == set(invalid["fields"])
    assert (None, "refused-invalid") == (malformed["transfer_id"], malformed["outcome"])
    no_personal_data(json.dumps([invalid, malformed]))


async def test_no_token_or_a_wrong_one_is_401_another_councils_transfer_403_too_large_413(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    small = settings(max_body_bytes=4096)
    async with (
        IntakeServer(small, kafka_bootstrap, Topics(topic_prefix), tmp_path / "intake.sqlite3") as intake,
        httpx.AsyncClient(base_url=intake.url, timeout=30) as http,
    ):
        doc = luton(4)
        none = await http.post("/api/transfers", json=doc)
        wrong = await http.post("/api/transfers", json=doc, headers=auth("x" * 40))
        basic = await http.post("/api/transfers", json=doc, headers={"Authorization": f"Basic {LUTON_TOKEN}"})
        assert [401, 401, 401] == [a.status_code for a in (none, wrong, basic)]
        assert "Bearer" == none.headers["www-authenticate"]
        council = await http.post("/api/transfers", json=doc, headers=auth(BARNSLEY_TOKEN))
        assert (403, "forbidden") == (council.status_code, council.json()["error"])
        big = luton(5, documents=[*doc["documents"], {"type": "case-notes", "content": "x" * 5000}])
        large = await http.post("/api/transfers", json=big, headers=auth())
        assert (413, 4096) == (large.status_code, large.json()["max_bytes"])
        for a in (none, wrong, council, large):
            no_personal_data(a.text)
        status = await http.get("/api/transfers/luton-sd-4")
        assert 401 == status.status_code

        found = await audits(intake, 5)
        assert [
            (None, None, "refused-unauthenticated", 401),
            (None, None, "refused-unauthenticated", 401),
            (None, None, "refused-unauthenticated", 401),
            ("barnsley-eh", "luton-sd-4", "refused-council", 403),
            ("luton-fst-forms", None, "refused-too-large", 413),
        ] == sorted(  # the intake audit topic's partitions (by key) interleave in any order
            [(a["caller"], a["transfer_id"], a["outcome"], a["status"]) for a in found], key=lambda a: a[3]
        )
        # nothing refused reached the transfers topic
        ok = await http.post("/api/transfers", json=luton(6), headers=auth())
        assert 202 == ok.status_code
        records = await read(intake.kafka, intake.topics.transfers, lambda rs: len(rs) >= 2, timeout=3)
        assert [b"mailbox:MAILBOX-6"] == [r.key for r in records]


async def test_intake_source_closure_and_keep_open_are_visible_to_the_team_via_get(
    intake: IntakeServer, http: httpx.AsyncClient
) -> None:
    down, other = luton(7), luton(8)
    for doc in (down, other):
        assert 202 == (await http.post("/api/transfers", json=doc, headers=auth())).status_code
    received = await http.get("/api/transfers/luton-sd-7", headers=auth())
    assert (200, "received", None) == (received.status_code, received.json()["status"], received.json()["closure"])

    source = IntakeSource(intake.store_path)
    async with source:
        transfer = TransferMessage.model_validate(down)
        assert RecordState.OPEN == (await source.state(transfer)).state
        closure = ClosureRecord(
            reason="Early Help episode closed: stepped down to universal services", rule_ids=["LU-2"]
        )
        receipt = Receipt(CaseSystem.MAILBOX, "MEM-luton-sd-7", acknowledged=True)
        ref = await source.close(transfer.model_copy(update={"closure": closure}), receipt)
        assert ref == await source.close(transfer, receipt)  # idempotent: the first closure stands
        state = await source.state(transfer)
        assert (RecordState.CLOSED, "luton-sd-7") == (state.state, state.closed_by_transfer)
        kept = TransferMessage.model_validate(other)
        assert await source.keep_open(kept, receipt, ["LU-4"])

    closed = (await http.get("/api/transfers/luton-sd-7", headers=auth())).json()
    assert ("closed", {"reason": closure.reason, "rule_ids": ["LU-2"]}, ref) == (
        closed["status"],
        closed["closure"],
        closed["reference"],
    )
    no_personal_data(json.dumps(closed))
    open_ = (await http.get("/api/transfers/luton-sd-8", headers=auth())).json()
    assert ("kept-open", ["LU-4"]) == (open_["status"], open_["kept_open_rule_ids"])
    # another council's caller, or an unknown id: the same 404 (nothing says the transfer exists)
    assert 404 == (await http.get("/api/transfers/luton-sd-7", headers=auth(BARNSLEY_TOKEN))).status_code
    assert 404 == (await http.get("/api/transfers/luton-sd-99", headers=auth())).status_code
    # a closed transfer posted again is already received
    assert 200 == (await http.post("/api/transfers", json=down, headers=auth())).status_code

    # the stack's loop shape: run(interval, stop) serves until stop() is true
    stopping = asyncio.Event()
    loop = asyncio.create_task(intake.run(0.02, stopping.is_set))
    await asyncio.sleep(0.1)
    assert not loop.done()
    stopping.set()
    await asyncio.wait_for(loop, 5)


def test_settings_never_print_a_token_and_need_callers() -> None:
    s = settings()
    assert LUTON_TOKEN not in repr(s) and LUTON_TOKEN not in str(s.model_dump())
    short = "short-secret-Quillon"  # 20 characters: refused, and not echoed
    with pytest.raises(ValidationError) as refused:
        IntakeSettings.model_validate({"callers": [{"name": "t", "token": short, "council": "luton"}]})
    assert short not in str(refused.value)
    with pytest.raises(ValidationError):
        IntakeSettings.model_validate({"callers": []})
    with pytest.raises(ValidationError) as twice:
        IntakeSettings.model_validate(
            {"callers": [{"name": n, "token": LUTON_TOKEN, "council": "luton"} for n in ("a", "b")]}
        )
    assert LUTON_TOKEN not in str(twice.value)
    with pytest.raises(ValidationError):
        IntakeSettings.model_validate({"callers": s.model_dump()["callers"], "unknown": 1})
    assert (8110, 5 * 1024 * 1024) == (
        IntakeSettings(callers=s.callers).port,
        IntakeSettings(callers=s.callers).max_body_bytes,
    )


class MemoryMailbox(MemoryTarget):
    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX


def luton_to_universal(n: int) -> dict[str, Any]:
    """LU-2: an early-help episode stepped down to universal services, its closure summary authorised."""
    doc = luton(n)
    doc["pathway"] = {**doc["pathway"], "from_level": "early-help", "to_level": "universal"}
    doc["management_decision"] = {
        **doc["management_decision"],
        "decided_by": {"name": "Morgan Testmanager", "role": "EH Manager"},
        "forum": "Closure meeting",
    }
    doc["documents"] = [{"type": "closure-summary", "content": "Authorised closure summary (synthetic)."}]
    return doc


async def test_e2e_luton_step_downs_posted_to_the_intake_are_routed_and_their_team_records_closed_in_the_store(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, retry_settings: RetrySettings
) -> None:
    """Intake -> transfers topic -> router (Luton's protocol: mailbox -> mailbox) -> the Early Help Team's
    mailbox (a memory target) -> IntakeSource closes the sending team's record in the intake store, with the
    protocol's closure record where it words one (LU-2), and the team reads it back."""
    store = tmp_path / "state" / "intake.sqlite3"
    mailbox = MemoryMailbox()
    fst, universal = luton(11), luton_to_universal(12)
    ids = {"luton-sd-11", "luton-sd-12"}
    async with (
        IntakeServer(settings(), kafka_bootstrap, Topics(topic_prefix), store) as intake,
        httpx.AsyncClient(base_url=intake.url, timeout=30) as http,
        running_router(
            kafka_bootstrap,
            topic_prefix,
            {CaseSystem.MAILBOX: mailbox},
            {CaseSystem.MAILBOX: IntakeSource(store)},
            retry=retry_settings,
        ),
    ):
        for doc in (fst, universal):
            assert 202 == (await http.post("/api/transfers", json=doc, headers=auth())).status_code

        def ended(records: list[Any]) -> bool:
            return ids <= {e.transfer_id for e in events_of(records) if e.event_type in TERMINAL}

        records = await read(kafka_bootstrap, Topics(topic_prefix).events, ended, timeout=60)
        for tid in sorted(ids):
            mine = [e for e in events_of(records) if e.transfer_id == tid]
            types = [e.event_type for e in mine]
            assert "source-closed" == types[-1], types
            assert types.index("acknowledged") < types.index("source-closed")
            [event] = [e for e in mine if isinstance(e, SourceClosed)]
            assert (CaseSystem.MAILBOX, f"INTAKE-{tid}-closed") == (event.source_system, event.source_reference)
            sent, route = mailbox.items[tid]
            assert ("Early Help Team", NHS) == (route.team, sent.child.nhs_number)

        # FST -> Early Help: closed; Luton's protocol words no closure record for it
        status = (await http.get("/api/transfers/luton-sd-11", headers=auth())).json()
        assert ("closed", None, "INTAKE-luton-sd-11-closed") == (
            status["status"],
            status["closure"],
            status["reference"],
        )
        # early help -> universal: closed with LU-2's closure record, kept in the store and shown to the team
        entry = intake.store.get("luton-sd-12")
        assert entry is not None and entry.closure is not None
        assert ("closed", ["LU-2"]) == (entry.status, entry.closure.rule_ids)
        status = (await http.get("/api/transfers/luton-sd-12", headers=auth())).json()
        assert ("closed", entry.closure.reason) == (status["status"], status["closure"]["reason"])
        assert "universal services" in entry.closure.reason
        # posting one again is harmless: already received, nothing new published
        assert 200 == (await http.post("/api/transfers", json=fst, headers=auth())).status_code
