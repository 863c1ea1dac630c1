"""Sandbox Liquidlogic EHM (early help), as a real HTTP service.

A locality staff directory (Support Leader with an away flag, team manager), the
Step-Down tray (idempotent on transfer id), allocation to a family support worker
that opens an early-help episode, a durable allocation feed, and case notes.
Vendor behaviour from the North Somerset protocol is enforced for North Somerset's
step-downs (the council a tray item names): without meeting notes and plan they cannot
progress (NS-8). Other councils' required documents are their own protocol's, checked by
casebridge before delivery (Swindon 2026: the assessment and proposed plan, SW26-6).

Run it: ``casebridge sandbox ehm --db ehm.sqlite3 --token T --port 8102``.
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
from fastapi.exceptions import RequestValidationError
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
    "LOCALITIES",
    "AllocateIn",
    "Allocation",
    "AllocationFeed",
    "AssignedTo",
    "AwayIn",
    "CaseNote",
    "CaseNoteIn",
    "Episode",
    "EpisodeCloseIn",
    "EpisodeIn",
    "StepUpFeed",
    "StepUpIn",
    "StepUpRequest",
    "LocalityList",
    "StaffDirectory",
    "SupportLeader",
    "TeamManager",
    "TrayChild",
    "TrayItem",
    "TrayItemIn",
    "TrayList",
    "TrayPutResult",
    "create_app",
]

logger = logging.getLogger("sandboxes.ehm")

TRAY_PREFIX = "TRAY-"
EPISODE_PREFIX = "EHM-EP-"
NOTE_PREFIX = "NOTE-"
STEPUP_PREFIX = "SUR-"

# Seeded staff directory: obviously fictional names (never the seeds' real staff).
# locality -> (support leader id, name, team manager id, name)
LOCALITIES: Mapping[str, tuple[str, str, str, str]] = {
    "North": (
        "STAFF-SL-N1",
        "Avery Support-North",
        "STAFF-TM-N1",
        "Morgan Manager-North",
    ),
    "East": ("STAFF-SL-E1", "Blake Support-East", "STAFF-TM-E1", "Casey Manager-East"),
    "South": (
        "STAFF-SL-S1",
        "Drew Support-South",
        "STAFF-TM-S1",
        "Emerson Manager-South",
    ),
}

Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
#: text a tray item may leave out or blank (stored as absent); NS-8 decides when it is required
OptionalText = Annotated[str, StringConstraints(max_length=20_000)] | None
TransferId = Annotated[str, PathParam(min_length=1, max_length=200)]
TrayStatus = Literal["in_tray", "allocated"]
EpisodeStatus = Literal["open", "closed"]


# ---------------------------------------------------------------------------- models


class SupportLeader(StrictModel):
    id: str
    name: str
    away: bool


class TeamManager(StrictModel):
    id: str
    name: str


class StaffDirectory(StrictModel):
    locality: str
    support_leader: SupportLeader
    team_manager: TeamManager


class LocalityList(StrictModel):
    localities: list[str]


class AwayIn(StrictModel):
    away: bool


class TrayChild(StrictModel):
    given_name: Text
    family_name: Text
    date_of_birth: date
    lcs_id: Text
    nhs_number: str | None = Field(default=None, pattern=r"^[0-9]{10}$")
    locality: Text | None = Field(default=None, description="North Somerset routes by it (NS-2); others may not")


class AssignedTo(StrictModel):
    id: Text
    name: Text
    role: Text


#: the council whose step-downs EHM refuses without meeting notes and plan (NS-8)
NS8_COUNCIL = "north-somerset"
NS8_FIELDS = ("meeting_notes", "plan")


class TrayItemIn(StrictModel):
    council: Text = Field(
        default=NS8_COUNCIL,
        description="whose step-down it is (a casebridge council id); an item naming none is North Somerset's",
    )
    child: TrayChild
    assigned_to: AssignedTo
    meeting_notes: OptionalText = Field(default=None, description="required for North Somerset: NS-8")
    plan: OptionalText = Field(default=None, description="required for North Somerset: NS-8")
    assessment: OptionalText = Field(default=None, description="the social work assessment (Swindon: SW26-6)")
    support_leader: Text | None = None
    lead_professional: Text | None = None
    family_support_worker: Text | None = None
    source_reference: Text | None = None
    received_from: Text


class TrayPutResult(StrictModel):
    tray_item_id: str
    transfer_id: str
    status: TrayStatus
    created: bool


class TrayItem(TrayItemIn):
    tray_item_id: str
    transfer_id: str
    status: TrayStatus
    received_at: datetime
    allocated_to: str | None = None
    allocated_at: datetime | None = None
    episode_id: str | None = None


class TrayList(StrictModel):
    items: list[TrayItem]


class AllocateIn(StrictModel):
    family_support_worker: Text


class CaseNoteIn(StrictModel):
    text: LongText
    author: Text
    transfer_id: Text | None = Field(default=None, description="a note written for a transfer is written once")


class CaseNote(StrictModel):
    note_id: str
    episode_id: str
    text: str
    author: str
    created_at: datetime


class Episode(StrictModel):
    episode_id: str
    child: TrayChild
    status: EpisodeStatus
    transfer_id: str | None
    tray_item_id: str | None
    family_support_worker: str
    opened_at: datetime
    closed_at: datetime | None = None
    closed_by: str | None = None
    closure_reason: str | None = None
    closure_transfer_id: str | None = None
    case_notes: list[CaseNote]


class EpisodeCloseIn(StrictModel):
    closed_by: Text
    reason: Text
    transfer_id: Text | None = None


class StepUpConsent(StrictModel):
    given_by: Text
    given_on: date
    scope: list[Text]


class StepUpExemption(StrictModel):
    """Consent not sought: significant harm may be met (NS-11), decided by a named manager.

    ``reason`` is what the practitioner records on the form; with none, EHM states no reason and
    casebridge maps no exemption (the step-up then needs the family's consent, G1).
    """

    reason: Literal["significant-harm-s47"] | None = None
    decided_by: Text
    decided_by_role: Text
    decided_on: date


class StepUpDecision(StrictModel):
    decided_by: Text
    role: Text
    forum: Text | None = None
    rationale: LongText
    decided_on: date


class StepUpIn(StrictModel):
    """The Step-Up request form on an early-help episode (NS-9: with the case notes)."""

    step_up_form: LongText | None = None
    case_notes: LongText | None = None
    to_level: Literal["child_in_need", "child_protection"]
    urgent: bool = False
    consent: StepUpConsent | None = None
    consent_exemption: StepUpExemption | None = None
    management_decision: StepUpDecision | None = None
    requested_by: Text


class StepUpRequest(StepUpIn):
    request_id: str
    episode_id: str
    seq: int
    created_at: datetime


class StepUpFeed(StrictModel):
    requests: list[StepUpRequest]
    last_seq: int
    has_more: bool


class EpisodeIn(StrictModel):
    """An early-help case opened on EHM directly (not from the Step-Down tray)."""

    child: TrayChild
    family_support_worker: Text


class Allocation(StrictModel):
    seq: int
    transfer_id: str
    tray_item_id: str
    episode_id: str
    at: datetime


class AllocationFeed(StrictModel):
    allocations: list[Allocation]
    last_seq: int = Field(
        description="cursor to pass as ?after= next: the last seq returned, or the given after when the page is empty"
    )
    has_more: bool


# ---------------------------------------------------------------------------- storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS localities (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    support_leader_id TEXT NOT NULL,
    support_leader_name TEXT NOT NULL,
    away INTEGER NOT NULL DEFAULT 0,
    team_manager_id TEXT NOT NULL,
    team_manager_name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tray_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'in_tray',
    received_at TEXT NOT NULL,
    allocated_to TEXT,
    allocated_at TEXT,
    episode_id INTEGER
);
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tray_item_id INTEGER REFERENCES tray_items(id),
    transfer_id TEXT,
    child TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    family_support_worker TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    closed_at TEXT,
    closed_by TEXT,
    closure_reason TEXT,
    closure_transfer_id TEXT
);
CREATE TABLE IF NOT EXISTS case_notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id INTEGER NOT NULL REFERENCES episodes(id),
    transfer_id TEXT,
    text TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stepup_requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id INTEGER NOT NULL REFERENCES episodes(id),
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS allocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id TEXT NOT NULL,
    tray_item_id INTEGER NOT NULL,
    episode_id INTEGER NOT NULL,
    at TEXT NOT NULL
);
"""


def _seed(db: Database) -> None:
    with db.transaction() as conn:
        for name, (sl_id, sl_name, tm_id, tm_name) in LOCALITIES.items():
            conn.execute(
                "INSERT OR IGNORE INTO localities (name, support_leader_id,"
                " support_leader_name, team_manager_id, team_manager_name)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, sl_id, sl_name, tm_id, tm_name),
            )


def _directory(conn: sqlite3.Connection, locality: str) -> StaffDirectory:
    row = conn.execute("SELECT * FROM localities WHERE name = ?", (locality,)).fetchone()
    if row is None:
        raise SandboxError(404, "locality_not_found", locality=locality)
    return StaffDirectory(
        locality=row["name"],
        support_leader=SupportLeader(
            id=row["support_leader_id"],
            name=row["support_leader_name"],
            away=bool(row["away"]),
        ),
        team_manager=TeamManager(id=row["team_manager_id"], name=row["team_manager_name"]),
    )


def _tray_row(conn: sqlite3.Connection, transfer_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM tray_items WHERE transfer_id = ?", (transfer_id,)).fetchone()
    if row is None:
        raise SandboxError(404, "tray_item_not_found", transfer_id=transfer_id)
    return row


def _tray_item(row: sqlite3.Row) -> TrayItem:
    base = TrayItemIn.model_validate_json(row["data"])
    episode = row["episode_id"]
    return TrayItem(
        **base.model_dump(),
        tray_item_id=f"{TRAY_PREFIX}{row['id']}",
        transfer_id=row["transfer_id"],
        status=row["status"],
        received_at=row["received_at"],
        allocated_to=row["allocated_to"],
        allocated_at=row["allocated_at"],
        episode_id=None if episode is None else f"{EPISODE_PREFIX}{episode}",
    )


def _episode_row(conn: sqlite3.Connection, episode_id: str) -> sqlite3.Row:
    return row_by_prefixed_id(
        conn, "episodes", episode_id, EPISODE_PREFIX, error="episode_not_found", field="episode_id"
    )


def _case_note(row: sqlite3.Row) -> CaseNote:
    return CaseNote(
        note_id=f"{NOTE_PREFIX}{row['id']}",
        episode_id=f"{EPISODE_PREFIX}{row['episode_id']}",
        text=row["text"],
        author=row["author"],
        created_at=row["created_at"],
    )


def _episode(conn: sqlite3.Connection, row: sqlite3.Row) -> Episode:
    notes = conn.execute("SELECT * FROM case_notes WHERE episode_id = ? ORDER BY id", (row["id"],)).fetchall()
    return Episode(
        episode_id=f"{EPISODE_PREFIX}{row['id']}",
        child=TrayChild.model_validate_json(row["child"]),
        status=row["status"],
        transfer_id=row["transfer_id"],
        tray_item_id=f"{TRAY_PREFIX}{row['tray_item_id']}" if row["tray_item_id"] is not None else None,
        family_support_worker=row["family_support_worker"],
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        closed_by=row["closed_by"],
        closure_reason=row["closure_reason"],
        closure_transfer_id=row["closure_transfer_id"],
        case_notes=[_case_note(n) for n in notes],
    )


def _ns08_hint(request: Request, errors: Sequence[Mapping[str, Any]]) -> str | None:
    """Tag a refused North Somerset tray item whose notes or plan are missing/empty with NS-8."""
    if request.method != "PUT" or not request.url.path.startswith("/api/stepdown-tray/"):
        return None
    if any(e.get("field") in NS8_FIELDS and e.get("type") == "missing" for e in errors):
        return "NS-8"
    return None


def _ns08_checked(body: TrayItemIn) -> TrayItemIn:
    """NS-8 for North Somerset's step-downs: meeting notes and plan, or a 422 naming what is missing.

    Blank text is absent text, for every council (stored as absent).
    """
    blank = [f for f in (*NS8_FIELDS, "assessment") if getattr(body, f) == ""]
    if blank:
        body = body.model_copy(update=dict.fromkeys(blank))
    missing = [f for f in NS8_FIELDS if getattr(body, f) is None]
    if body.council == NS8_COUNCIL and missing:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", f),
                    "msg": "required for a North Somerset step-down (NS-8)",
                    "type": "missing",
                }
                for f in missing
            ]
        )
    return body


