"""Sandbox Care Director (Swindon's social care system in 2022), as a real HTTP service.

Person records (children open to social care), completed statutory assessments with
the vendor's assessment outcome pick list, the social care closure record, contacts
created from step-up requests (the MASH's intake), and a durable change feed.
Vendor behaviour from the Swindon 2022 protocol (seed 001) is enforced:

- SW22-10: the assessment team closes only once the receiving early-help worker is
  named (a closure without ``early_help_worker`` is refused, 422 with ``rule``);
- SW22-11: the closure record names the lead service (required field);
- SW22-12: where more than one service is involved the closure record names the Lead
  Professional (refused otherwise);
- SW22-3: a step-up contact carries the Early Help Assessment and the TAF plan.

Run it: ``casebridge sandbox care-director --db cd.sqlite3 --token T --port 8103``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi import Path as PathParam
from pydantic import Field, StringConstraints

from sandboxes._common import (
    Clock,
    Database,
    FeedAfter,
    FeedLimit,
    SandboxError,
    StrictModel,
    dump_json,
    feed_page,
    parse_prefixed_id,
    row_by_prefixed_id,
    sandbox_app,
    utcnow,
)

__all__ = [
    "ASSESSMENT_OUTCOMES",
    "Assessment",
    "AssessmentIn",
    "Change",
    "ChangeFeed",
    "Contact",
    "ContactIn",
    "ContactPutResult",
    "OutcomeList",
    "Person",
    "PersonIn",
    "StepdownReferral",
    "StepdownReferralIn",
    "create_app",
]

logger = logging.getLogger("sandboxes.care_director")

PERSON_PREFIX = "CD-"
ASSESSMENT_PREFIX = "CDA-"
CONTACT_PREFIX = "CDC-"
REFERRAL_PREFIX = "CDR-"

#: The vendor's assessment outcome pick list (code -> label, as the ACP selects it; seed 001).
ASSESSMENT_OUTCOMES: Mapping[str, str] = {
    "ASO-TAF-LP": "TAF Lead Professional Identified / Refer to Other service",
    "ASO-EHH": "Refer to EHH Service",
    "ASO-FISS": "Refer to FISS Service",
    "ASO-CIN": "Continue as Child in Need",
}

Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=1_000_000)]
TransferId = Annotated[str, PathParam(min_length=1, max_length=200)]
Team = Literal["ACP", "FST", "DCT", "SWIS"]
ChangeKind = Literal[
    "person_created", "assessment_completed", "stepdown_referred", "record_closed", "record_reopened", "contact_created"
]


# ---------------------------------------------------------------------------- models


class PersonIn(StrictModel):
    given_name: Text
    family_name: Text
    date_of_birth: date
    nhs_number: str | None = Field(default=None, pattern=r"^[0-9]{10}$")
    team: Team = "ACP"


class Professional(StrictModel):
    name: Text
    role: Text | None = None
    organisation: Text | None = None


class ClosureRecord(StrictModel):
    reason: Text
    closed_by: Text
    transfer_id: Text | None = None
    onward_reference: Text | None = Field(default=None, description="the receiving service's reference")
    assessment_outcome: Text | None = None
    lead_service: Text = Field(description="SW22-11: the lead service the case closes to")
    lead_professional: Professional | None = Field(default=None, description="SW22-11/12")
    early_help_worker: Professional | None = Field(default=None, description="SW22-10: the named receiving worker")
    services_involved: list[Text] = Field(
        default_factory=list, description="SW22-12: more than one needs a Lead Professional"
    )


class Person(PersonIn):
    id: str
    record_state: Literal["open", "closed"]
    closure: ClosureRecord | None = None
    closed_at: datetime | None = None
    created_at: datetime


class AssessmentIn(StrictModel):
    outcome_code: Text
    analysis: LongText
    signed_off_by: Text
    rationale: LongText
    completed_on: date


class Assessment(AssessmentIn):
    assessment_id: str
    person_id: str
    outcome_label: str
    created_at: datetime


class AssessmentList(StrictModel):
    assessments: list[Assessment]


class ReferralConsent(StrictModel):
    given_by: Text
    given_on: date
    scope: list[Literal["referral", "information-sharing", "statutory-assessment", "recommendations"]]
    signed: bool = False


class ReferralDocumentIn(StrictModel):
    type: Text
    title: Text | None = None
    content: LongText


class StepdownReferralIn(StrictModel):
    """The social worker's referral to early help, made with consent and case-noted (seed 001, section 3/4)."""

    assessment_id: Text
    consent: ReferralConsent | None = None
    lead_professional: Professional | None = None
    early_help_worker: Professional | None = None
    documents: list[ReferralDocumentIn] = Field(default_factory=list)
    requested_by: Text


