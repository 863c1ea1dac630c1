"""Sandbox TED (Barnsley's social care system), as a real HTTP service.

Social care cases, the step-downs sent from them, early-help assessment (EHA) episodes
TED holds, and referrals received from early help (step-ups). Vendor behaviour from the
Barnsley protocol (seed 003) is enforced:

- BA-15: a case closes only after its step-down was recorded as sent (409 with ``rule``);
- BA-13: a disabled child with a direct payment / individual budget stays open (to the
  Disabled Children's Team family support worker): closing is refused, ``keep-open``
  records the step-down and keeps the case open;
- BA-5: a step-down is decided by a Team Manager (422 with ``rule``); its reason is a code
  from TED's pick list (``REASON_CODES``: early help support, monitoring, onward referral).
  TED records the reason; whether a reason is allowed is the council protocol's decision
  (casebridge's Barnsley protocol), not TED's;
- BA-6: a step-down names the lead professional's name and organisation;
- BA-3: an open EHA closes with the reason "step up to social care".

The social worker's step-down request (``POST /api/cases/{id}/stepdown-requests``, after the
Team Manager's decision) is announced on a change feed (``GET /api/changes?after=&limit=``,
paginated by cursor, like Care Director's and LCS's), which casebridge's TED publisher reads.

Run it: ``casebridge sandbox ted --db ted.sqlite3 --token T --port 8104``.
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
    row_by_prefixed_id,
    sandbox_app,
    utcnow,
)

__all__ = [
    "Case",
    "CaseIn",
    "CloseIn",
    "Eha",
    "EhaCloseIn",
    "EhaIn",
    "KeepOpenIn",
    "REASON_CODES",
    "Change",
    "ChangeFeed",
    "Referral",
    "ReferralIn",
    "ReferralPutResult",
    "StepDown",
    "StepDownIn",
    "StepDownRequest",
    "StepDownRequestIn",
    "create_app",
]

logger = logging.getLogger("sandboxes.ted")

CASE_PREFIX = "TED-"
EHA_PREFIX = "EHA-"
REFERRAL_PREFIX = "REF-"
REQUEST_PREFIX = "SDR-"

Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=1_000_000)]
TransferId = Annotated[str, PathParam(min_length=1, max_length=200)]

#: TED's step-down reason pick list (code -> label)
REASON_CODES = {
    "SD-EHS": "Early help support with a lead professional",
    "SD-MON": "Monitoring",
    "SD-ONR": "Onward referral",
}
ReasonCode = Literal["SD-EHS", "SD-MON", "SD-ONR"]


# ---------------------------------------------------------------------------- models


class CaseIn(StrictModel):
    given_name: Text
    family_name: Text
    date_of_birth: date
    nhs_number: str | None = Field(default=None, pattern=r"^[0-9]{10}$")
    team: Literal["Assessment", "CIN", "CP", "DCT"] = "CIN"
    disabled: bool = False
    direct_payment: bool = Field(default=False, description="direct payment or individual budget (BA-13)")


class Decider(StrictModel):
    name: Text
    role: Text


class LeadProfessional(StrictModel):
    name: Text
    organisation: Text


class StepDownIn(StrictModel):
    purpose: LongText
    decided_by: Decider
    lead_professional: LeadProfessional = Field(description="BA-6")
    sent_via: Text
    sent_reference: Text


class StepDown(StepDownIn):
    transfer_id: str
    case_id: str
    sent_at: datetime


class Case(CaseIn):
    id: str
    record_state: Literal["open", "closed"]
    closure_reason: str | None = None
    closed_at: datetime | None = None
    closure_transfer_id: str | None = None
    kept_open_rule: str | None = None
    kept_open_to: str | None = None
    kept_open_transfer_id: str | None = None
    stepdowns: list[StepDown]
    created_at: datetime


class CloseIn(StrictModel):
    reason: Text
    closed_by: Text
    transfer_id: Text


class KeepOpenIn(StrictModel):
    rule: Literal["BA-13"]
    transfer_id: Text
    open_to: Text


class RequestConsent(StrictModel):
    given_by: Text
    given_on: date
    scope: list[Literal["referral", "information-sharing", "statutory-assessment", "recommendations"]]
    signed: bool = False


class RequestDocument(StrictModel):
    type: Literal["consent-form", "closure-summary", "plan", "assessment", "cin-plan", "review-minutes"]
    title: Text | None = None
    content: LongText


class StepDownRequestIn(StrictModel):
    """The social worker's step-down request, after the Team Manager's decision (seed 003)."""

    reason_code: ReasonCode | None = Field(default=None, description="TED's step-down reason (BA-5)")
    purpose: LongText | None = Field(default=None, description="the reason in the social worker's words")
    to_level: Literal["early-help", "universal"] = "early-help"
    decided_by: Decider
    decided_on: date
    rationale: LongText
    lead_professional: LeadProfessional | None = Field(default=None, description="BA-6; none yet: BA-9")
    consent: RequestConsent | None = None
    documents: list[RequestDocument] = Field(default_factory=list, description="BA-7")
    requested_by: Text


class StepDownRequest(StepDownRequestIn):
    request_id: str
    case_id: str
    created_at: datetime


class Change(StrictModel):
    seq: int
    kind: Literal["stepdown_requested"]
    case_id: str
    ref: str
    at: datetime


class ChangeFeed(StrictModel):
    changes: list[Change]
    last_seq: int
    has_more: bool


class EhaIn(StrictModel):
    lead_professional: Text
    started_on: date


class Eha(EhaIn):
    eha_id: str
    case_id: str
    status: Literal["open", "closed"]
    closure_reason: str | None = None
    closed_at: datetime | None = None
    closure_transfer_id: str | None = None


class EhaCloseIn(StrictModel):
    reason: Text
    closed_by: Text
    transfer_id: Text | None = None


class ReferralChild(StrictModel):
    given_name: Text
    family_name: Text
    date_of_birth: date
    source_reference: Text


class ReferralDocument(StrictModel):
    type: Text
    title: Text | None = None
    content: LongText | None = None
    reference: Text | None = None


class ReferralIn(StrictModel):
    child: ReferralChild
    urgency: Literal["routine", "urgent"]
    summary: LongText
    received_from: Text
    documents: list[ReferralDocument] = Field(default_factory=list)


class ReferralPutResult(StrictModel):
    referral_id: str
    transfer_id: str
    created: bool


class Referral(ReferralIn):
    referral_id: str
    transfer_id: str
    status: Literal["received"]
    received_at: datetime


# ---------------------------------------------------------------------------- storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    data TEXT NOT NULL,
    record_state TEXT NOT NULL DEFAULT 'open',
    closure_reason TEXT,
    closed_at TEXT,
    closure_transfer_id TEXT,
    kept_open_rule TEXT,
    kept_open_to TEXT,
    kept_open_transfer_id TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stepdowns (
    transfer_id TEXT PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    data TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS eha (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    data TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    closure_reason TEXT,
    closed_at TEXT,
    closure_transfer_id TEXT
);
CREATE TABLE IF NOT EXISTS stepdown_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    case_id TEXT NOT NULL,
    ref TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS referrals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL,
    received_at TEXT NOT NULL
);
"""


