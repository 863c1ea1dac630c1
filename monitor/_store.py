"""The flow tracker's store: each transfer's state and timeline in SQLite, no personal data.

Events arrive at least once: ``event_id`` is the primary key, so a duplicate changes
nothing. The events topic's next offsets are kept in the same database and written in the
same transaction as the events they cover, so a restart resumes exactly where the store
is, and deleting the file rebuilds everything from the topic's beginning.

SQLite never runs on the event loop: the tracker writes through ``write`` (one writer thread) and
the page, the API, the metrics and the watch read through ``read`` (a few reader threads), each
thread with its own connection. In WAL mode readers do not wait for writers, so the page keeps
answering (with what is stored) while the file is locked by someone else or the disk is full.
The synchronous methods stay usable from any one thread (tests, rebuild tools).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from contracts import TransferEvent, TransferRequested, TransferRetryScheduled
from router.deadletters import CLOSED, COMPLETED

#: the state a transfer enters with each event type (alerts, milestones, allocations do not move it)
STATE_OF = {
    "requested": "in-flight",
    "validated": "in-flight",
    "delivered": "delivered",
    "acknowledged": "acknowledged",
    "retry-scheduled": "retrying",
    "held": "held",
    "rejected": "rejected",
    "dead-lettered": "dead-lettered",
    "replayed": "replayed",
    "source-closed": "completed",
    "source-kept-open": "completed",
    "completed-no-record": "completed",
}
IN_FLIGHT = ("in-flight", "delivered", "acknowledged", "retrying", "replayed")
#: the handover is done (for the latency histogram): the target acknowledged it, or no record was to be sent
HANDED_OVER = ("acknowledged", "completed-no-record")
#: a later event of these types resolves a transfer's earlier alerts (the transfer recovered or completed)
RESOLVES_ALERTS = ("source-closed", "source-kept-open", "completed-no-record")
#: an alert whose summary holds this word says the transfer recovered (router/app.py): it resolves the
#: transfer's earlier alerts and is itself resolved (it needs no action)
RECOVERED = "recovered"
#: what a store call raises when SQLite cannot do it now (locked, disk full, read-only, I/O error)
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
T = TypeVar("T")
_DL_COLUMNS = ("id", "partition", "offset", "timestamp", "transfer_id", "pathway", "context")
#: the store's layout (``PRAGMA user_version``): 1 added ``seq`` (the order indexed, a watch's position) to the dead
#: letters, replays and parkings; an older file is brought up to it on open (``_migrate``), its rows kept
SCHEMA_VERSION = 1
#: the tables whose rows carry ``seq``
_SEQUENCED = ("dead_letters", "replayed", "parked")
#: ``index_meta``'s count of dead letters forgotten (retention): a watch that saw it change lists again in full
FORGOTTEN = "forgotten"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    transfer_id TEXT,
    event_type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_transfer ON events (transfer_id, occurred_at);
CREATE INDEX IF NOT EXISTS events_type ON events (event_type);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT PRIMARY KEY,
    council TEXT,
    direction TEXT,
    from_system TEXT,
    to_system TEXT,
    state TEXT NOT NULL,
    requested_at TEXT,
    updated_at TEXT NOT NULL,
    latency_seconds REAL,
    retries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transfers_state ON transfers (state);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    timestamp INTEGER,
    transfer_id TEXT,
    pathway TEXT,
    context TEXT NOT NULL,
    seq INTEGER
);
CREATE INDEX IF NOT EXISTS dead_letters_transfer ON dead_letters (transfer_id);
CREATE INDEX IF NOT EXISTS dead_letters_position ON dead_letters (partition, offset);
CREATE TABLE IF NOT EXISTS replayed (id TEXT PRIMARY KEY, seq INTEGER);
CREATE TABLE IF NOT EXISTS parked (id TEXT PRIMARY KEY, seq INTEGER);
CREATE TABLE IF NOT EXISTS completions (
    transfer_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    PRIMARY KEY (transfer_id, event_type, occurred_at)
);
CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


@dataclass
class IndexEntries:
    """What the dead-letter index read in one batch: dead letters (ids, context headers, no value), replayed and
    parked dead letter ids."""

    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    #: completion events (``router.deadletters.COMPLETED``) as ``(transfer id, event type, occurred at ISO)``: only
    #: an index that reads the events topic too (``casebridge dlq``'s: it has no tracker) fills these
    completions: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    next_offset: int


class Store:
    """SQLite: one connection per thread on a file (``:memory:``: one shared connection behind a lock).

    ``busy_timeout`` is how long one call waits for a lock another connection holds before it fails
    with "database is locked" (the tracker then retries the same batch; a reader answers 503).
    """

    def __init__(self, path: Path | str, *, busy_timeout: float = 1.0, readers: int = 4) -> None:
        self.path = Path(path)
        self._memory = str(path) == ":memory:"
        if not self._memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._lock = threading.RLock()  # serialises the shared connection of an in-memory store
        self._shared = self._connect() if self._memory else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="monitor-store-write")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="monitor-store-read")
        self.version = 0  #: grows with every new event applied (for caches of derived views)
        self.index_version = 0  #: grows with every new dead letter, replay or parking indexed
        with self._use() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a file of an older layout up to ``SCHEMA_VERSION``, in one transaction (another process opening it
        at once waits, then finds it done): version 0 had no ``seq``; its rows get their insertion order (rowid)."""
        with self._use() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
        with self._tx() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            for table in _SEQUENCED:
                columns = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
                if "seq" not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN seq INTEGER")
                db.execute(f"UPDATE {table} SET seq = rowid WHERE seq IS NULL")
                db.execute(f"CREATE INDEX IF NOT EXISTS {table}_seq ON {table} (seq)")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=self._busy_timeout, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        with self._connections_lock:
            self._connections.append(db)
        return db

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (the shared one, locked, for ``:memory:``)."""
        if self._shared is not None:
            with self._lock:
                yield self._shared
            return
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        yield db

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._connections_lock:
            for db in self._connections:
                with suppress(sqlite3.Error):
                    db.close()
            self._connections.clear()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a reader thread (``fn`` reads this store: a view, a query, the metrics)."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, partial(fn, *args))

    async def write_index(self, entries: IndexEntries, positions: Iterable[Position]) -> int:
        """``index`` on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, self.index, entries, list(positions))

    async def write(self, events: Iterable[TransferEvent], positions: Iterable[Position] = ()) -> int:
        """``apply`` on the writer thread (one at a time, in order)."""
        batch, at = list(events), list(positions)
        return await asyncio.get_running_loop().run_in_executor(self._writer, self.apply, batch, at)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._use() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # a failed COMMIT (disk full) can leave it open
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """All rows, fetched a chunk at a time (a reader thread gives the event loop its turn in between)."""
        with self._use() as db:
            cursor, out = db.execute(sql, tuple(params)), []
            while chunk := cursor.fetchmany(1000):
                out.extend(chunk)
            return out

    # -- writing ---------------------------------------------------------------------------

    def apply(self, events: Iterable[TransferEvent], positions: Iterable[Position] = ()) -> int:
        """Store events (duplicates ignored) and the topic positions they bring us to; returns how many were new."""
        new = 0
        with self._tx() as db:
            for event in events:
                new += self._apply_one(db, event)
            self._positions(db, positions)
        self.version += new
        return new

    def index(self, entries: IndexEntries, positions: Iterable[Position]) -> int:
        """Dead letters, replays and parkings read from their topics, and the positions they bring us to, in one
        transaction (the index's positions are its source of truth, as the events'); returns how many were new."""
        new = 0
        with self._tx() as db:
            seq = _last_seq(db, "dead_letters")
            for d in entries.dead_letters:
                seq += 1
                cursor = db.execute(
                    f"INSERT OR IGNORE INTO dead_letters ({', '.join(_DL_COLUMNS)}, seq) "
                    f"VALUES ({', '.join('?' for _ in _DL_COLUMNS)}, ?)",
                    (*(d[c] for c in _DL_COLUMNS), seq),
                )
                new += cursor.rowcount
            for table, ids in (("replayed", entries.replayed), ("parked", entries.parked)):
                seq = _last_seq(db, table)
                for dl_id in ids:
                    seq += 1
                    new += db.execute(f"INSERT OR IGNORE INTO {table} (id, seq) VALUES (?, ?)", (dl_id, seq)).rowcount
            for done in entries.completions:
                sql = "INSERT OR IGNORE INTO completions (transfer_id, event_type, occurred_at) VALUES (?, ?, ?)"
                new += db.execute(sql, done).rowcount
            self._positions(db, positions)
        self.index_version += new
        return new

    def _positions(self, db: sqlite3.Connection, positions: Iterable[Position]) -> None:
        for p in positions:
            db.execute(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                (p.topic, p.partition, p.next_offset),
            )

    def indexed_dead_letters(self) -> list[dict[str, Any]]:
        """Every indexed dead letter in the order ``casebridge dlq list`` reads them (time, partition, offset)."""
        rows = self._query(
            "SELECT id, timestamp, pathway, context FROM dead_letters ORDER BY timestamp, partition, offset"
        )
        return [dict(r) for r in rows]

    # -- what a watch reads each round: only what was indexed (or stored) after its positions -------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """The reads inside see one state of the file (a read transaction on this thread's connection: in WAL mode
        it holds no writer up), so positions read together agree with what they cover."""
        with self._use() as db:
            db.execute("BEGIN")
            try:
                yield
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    def dead_letters_after(self, seq: int) -> list[dict[str, Any]]:
        """Indexed dead letters with ``seq`` beyond this (as ``indexed_dead_letters``, with partition, offset and seq),
        in the order indexed."""
        rows = self._query(
            "SELECT id, partition, offset, timestamp, pathway, context, seq FROM dead_letters "
            "WHERE seq > ? ORDER BY seq",
            [seq],
        )
        return [dict(r) for r in rows]

    def ids_after(self, table: str, seq: int) -> list[tuple[int, str]]:
        """``(seq, id)`` of the ids indexed as ``replayed`` or ``parked`` beyond this ``seq``."""
        if table not in ("replayed", "parked"):
            raise ValueError(f"no index {table!r}")
        return [(int(r["seq"]), r["id"]) for r in self._query(f"SELECT seq, id FROM {table} WHERE seq > ?", [seq])]

    def completions_after(self, seq: int) -> list[tuple[int, str, str, datetime]]:
        """Completion events (``COMPLETED``) the tracker stored beyond this event ``seq``: ``(seq, transfer id, event
        type, occurred at)``."""
        kinds = ", ".join("?" for _ in COMPLETED)
        rows = self._query(
            "SELECT seq, transfer_id, event_type, occurred_at FROM events "
            f"WHERE seq > ? AND transfer_id IS NOT NULL AND event_type IN ({kinds}) ORDER BY seq",
            [seq, *COMPLETED],
        )
        return [
            (int(r["seq"]), r["transfer_id"], r["event_type"], datetime.fromisoformat(r["occurred_at"])) for r in rows
        ]

    def last_event_seq(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(seq), 0) AS n FROM events")[0]["n"])

    def indexed_where(self, transfer_id: str | None = None, pathway: str | None = None) -> list[dict[str, Any]]:
        """``indexed_dead_letters`` of one transfer and/or pathway only (the column's index: the cost is the rows)."""
        sql, params = "SELECT id, timestamp, pathway, context FROM dead_letters WHERE 1 = 1", list[Any]()
        if transfer_id is not None:
            sql, params = sql + " AND transfer_id = ?", [*params, transfer_id]
        if pathway is not None:
            sql, params = sql + " AND pathway = ?", [*params, pathway]
        return [dict(r) for r in self._query(sql + " ORDER BY timestamp, partition, offset", params)]

    def indexed_among(self, table: str, ids: Iterable[str]) -> set[str]:
        """Which of these dead letter ids are indexed as ``replayed`` or ``parked`` (or, ``dead_letters``, at all)."""
        if table not in ("replayed", "parked", "dead_letters"):
            raise ValueError(f"no index {table!r}")
        wanted, out = sorted(set(ids)), set()
        for chunk in (wanted[i : i + 500] for i in range(0, len(wanted), 500)):
            marks = ", ".join("?" for _ in chunk)
            out |= {r["id"] for r in self._query(f"SELECT id FROM {table} WHERE id IN ({marks})", chunk)}
        return out

    def indexed_completions(self, transfer_ids: Iterable[str]) -> dict[str, list[tuple[str, datetime]]]:
        """``completions`` from the index's own table (an index that reads the events topic, no tracker)."""
        ids, out = sorted(set(transfer_ids)), dict[str, list[tuple[str, datetime]]]()
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            rows = self._query(
                "SELECT transfer_id, event_type, occurred_at FROM completions "
                f"WHERE transfer_id IN ({', '.join('?' for _ in chunk)}) ORDER BY occurred_at",
                chunk,
            )
            for r in rows:
                out.setdefault(r["transfer_id"], []).append((r["event_type"], datetime.fromisoformat(r["occurred_at"])))
        return out

    def forget_dead_letters_before(self, partition: int, offset: int) -> int:
        """Drop indexed dead letters of ``partition`` below ``offset`` (the topic's first now: retention deleted
        them, so a listing of the topic no longer shows them); returns how many."""
        with self._tx() as db:
            n = db.execute("DELETE FROM dead_letters WHERE partition = ? AND offset < ?", (partition, offset)).rowcount
            if n:  # a watch's listing (``monitor._lag``) sees it and lists again in full
                db.execute(
                    "INSERT INTO index_meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
                    (FORGOTTEN, n),
                )
        self.index_version += n
        return n

    def is_empty(self) -> bool:
        """Nothing stored yet: no events, no topic positions."""
        return not self._query("SELECT 1 FROM offsets UNION ALL SELECT 1 FROM events LIMIT 1")

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM index_meta WHERE key = ?", [key])
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO index_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def indexed_ids(self, table: str) -> set[str]:
        """The dead letter ids indexed as ``replayed`` or ``parked``."""
        if table not in ("replayed", "parked"):
            raise ValueError(f"no index {table!r}")
        return {r["id"] for r in self._query(f"SELECT id FROM {table}")}

    def _apply_one(self, db: sqlite3.Connection, e: TransferEvent) -> int:
        at = e.occurred_at.isoformat()
        cursor = db.execute(
            "INSERT OR IGNORE INTO events (event_id, transfer_id, event_type, occurred_at, body) "
            "VALUES (?, ?, ?, ?, ?)",
            (e.event_id, e.transfer_id, e.event_type, at, e.model_dump_json()),
        )
        if cursor.rowcount == 0 or e.transfer_id is None:
            return cursor.rowcount
        row = db.execute("SELECT * FROM transfers WHERE transfer_id = ?", (e.transfer_id,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO transfers (transfer_id, state, updated_at) VALUES (?, 'in-flight', ?)", (e.transfer_id, at)
            )
            row = db.execute("SELECT * FROM transfers WHERE transfer_id = ?", (e.transfer_id,)).fetchone()
        state = row["state"]
        new_state = STATE_OF.get(e.event_type)
        completed = state == "completed" and new_state != "completed"  # completion sticks
        held = state == "held" and new_state == "dead-lettered"  # a hold is also dead-lettered: "held" says more
        if new_state is not None and not completed and not held:
            state = new_state
        fields: dict[str, Any] = {"state": state, "updated_at": max(at, row["updated_at"])}
        if e.council is not None and row["council"] is None:
            fields["council"] = e.council.value
        if isinstance(e, TransferRequested) and row["requested_at"] is None:
            fields.update(
                direction=e.direction.value,
                from_system=e.from_system.value,
                to_system=e.to_system.value,
                requested_at=at,
            )
        if isinstance(e, TransferRetryScheduled) and not e.behind_earlier_transfer:
            fields["retries"] = row["retries"] + 1
        requested_at = fields.get("requested_at", row["requested_at"])
        if e.event_type in HANDED_OVER and row["latency_seconds"] is None and requested_at is not None:
            fields["latency_seconds"] = max(0.0, (e.occurred_at - datetime.fromisoformat(requested_at)).total_seconds())
        assignments = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"UPDATE transfers SET {assignments} WHERE transfer_id = ?", (*fields.values(), e.transfer_id))
        return 1

    # -- reading ---------------------------------------------------------------------------

    def positions(self, topic: str) -> dict[int, int]:
        return {r["partition"]: r["next_offset"] for r in self._query("SELECT * FROM offsets WHERE topic = ?", [topic])}

    def counts(self) -> list[dict[str, Any]]:
        """Transfers by council, pathway and state."""
        rows = self._query(
            "SELECT COALESCE(council, '') AS council, COALESCE(direction, '') AS pathway, state, COUNT(*) AS n "
            "FROM transfers GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        return [dict(r) for r in rows]

    def by_state(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._query("SELECT state, COUNT(*) AS n FROM transfers GROUP BY state")}

    def transfers(
        self, *, states: Iterable[str] | None = None, prefix: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM transfers WHERE 1 = 1", []
        if states is not None:
            wanted = list(states)
            sql += f" AND state IN ({', '.join('?' for _ in wanted)})"
            params += wanted
        if prefix:
            sql += " AND transfer_id LIKE ? ESCAPE '\\'"
            params.append(prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        sql += " ORDER BY updated_at DESC LIMIT ?"
        params.append(str(limit))
        return [dict(r) for r in self._query(sql, params)]

    def transfer(self, transfer_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM transfers WHERE transfer_id = ?", [transfer_id])
        return dict(rows[0]) if rows else None

    def timeline(self, transfer_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT body FROM events WHERE transfer_id = ? ORDER BY occurred_at, seq", [transfer_id])
        return [json.loads(r["body"]) for r in rows]

    def timelines(self, transfer_ids: Iterable[str]) -> dict[str, list[tuple[str, datetime]]]:
        """Each transfer's ``(event key, at)`` list for its deadlines, milestones keyed ``milestone:<name>``.

        ``at`` is when the event occurred, except for ``requested``: the transfer's own
        ``requested_at`` that the event carries, the instant the protocol check starts a deadline
        at (NS-4, SW22-15), however long after it the router handled the message (a backlog, a
        replay); an event written before the field existed falls back to when it occurred.
        """
        ids = list(transfer_ids)
        out: dict[str, list[tuple[str, datetime]]] = {i: [] for i in ids}
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            rows = self._query(
                "SELECT transfer_id, event_type, occurred_at, "
                "CASE event_type WHEN 'milestone' THEN json_extract(body, '$.milestone') "
                "WHEN 'requested' THEN json_extract(body, '$.requested_at') END AS detail FROM events "
                f"WHERE transfer_id IN ({', '.join('?' for _ in chunk)}) ORDER BY occurred_at, seq",
                chunk,
            )
            for r in rows:
                key, at, detail = r["event_type"], r["occurred_at"], r["detail"]
                if key == "milestone":
                    key = f"milestone:{detail}"
                elif key == "requested" and detail is not None:
                    at = detail
                out[r["transfer_id"]].append((key, datetime.fromisoformat(at)))
        return out

    def event_count(self, event_type: str) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM events WHERE event_type = ?", [event_type])[0]["n"])

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead-lettered events by council (the tracker's view; the topic itself is read for reasons)."""
        rows = self._query(
            "SELECT COALESCE(t.council, '') AS council, COUNT(*) AS n FROM events e "
            "LEFT JOIN transfers t ON t.transfer_id = e.transfer_id WHERE e.event_type = 'dead-lettered' GROUP BY 1"
        )
        return {r["council"]: r["n"] for r in rows}

    def completions(self, transfer_ids: Iterable[str]) -> dict[str, list[tuple[str, datetime]]]:
        """Each transfer's completion events (``router.deadletters.COMPLETED``): ``(event type, occurred at)``
        in store order (a dead letter's status: resolved when one came after it)."""
        ids = sorted(set(transfer_ids))
        out: dict[str, list[tuple[str, datetime]]] = {}
        kinds = ", ".join("?" for _ in COMPLETED)
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            rows = self._query(
                "SELECT transfer_id, event_type, occurred_at FROM events "
                f"WHERE transfer_id IN ({', '.join('?' for _ in chunk)}) AND event_type IN ({kinds}) ORDER BY seq",
                [*chunk, *COMPLETED],
            )
            for r in rows:
                out.setdefault(r["transfer_id"], []).append((r["event_type"], datetime.fromisoformat(r["occurred_at"])))
        return out

    def latencies(self) -> list[float]:
        rows = self._query("SELECT latency_seconds FROM transfers WHERE latency_seconds IS NOT NULL")
        return [float(r["latency_seconds"]) for r in rows]

    # -- the charts (GROUP BY in SQLite: the cost is what they show, not every row) -----------

    def transfers_per_day(self, since_day: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Transfers by UTC day of their request (else of their latest event) from ``since_day`` (YYYY-MM-DD) on:
        ``(by state, by council)`` rows of ``day``, ``state`` or ``council``, and ``n``."""
        day = "date(COALESCE(requested_at, updated_at))"
        by_state = self._query(
            f"SELECT {day} AS day, state, COUNT(*) AS n FROM transfers WHERE {day} >= ? GROUP BY 1, 2 ORDER BY 1, 2",
            [since_day],
        )
        by_council = self._query(
            f"SELECT {day} AS day, COALESCE(council, '') AS council, COUNT(*) AS n FROM transfers "
            f"WHERE {day} >= ? GROUP BY 1, 2 ORDER BY 1, 2",
            [since_day],
        )
        return [dict(r) for r in by_state], [dict(r) for r in by_council]

    def latency_histogram(self, edges: Iterable[float]) -> list[dict[str, Any]]:
        """Handover latencies (requested -> ``HANDED_OVER``) by council, pathway and bucket: bucket ``i`` holds
        latencies below ``edges[i]`` (and at or above the edge before); ``len(edges)`` holds the rest."""
        bounds = list(edges)
        cases = " ".join(f"WHEN latency_seconds < ? THEN {i}" for i in range(len(bounds)))
        rows = self._query(
            f"SELECT COALESCE(council, '') AS council, COALESCE(direction, '') AS pathway, "
            f"CASE {cases} ELSE {len(bounds)} END AS bucket, COUNT(*) AS n FROM transfers "
            "WHERE latency_seconds IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            bounds,
        )
        return [dict(r) for r in rows]

    def waiting_dead_letter_ages(
        self, now: datetime, edges: Iterable[float], expired: Iterable[str] = ()
    ) -> dict[int, int]:
        """Indexed dead letters still waiting, by age bucket (seconds since they were dead-lettered, ``failed_at``:
        the ``last.failure`` header, else the record's time), as ``router.deadletters.DeadLetter.status`` decides
        waiting: not resolved by a later completion of its transfer (a later closure's dead letter: by a
        ``source-closed`` only), not parked, not replayed, and not among ``expired`` (the watch asks Kafka)."""
        bounds = list(edges)
        gone = sorted(set(expired))
        cases = " ".join(f"WHEN age < ? THEN {i}" for i in range(len(bounds)))
        completed, closed = ", ".join("?" for _ in COMPLETED), ", ".join("?" for _ in CLOSED)
        not_expired = f"AND id NOT IN ({', '.join('?' for _ in gone)})" if gone else ""
        rows = self._query(
            "WITH d AS (SELECT id, transfer_id, "
            "COALESCE(julianday(json_extract(context, '$.\"last.failure\"')), "
            "julianday(timestamp / 1000.0, 'unixepoch')) AS failed, "
            "COALESCE(json_extract(context, '$.\"original.topic\"'), '') LIKE '%.pending-closures' AS closure "
            "FROM dead_letters WHERE id NOT IN (SELECT id FROM replayed) AND id NOT IN (SELECT id FROM parked) "
            f"{not_expired}) "
            f"SELECT CASE {cases} ELSE {len(bounds)} END AS bucket, COUNT(*) AS n FROM ("
            "SELECT (julianday(?) - d.failed) * 86400.0 AS age FROM d WHERE NOT EXISTS ("
            "SELECT 1 FROM events e WHERE d.transfer_id IS NOT NULL AND e.transfer_id = d.transfer_id "
            f"AND CASE WHEN d.closure THEN e.event_type IN ({closed}) ELSE e.event_type IN ({completed}) END "
            "AND (d.failed IS NULL OR julianday(e.occurred_at) >= d.failed))"
            ") GROUP BY 1 ORDER BY 1",
            [*gone, *bounds, now.isoformat(), *CLOSED, *COMPLETED],
        )
        return {int(r["bucket"]): int(r["n"]) for r in rows}

    def retry_count(self) -> int:
        return self.event_count("retry-scheduled")

    def alerts(self, limit: int = 500) -> list[dict[str, Any]]:
        """The latest ``limit`` alert events, newest first, each ``open`` or ``resolved``.

        An alert is resolved by a later event of its transfer (later on the transfer's partition,
        i.e. in store order) that says it recovered or completed: ``RESOLVES_ALERTS``, or an alert
        whose summary says ``recovered`` (which is resolved itself). Ids, councils, rule ids and the
        router's summary only.
        """
        rows = self._query(
            "SELECT e.seq, e.body, t.council AS transfer_council FROM events e "
            "LEFT JOIN transfers t ON t.transfer_id = e.transfer_id "
            "WHERE e.event_type = 'alert' ORDER BY e.seq DESC LIMIT ?",
            [limit],
        )
        alerts = [(int(r["seq"]), json.loads(r["body"]), r["transfer_council"]) for r in rows]
        ids = sorted({a["transfer_id"] for _, a, _ in alerts if a["transfer_id"] is not None})
        resolving: dict[str, list[tuple[int, str, str]]] = {}
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            marks = ", ".join("?" for _ in chunk)
            kinds = ", ".join("?" for _ in RESOLVES_ALERTS)
            found = self._query(
                "SELECT seq, transfer_id, event_type, occurred_at, body FROM events "
                f"WHERE transfer_id IN ({marks}) AND (event_type IN ({kinds}) OR event_type = 'alert') ORDER BY seq",
                [*chunk, *RESOLVES_ALERTS],
            )
            for r in found:
                if r["event_type"] == "alert" and not _says_recovered(json.loads(r["body"])):
                    continue
                resolving.setdefault(r["transfer_id"], []).append((int(r["seq"]), r["event_type"], r["occurred_at"]))
        out = []
        for seq, a, transfer_council in alerts:
            by: tuple[str, str] | None = None
            if _says_recovered(a):
                by = ("alert", a["occurred_at"])
            else:
                later = [(kind, at) for s, kind, at in resolving.get(a["transfer_id"] or "", []) if s > seq]
                by = later[0] if later else None
            out.append(
                {
                    "event_id": a["event_id"],
                    "transfer_id": a["transfer_id"],
                    "council": a.get("council") or transfer_council,
                    "severity": a["severity"],
                    "rule_ids": a.get("rule_ids", []),
                    "summary": a["summary"],
                    "raised_at": a["occurred_at"],
                    "status": "open" if by is None else "resolved",
                    "resolved_by": None if by is None else by[0],
                    "resolved_at": None if by is None else by[1],
                }
            )
        return out


def _last_seq(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {table}").fetchone()[0])


def _says_recovered(alert: dict[str, Any]) -> bool:
    return RECOVERED in str(alert.get("summary", "")).lower()
