"""Sandbox Liquidlogic LCS (children's social care), as a real HTTP service.

Children's records, closure/reopening, step-down transfer requests and a durable,
ordered change feed a connector can resume from a cursor. Vendor behaviour from
the North Somerset protocol is enforced: a closed record cannot be stepped down
(NS-7).

Step-ups arrive at the Front Door as Contacts (``PUT /api/contacts/{transfer_id}``,
idempotent on the transfer id); a contact endorsed by the Duty Manager is a Referral
(SW26-1); the Front Door's queue lists urgent contacts first (SW22-1).

Run it: ``casebridge sandbox lcs --db lcs.sqlite3 --token T --port 8101``.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, FastAPI, Response
from pydantic import AwareDatetime, Field, StringConstraints, ValidationInfo, field_validator

from sandboxes._common import (
    Clock,
    Database,
    FeedAfter,
    FeedLimit,
    SandboxError,
    StrictModel,
    dump_json,
    feed_page,
    row_by_prefixed_id,
    sandbox_app,
    utcnow,
)

__all__ = [
    "CHANGE_KINDS",
    "Contact",
    "ContactChild",
    "ContactIn",
    "ContactList",
    "ContactPutResult",
    "Decision",
    "DecisionFeed",
    "DecisionIn",
    "Change",
    "ChangeFeed",
    "Child",
    "ChildIn",
    "CloseIn",
    "CompleteIn",
    "Consent",
    "ConsentExemption",
    "ManagementDecision",
    "ReopenIn",
    "StepdownCancelIn",
    "StepdownIn",
    "StepdownList",
    "StepdownRequest",
    "create_app",
]

logger = logging.getLogger("sandboxes.lcs")

CHILD_PREFIX = "LCS-"
REQUEST_PREFIX = "SDR-"
CONTACT_PREFIX = "CON-"

Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
Gender = Literal["female", "male", "other", "unknown"]
RecordState = Literal["open", "closed"]
TargetLevel = Literal["early_help", "intensive_early_help", "universal"]
StepdownStatus = Literal["pending", "completed", "cancelled"]
ChangeKind = Literal[
    "child_created",
    "record_closed",
    "record_reopened",
    "stepdown_requested",
    "stepdown_completed",
    "stepdown_cancelled",
]
CHANGE_KINDS: tuple[str, ...] = get_args(ChangeKind)


# ---------------------------------------------------------------------------- models


class ChildIn(StrictModel):
    given_name: Text
    family_name: Text
    date_of_birth: date
    gender: Gender
    nhs_number: str | None = Field(default=None, pattern=r"^[0-9]{10}$")
    upn: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{13}$")
    locality: Text
    disabled: bool = False
    direct_payment: bool = False
    postcode: Annotated[str, StringConstraints(min_length=1, max_length=10)] | None = None


class Child(ChildIn):
    id: str
    record_state: RecordState
    closure_reason: str | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    closure_transfer_id: str | None = None
    created_at: datetime


class CloseIn(StrictModel):
    reason: Text
    closed_by: Text
    transfer_id: Text | None = None


class ReopenIn(StrictModel):
    reopened_by: Text


class Consent(StrictModel):
    given_by: Text
    given_on: date
    scope: list[Text]


class ConsentExemption(StrictModel):
    reason: LongText
    decided_by: Text
    decided_by_role: Text
    decided_on: date


class ManagementDecision(StrictModel):
    decided_by: Text
    role: Text
    forum: Text | None = None
    rationale: LongText
    decided_on: date


class StepdownIn(StrictModel):
    """The step-down transfer request a social worker fills in on LCS.

    Every council's fields are optional here; the council's protocol (checked by casebridge)
    says which must be present: North Somerset's meeting notes, plan and Support Leader (NS-6);
    Swindon's assessment and proposed plan (SW26-6), the handover date (SW26-6) and the Lead
    Practitioner (SW26-7).
    """

    meeting_notes: LongText | None = None
    plan: LongText | None = Field(default=None, description="the step-down plan (NS-6) / proposed plan (SW26-6)")
    assessment: LongText | None = Field(
        default=None,
        description="SW26-6: the social work assessment: strengths, risk and need, outcomes achieved",
    )
    handover_due: AwareDatetime | None = Field(
        default=None, description="SW26-6: when the handover to early help is arranged (within 10 calendar days)"
    )
    support_leader: Text | None = None
    lead_practitioner: Text | None = Field(
        default=None, description="SW26-7: the early intervention Lead Practitioner the child is allocated to"
    )
    lead_practitioner_organisation: Text | None = None
    family_support_worker: Text | None = None
    target_level: TargetLevel
    family_hub_universal: bool = False
    consent: Consent | None = None
    consent_exemption: ConsentExemption | None = None
    management_decision: ManagementDecision | None = None
    requested_by: Text

    @field_validator("family_hub_universal")
    @classmethod
    def _family_hub_is_universal(cls, value: bool, info: ValidationInfo) -> bool:
        level = info.data.get("target_level")
        if value and level is not None and level != "universal":
            raise ValueError("family_hub_universal applies only to target_level 'universal' (NS-14)")
        return value

    @field_validator("lead_practitioner_organisation")
    @classmethod
    def _organisation_of_a_lead(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("lead_practitioner") is None:
            raise ValueError("lead_practitioner_organisation needs lead_practitioner (SW26-7)")
        return value


class StepdownRequest(StepdownIn):
    request_id: str
    child_id: str
    status: StepdownStatus
    created_at: datetime
    transfer_id: str | None = None
    ehm_reference: str | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    cancel_reason: str | None = None


class StepdownList(StrictModel):
    requests: list[StepdownRequest]


class CompleteIn(StrictModel):
    transfer_id: Text
    ehm_reference: Text


class StepdownCancelIn(StrictModel):
    cancelled_by: Text
    reason: Text


class Change(StrictModel):
    seq: int
    kind: ChangeKind
    child_id: str
    request_id: str | None
    at: datetime


class ChangeFeed(StrictModel):
    changes: list[Change]
    last_seq: int = Field(
        description="cursor to pass as ?after= next: the last seq returned, or the given after when the page is empty"
    )
    has_more: bool


class ContactChild(StrictModel):
    given_name: Text
    family_name: Text
    date_of_birth: date
    source_id: Text
    nhs_number: str | None = Field(default=None, pattern=r"^[0-9]{10}$")
    locality: Text | None = None


class ContactIn(StrictModel):
    """A step-up arriving at the Front Door (NS-9: with the Step-Up form and case notes)."""

    child: ContactChild
    stage: Literal["contact", "referral"]
    urgent: bool = False
    team: Text | None = None
    first_contact: Text | None = Field(default=None, description="NS-10: the recent social worker to call first")
    endorsed_by: Text | None = Field(default=None, description="SW26-1: the Duty Manager's referral endorsement")
    documents: dict[str, LongText] = Field(default_factory=dict)
    consent_exemption_by: Text | None = None
    source_reference: Text
    received_from: Text


class ContactPutResult(StrictModel):
    contact_id: str
    transfer_id: str
    created: bool


FrontDoorDecision = Literal["accepted", "not-accepted"]


class Contact(ContactIn):
    contact_id: str
    transfer_id: str
    status: Literal["received"]
    received_at: datetime
    decision: FrontDoorDecision | None = Field(default=None, description="NS-12: the Front Door management's decision")
    decided_at: datetime | None = None


class DecisionIn(StrictModel):
    """NS-12: Front Door management decide on a step-up contact (accepted: recording moves to LCS)."""

    decision: FrontDoorDecision
    decided_by: Text


class Decision(StrictModel):
    """One entry of the decision feed: ids and the decision, no names."""

    seq: int
    transfer_id: str
    contact_id: str
    decision: FrontDoorDecision
    at: datetime


class DecisionFeed(StrictModel):
    decisions: list[Decision]
    last_seq: int = Field(description="cursor to pass as ?after= next")
    has_more: bool


class ContactList(StrictModel):
    contacts: list[Contact]


# ---------------------------------------------------------------------------- storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS children (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    data TEXT NOT NULL,
    record_state TEXT NOT NULL DEFAULT 'open',
    closure_reason TEXT,
    closed_at TEXT,
    closed_by TEXT,
    closure_transfer_id TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stepdown_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    child_id INTEGER NOT NULL REFERENCES children(id),
    data TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    created_at TEXT NOT NULL,
    transfer_id TEXT,
    ehm_reference TEXT,
    completed_at TEXT,
    cancelled_at TEXT,
    cancelled_by TEXT,
    cancel_reason TEXT
);
CREATE INDEX IF NOT EXISTS stepdown_requests_child ON stepdown_requests(child_id);
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL,
    urgent INTEGER NOT NULL DEFAULT 0,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS front_door_decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id INTEGER NOT NULL UNIQUE REFERENCES contacts(id),
    decision TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    child_id INTEGER NOT NULL,
    request_id INTEGER,
    at TEXT NOT NULL
);
"""


