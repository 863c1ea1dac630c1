"""What the intake received, and what became of each team's record: one SQLite file.

The store holds ids, the caller's name, a digest of the transfer (to tell a repeated post from a
different one) and the closure the router recorded; never the transfer itself, so no child's data
rests here. The HTTP intake writes ``received`` rows; :class:`IntakeSource` (the router's side)
writes closures and keep-opens. Each opens its own connection (WAL, so they do not block each other).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from contracts import ClosureRecord, TransferMessage

RECEIVED = "received"
CLOSED = "closed"
KEPT_OPEN = "kept-open"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    transfer_id  TEXT PRIMARY KEY,
    council      TEXT NOT NULL,
    record_id    TEXT NOT NULL,
    caller       TEXT,              -- NULL: the router closed a transfer the intake never received
    digest       TEXT,              -- NULL: likewise
    received_at  TEXT,
    published_at TEXT,              -- NULL until the broker acknowledged the publication (and its audit)
    status       TEXT NOT NULL DEFAULT 'received',
    closure      TEXT,              -- the protocol's ClosureRecord (JSON), once closed
    rule_ids     TEXT NOT NULL DEFAULT '[]',
    reference    TEXT,
    updated_at   TEXT
);
CREATE INDEX IF NOT EXISTS received_record ON received (council, record_id, status);
"""


def digest(transfer: TransferMessage) -> str:
    """The transfer's content, hashed: the same transfer posted again (even with a new ``message_id``, which
    is per publication) has the same digest; any other change gives another."""
    doc = transfer.model_dump(mode="json", exclude={"message_id"})
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Entry:
    transfer_id: str
    council: str
    record_id: str
    caller: str | None
    digest: str | None
    received_at: str | None
    published_at: str | None
    status: str
    closure: ClosureRecord | None
    rule_ids: list[str]
    reference: str | None
    updated_at: str | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> Entry:
        closure = ClosureRecord.model_validate_json(row["closure"]) if row["closure"] else None
        return cls(
            transfer_id=row["transfer_id"],
            council=row["council"],
            record_id=row["record_id"],
            caller=row["caller"],
            digest=row["digest"],
            received_at=row["received_at"],
            published_at=row["published_at"],
            status=row["status"],
            closure=closure,
            rule_ids=list(json.loads(row["rule_ids"])),
            reference=row["reference"],
            updated_at=row["updated_at"],
        )

    def status_view(self) -> dict[str, object]:
        """What ``GET /api/transfers/{id}`` answers: ids, status, the closure reason; no child's data."""
        return {
            "transfer_id": self.transfer_id,
            "status": self.status,
            "received_at": self.received_at,
            "updated_at": self.updated_at,
            "closure": None
            if self.closure is None
            else {"reason": self.closure.reason, "rule_ids": list(self.closure.rule_ids)},
            "kept_open_rule_ids": self.rule_ids if self.status == KEPT_OPEN else [],
            "reference": self.reference,
        }


class IntakeStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def get(self, transfer_id: str) -> Entry | None:
        row = self._db.execute("SELECT * FROM received WHERE transfer_id = ?", (transfer_id,)).fetchone()
        return None if row is None else Entry.of(row)

    def receive(self, transfer: TransferMessage, caller: str, content: str) -> Entry:
        """Note a post (not yet published); a row already there (a repeat, or a closure first) is left as is."""
        now = _now()
        self._db.execute(
            "INSERT OR IGNORE INTO received (transfer_id, council, record_id, caller, digest, received_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (transfer.transfer_id, transfer.council.value, transfer.source_record.record_id, caller, content, now, now),
        )
        # a closure recorded before any post (a transfer that reached the router another way) adopts this one
        self._db.execute(
            "UPDATE received SET caller = ?, digest = ?, received_at = ? WHERE transfer_id = ? AND digest IS NULL",
            (caller, content, now, transfer.transfer_id),
        )
        entry = self.get(transfer.transfer_id)
        assert entry is not None
        return entry

    def published(self, transfer_id: str) -> None:
        now = _now()
        self._db.execute(
            "UPDATE received SET published_at = ?, updated_at = ? WHERE transfer_id = ? AND published_at IS NULL",
            (now, now, transfer_id),
        )

    def _ensure(self, transfer: TransferMessage) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO received (transfer_id, council, record_id, updated_at) VALUES (?, ?, ?, ?)",
            (transfer.transfer_id, transfer.council.value, transfer.source_record.record_id, _now()),
        )

    def close_record(self, transfer: TransferMessage, reference: str) -> str:
        """Record the team's record closed by ``transfer`` (with the protocol's closure record); idempotent:
        a second call keeps the first closure and returns its reference."""
        self._ensure(transfer)
        closure = transfer.closure.model_dump_json() if transfer.closure else None
        self._db.execute(
            "UPDATE received SET status = ?, closure = ?, reference = ?, updated_at = ?"
            " WHERE transfer_id = ? AND status != ?",
            (CLOSED, closure, reference, _now(), transfer.transfer_id, CLOSED),
        )
        entry = self.get(transfer.transfer_id)
        assert entry is not None and entry.reference is not None
        return entry.reference

    def keep_open(self, transfer: TransferMessage, rule_ids: list[str], reference: str) -> str:
        """Record that the protocol keeps the team's record open (``rule_ids``); a closed record stays closed."""
        self._ensure(transfer)
        self._db.execute(
            "UPDATE received SET status = ?, rule_ids = ?, reference = ?, updated_at = ?"
            " WHERE transfer_id = ? AND status != ?",
            (KEPT_OPEN, json.dumps(sorted(set(rule_ids))), reference, _now(), transfer.transfer_id, CLOSED),
        )
        entry = self.get(transfer.transfer_id)
        assert entry is not None and entry.reference is not None
        return entry.reference

    def closed_by(self, council: str, record_id: str) -> str | None:
        """The transfer whose closure closed the council team's record ``record_id``, if one did."""
        row = self._db.execute(
            "SELECT transfer_id FROM received WHERE council = ? AND record_id = ? AND status = ?"
            " ORDER BY updated_at LIMIT 1",
            (council, record_id, CLOSED),
        ).fetchone()
        return None if row is None else str(row["transfer_id"])
