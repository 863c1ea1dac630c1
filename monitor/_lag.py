"""Consumer lag per consumer group on one deployment's topics, and the dead letters' summary, cached."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from aiokafka.structs import TopicPartition

from connectors import kafka as clients
from connectors.kafka import Kafka
from router.deadletters import (
    DeadLetter,
    Outcomes,
    Status,
    first_offsets,
    list_dead_letters,
    outcomes_from_topics,
)
from router.settings import Topics

from ._index import DeadLetterIndex, letters_of
from ._store import FORGOTTEN, Store
from ._tracker import Tracker

log = structlog.get_logger("casebridge.monitor")
TRACKER_GROUP = "casebridge-monitor (tracker)"
#: dead letters that still need a person (their reasons are the page's "top reasons")
OPEN_STATUSES = (Status.WAITING, Status.PARKED, Status.EXPIRED)


async def group_lag(kafka: Kafka, topics: Topics, groups: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Every consumer group (or those ``groups`` keeps, by id) with committed offsets on ``<prefix>.*`` topics: lag
    per group and topic."""
    admin = clients.admin(kafka)
    consumer = clients.consumer(kafka, group_id=None)
    try:  # closed whatever happens: a round that cannot reach Kafka must not leak its clients
        await admin.start()
        await consumer.start()
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in await admin.list_consumer_groups():
            if groups is not None and not groups(str(group[0])):
                continue
            offsets = await admin.list_consumer_group_offsets(group[0])
            mine = {tp: m.offset for tp, m in offsets.items() if tp.topic.startswith(topics.prefix + ".")}
            if mine:
                committed[str(group[0])] = mine
        every = sorted({tp for c in committed.values() for tp in c})
        ends = await consumer.end_offsets(every) if every else {}
    finally:
        await consumer.stop()
        await admin.close()
    rows = []
    for group, offsets in sorted(committed.items()):
        by_topic: Counter[str] = Counter()
        for tp, offset in offsets.items():
            by_topic[tp.topic] += max(0, ends.get(tp, 0) - max(offset, 0))
        rows += [{"group": group, "topic": t, "lag": n} for t, n in sorted(by_topic.items())]
    return rows