# ------------------------------------------------------------------------------- app


def create_app(db_path: Path, token: str, *, clock: Clock = utcnow) -> FastAPI:
    """The EHM sandbox app, storing everything in the sqlite file ``db_path``.

    Localities North, East and South are seeded on first use of the file (an
    existing file keeps its state, e.g. a Support Leader marked away). Every route
    needs ``Authorization: Bearer <token>``.
    """
    db = Database(db_path, SCHEMA)
    _seed(db)
    app = sandbox_app("Liquidlogic EHM", db, token, clock=clock, rule_hint=_ns08_hint)
    api = APIRouter(prefix="/api")

    # -- staff directory

    @api.get("/localities")
    def list_localities() -> LocalityList:
        with db.read() as conn:
            rows = conn.execute("SELECT name FROM localities ORDER BY name").fetchall()
        return LocalityList(localities=[str(r["name"]) for r in rows])

    @api.get("/localities/{locality}/staff")
    def locality_staff(locality: str) -> StaffDirectory:
        with db.read() as conn:
            return _directory(conn, locality)

    @api.put("/localities/{locality}/support-leader/away")
    def set_support_leader_away(locality: str, body: AwayIn) -> StaffDirectory:
        with db.transaction() as conn:
            directory = _directory(conn, locality)
            conn.execute(
                "UPDATE localities SET away = ? WHERE name = ?",
                (int(body.away), directory.locality),
            )
            directory = _directory(conn, locality)
        logger.info("support leader away=%s locality=%s", body.away, directory.locality)
        return directory

    # -- step-down tray

    @api.put("/stepdown-tray/{transfer_id}", status_code=201)
    def put_tray_item(transfer_id: TransferId, body: TrayItemIn, response: Response) -> TrayPutResult:
        body = _ns08_checked(body)
        with db.transaction() as conn:
            row = conn.execute("SELECT * FROM tray_items WHERE transfer_id = ?", (transfer_id,)).fetchone()
            created = row is None
            if created:
                conn.execute(
                    "INSERT INTO tray_items (transfer_id, data, received_at) VALUES (?, ?, ?)",
                    (transfer_id, dump_json(body), clock().isoformat()),
                )
                row = _tray_row(conn, transfer_id)
        if not created:
            response.status_code = 200
        result = TrayPutResult(
            tray_item_id=f"{TRAY_PREFIX}{row['id']}",
            transfer_id=transfer_id,
            status=row["status"],
            created=created,
        )
        logger.info(
            "tray item %s tray_item_id=%s",
            "created" if created else "already present",
            result.tray_item_id,
        )
        return result

    @api.get("/stepdown-tray")
    def list_tray(status: TrayStatus | None = None) -> TrayList:
        with db.read() as conn:
            if status is None:
                rows = conn.execute("SELECT * FROM tray_items ORDER BY id").fetchall()
            else:
                rows = conn.execute("SELECT * FROM tray_items WHERE status = ? ORDER BY id", (status,)).fetchall()
        return TrayList(items=[_tray_item(r) for r in rows])

    @api.get("/stepdown-tray/{transfer_id}")
    def get_tray_item(transfer_id: TransferId) -> TrayItem:
        with db.read() as conn:
            return _tray_item(_tray_row(conn, transfer_id))

    @api.post("/stepdown-tray/{transfer_id}/allocate")
    def allocate(transfer_id: TransferId, body: AllocateIn) -> TrayItem:
        now = clock()
        with db.transaction() as conn:
            row = _tray_row(conn, transfer_id)
            if row["status"] == "allocated":
                if row["allocated_to"] == body.family_support_worker:
                    return _tray_item(row)
                raise SandboxError(
                    409,
                    "already_allocated",
                    transfer_id=transfer_id,
                    episode_id=f"{EPISODE_PREFIX}{row['episode_id']}",
                )
            item = TrayItemIn.model_validate_json(row["data"])
            cur = conn.execute(
                "INSERT INTO episodes (tray_item_id, transfer_id, child,"
                " family_support_worker, opened_at) VALUES (?, ?, ?, ?, ?)",
                (
                    row["id"],
                    transfer_id,
                    dump_json(item.child),
                    body.family_support_worker,
                    now.isoformat(),
                ),
            )
            episode_pk = int(cur.lastrowid or 0)
            conn.execute(
                "UPDATE tray_items SET status = 'allocated', allocated_to = ?,"
                " allocated_at = ?, episode_id = ? WHERE id = ?",
                (body.family_support_worker, now.isoformat(), episode_pk, row["id"]),
            )
            conn.execute(
                "INSERT INTO allocations (transfer_id, tray_item_id, episode_id, at) VALUES (?, ?, ?, ?)",
                (transfer_id, row["id"], episode_pk, now.isoformat()),
            )
            row = _tray_row(conn, transfer_id)
        logger.info(
            "tray item allocated tray_item_id=%s%s episode_id=%s%s",
            TRAY_PREFIX,
            row["id"],
            EPISODE_PREFIX,
            episode_pk,
        )
        return _tray_item(row)

    @api.get("/allocations")
    def allocations(
        after: FeedAfter = 0,
        limit: FeedLimit = 100,
    ) -> AllocationFeed:
        with db.read() as conn:
            rows, last, more = feed_page(conn, "SELECT * FROM allocations", after, limit)
        page = [
            Allocation(
                seq=r["seq"],
                transfer_id=r["transfer_id"],
                tray_item_id=f"{TRAY_PREFIX}{r['tray_item_id']}",
                episode_id=f"{EPISODE_PREFIX}{r['episode_id']}",
                at=r["at"],
            )
            for r in rows
        ]
        return AllocationFeed(allocations=page, last_seq=last, has_more=more)

    # -- episodes

    @api.post("/episodes", status_code=201)
    def open_episode(body: EpisodeIn) -> Episode:
        with db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO episodes (tray_item_id, transfer_id, child, family_support_worker, opened_at)"
                " VALUES (NULL, NULL, ?, ?, ?)",
                (dump_json(body.child), body.family_support_worker, clock().isoformat()),
            )
            row = conn.execute("SELECT * FROM episodes WHERE id = ?", (cur.lastrowid,)).fetchone()
            episode = _episode(conn, row)
        logger.info("episode opened episode_id=%s", episode.episode_id)
        return episode

    def _stepup(row: sqlite3.Row) -> StepUpRequest:
        return StepUpRequest(
            **StepUpIn.model_validate_json(row["data"]).model_dump(),
            request_id=f"{STEPUP_PREFIX}{row['seq']}",
            episode_id=f"{EPISODE_PREFIX}{row['episode_id']}",
            seq=row["seq"],
            created_at=row["created_at"],
        )

    @api.post("/episodes/{episode_id}/stepup-requests", status_code=201)
    def request_stepup(episode_id: str, body: StepUpIn) -> StepUpRequest:
        with db.transaction() as conn:
            episode = _episode_row(conn, episode_id)
            if episode["status"] == "closed":
                raise SandboxError(409, "episode_closed", episode_id=episode_id)
            cur = conn.execute(
                "INSERT INTO stepup_requests (episode_id, data, created_at) VALUES (?, ?, ?)",
                (episode["id"], dump_json(body), clock().isoformat()),
            )
            row = conn.execute("SELECT * FROM stepup_requests WHERE seq = ?", (cur.lastrowid,)).fetchone()
        logger.info("step-up requested request_id=%s%s", STEPUP_PREFIX, row["seq"])
        return _stepup(row)

    @api.get("/stepup-requests")
    def stepup_feed(
        after: FeedAfter = 0,
        limit: FeedLimit = 100,
    ) -> StepUpFeed:
        """Step-up requests in order, resumable from a cursor (the step-up publisher reads this)."""
        with db.read() as conn:
            rows, last, more = feed_page(conn, "SELECT * FROM stepup_requests", after, limit)
        return StepUpFeed(requests=[_stepup(r) for r in rows], last_seq=last, has_more=more)

    @api.get("/episodes/{episode_id}")
    def get_episode(episode_id: str) -> Episode:
        with db.read() as conn:
            return _episode(conn, _episode_row(conn, episode_id))

    @api.post("/episodes/{episode_id}/case-notes", status_code=201)
    def add_case_note(episode_id: str, body: CaseNoteIn) -> CaseNote:
        with db.transaction() as conn:
            episode = _episode_row(conn, episode_id)
            if body.transfer_id is not None:
                note = conn.execute(
                    "SELECT * FROM case_notes WHERE episode_id = ? AND transfer_id = ?",
                    (episode["id"], body.transfer_id),
                ).fetchone()
                if note is not None:
                    return _case_note(note)
            if episode["status"] == "closed":
                raise SandboxError(409, "episode_closed", episode_id=episode_id)
            cur = conn.execute(
                "INSERT INTO case_notes (episode_id, transfer_id, text, author, created_at) VALUES (?, ?, ?, ?, ?)",
                (episode["id"], body.transfer_id, body.text, body.author, clock().isoformat()),
            )
            note = conn.execute("SELECT * FROM case_notes WHERE id = ?", (cur.lastrowid,)).fetchone()
        logger.info("case note added episode_id=%s", episode_id)
        return _case_note(note)

    @api.post("/episodes/{episode_id}/close")
    def close_episode(episode_id: str, body: EpisodeCloseIn) -> Episode:
        with db.transaction() as conn:
            row = _episode_row(conn, episode_id)
            if row["status"] == "closed":
                if body.transfer_id is not None and row["closure_transfer_id"] == body.transfer_id:
                    return _episode(conn, row)
                raise SandboxError(409, "episode_already_closed", episode_id=episode_id)
            conn.execute(
                "UPDATE episodes SET status = 'closed', closed_at = ?, closed_by = ?, closure_reason = ?,"
                " closure_transfer_id = ? WHERE id = ?",
                (clock().isoformat(), body.closed_by, body.reason, body.transfer_id, row["id"]),
            )
            episode = _episode(conn, _episode_row(conn, episode_id))
        logger.info("episode closed episode_id=%s", episode_id)
        return episode

    app.include_router(api)
    return app