def _child_from_row(row: sqlite3.Row) -> Child:
    base = ChildIn.model_validate_json(row["data"])
    return Child(
        **base.model_dump(),
        id=f"{CHILD_PREFIX}{row['id']}",
        record_state=row["record_state"],
        closure_reason=row["closure_reason"],
        closed_at=row["closed_at"],
        closed_by=row["closed_by"],
        closure_transfer_id=row["closure_transfer_id"],
        created_at=row["created_at"],
    )


def _request_from_row(row: sqlite3.Row) -> StepdownRequest:
    base = StepdownIn.model_validate_json(row["data"])
    return StepdownRequest(
        **base.model_dump(),
        request_id=f"{REQUEST_PREFIX}{row['id']}",
        child_id=f"{CHILD_PREFIX}{row['child_id']}",
        status=row["status"],
        created_at=row["created_at"],
        transfer_id=row["transfer_id"],
        ehm_reference=row["ehm_reference"],
        completed_at=row["completed_at"],
        cancelled_at=row["cancelled_at"],
        cancelled_by=row["cancelled_by"],
        cancel_reason=row["cancel_reason"],
    )


def _child_row(conn: sqlite3.Connection, child_id: str) -> sqlite3.Row:
    return row_by_prefixed_id(conn, "children", child_id, CHILD_PREFIX, error="child_not_found", field="child_id")