class Watch:
    """What the monitor reads from Kafka besides events: lag and dead letters, refreshed in the background."""

    def __init__(
        self,
        kafka: Kafka,
        topics: Topics,
        tracker: Tracker,
        interval: float = 5.0,
        index: DeadLetterIndex | None = None,
    ) -> None:
        self.kafka = kafka
        #: the dead letters, replays and parkings indexed in the store (None: read the topics whole each round)
        self.index = index
        if index is not None:  # it reads during the rounds only: a round then waits on no fetch held open
            index.pause_between = True
        self.topics = topics
        self.tracker = tracker
        self.interval = interval
        self.lag: list[dict[str, Any]] = []
        #: the dead letters as the last round listed them (kept up to date a round at a time, with the index)
        self.listing = Listing()
        self._rounds = asyncio.Lock()  # the background round and a replay's refresh never interleave
        self.refreshed_at = 0.0
        #: Kafka as the last round found it: None before the first, else reachable or not (and since when)
        self.kafka_reachable: bool | None = None
        self.kafka_error: str | None = None
        self.kafka_failing_since: float | None = None
        self.kafka_checked_at: float | None = None

    @property
    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter as listed (``DeadLetter.listed``), oldest first (time, partition, offset): the last
        round's, never changed in place (a round publishes a new list)."""
        return self.listing.published.letters

    async def refresh(self) -> None:
        """Lag first (cheap), then the dead letters: with an index, only what arrived on the dead-letter, audit
        and parking topics since the last round, and only what the store indexed since then is read from it
        (``Listing``); without, the topics read whole, like ``casebridge dlq list``.

        A round that cannot reach Kafka in time (two intervals, at least 10 s) marks Kafka unreachable
        and keeps the last figures; the tracker's own lag is asked here too, so it stays current.
        """
        try:
            async with asyncio.timeout(max(10.0, 2 * self.interval)):
                rows = await group_lag(self.kafka, self.topics)
                tracker_lag = await self.tracker.lag()
        except Exception as exc:
            self._kafka_failed(exc)
            raise
        self._kafka_ok()
        rows.append({"group": TRACKER_GROUP, "topic": self.topics.events, "lag": sum(tracker_lag.values())})
        self.lag = rows
        store = self.tracker.store
        async with self._rounds:
            if self.index is None:
                letters = await list_dead_letters(self.kafka, self.topics)
                # the completions from the tracker's store of events (as far as it has read the events topic)
                completions = await store.read(store.completions, [d.transfer_id for d in letters if d.transfer_id])
                outcomes = await outcomes_from_topics(self.kafka, self.topics, letters, completions)
                self.listing.published = Published.of(letters, [d.listed(outcomes) for d in letters])
            else:  # only what arrived since the last round is read from Kafka, and from the store; off the loop
                await self.index.catch_up()
                partitions = await store.read(self.listing.take, store)
                first = await first_offsets(self.kafka, partitions) if partitions else {}
                await store.read(self.listing.settle, first)
        self.refreshed_at = time.time()

    def _kafka_failed(self, exc: BaseException) -> None:
        now = time.time()
        self.kafka_checked_at = now
        self.kafka_error = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
        if self.kafka_reachable is not False:
            self.kafka_failing_since = now
            log.warning("monitor_kafka_unreachable", bootstrap=clients.servers(self.kafka), error=self.kafka_error)
        self.kafka_reachable = False

    def _kafka_ok(self) -> None:
        now = time.time()
        if self.kafka_reachable is False and self.kafka_failing_since is not None:
            log.info("monitor_kafka_reachable", seconds=round(now - self.kafka_failing_since, 1))
        self.kafka_reachable, self.kafka_error, self.kafka_failing_since = True, None, None
        self.kafka_checked_at = now

    def health(self) -> dict[str, Any]:
        """Kafka as the last round found it (from memory)."""
        return {
            "reachable": self.kafka_reachable,
            "error": self.kafka_error,
            "failing_since": _iso(self.kafka_failing_since),
            "checked_at": _iso(self.kafka_checked_at),
            "lag_refreshed_at": _iso(self.refreshed_at or None),
        }

    def by_status(self) -> dict[str, int]:
        """How many dead letters are in each status (every status named, 0 included)."""
        counts = self.listing.published.by_status
        return {s.value: counts.get(s.value, 0) for s in Status}

    def top_reasons(self, n: int = 5) -> list[dict[str, Any]]:
        """The commonest reasons among dead letters that still need a person (``OPEN_STATUSES``: waiting, parked,
        expired), by error class and rule ids, no personal data; ties by reason."""
        return top_reasons(self.listing.published.reasons, n)

    def expired_ids(self) -> tuple[str, ...]:
        """The ids of the dead letters listed ``expired``, sorted."""
        return self.listing.published.expired

    def of_transfer(self, transfer_id: str) -> list[dict[str, Any]]:
        """The dead letters of one transfer as listed, oldest first."""
        return self.listing.published.of_transfer(transfer_id)

    def page(
        self, status: str | None = None, limit: int = 200, before: str | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first: up to ``limit`` dead letters (of ``status`` only, if given) older than the dead letter
        ``before`` (None: from the newest), after skipping ``offset`` of them; and the cursor of the next page (the
        last one's id) or None when no more match. ``KeyError`` when ``before`` names no listed dead letter."""
        pub = self.listing.published
        end = len(pub.letters) if before is None else pub.position(before)
        letters = pub.letters
        if status is None:
            stop = max(0, end - offset)
            start = max(0, stop - limit)
            chosen = letters[start:stop][::-1]
            return chosen, (chosen[-1]["id"] if chosen and start > 0 else None)
        chosen, skipped, i = [], 0, end - 1
        while i >= 0:
            d = letters[i]
            i -= 1
            if d["status"] != status:
                continue
            if skipped < offset:
                skipped += 1
            elif len(chosen) < limit:
                chosen.append(d)
            else:  # one more matches: there is a next page
                return chosen, chosen[-1]["id"]
        return chosen, None

    async def run(self, stopped: asyncio.Event) -> None:
        failing: str | None = None
        while not stopped.is_set():
            try:
                await self.refresh()
                failing = None
            except Exception as exc:  # keep the last figures; try again next round (one line per kind of failure)
                if failing != type(exc).__name__:
                    failing = type(exc).__name__
                    log.warning("monitor_refresh_failed", error_class=failing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), self.interval)


#: a dead letter's place in the listings: the order ``Store.indexed_dead_letters`` reads them (no time: first)
Key = tuple[bool, int, int, int]
#: the first offset of a partition that is gone: every record referred to on it is gone too
_GONE = sys.maxsize


def _key(timestamp: int | None, dead_letter_id: str) -> Key:
    partition, _, offset = dead_letter_id.partition(":")
    return (timestamp is not None, timestamp or 0, int(partition), int(offset))


def _reason(d: dict[str, Any]) -> str:
    rules = ", ".join(d["rule_ids"])
    return f"{d['error_class']}{' (' + rules + ')' if rules else ''}: {d['reason']}"


def top_reasons(reasons: Mapping[str, int], n: int) -> list[dict[str, Any]]:
    """The ``n`` commonest of ``reasons`` (reason -> count), ties by reason."""
    best = sorted(((c, r) for r, c in reasons.items() if c > 0), key=lambda cr: (-cr[0], cr[1]))[:n]
    return [{"reason": r, "count": c} for c, r in best]


class _Tally:
    """Counts by status, reasons among ``OPEN_STATUSES`` and the expired ids of listed dead letters, kept as they are
    listed, again and again (a listed dead letter is counted in, its earlier listing counted out)."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.expired: set[str] = set()

    def count(self, d: dict[str, Any], n: int) -> None:
        status = d["status"]
        self.statuses[status] += n
        if status in OPEN_STATUSES:
            reason = _reason(d)
            self.reasons[reason] += n
            if not self.reasons[reason]:
                del self.reasons[reason]
        if status == Status.EXPIRED:
            (self.expired.add if n > 0 else self.expired.discard)(d["id"])


@dataclass(frozen=True)
class Published:
    """One round's listing, as the page, the API and the metrics read it (from any thread; a round publishes anew)."""

    #: every dead letter as listed, oldest first
    letters: list[dict[str, Any]] = field(default_factory=list)
    #: each one's ``Key``, in the same order (a cursor finds its place by bisection)
    keys: list[Key] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    #: reason -> count among ``OPEN_STATUSES``
    reasons: dict[str, int] = field(default_factory=dict)
    expired: tuple[str, ...] = ()
    #: dead letter id -> its ``Key`` (it may hold a later round's too: looked up, never listed)
    key_of: Mapping[str, Key] = field(default_factory=dict)
    #: transfer id -> its dead letters' ids; id -> as listed (the same: looked up only)
    transfers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    listed: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, letters: Sequence[DeadLetter], listed: Sequence[dict[str, Any]]) -> Published:
        """A full listing's (``letters[i]`` listed as ``listed[i]``), in the listings' order."""
        key_of = {d.id: _key(d.timestamp, d.id) for d in letters}
        rows = sorted(zip((key_of[d.id] for d in letters), listed, strict=True), key=lambda kl: kl[0])
        tally, transfers = _Tally(), dict[str, list[str]]()
        for _, d in rows:
            tally.count(d, 1)
            if d["transfer_id"]:
                transfers.setdefault(d["transfer_id"], []).append(d["id"])
        by_id = {d["id"]: d for _, d in rows}
        return cls.tallied([k for k, _ in rows], [d for _, d in rows], tally, key_of, transfers, by_id)

    @classmethod
    def tallied(
        cls,
        keys: list[Key],
        letters: list[dict[str, Any]],
        tally: _Tally,
        key_of: Mapping[str, Key],
        transfers: Mapping[str, Sequence[str]],
        listed: Mapping[str, dict[str, Any]],
    ) -> Published:
        by_status = {s: n for s, n in tally.statuses.items() if n}
        expired = tuple(sorted(tally.expired))
        return cls(letters, keys, by_status, dict(tally.reasons), expired, key_of, transfers, listed)

    def position(self, dead_letter_id: str) -> int:
        """Where this dead letter is in ``letters`` (``KeyError``: not there)."""
        key = self.key_of.get(dead_letter_id)
        i = -1 if key is None else bisect_left(self.keys, key)
        if not 0 <= i < len(self.letters) or self.letters[i]["id"] != dead_letter_id:
            raise KeyError(dead_letter_id)
        return i

    def of_transfer(self, transfer_id: str) -> list[dict[str, Any]]:
        """The dead letters of one transfer as listed, oldest first."""
        ids = sorted(self.transfers.get(transfer_id, ()), key=lambda i: self.key_of[i])
        return [self.listed[i] for i in ids if i in self.listed]