def _case_row(conn: sqlite3.Connection, case_id: str) -> sqlite3.Row:
    return row_by_prefixed_id(conn, "cases", case_id, CASE_PREFIX, error="case_not_found", field="case_id")


def _stepdown(row: sqlite3.Row) -> StepDown:
    return StepDown(
        **StepDownIn.model_validate_json(row["data"]).model_dump(),
        transfer_id=row["transfer_id"],
        case_id=f"{CASE_PREFIX}{row['case_id']}",
        sent_at=row["sent_at"],
    )


def _case(conn: sqlite3.Connection, row: sqlite3.Row) -> Case:
    sent = conn.execute("SELECT * FROM stepdowns WHERE case_id = ? ORDER BY sent_at", (row["id"],)).fetchall()
    return Case(
        **CaseIn.model_validate_json(row["data"]).model_dump(),
        id=f"{CASE_PREFIX}{row['id']}",
        record_state=row["record_state"],
        closure_reason=row["closure_reason"],
        closed_at=row["closed_at"],
        closure_transfer_id=row["closure_transfer_id"],
        kept_open_rule=row["kept_open_rule"],
        kept_open_to=row["kept_open_to"],
        kept_open_transfer_id=row["kept_open_transfer_id"],
        stepdowns=[_stepdown(s) for s in sent],
        created_at=row["created_at"],
    )