def _request_row(conn: sqlite3.Connection, request_id: str) -> sqlite3.Row:
    return row_by_prefixed_id(
        conn, "stepdown_requests", request_id, REQUEST_PREFIX, error="stepdown_request_not_found", field="request_id"
    )


def _record_change(
    conn: sqlite3.Connection,
    kind: ChangeKind,
    child_pk: int,
    request_pk: int | None,
    at: datetime,
) -> None:
    conn.execute(
        "INSERT INTO changes (kind, child_id, request_id, at) VALUES (?, ?, ?, ?)",
        (kind, child_pk, request_pk, at.isoformat()),
    )


# ------------------------------------------------------------------------------- app


def create_app(db_path: Path, token: str, *, clock: Clock = utcnow) -> FastAPI:
    """The LCS sandbox app, storing everything in the sqlite file ``db_path``.

    Every route (``/api/...`` and ``/_sandbox/faults``) needs
    ``Authorization: Bearer <token>``. ``clock`` stamps records (tests may fix it).
    """
    db = Database(db_path, SCHEMA)
    app = sandbox_app("Liquidlogic LCS", db, token, clock=clock)
    api = APIRouter(prefix="/api")

    @api.post("/children", status_code=201)
    def create_child(body: ChildIn) -> Child:
        now = clock()
        with db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO children (data, created_at) VALUES (?, ?)",
                (dump_json(body), now.isoformat()),
            )
            pk = int(cur.lastrowid or 0)
            _record_change(conn, "child_created", pk, None, now)
            row = conn.execute("SELECT * FROM children WHERE id = ?", (pk,)).fetchone()
        logger.info("child created id=%s%s", CHILD_PREFIX, pk)
        return _child_from_row(row)

    @api.get("/children/{child_id}")
    def get_child(child_id: str) -> Child:
        with db.read() as conn:
            return _child_from_row(_child_row(conn, child_id))

    @api.post("/children/{child_id}/close")
    def close_child(child_id: str, body: CloseIn) -> Child:
        now = clock()
        with db.transaction() as conn:
            row = _child_row(conn, child_id)
            if row["record_state"] == "closed":
                raise SandboxError(409, "record_already_closed", child_id=child_id)
            conn.execute(
                "UPDATE children SET record_state = 'closed', closure_reason = ?,"
                " closed_at = ?, closed_by = ?, closure_transfer_id = ? WHERE id = ?",
                (
                    body.reason,
                    now.isoformat(),
                    body.closed_by,
                    body.transfer_id,
                    row["id"],
                ),
            )
            _record_change(conn, "record_closed", row["id"], None, now)
            row = _child_row(conn, child_id)
        logger.info("record closed id=%s", child_id)
        return _child_from_row(row)

    @api.post("/children/{child_id}/reopen")
    def reopen_child(child_id: str, body: ReopenIn) -> Child:
        now = clock()
        with db.transaction() as conn:
            row = _child_row(conn, child_id)
            if row["record_state"] == "open":
                raise SandboxError(409, "record_already_open", child_id=child_id)
            conn.execute(
                "UPDATE children SET record_state = 'open', closure_reason = NULL,"
                " closed_at = NULL, closed_by = NULL, closure_transfer_id = NULL"
                " WHERE id = ?",
                (row["id"],),
            )
            _record_change(conn, "record_reopened", row["id"], None, now)
            row = _child_row(conn, child_id)
        logger.info("record reopened id=%s", child_id)
        return _child_from_row(row)

    @api.post("/children/{child_id}/stepdown-requests", status_code=201)
    def request_stepdown(child_id: str, body: StepdownIn) -> StepdownRequest:
        now = clock()
        with db.transaction() as conn:
            child = _child_row(conn, child_id)
            if child["record_state"] == "closed":
                # NS-7: a closed LCS record can no longer be stepped down to EHM.
                raise SandboxError(409, "record_closed", rule="NS-7", child_id=child_id)
            cur = conn.execute(
                "INSERT INTO stepdown_requests (child_id, data, created_at) VALUES (?, ?, ?)",
                (child["id"], dump_json(body), now.isoformat()),
            )
            pk = int(cur.lastrowid or 0)
            _record_change(conn, "stepdown_requested", child["id"], pk, now)
            row = conn.execute("SELECT * FROM stepdown_requests WHERE id = ?", (pk,)).fetchone()
        logger.info(
            "stepdown requested request_id=%s%s child_id=%s",
            REQUEST_PREFIX,
            pk,
            child_id,
        )
        return _request_from_row(row)

    @api.get("/children/{child_id}/stepdown-requests")
    def list_child_stepdowns(child_id: str) -> StepdownList:
        with db.read() as conn:
            child = _child_row(conn, child_id)
            rows = conn.execute(
                "SELECT * FROM stepdown_requests WHERE child_id = ? ORDER BY id",
                (child["id"],),
            ).fetchall()
        return StepdownList(requests=[_request_from_row(r) for r in rows])

    @api.get("/stepdown-requests/{request_id}")
    def get_stepdown(request_id: str) -> StepdownRequest:
        with db.read() as conn:
            return _request_from_row(_request_row(conn, request_id))

    @api.post("/stepdown-requests/{request_id}/complete")
    def complete_stepdown(request_id: str, body: CompleteIn) -> StepdownRequest:
        now = clock()
        with db.transaction() as conn:
            row = _request_row(conn, request_id)
            if row["status"] == "completed":
                if row["transfer_id"] == body.transfer_id:
                    return _request_from_row(row)
                raise SandboxError(
                    409,
                    "stepdown_already_completed",
                    request_id=request_id,
                    transfer_id=row["transfer_id"],
                )
            if row["status"] == "cancelled":
                raise SandboxError(409, "stepdown_cancelled", request_id=request_id)
            child = conn.execute("SELECT * FROM children WHERE id = ?", (row["child_id"],)).fetchone()
            closed_by_other = child["record_state"] == "closed" and child["closure_transfer_id"] != body.transfer_id
            if closed_by_other:
                # NS-7: closed out of band before the step-down completed.
                raise SandboxError(
                    409,
                    "record_closed",
                    rule="NS-7",
                    child_id=f"{CHILD_PREFIX}{child['id']}",
                )
            conn.execute(
                "UPDATE stepdown_requests SET status = 'completed', transfer_id = ?,"
                " ehm_reference = ?, completed_at = ? WHERE id = ?",
                (body.transfer_id, body.ehm_reference, now.isoformat(), row["id"]),
            )
            _record_change(conn, "stepdown_completed", row["child_id"], row["id"], now)
            row = _request_row(conn, request_id)
        logger.info("stepdown completed request_id=%s", request_id)
        return _request_from_row(row)

    @api.post("/stepdown-requests/{request_id}/cancel")
    def cancel_stepdown(request_id: str, body: StepdownCancelIn) -> StepdownRequest:
        now = clock()
        with db.transaction() as conn:
            row = _request_row(conn, request_id)
            if row["status"] == "cancelled":
                return _request_from_row(row)
            if row["status"] == "completed":
                raise SandboxError(409, "stepdown_already_completed", request_id=request_id)
            conn.execute(
                "UPDATE stepdown_requests SET status = 'cancelled', cancelled_at = ?,"
                " cancelled_by = ?, cancel_reason = ? WHERE id = ?",
                (now.isoformat(), body.cancelled_by, body.reason, row["id"]),
            )
            _record_change(conn, "stepdown_cancelled", row["child_id"], row["id"], now)
            row = _request_row(conn, request_id)
        logger.info("stepdown cancelled request_id=%s", request_id)
        return _request_from_row(row)

    # -- the Front Door: step-ups arrive as contacts

    def _contact(conn: sqlite3.Connection, row: sqlite3.Row) -> Contact:
        base = ContactIn.model_validate_json(row["data"])
        decided = conn.execute("SELECT * FROM front_door_decisions WHERE contact_id = ?", (row["id"],)).fetchone()
        return Contact(
            **base.model_dump(),
            contact_id=f"{CONTACT_PREFIX}{row['id']}",
            transfer_id=row["transfer_id"],
            status="received",
            received_at=row["received_at"],
            decision=decided["decision"] if decided else None,
            decided_at=decided["at"] if decided else None,
        )

    @api.put("/contacts/{transfer_id}", status_code=201)
    def put_contact(transfer_id: str, body: ContactIn, response: Response) -> ContactPutResult:
        with db.transaction() as conn:
            row = conn.execute("SELECT * FROM contacts WHERE transfer_id = ?", (transfer_id,)).fetchone()
            created = row is None
            if created:
                conn.execute(
                    "INSERT INTO contacts (transfer_id, data, urgent, received_at) VALUES (?, ?, ?, ?)",
                    (transfer_id, dump_json(body), int(body.urgent), clock().isoformat()),
                )
                row = conn.execute("SELECT * FROM contacts WHERE transfer_id = ?", (transfer_id,)).fetchone()
        if not created:
            response.status_code = 200
        logger.info(
            "contact %s contact_id=%s%s", "created" if created else "already present", CONTACT_PREFIX, row["id"]
        )
        return ContactPutResult(contact_id=f"{CONTACT_PREFIX}{row['id']}", transfer_id=transfer_id, created=created)

    @api.get("/contacts")
    def list_contacts() -> ContactList:
        """The Front Door's queue: urgent contacts first (SW22-1), then in order of arrival."""
        with db.read() as conn:
            rows = conn.execute("SELECT * FROM contacts ORDER BY urgent DESC, id").fetchall()
            return ContactList(contacts=[_contact(conn, r) for r in rows])

    @api.get("/contacts/{transfer_id}")
    def get_contact(transfer_id: str) -> Contact:
        with db.read() as conn:
            row = conn.execute("SELECT * FROM contacts WHERE transfer_id = ?", (transfer_id,)).fetchone()
            if row is None:
                raise SandboxError(404, "contact_not_found", transfer_id=transfer_id)
            return _contact(conn, row)

    @api.post("/contacts/{transfer_id}/decision")
    def decide(transfer_id: str, body: DecisionIn) -> Contact:
        """NS-12: the Front Door's decision, once; the same decision again is a no-op, another one a 409."""
        with db.transaction() as conn:
            row = conn.execute("SELECT * FROM contacts WHERE transfer_id = ?", (transfer_id,)).fetchone()
            if row is None:
                raise SandboxError(404, "contact_not_found", transfer_id=transfer_id)
            decided = conn.execute("SELECT * FROM front_door_decisions WHERE contact_id = ?", (row["id"],)).fetchone()
            if decided is None:
                conn.execute(
                    "INSERT INTO front_door_decisions (contact_id, decision, decided_by, at) VALUES (?, ?, ?, ?)",
                    (row["id"], body.decision, body.decided_by, clock().isoformat()),
                )
            elif decided["decision"] != body.decision:
                raise SandboxError(409, "already_decided", field="decision", rule="NS-12")
            contact = _contact(conn, row)
        logger.info("front door decision contact_id=%s decision=%s", contact.contact_id, body.decision)
        return contact

    @api.get("/front-door-decisions")
    def decisions(
        after: FeedAfter = 0,
        limit: FeedLimit = 100,
    ) -> DecisionFeed:
        """The Front Door's decisions on contacts, in the order they were made (a durable feed: NS-12)."""
        with db.read() as conn:
            select = "SELECT d.*, c.transfer_id FROM front_door_decisions d JOIN contacts c ON c.id = d.contact_id"
            rows, last, more = feed_page(conn, select, after, limit, seq="d.seq")
        feed = [
            Decision(
                seq=r["seq"],
                transfer_id=r["transfer_id"],
                contact_id=f"{CONTACT_PREFIX}{r['contact_id']}",
                decision=r["decision"],
                at=r["at"],
            )
            for r in rows
        ]
        return DecisionFeed(decisions=feed, last_seq=last, has_more=more)

    @api.get("/changes")
    def changes(
        after: FeedAfter = 0,
        limit: FeedLimit = 100,
    ) -> ChangeFeed:
        with db.read() as conn:
            page, last, more = feed_page(conn, "SELECT * FROM changes", after, limit)
        feed = [
            Change(
                seq=r["seq"],
                kind=r["kind"],
                child_id=f"{CHILD_PREFIX}{r['child_id']}",
                request_id=(None if r["request_id"] is None else f"{REQUEST_PREFIX}{r['request_id']}"),
                at=r["at"],
            )
            for r in page
        ]
        return ChangeFeed(changes=feed, last_seq=last, has_more=more)

    app.include_router(api)
    return app