class StepdownReferral(StepdownReferralIn):
    referral_id: str
    person_id: str
    created_at: datetime


class OutcomeItem(StrictModel):
    code: str
    label: str


class OutcomeList(StrictModel):
    outcomes: list[OutcomeItem]


class ContactPerson(StrictModel):
    given_name: Text
    family_name: Text
    date_of_birth: date
    source_reference: Text


class ContactDocument(StrictModel):
    type: Text
    title: Text | None = None
    content: LongText | None = None
    reference: Text | None = None


class ContactIn(StrictModel):
    person: ContactPerson
    urgency: Literal["routine", "urgent"]
    summary: LongText
    received_from: Text
    allocated_to: Text = "Duty Assistant Team Manager (ACP)"
    documents: list[ContactDocument] = Field(default_factory=list)


class ContactPutResult(StrictModel):
    contact_id: str
    transfer_id: str
    status: Literal["new"]
    created: bool


class Contact(ContactIn):
    contact_id: str
    transfer_id: str
    status: Literal["new"]
    received_at: datetime


class Change(StrictModel):
    seq: int
    kind: ChangeKind
    person_id: str | None
    ref: str | None
    at: datetime


class ChangeFeed(StrictModel):
    changes: list[Change]
    last_seq: int
    has_more: bool


class ReopenIn(StrictModel):
    reopened_by: Text