def _request(row: sqlite3.Row) -> StepDownRequest:
    return StepDownRequest(
        **StepDownRequestIn.model_validate_json(row["data"]).model_dump(),
        request_id=f"{REQUEST_PREFIX}{row['id']}",
        case_id=f"{CASE_PREFIX}{row['case_id']}",
        created_at=row["created_at"],
    )


def _eha_row(conn: sqlite3.Connection, eha_id: str) -> sqlite3.Row:
    return row_by_prefixed_id(conn, "eha", eha_id, EHA_PREFIX, error="eha_not_found", field="eha_id")


def _eha(row: sqlite3.Row) -> Eha:
    return Eha(
        **EhaIn.model_validate_json(row["data"]).model_dump(),
        eha_id=f"{EHA_PREFIX}{row['id']}",
        case_id=f"{CASE_PREFIX}{row['case_id']}",
        status=row["status"],
        closure_reason=row["closure_reason"],
        closed_at=row["closed_at"],
        closure_transfer_id=row["closure_transfer_id"],
    )


def _referral_row(conn: sqlite3.Connection, transfer_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM referrals WHERE transfer_id = ?", (transfer_id,)).fetchone()
    if row is None:
        raise SandboxError(404, "referral_not_found", transfer_id=transfer_id)
    return row


def _sent(conn: sqlite3.Connection, case_pk: int, transfer_id: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM stepdowns WHERE case_id = ? AND transfer_id = ?", (case_pk, transfer_id)
    ).fetchone()
    return found is not None


def _ba6_hint(request: Request, errors: Sequence[Mapping[str, Any]]) -> str | None:
    """A step-down without the lead professional's name and organisation is BA-6."""
    if "/stepdowns/" in request.url.path and any(
        str(e.get("field", "")).startswith("lead_professional") for e in errors
    ):
        return "BA-6"
    return None


# ------------------------------------------------------------------------------- app


def create_app(db_path: Path, token: str, *, clock: Clock = utcnow) -> FastAPI:
    """The TED sandbox app, storing everything in the sqlite file ``db_path``.

    Every route (``/api/...`` and ``/_sandbox/faults``) needs ``Authorization: Bearer <token>``.
    """
    db = Database(db_path, SCHEMA)
    app = sandbox_app("TED", db, token, clock=clock, rule_hint=_ba6_hint)
    api = APIRouter(prefix="/api")

    # -- cases

    @api.post("/cases", status_code=201)
    def create_case(body: CaseIn) -> Case:
        with db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO cases (data, created_at) VALUES (?, ?)", (dump_json(body), clock().isoformat())
            )
            row = conn.execute("SELECT * FROM cases WHERE id = ?", (cur.lastrowid,)).fetchone()
            case = _case(conn, row)
        logger.info("case created id=%s", case.id)
        return case

    @api.get("/cases/{case_id}")
    def get_case(case_id: str) -> Case:
        with db.read() as conn:
            return _case(conn, _case_row(conn, case_id))

    @api.put("/cases/{case_id}/stepdowns/{transfer_id}", status_code=201)
    def record_stepdown(case_id: str, transfer_id: TransferId, body: StepDownIn, response: Response) -> StepDown:
        """Record that the step-down was sent (idempotent on transfer id)."""
        if "team manager" not in body.decided_by.role.lower():
            raise SandboxError(422, "stepdown_not_decided_by_team_manager", field="decided_by.role", rule="BA-5")
        with db.transaction() as conn:
            case = _case_row(conn, case_id)
            existing = conn.execute("SELECT * FROM stepdowns WHERE transfer_id = ?", (transfer_id,)).fetchone()
            if existing is not None:
                if existing["case_id"] != case["id"]:
                    raise SandboxError(409, "transfer_belongs_to_another_case", transfer_id=transfer_id)
                response.status_code = 200
                return _stepdown(existing)
            if case["record_state"] == "closed":
                raise SandboxError(409, "record_closed", case_id=case_id)
            conn.execute(
                "INSERT INTO stepdowns (transfer_id, case_id, data, sent_at) VALUES (?, ?, ?, ?)",
                (transfer_id, case["id"], dump_json(body), clock().isoformat()),
            )
            row = conn.execute("SELECT * FROM stepdowns WHERE transfer_id = ?", (transfer_id,)).fetchone()
        logger.info("stepdown recorded case_id=%s", case_id)
        return _stepdown(row)

    @api.post("/cases/{case_id}/close")
    def close_case(case_id: str, body: CloseIn) -> Case:
        with db.transaction() as conn:
            row = _case_row(conn, case_id)
            if row["record_state"] == "closed":
                raise SandboxError(409, "record_already_closed", case_id=case_id)
            if not _sent(conn, row["id"], body.transfer_id):
                # BA-15: the social worker closes on TED only after the step-down was sent.
                raise SandboxError(409, "stepdown_not_sent", case_id=case_id, rule="BA-15")
            data = CaseIn.model_validate_json(row["data"])
            if data.disabled and data.direct_payment:
                # BA-13: stays open to the DCT family support worker for the direct payment.
                raise SandboxError(409, "record_stays_open", case_id=case_id, rule="BA-13")
            conn.execute(
                "UPDATE cases SET record_state = 'closed', closure_reason = ?, closed_at = ?,"
                " closure_transfer_id = ? WHERE id = ?",
                (body.reason, clock().isoformat(), body.transfer_id, row["id"]),
            )
            case = _case(conn, _case_row(conn, case_id))
        logger.info("case closed id=%s", case_id)
        return case

    @api.post("/cases/{case_id}/keep-open")
    def keep_open(case_id: str, body: KeepOpenIn) -> Case:
        """BA-13: the step-down is recorded, the case stays open to the DCT family support worker."""
        with db.transaction() as conn:
            row = _case_row(conn, case_id)
            if row["record_state"] == "closed":
                raise SandboxError(409, "record_closed", case_id=case_id)
            if not _sent(conn, row["id"], body.transfer_id):
                raise SandboxError(409, "stepdown_not_sent", case_id=case_id, rule="BA-15")
            data = CaseIn.model_validate_json(row["data"])
            if not (data.disabled and data.direct_payment):
                raise SandboxError(422, "keep_open_not_applicable", field="rule", rule="BA-13")
            conn.execute(
                "UPDATE cases SET kept_open_rule = ?, kept_open_to = ?, kept_open_transfer_id = ? WHERE id = ?",
                (body.rule, body.open_to, body.transfer_id, row["id"]),
            )
            case = _case(conn, _case_row(conn, case_id))
        logger.info("case kept open id=%s rule=%s", case_id, body.rule)
        return case

    # -- step-down requests, and the change feed that announces them

    @api.post("/cases/{case_id}/stepdown-requests", status_code=201)
    def request_stepdown(case_id: str, body: StepDownRequestIn) -> StepDownRequest:
        """The social worker asks for the step-down; it appears on the change feed (the protocol checks it)."""
        now = clock()
        with db.transaction() as conn:
            case = _case_row(conn, case_id)
            if case["record_state"] == "closed":
                raise SandboxError(409, "record_closed", case_id=case_id)
            cur = conn.execute(
                "INSERT INTO stepdown_requests (case_id, data, created_at) VALUES (?, ?, ?)",
                (case["id"], dump_json(body), now.isoformat()),
            )
            pk = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO changes (kind, case_id, ref, at) VALUES (?, ?, ?, ?)",
                ("stepdown_requested", f"{CASE_PREFIX}{case['id']}", f"{REQUEST_PREFIX}{pk}", now.isoformat()),
            )
            row = conn.execute("SELECT * FROM stepdown_requests WHERE id = ?", (pk,)).fetchone()
        logger.info("stepdown requested id=%s%s", REQUEST_PREFIX, pk)
        return _request(row)

    @api.get("/stepdown-requests/{request_id}")
    def get_stepdown_request(request_id: str) -> StepDownRequest:
        with db.read() as conn:
            row = row_by_prefixed_id(
                conn, "stepdown_requests", request_id, REQUEST_PREFIX, error="request_not_found", field="request_id"
            )
        return _request(row)

    @api.get("/changes")
    def changes(
        after: FeedAfter = 0,
        limit: FeedLimit = 100,
    ) -> ChangeFeed:
        with db.read() as conn:
            rows, last, more = feed_page(conn, "SELECT * FROM changes", after, limit)
        page = [Change(seq=r["seq"], kind=r["kind"], case_id=r["case_id"], ref=r["ref"], at=r["at"]) for r in rows]
        return ChangeFeed(changes=page, last_seq=last, has_more=more)

    # -- early-help assessments held on TED

    @api.post("/cases/{case_id}/eha", status_code=201)
    def open_eha(case_id: str, body: EhaIn) -> Eha:
        with db.transaction() as conn:
            case = _case_row(conn, case_id)
            cur = conn.execute("INSERT INTO eha (case_id, data) VALUES (?, ?)", (case["id"], dump_json(body)))
            row = conn.execute("SELECT * FROM eha WHERE id = ?", (cur.lastrowid,)).fetchone()
        logger.info("eha opened id=%s%s", EHA_PREFIX, row["id"])
        return _eha(row)

    @api.get("/eha/{eha_id}")
    def get_eha(eha_id: str) -> Eha:
        with db.read() as conn:
            return _eha(_eha_row(conn, eha_id))

    @api.post("/eha/{eha_id}/close")
    def close_eha(eha_id: str, body: EhaCloseIn) -> Eha:
        with db.transaction() as conn:
            row = _eha_row(conn, eha_id)
            if row["status"] == "closed":
                raise SandboxError(409, "eha_already_closed", eha_id=eha_id)
            conn.execute(
                "UPDATE eha SET status = 'closed', closure_reason = ?, closed_at = ?, closure_transfer_id = ?"
                " WHERE id = ?",
                (body.reason, clock().isoformat(), body.transfer_id, row["id"]),
            )
            row = _eha_row(conn, eha_id)
        logger.info("eha closed id=%s", eha_id)
        return _eha(row)

    # -- referrals from early help (step-ups)

    @api.put("/referrals/{transfer_id}", status_code=201)
    def put_referral(transfer_id: TransferId, body: ReferralIn, response: Response) -> ReferralPutResult:
        with db.transaction() as conn:
            row = conn.execute("SELECT * FROM referrals WHERE transfer_id = ?", (transfer_id,)).fetchone()
            created = row is None
            if created:
                conn.execute(
                    "INSERT INTO referrals (transfer_id, data, received_at) VALUES (?, ?, ?)",
                    (transfer_id, dump_json(body), clock().isoformat()),
                )
                row = _referral_row(conn, transfer_id)
        if not created:
            response.status_code = 200
        logger.info("referral %s id=%s%s", "created" if created else "already present", REFERRAL_PREFIX, row["id"])
        return ReferralPutResult(referral_id=f"{REFERRAL_PREFIX}{row['id']}", transfer_id=transfer_id, created=created)

    @api.get("/referrals/{transfer_id}")
    def get_referral(transfer_id: TransferId) -> Referral:
        with db.read() as conn:
            row = _referral_row(conn, transfer_id)
        return Referral(
            **ReferralIn.model_validate_json(row["data"]).model_dump(),
            referral_id=f"{REFERRAL_PREFIX}{row['id']}",
            transfer_id=row["transfer_id"],
            status="received",
            received_at=row["received_at"],
        )

    app.include_router(api)
    return app
