"""``casebridge dlq list|show`` and ``casebridge replay`` answer from a local index, not by reading topics whole.

The index is the monitor's dead-letter index (``monitor.DeadLetterIndex`` into a ``monitor.Store``: ids,
``casebridge.dlq.*`` context headers, pathway and time of each dead letter, never its key or value; the ids
replayed and parked) in a SQLite file of its own, brought up to date on each call by reading only what arrived
on the dead-letter, audit, parking and events topics since the last call (the positions are in the file, in the
same transaction as what they cover). So a call costs what it shows: ``dlq list --transfer ID`` is one indexed
query, whatever the topic holds.

Why the index keeps its own completion events rather than running the monitor's tracker: ``resolved`` needs
only the completion events (``router.deadletters.COMPLETED``: transfer id, type, time), and the tracker keeps
every event's body and each transfer's state, which the CLI never shows (its first build parses every event).
Nor does it keep only the completions of transfers that have dead letters: a completion can be read before the
dead letter it resolves (the two topics are read side by side), and a filtered-out completion would be lost
for good. Completion events are picked by their ``event_type`` header, so no other event's value is parsed.

Where: ``$XDG_STATE_HOME`` (else ``~/.local/state``) ``/casebridge/<hash of bootstrap servers and prefix>/``, or
``--index PATH`` / ``CASEBRIDGE_INDEX``; ``--no-index`` reads the topics whole as before. The index rebuilds
itself (one line on stderr) when its file is unreadable (corrupt, not SQLite), when it belongs to another
deployment, and when a topic was recreated (a partition it read is gone, the partition count changed, or a stored
position lies beyond the partition's end); dead letters that retention deleted are dropped from it. A file that
cannot be written (no rights, read-only, no such directory possible) is ``IndexUnusable``: the CLI says so in one
line and reads the topics whole.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from connectors import kafka as clients
from connectors.kafka import Kafka
from monitor._index import DeadLetterIndex, letters_of
from monitor._store import Store
from monitor._tracker import drop_store
from router.deadletters import (
    DeadLetter,
    Filters,
    Outcomes,
    _partitions,
    expired_ids,
    fetch_dead_letters,
)
from router.settings import Topics

#: the environment variable naming the index file (as ``--index``)
ENV = "CASEBRIDGE_INDEX"
FILE = "dlq-index.sqlite3"
#: the index's layout; a file of another format is rebuilt
FORMAT = "1"
#: how long one call may take to bring the index up to date (the first build of a large topic)
CATCH_UP_SECONDS = 600.0
#: a first build (or a long gap) reading at least this many records says so on stderr
SAY_FROM = 20_000
#: SQLite's codes for a file that is not a (sound) database: rebuilt, not refused
_CORRUPT = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


class IndexUnusable(Exception):
    """The index file cannot be opened or written (rights, read-only, disk): one line, naming the path."""


def deployment(kafka: Kafka, topics: Topics) -> str:
    """Which deployment an index belongs to, and whose: a hash of its bootstrap servers, topic prefix and the
    principal Kafka knows the caller as (a SASL user, a client certificate's CN). One principal's index never
    answers another's call: what the first could read, the second may not be allowed to."""
    who = clients.principal(kafka) or ""
    return hashlib.sha256(f"{clients.servers(kafka)}\n{topics.prefix}\n{who}".encode()).hexdigest()[:16]


def default_path(kafka: Kafka, topics: Topics) -> Path:
    """``$XDG_STATE_HOME/casebridge/<deployment>/dlq-index.sqlite3`` (``~/.local/state`` if that is not set)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "casebridge" / deployment(kafka, topics) / FILE


def _corrupt(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorname", "") in _CORRUPT


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)[:120] or type(exc).__name__


class IndexedSelection:
    """The dead letters and their outcomes from the index (a ``router.deadletters.Selection``); ``open`` first."""

    def __init__(self, kafka: Kafka, topics: Topics, path: Path, say: Callable[[str], None] = print) -> None:
        self.kafka, self.topics, self.path, self.say = kafka, topics, path, say
        self.store: Store | None = None
        self.index: DeadLetterIndex | None = None
        #: records read from Kafka to bring the index up to date in this call (only what was new)
        self.records_read = 0
        #: why the index was rebuilt in this call, if it was
        self.rebuilt: str | None = None

    # -- opening and bringing up to date ------------------------------------------------------

    async def open(self) -> None:
        """Open the file (rebuilt if unreadable or another deployment's) and read what is new since the last call."""
        try:
            self._open_store()
            if not await self._catch_up():  # a topic was recreated: start again from nothing
                await self._rebuild("a topic was recreated")
                await self._catch_up()
        except IndexUnusable:
            await self.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            if _corrupt(exc) and self.rebuilt is None:
                self.rebuilt = "unreadable"
                self._drop(f"the dead-letter index {self.path} is unreadable ({_why(exc)}): rebuilding it from Kafka")
                await self.open()
                return
            raise IndexUnusable(self._unusable(exc)) from exc

    def _unusable(self, exc: BaseException) -> str:
        return (
            f"cannot use the dead-letter index {self.path} ({_why(exc)}): reading the topics whole instead; --index"
            f" PATH (or {ENV}) puts it where it can be written, --no-index skips it"
        )

    def _open_store(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = not self.path.exists()
            self.store = Store(self.path, busy_timeout=30.0, readers=1)
            if fresh:
                self.path.chmod(0o600)  # ids, councils and reasons only, but an operator's own
        except sqlite3.Error as exc:
            if _corrupt(exc):
                raise
            raise IndexUnusable(self._unusable(exc)) from exc
        except OSError as exc:
            raise IndexUnusable(self._unusable(exc)) from exc
        owner = self.store.meta("deployment")
        if owner is None and not fresh and not self.store.is_empty():
            self.store.close()  # SQLite with our tables but not ours (a monitor's store?): never dropped, never written
            raise IndexUnusable(
                f"{self.path} is not a dead-letter index of `casebridge dlq` (a monitor's store?): reading the topics"
                f" whole instead; --index PATH (or {ENV}) names a file of its own, --no-index skips it"
            )
        if owner is not None and (owner != deployment(self.kafka, self.topics) or self.store.meta("format") != FORMAT):
            self.store.close()
            self.rebuilt = "another deployment's"
            self._drop(f"the dead-letter index {self.path} was another deployment's: rebuilding it from Kafka")
            self.store = Store(self.path, busy_timeout=30.0, readers=1)
        if owner is None or self.rebuilt:
            self.store.set_meta("deployment", deployment(self.kafka, self.topics))
            self.store.set_meta("format", FORMAT)

    def _drop(self, line: str) -> None:
        self.say(line)
        drop_store(self.path)

    async def _rebuild(self, why: str) -> None:
        await self.close()
        self.rebuilt = why
        self._drop(f"the dead-letter index {self.path}: {why}; rebuilding it from Kafka")
        self._open_store()

    async def _catch_up(self) -> bool:
        """Read what is new; False (nothing read) if a topic was recreated since the last call."""
        assert self.store is not None
        store = self.store
        self.index = index = DeadLetterIndex(store, self.kafka, self.topics, completions=True, fetch_max_wait_ms=20)
        await index.start()
        cluster = await _partitions(self.kafka)
        for topic in index.topics():
            stored = await store.read(store.positions, topic)
            now = cluster.get(topic, set())
            count = await store.read(store.meta, f"partitions:{topic}")
            if (stored and not set(stored) <= now) or (count is not None and int(count) != len(now)):
                return False
        first, end = await index.bounds()
        if any(index.stored.get(tp, 0) > offset for tp, offset in end.items()):
            return False  # a position beyond the end: the partition is not the one that was read
        for tp, offset in first.items():  # retention deleted these: a listing of the topic no longer has them
            if tp.topic == self.topics.dead_letter and offset > 0:
                await store.read(store.forget_dead_letters_before, tp.partition, offset)
        behind = sum(max(0, offset - index.stored.get(tp, 0)) for tp, offset in end.items())
        if behind >= SAY_FROM:
            self.say(f"indexing {behind} new records (dead-letter, audit, parking, events topics) into {self.path}")
        before = index.records_read
        await index.catch_up(timeout=CATCH_UP_SECONDS)
        self.records_read += index.records_read - before
        if index.records_read == before and index.consumer is not None:
            # nothing new, so nothing was fetched: fetch once anyway, so that a principal no longer allowed to read
            # these topics is refused by the broker (TopicAuthorizationFailedError), not answered from the file
            await index.consumer.getmany(timeout_ms=100)
        if not index.caught_up:
            raise TimeoutError(f"the dead-letter index did not catch up in {CATCH_UP_SECONDS:g} s")
        for topic in index.topics():
            if topic in cluster:
                await store.read(store.set_meta, f"partitions:{topic}", str(len(cluster[topic])))
        return True

    async def close(self) -> None:
        if self.index is not None:
            await self.index.stop()
            self.index = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- answering ----------------------------------------------------------------------------

    async def letters(self, filters: Filters | None) -> list[DeadLetter]:
        """The matching dead letters, from the index (by transfer id and pathway in SQL, the rest as ``Filters``)."""
        assert self.store is not None, "open() first"
        store = self.store
        transfer = filters.transfer_id if filters is not None else None
        pathway = filters.pathway if filters is not None else None
        letters = await store.read(lambda: letters_of(store.indexed_where(transfer, pathway)))
        return [d for d in letters if filters is None or filters.matches(d)]

    async def outcomes(self, letters: Sequence[DeadLetter]) -> Outcomes:
        """What happened to ``letters``, from the index (only theirs); expired: Kafka's first offsets (by reference)."""
        assert self.store is not None, "open() first"
        store = self.store
        ids = [d.id for d in letters]
        transfers = [d.transfer_id for d in letters if d.transfer_id]

        def read() -> Outcomes:
            return Outcomes(
                frozenset(store.indexed_among("replayed", ids)),
                frozenset(store.indexed_among("parked", ids)),
                store.indexed_completions(transfers),
            )

        found = await store.read(read)
        expired = await expired_ids(self.kafka, letters)
        return Outcomes(found.replayed, found.parked, found.completions, frozenset(expired))

    async def find(self, dead_letter_id: str) -> DeadLetter | None:
        """One dead letter with its key, value and headers: looked up in the index, then fetched by its offset."""
        assert self.store is not None, "open() first"
        if not await self.store.read(self.store.indexed_among, "dead_letters", [dead_letter_id]):
            return None
        return (await fetch_dead_letters(self.kafka, self.topics.dead_letter, [dead_letter_id])).get(dead_letter_id)