class Listing:
    """The dead letters as listed, kept up to date from the store a round at a time: each round reads only what the
    store indexed (dead letters, replays, parkings) or stored (completion events) after the positions of the last,
    in one read transaction, and lists again only the dead letters whose inputs changed: new ones, those newly
    replayed or parked, those whose transfer completed since, and (held by reference) those whose record's partition
    moved its first offset. The result is what listing every dead letter afresh gives (tests/test_monitor_refresh.py
    checks it step by step); a store that forgot dead letters (retention, ``Store.forget_dead_letters_before``) is
    listed again in full.

    ``take`` and ``settle`` run on a store reader thread, one round at a time (``Watch`` holds a lock); the page
    reads ``published`` only, which a round replaces whole.
    """

    def __init__(self) -> None:
        self.published = Published()
        self._reset()

    def _reset(self) -> None:
        #: the store's positions: the last ``seq`` taken of dead letters, replays, parkings, events
        self.dl_seq = self.replayed_seq = self.parked_seq = self.event_seq = 0
        self.forgotten: str | None = None
        self.letters: dict[str, DeadLetter] = {}
        self.listed: dict[str, dict[str, Any]] = {}
        #: the dead letters' ids in the listings' order (by ``key_of``)
        self.order: list[str] = []
        self.key_of: dict[str, Key] = {}
        self.sorted = True
        self.by_transfer: dict[str, list[str]] = {}
        self.replayed: set[str] = set()
        self.parked: set[str] = set()
        #: completion events of the transfers that have dead letters (every such transfer has an entry)
        self.completions: dict[str, list[tuple[str, datetime]]] = {}
        self.expired: set[str] = set()
        #: dead letters held by reference, by the partition of the record they refer to: ``(offset, id)``
        self.refs: dict[TopicPartition, list[tuple[int, str]]] = {}
        #: those taken this round, not yet compared with their partition's first offset
        self.new_refs: list[tuple[TopicPartition, int, str]] = []
        #: each referred-to partition's first offset as last compared (``_GONE``: not there)
        self.first: dict[TopicPartition, int] = {}
        self.dirty: set[str] = set()
        self.changed = True
        self.tally = _Tally()

    def take(self, store: Store) -> list[TopicPartition]:
        """Read what the store holds beyond the positions (one snapshot) and take it in; returns the partitions
        whose first offsets the expired-or-erased check needs (those of the dead letters held by reference)."""
        with store.snapshot():
            forgotten = store.meta(FORGOTTEN)
            if forgotten != self.forgotten:
                self._reset()
                self.forgotten = forgotten
            rows = store.dead_letters_after(self.dl_seq)
            replayed = store.ids_after("replayed", self.replayed_seq)
            parked = store.ids_after("parked", self.parked_seq)
            # completions of the transfers already here (another's are read whole when its first dead letter comes)
            done = store.completions_after(self.event_seq) if self.completions else []
            self.event_seq = store.last_event_seq()
            for _, transfer_id, kind, at in done:
                if transfer_id in self.completions:
                    self.completions[transfer_id].append((kind, at))
                    self.dirty.update(self.by_transfer[transfer_id])
            letters = letters_of(rows)
            unseen = {d.transfer_id for d in letters if d.transfer_id and d.transfer_id not in self.completions}
            if unseen:
                found = store.completions(unseen)
                for transfer_id in unseen:
                    self.completions[transfer_id] = list(found.get(transfer_id, ()))
        if rows:
            self.dl_seq = max(self.dl_seq, max(int(row["seq"]) for row in rows))
            self.changed = True
        last = self.key_of[self.order[-1]] if self.order else None
        for row, d in zip(rows, letters, strict=True):
            dead_letter_id, of = d.id, d.transfer_id
            if dead_letter_id in self.letters:
                continue
            self.letters[dead_letter_id] = d
            key = (d.timestamp is not None, d.timestamp or 0, row["partition"], row["offset"])
            self.key_of[dead_letter_id] = key
            if last is not None and key < last:
                self.sorted = False
            last = key
            self.order.append(dead_letter_id)
            if of:
                self.by_transfer.setdefault(of, []).append(dead_letter_id)
            self.dirty.add(dead_letter_id)
            if d.context.get("by.reference") == "true":
                self._refer(d)
        for table, ids, marks in (("replayed", replayed, self.replayed), ("parked", parked, self.parked)):
            for seq, dead_letter_id in ids:
                if table == "replayed":
                    self.replayed_seq = max(self.replayed_seq, seq)
                else:
                    self.parked_seq = max(self.parked_seq, seq)
                if dead_letter_id not in marks:
                    marks.add(dead_letter_id)
                    if dead_letter_id in self.letters:
                        self.dirty.add(dead_letter_id)
        return sorted(self.refs)

    def _refer(self, d: DeadLetter) -> None:
        """A dead letter held by reference: its record's partition noted (as ``expired_ids`` reads it)."""
        try:
            tp = TopicPartition(d.context["original.topic"], int(d.context["original.partition"]))
        except (KeyError, ValueError):
            self.expired.add(d.id)  # it names no record: nothing to find
            return
        offset = d.context.get("original.offset", "")
        if not offset.isdigit():
            self.expired.add(d.id)
            self.refs.setdefault(tp, [])  # its partition is asked, as ``expired_ids`` does
            return
        self.refs.setdefault(tp, []).append((int(offset), d.id))
        self.new_refs.append((tp, int(offset), d.id))

    def settle(self, first: Mapping[TopicPartition, int]) -> None:
        """Compare with the partitions' first offsets now (only a partition whose first offset moved is compared
        whole; a new dead letter alone), list again what changed, and publish the round's listing."""
        for tp, refs in self.refs.items():
            now = first.get(tp, _GONE)
            if self.first.get(tp) == now:
                continue
            self.first[tp] = now
            for offset, dead_letter_id in refs:
                self._expire(dead_letter_id, offset < now)
        for tp, offset, dead_letter_id in self.new_refs:
            self._expire(dead_letter_id, offset < self.first[tp])
        self.new_refs = []
        outcomes = Outcomes(
            cast(frozenset[str], self.replayed),
            cast(frozenset[str], self.parked),
            self.completions,
            cast(frozenset[str], self.expired),
        )
        for dead_letter_id in self.dirty:
            listed = self.letters[dead_letter_id].listed(outcomes)
            earlier = self.listed.get(dead_letter_id)
            if earlier != listed:
                if earlier is not None:
                    self.tally.count(earlier, -1)
                self.tally.count(listed, 1)
                self.listed[dead_letter_id] = listed
                self.changed = True
        self.dirty = set()
        if not self.changed:
            return
        if not self.sorted:
            self.order.sort(key=self.key_of.__getitem__)
            self.sorted = True
        keys, rows = [self.key_of[i] for i in self.order], [self.listed[i] for i in self.order]
        self.published = Published.tallied(keys, rows, self.tally, self.key_of, self.by_transfer, self.listed)
        self.changed = False

    def _expire(self, dead_letter_id: str, gone: bool) -> None:
        if gone != (dead_letter_id in self.expired):
            (self.expired.add if gone else self.expired.discard)(dead_letter_id)
            self.dirty.add(dead_letter_id)


def full_listing(store: Store, letters: list[DeadLetter], expired: frozenset[str]) -> list[dict[str, Any]]:
    """The dead letters as listed afresh, with their statuses from the store's index and events (what ``Listing``
    keeps up to date; on a reader thread)."""
    completions = store.completions(d.transfer_id for d in letters if d.transfer_id)
    outcomes = Outcomes(
        frozenset(store.indexed_ids("replayed")), frozenset(store.indexed_ids("parked")), completions, expired
    )
    return [d.listed(outcomes) for d in letters]


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