# ---------------------------------------------------------------------------- storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS persons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    data TEXT NOT NULL,
    record_state TEXT NOT NULL DEFAULT 'open',
    closure TEXT,
    closed_at TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assessments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id INTEGER NOT NULL REFERENCES persons(id),
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS referrals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id INTEGER NOT NULL REFERENCES persons(id),
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    person_id TEXT,
    ref TEXT,
    at TEXT NOT NULL
);
"""


def _person_row(conn: sqlite3.Connection, person_id: str) -> sqlite3.Row:
    return row_by_prefixed_id(conn, "persons", person_id, PERSON_PREFIX, error="person_not_found", field="person_id")


def _person(row: sqlite3.Row) -> Person:
    base = PersonIn.model_validate_json(row["data"])
    closure = None if row["closure"] is None else ClosureRecord.model_validate_json(row["closure"])
    return Person(
        **base.model_dump(),
        id=f"{PERSON_PREFIX}{row['id']}",
        record_state=row["record_state"],
        closure=closure,
        closed_at=row["closed_at"],
        created_at=row["created_at"],
    )


def _assessment(row: sqlite3.Row) -> Assessment:
    base = AssessmentIn.model_validate_json(row["data"])
    return Assessment(
        **base.model_dump(),
        assessment_id=f"{ASSESSMENT_PREFIX}{row['id']}",
        person_id=f"{PERSON_PREFIX}{row['person_id']}",
        outcome_label=ASSESSMENT_OUTCOMES[base.outcome_code],
        created_at=row["created_at"],
    )


def _referral(row: sqlite3.Row) -> StepdownReferral:
    return StepdownReferral(
        **StepdownReferralIn.model_validate_json(row["data"]).model_dump(),
        referral_id=f"{REFERRAL_PREFIX}{row['id']}",
        person_id=f"{PERSON_PREFIX}{row['person_id']}",
        created_at=row["created_at"],
    )


def _contact_row(conn: sqlite3.Connection, transfer_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM contacts WHERE transfer_id = ?", (transfer_id,)).fetchone()
    if row is None:
        raise SandboxError(404, "contact_not_found", transfer_id=transfer_id)
    return row


def _contact(row: sqlite3.Row) -> Contact:
    base = ContactIn.model_validate_json(row["data"])
    return Contact(
        **base.model_dump(),
        contact_id=f"{CONTACT_PREFIX}{row['id']}",
        transfer_id=row["transfer_id"],
        status="new",
        received_at=row["received_at"],
    )


def _change(conn: sqlite3.Connection, kind: ChangeKind, person_id: str | None, ref: str | None, at: datetime) -> None:
    conn.execute(
        "INSERT INTO changes (kind, person_id, ref, at) VALUES (?, ?, ?, ?)", (kind, person_id, ref, at.isoformat())
    )


def _sw22_hint(request: Request, errors: Sequence[Mapping[str, Any]]) -> str | None:
    """A closure refused for a missing lead service is SW22-11."""
    if request.url.path.endswith("/close") and any(e.get("field") == "lead_service" for e in errors):
        return "SW22-11"
    return None


# ------------------------------------------------------------------------------- app


def create_app(db_path: Path, token: str, *, clock: Clock = utcnow) -> FastAPI:
    """The Care Director sandbox app, storing everything in the sqlite file ``db_path``.

    Every route (``/api/...`` and ``/_sandbox/faults``) needs ``Authorization: Bearer <token>``.
    """
    db = Database(db_path, SCHEMA)
    app = sandbox_app("Care Director", db, token, clock=clock, rule_hint=_sw22_hint)
    api = APIRouter(prefix="/api")

    @api.get("/reference/assessment-outcomes")
    def assessment_outcomes() -> OutcomeList:
        return OutcomeList(outcomes=[OutcomeItem(code=c, label=label) for c, label in ASSESSMENT_OUTCOMES.items()])

    @api.post("/persons", status_code=201)
    def create_person(body: PersonIn) -> Person:
        now = clock()
        with db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO persons (data, created_at) VALUES (?, ?)", (dump_json(body), now.isoformat())
            )
            pk = int(cur.lastrowid or 0)
            _change(conn, "person_created", f"{PERSON_PREFIX}{pk}", None, now)
            row = conn.execute("SELECT * FROM persons WHERE id = ?", (pk,)).fetchone()
        logger.info("person created id=%s%s", PERSON_PREFIX, pk)
        return _person(row)

    @api.get("/persons/{person_id}")
    def get_person(person_id: str) -> Person:
        with db.read() as conn:
            return _person(_person_row(conn, person_id))

    @api.post("/persons/{person_id}/assessments", status_code=201)
    def complete_assessment(person_id: str, body: AssessmentIn) -> Assessment:
        if body.outcome_code not in ASSESSMENT_OUTCOMES:
            raise SandboxError(
                422, "unknown_assessment_outcome", field="outcome_code", rule="SW22-7", code=body.outcome_code[:60]
            )
        now = clock()
        with db.transaction() as conn:
            person = _person_row(conn, person_id)
            if person["record_state"] == "closed":
                raise SandboxError(409, "record_closed", person_id=person_id)
            cur = conn.execute(
                "INSERT INTO assessments (person_id, data, created_at) VALUES (?, ?, ?)",
                (person["id"], dump_json(body), now.isoformat()),
            )
            pk = int(cur.lastrowid or 0)
            _change(conn, "assessment_completed", person_id, f"{ASSESSMENT_PREFIX}{pk}", now)
            row = conn.execute("SELECT * FROM assessments WHERE id = ?", (pk,)).fetchone()
        logger.info("assessment completed id=%s%s", ASSESSMENT_PREFIX, pk)
        return _assessment(row)

    @api.get("/persons/{person_id}/assessments")
    def list_assessments(person_id: str) -> AssessmentList:
        with db.read() as conn:
            person = _person_row(conn, person_id)
            rows = conn.execute("SELECT * FROM assessments WHERE person_id = ? ORDER BY id", (person["id"],)).fetchall()
        return AssessmentList(assessments=[_assessment(r) for r in rows])

    @api.get("/assessments/{assessment_id}")
    def get_assessment(assessment_id: str) -> Assessment:
        with db.read() as conn:
            row = row_by_prefixed_id(
                conn,
                "assessments",
                assessment_id,
                ASSESSMENT_PREFIX,
                error="assessment_not_found",
                field="assessment_id",
            )
        return _assessment(row)

    @api.post("/persons/{person_id}/stepdown-referrals", status_code=201)
    def refer_to_early_help(person_id: str, body: StepdownReferralIn) -> StepdownReferral:
        now = clock()
        with db.transaction() as conn:
            person = _person_row(conn, person_id)
            if person["record_state"] == "closed":
                raise SandboxError(409, "record_closed", person_id=person_id)
            n = parse_prefixed_id(body.assessment_id, ASSESSMENT_PREFIX)
            found = (
                None
                if n is None
                else conn.execute(
                    "SELECT 1 FROM assessments WHERE id = ? AND person_id = ?", (n, person["id"])
                ).fetchone()
            )
            if found is None:
                raise SandboxError(422, "assessment_not_found", field="assessment_id")
            cur = conn.execute(
                "INSERT INTO referrals (person_id, data, created_at) VALUES (?, ?, ?)",
                (person["id"], dump_json(body), now.isoformat()),
            )
            pk = int(cur.lastrowid or 0)
            _change(conn, "stepdown_referred", person_id, f"{REFERRAL_PREFIX}{pk}", now)
            row = conn.execute("SELECT * FROM referrals WHERE id = ?", (pk,)).fetchone()
        logger.info("stepdown referral id=%s%s", REFERRAL_PREFIX, pk)
        return _referral(row)

    @api.get("/stepdown-referrals/{referral_id}")
    def get_referral(referral_id: str) -> StepdownReferral:
        with db.read() as conn:
            row = row_by_prefixed_id(
                conn, "referrals", referral_id, REFERRAL_PREFIX, error="referral_not_found", field="referral_id"
            )
        return _referral(row)

    @api.post("/persons/{person_id}/close")
    def close_person(person_id: str, body: ClosureRecord) -> Person:
        if body.early_help_worker is None:
            # SW22-10: ACP closes only once the identified early-help worker is named.
            raise SandboxError(422, "early_help_worker_not_named", field="early_help_worker", rule="SW22-10")
        if len(set(body.services_involved)) > 1 and body.lead_professional is None:
            # SW22-12: more than one service involved -> a Lead Professional in the closure record.
            raise SandboxError(422, "lead_professional_not_named", field="lead_professional", rule="SW22-12")
        now = clock()
        with db.transaction() as conn:
            row = _person_row(conn, person_id)
            if row["record_state"] == "closed":
                raise SandboxError(409, "record_already_closed", person_id=person_id)
            conn.execute(
                "UPDATE persons SET record_state = 'closed', closure = ?, closed_at = ? WHERE id = ?",
                (dump_json(body), now.isoformat(), row["id"]),
            )
            _change(conn, "record_closed", person_id, body.transfer_id, now)
            row = _person_row(conn, person_id)
        logger.info("record closed id=%s", person_id)
        return _person(row)

    @api.post("/persons/{person_id}/reopen")
    def reopen_person(person_id: str, body: ReopenIn) -> Person:
        now = clock()
        with db.transaction() as conn:
            row = _person_row(conn, person_id)
            if row["record_state"] == "open":
                raise SandboxError(409, "record_already_open", person_id=person_id)
            conn.execute(
                "UPDATE persons SET record_state = 'open', closure = NULL, closed_at = NULL WHERE id = ?", (row["id"],)
            )
            _change(conn, "record_reopened", person_id, None, now)
            row = _person_row(conn, person_id)
        logger.info("record reopened id=%s", person_id)
        return _person(row)

    @api.put("/contacts/{transfer_id}", status_code=201)
    def put_contact(transfer_id: TransferId, body: ContactIn, response: Response) -> ContactPutResult:
        kinds = {d.type for d in body.documents}
        missing = [k for k in ("early-help-assessment", "taf-plan") if k not in kinds]
        if missing:
            # SW22-3: every step-up request carries the up-to-date EHA and the TAF plan.
            raise SandboxError(422, "documents_missing", field="documents", missing=missing, rule="SW22-3")
        now = clock()
        with db.transaction() as conn:
            row = conn.execute("SELECT * FROM contacts WHERE transfer_id = ?", (transfer_id,)).fetchone()
            created = row is None
            if created:
                cur = conn.execute(
                    "INSERT INTO contacts (transfer_id, data, received_at) VALUES (?, ?, ?)",
                    (transfer_id, dump_json(body), now.isoformat()),
                )
                _change(conn, "contact_created", None, f"{CONTACT_PREFIX}{cur.lastrowid}", now)
                row = _contact_row(conn, transfer_id)
        if not created:
            response.status_code = 200
        result = ContactPutResult(
            contact_id=f"{CONTACT_PREFIX}{row['id']}", transfer_id=transfer_id, status="new", created=created
        )
        logger.info("contact %s contact_id=%s", "created" if created else "already present", result.contact_id)
        return result

    @api.get("/contacts/{transfer_id}")
    def get_contact(transfer_id: TransferId) -> Contact:
        with db.read() as conn:
            return _contact(_contact_row(conn, transfer_id))

    @api.get("/changes")
    def changes(
        after: FeedAfter = 0,
        limit: FeedLimit = 100,
    ) -> ChangeFeed:
        with db.read() as conn:
            rows, last, more = feed_page(conn, "SELECT * FROM changes", after, limit)
        page = [Change(seq=r["seq"], kind=r["kind"], person_id=r["person_id"], ref=r["ref"], at=r["at"]) for r in rows]
        return ChangeFeed(changes=page, last_seq=last, has_more=more)

    app.include_router(api)
    return app
