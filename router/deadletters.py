"""Operators' view of the dead-letter topic: list, inspect, replay.

A dead letter is the original record (key, value, headers) plus ``casebridge.dlq.*`` context headers (and the
same facts under Spring Kafka's ``kafka_dlt-*`` names). Replay puts the original back on the transfers topic, so it
goes through every check again, with ``casebridge.replay.*`` headers naming the operator and the dead letter. A
map-stage dead letter (a source record its feed publisher could not map, naming that publisher) goes to the remap
topic instead: the publisher maps it again and publishes the transfer, or parks it with the new reason. Each replay
is audited (an audit record keyed by the dead letter); whoever reads the record again writes the ``replayed`` event
(the router; for a later closure, the closure scheduler; for a remap, the publisher), the operator's principal
writing no events (README "Deploying securely"). Replay is idempotent: a dead letter already replayed is skipped,
and delivery itself is idempotent on transfer id. A replayed message that fails again goes to the parking topic,
not back to the dead-letter topic, so nothing loops.

Each dead letter has a status (``STATUSES``), from what happened since: ``resolved`` (its transfer
later reached a completed state, ``COMPLETED``, on the events topic), ``parked`` (its replay failed
again: a parking record names it), ``replayed`` (an audit record says it was replayed, and nothing
completed since), ``expired`` (held by reference, and the record it refers to is gone from its topic)
or ``waiting`` (nothing since). Read whole from the topics (``TopicsSelection``: ``outcomes_from_topics``),
or from an index brought up to date incrementally (``casebridge dlq``'s, casebridge/dlqindex.py; the monitor's,
which takes the completions from its store of events): a ``Selection`` either way. A replay fetches the values
of exactly the dead letters it replays, by partition and offset (``fetch_dead_letters``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError
from aiokafka.structs import ConsumerRecord, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from connectors import kafka as clients
from connectors.kafka import Kafka
from contracts import wire

from ._reading import read_all
from .settings import ALLOCATION_AUDIT_PREFIX, Topics


class ReplayRefused(ValueError):
    """A replay was asked for without what it needs (an operator identity)."""


class Status(StrEnum):
    """What became of a dead letter (the module's docstring says how each is decided)."""

    WAITING = "waiting"
    REPLAYED = "replayed"
    PARKED = "parked"
    RESOLVED = "resolved"
    EXPIRED = "expired"


STATUSES = tuple(s.value for s in Status)
#: the events that say a transfer reached a completed state (router/flow.py: no record to send, or the source
#: record closed or kept open; router/closures.py: a later closure's ``source-closed``)
COMPLETED = ("source-closed", "source-kept-open", "completed-no-record")
#: a later closure's dead letter (router/closures.py) is resolved by the closure only, not by the keep-open before it
CLOSED = ("source-closed",)
#: replay audit records are keyed by the dead letter's id; allocations' and the intake's by ``<kind>/<transfer id>``
_DEAD_LETTER_ID = re.compile(r"\d+:\d+")
#: event records are stamped by their producer: read the events topic from this long before the oldest dead letter
_CLOCK_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    context: dict[str, str]
    pathway: str | None = None
    #: the dead-letter record's timestamp (ms since the epoch), when read from the topic
    timestamp: int | None = None

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        headers = [(k, bytes(v)) for k, v in (record.headers or ())]
        context = {  # keyed by wire.dlq_field(header name): "stage", "error.class", ...
            wire.dlq_field(k): v.decode(errors="replace") for k, v in headers if k.startswith(wire.DLQ_PREFIX)
        }
        return cls(
            f"{record.partition}:{record.offset}",
            record.key,
            record.value,
            headers,
            context,
            _pathway(record.value),
            record.timestamp,
        )

    def field(self, header: str) -> str:
        """A dead-letter header's value (``contracts.wire.DLQ_*``), "" when absent."""
        return self.context.get(wire.dlq_field(header), "")

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        """The record's own headers: without casebridge's dead-letter context and Spring's ``kafka_dlt-*``."""
        return [(k, v) for k, v in self.headers if not k.startswith((wire.DLQ_PREFIX, wire.DLT_PREFIX))]

    @property
    def publisher(self) -> str | None:
        """The feed publisher that dead-lettered its source record at the ``map`` stage (``<feed>/<council>``), if
        it named itself: such a dead letter is replayed to it (the remap topic), to be mapped again."""
        name = self.field(wire.DLQ_PUBLISHER)
        return name if name and self.field(wire.DLQ_STAGE) == "map" else None

    @property
    def rule_ids(self) -> list[str]:
        return [r for r in self.field(wire.DLQ_RULE_IDS).split(",") if r]

    @property
    def last_failure(self) -> datetime | None:
        value = self.field(wire.DLQ_LAST_FAILURE)
        return datetime.fromisoformat(value) if value else None

    @property
    def failed_at(self) -> datetime | None:
        """When it was dead-lettered: its last failure, else the dead-letter record's own time."""
        if self.last_failure is not None:
            return _aware(self.last_failure)
        return datetime.fromtimestamp(self.timestamp / 1000, UTC) if self.timestamp is not None else None

    @property
    def transfer_id(self) -> str | None:
        return self.field(wire.DLQ_TRANSFER_ID) or None

    @property
    def by_reference(self) -> bool:
        """Too big to dead-letter whole: the record stays where it was (original topic, partition, offset)."""
        return self.field(wire.DLQ_BY_REFERENCE) == "true"

    def summary(self) -> dict[str, Any]:
        """What an operator list shows: no personal data (ids, council, pathway, reason)."""
        return {
            "id": self.id,
            "last_failure": self.field(wire.DLQ_LAST_FAILURE),
            "council": self.field(wire.DLQ_COUNCIL),
            "pathway": self.pathway or "",
            "transfer_id": self.field(wire.DLQ_TRANSFER_ID),
            "stage": self.field(wire.DLQ_STAGE),
            "error_class": self.field(wire.DLQ_ERROR_CLASS),
            "rule_ids": self.rule_ids,
            "attempts": int(self.field(wire.DLQ_ATTEMPTS) or 0),
            "reason": self.field(wire.DLQ_ERROR_MESSAGE),
        }

    def status(self, outcomes: Outcomes) -> Status:
        """What became of it since (the module's docstring): resolved, parked, replayed, expired or waiting."""
        closure = self.field(wire.DLQ_ORIGINAL_TOPIC).endswith(".pending-closures")
        kinds = CLOSED if closure else COMPLETED
        since = self.failed_at
        done = outcomes.completions.get(self.transfer_id or "", ())
        if any(kind in kinds and (since is None or at >= since) for kind, at in done):
            return Status.RESOLVED
        if self.id in outcomes.parked:
            return Status.PARKED
        if self.id in outcomes.replayed:
            return Status.REPLAYED
        if self.id in outcomes.expired:
            return Status.EXPIRED
        return Status.WAITING

    def listed(self, outcomes: Outcomes) -> dict[str, Any]:
        """``summary()`` with its status, and ``replayed`` (an audit record says so), as every listing shows it."""
        return {**self.summary(), "status": self.status(outcomes).value, "replayed": self.id in outcomes.replayed}


@dataclass(frozen=True)
class Outcomes:
    """What happened after the dead letters were written (``DeadLetter.status`` decides from it)."""

    #: dead letter ids an audit record says were replayed
    replayed: frozenset[str] = frozenset()
    #: dead letter ids whose replay failed again (a parking record's ``casebridge.replay.of``)
    parked: frozenset[str] = frozenset()
    #: completion events per transfer id: ``(event type, occurred at)``, event types among ``COMPLETED``
    completions: Mapping[str, Sequence[tuple[str, datetime]]] = field(default_factory=dict)
    #: dead letters held by reference whose record is gone from its topic (retention deleted it)
    expired: frozenset[str] = frozenset()


def _pathway(value: bytes | None) -> str | None:
    try:
        doc = json.loads(value or b"")
        return str(doc["pathway"]["direction"])
    except (ValueError, KeyError, TypeError):
        return None


class Filters(BaseModel):
    """Which dead letters an operator means. Every given filter must match."""

    model_config = ConfigDict(extra="forbid")

    council: str | None = None
    pathway: str | None = Field(default=None, description="step-up or step-down")
    rule_id: str | None = None
    error_class: str | None = None
    transfer_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, d: DeadLetter) -> bool:
        s = d.summary()
        checks = [
            self.council is None or s["council"] == self.council,
            self.pathway is None or s["pathway"] == self.pathway,
            self.rule_id is None or self.rule_id in d.rule_ids,
            self.error_class is None or s["error_class"] == self.error_class,
            self.transfer_id is None or s["transfer_id"] == self.transfer_id,
            self.since is None or (d.last_failure is not None and d.last_failure >= _aware(self.since)),
            self.until is None or (d.last_failure is not None and d.last_failure <= _aware(self.until)),
        ]
        return all(checks)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def list_dead_letters(kafka: Kafka, topics: Topics, filters: Filters | None = None) -> list[DeadLetter]:
    letters = [DeadLetter.of(r) for r in await read_all(kafka, topics.dead_letter)]
    return [d for d in letters if filters is None or filters.matches(d)]


async def replayed_ids(kafka: Kafka, topics: Topics) -> set[str]:
    """The dead letters replayed so far: the keys of the audit topic's replay records (not allocations' or intake's)."""
    keys = {r.key.decode() for r in await read_all(kafka, topics.audit) if r.key is not None}
    return {k for k in keys if not k.startswith(ALLOCATION_AUDIT_PREFIX) and _DEAD_LETTER_ID.fullmatch(k)}


async def _partitions(kafka: Kafka) -> dict[str, set[int]]:
    """The cluster's topics and their partitions (a metadata request for all of them: naming an absent topic
    might create it)."""
    client = clients.client(kafka)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        return {t: set(cluster.partitions_for_topic(t) or ()) for t in cluster.topics()}
    finally:
        await client.close()


async def parked_ids(kafka: Kafka, topics: Topics) -> set[str]:
    """The dead letters whose replay failed again: the ``casebridge.replay.of`` of the parking topic's records."""
    out = set()
    for r in await read_all(kafka, topics.parking):
        of = dict(r.headers or ()).get(wire.REPLAY_OF)
        if of is not None:
            out.add(bytes(of).decode(errors="replace"))
    return out


async def first_offsets(kafka: Kafka, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    """The first offset now of each of these partitions that exists (one metadata request, one offsets request:
    the cost of an expired-or-erased check, whatever the number of dead letters)."""
    cluster = await _partitions(kafka)
    there = sorted({tp for tp in partitions if tp.partition in cluster.get(tp.topic, ())})
    if not there:
        return {}
    consumer = clients.consumer(kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(there)  # the consumer learns these topics' leaders
        return dict(await consumer.beginning_offsets(there))
    finally:
        await consumer.stop()


async def expired_ids(kafka: Kafka, letters: Sequence[DeadLetter]) -> set[str]:
    """Dead letters held by reference whose record is gone: its topic or partition no longer there, or its offset
    below the partition's first (retention deleted it; transfers are kept 7 days)."""
    refs: dict[str, TopicPartition | None] = {}
    for d in letters:
        if d.by_reference:
            try:
                refs[d.id] = TopicPartition(d.field(wire.DLQ_ORIGINAL_TOPIC), int(d.field(wire.DLQ_ORIGINAL_PARTITION)))
            except ValueError:
                refs[d.id] = None  # it names no record: nothing to find
    if not refs:
        return set()
    first = await first_offsets(kafka, [tp for tp in refs.values() if tp is not None])
    letters_by_id = {d.id: d for d in letters if d.id in refs}
    out = set()
    for dl_id, tp in refs.items():
        offset = letters_by_id[dl_id].field(wire.DLQ_ORIGINAL_OFFSET)
        if tp is None or tp not in first or not offset.isdigit() or int(offset) < first[tp]:
            out.add(dl_id)
    return out


async def completions_since(
    kafka: Kafka, events_topic: str, transfer_ids: Iterable[str], since: datetime | None
) -> dict[str, list[tuple[str, datetime]]]:
    """Completion events (``COMPLETED``) of these transfers on the events topic, from a little before ``since``
    (the oldest dead letter: nothing older can resolve one) to the topic's end now."""
    wanted = {t.encode() for t in transfer_ids}
    out: dict[str, list[tuple[str, datetime]]] = {}
    if not wanted:
        return out
    partitions = [TopicPartition(events_topic, p) for p in sorted((await _partitions(kafka)).get(events_topic, ()))]
    if not partitions:
        return out
    consumer = clients.consumer(kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        if since is None:
            starts: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
        else:  # the first record stamped at or after that time; none: nothing that late yet
            at = int((since - _CLOCK_MARGIN).timestamp() * 1000)
            found = await consumer.offsets_for_times({tp: max(at, 0) for tp in partitions})
            starts = {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in partitions}
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        kinds = {k.encode() for k in COMPLETED}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60.0
        while loop.time() < deadline and [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(*partitions, timeout_ms=500)).values():
                for r in records:
                    kind = dict(r.headers or ()).get(wire.EVENT_TYPE)
                    if r.key not in wanted or kind is None or bytes(kind) not in kinds or r.value is None:
                        continue
                    try:
                        occurred = datetime.fromisoformat(json.loads(r.value)["occurred_at"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    out.setdefault(r.key.decode(), []).append((bytes(kind).decode(), _aware(occurred)))
    finally:
        await consumer.stop()
    return out


async def outcomes_from_topics(
    kafka: Kafka,
    topics: Topics,
    letters: Sequence[DeadLetter],
    completions: Mapping[str, Sequence[tuple[str, datetime]]] | None = None,
) -> Outcomes:
    """What happened to ``letters`` since: the audit, parking and events topics, and the by-reference records.

    The events topic is read from a little before the oldest of these dead letters only (nothing older can
    resolve one), unless ``completions`` are given (the monitor has them in its store); a topic that does not
    exist yet has nothing to say."""
    there = await _partitions(kafka)
    with_transfer = [d for d in letters if d.transfer_id]
    times = [d.failed_at for d in with_transfer]
    since = None if None in times else min((t for t in times if t is not None), default=None)

    async def nothing() -> set[str]:
        return set()

    async def given() -> Mapping[str, Sequence[tuple[str, datetime]]]:
        return completions or {}

    wanted = {d.transfer_id or "" for d in with_transfer}
    replayed, parked, completed, expired = await asyncio.gather(
        replayed_ids(kafka, topics) if topics.audit in there else nothing(),
        parked_ids(kafka, topics) if topics.parking in there else nothing(),
        completions_since(kafka, topics.events, wanted, since)
        if completions is None and topics.events in there and with_transfer
        else given(),
        expired_ids(kafka, letters),
    )
    return Outcomes(frozenset(replayed), frozenset(parked), completed, frozenset(expired))


class Selection(Protocol):
    """Where the listings and the replay's selection come from: the topics read whole (``TopicsSelection``) or an
    index (casebridge/dlqindex.py). ``letters`` need not carry their key and value (a replay fetches those)."""

    async def letters(self, filters: Filters | None) -> list[DeadLetter]:
        """The matching dead letters, in the order of the topic read whole (time, partition, offset)."""
        ...

    async def outcomes(self, letters: Sequence[DeadLetter]) -> Outcomes:
        """What happened to ``letters`` since (``DeadLetter.status`` decides from it)."""
        ...


@dataclass(frozen=True)
class TopicsSelection:
    """The dead-letter, audit, parking and events topics read whole, every call."""

    kafka: Kafka
    topics: Topics

    async def letters(self, filters: Filters | None) -> list[DeadLetter]:
        return await list_dead_letters(self.kafka, self.topics, filters)

    async def outcomes(self, letters: Sequence[DeadLetter]) -> Outcomes:
        return await outcomes_from_topics(self.kafka, self.topics, letters)


async def fetch_dead_letters(
    kafka: Kafka, topic: str, ids: Iterable[str], timeout: float = 30.0
) -> dict[str, DeadLetter]:
    """The dead letters ``ids`` (``PARTITION:OFFSET``) read from ``topic`` with their key, value and headers: a seek
    to each (a run of neighbours in one fetch), never the whole topic. An id with no record there (beyond the
    partition's end, deleted by retention, no such partition) is left out."""
    wanted: dict[int, set[int]] = {}
    for dl_id in ids:
        partition, offset = (int(part) for part in dl_id.split(":"))
        wanted.setdefault(partition, set()).add(offset)
    out: dict[str, DeadLetter] = {}
    there = (await _partitions(kafka)).get(topic, set())
    tps = [TopicPartition(topic, p) for p in sorted(wanted) if p in there]
    if not tps:
        return out
    consumer = clients.consumer(kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        first, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for tp in tps:
            left = sorted(o for o in wanted[tp.partition] if first[tp] <= o < end[tp])
            while left and loop.time() < deadline:
                consumer.seek(tp, left[0])
                batch = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
                got = {r.offset: r for r in batch}
                for r in got.values():
                    if r.offset in wanted[tp.partition]:
                        out[f"{r.partition}:{r.offset}"] = DeadLetter.of(r)
                # past the batch's last record: found or gone (compacted, deleted); an empty batch: try it again
                reached = max(got) if got else left[0] - 1
                left = [o for o in left if o > reached]
    finally:
        await consumer.stop()
    return out


async def list_with_status(
    kafka: Kafka,
    topics: Topics,
    filters: Filters | None = None,
    status: Status | None = None,
    selection: Selection | None = None,
) -> list[dict[str, Any]]:
    """The matching dead letters as listed (``DeadLetter.listed``: summary and status), only ``status`` if given;
    from ``selection`` (default: the topics read whole)."""
    source = selection or TopicsSelection(kafka, topics)
    letters = await source.letters(filters)
    outcomes = await source.outcomes(letters)
    rows = [d.listed(outcomes) for d in letters]
    return [r for r in rows if status is None or r["status"] == status]


async def router_members(kafka: Kafka, group_id: str) -> int | None:
    """How many router processes the router's consumer group has now (0: none is consuming); None if Kafka cannot
    say. One ``casebridge run`` is several members (the transfers consumer and one per retry tier): members are
    counted by the process (instance) id their assignment carries (``router/_assignor.py``). While the group
    rebalances, members have no assignment yet: it is asked again for a few seconds, then those are counted as
    one process at most (there is at least one; which they are is not known)."""
    admin = clients.admin(kafka)
    await admin.start()
    try:
        for attempt in range(10):
            try:
                responses = await admin.describe_consumer_groups([group_id])
            except (CoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError):
                # a broker whose offsets topic is still being made (no group has ever committed): ask again
                if attempt == 9:
                    return None
                await asyncio.sleep(0.5)
                continue
            found = _described(responses, group_id)
            if found is None or found[0] == "Stable" or attempt == 9:
                break
            await asyncio.sleep(0.5)  # rebalancing: the assignments say which process each member is, once made
    except Exception:  # an older broker or no rights to describe groups: say we do not know
        return None
    finally:
        await admin.close()
    if found is None:
        return 0
    members = found[1]
    known = {i for i in map(_instance, members) if i is not None}
    return len(known) or (1 if members else 0)


def _described(responses: Any, group_id: str) -> tuple[str, list[Any]] | None:
    """The group's state and members, or None if it has none (dead, empty, or an error)."""
    for response in responses:
        for group in response.groups:
            error_code, name, state, members = group[0], group[1], group[2], group[5]
            if name == group_id:
                return None if error_code or state in ("Dead", "Empty") else (state, list(members))
    return None


def _instance(member: Any) -> bytes | None:
    """A described group member's process: the instance id its assignment carries (``router/_assignor.py``); None
    without one (an assignment not yet made, or another assignor's)."""
    assignment = member[-1]  # (member id, [instance id,] client id, host, metadata, assignment)
    with contextlib.suppress(Exception):
        user_data = ConsumerProtocolMemberAssignment.decode(assignment).user_data
        if user_data:
            return bytes(user_data)
    return None


@dataclass
class ReplayReport:
    selected: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    already_replayed: list[str] = field(default_factory=list)
    #: dead letters that hold their record by reference only (too big to dead-letter whole): not replayable
    by_reference: list[str] = field(default_factory=list)
    #: of ``replayed``, the map-stage dead letters sent to their publisher to be mapped again (the remap topic)
    remapped: list[str] = field(default_factory=list)
    dry_run: bool = False
    #: every dead letter named above, as listed (``DeadLetter.listed``: transfer id, reason, status, ...)
    letters: dict[str, dict[str, Any]] = field(default_factory=dict)


async def replay(
    kafka: Kafka,
    topics: Topics,
    *,
    operator: str | None,
    filters: Filters | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    rate_per_second: float = 50.0,
    only: Collection[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    selection: Selection | None = None,
) -> ReplayReport:
    """Replay matching dead letters once each; audited; ``dry_run`` only reports what it would do.

    ``progress`` is told (replayed so far, of how many) after each one. ``only``: of those matching, these dead
    letter ids and no others (the ones a preview showed and a person
    confirmed: the monitor's replay is a preview, then a confirmation of exactly what it listed). ``selection``:
    where the dead letters and their outcomes come from (default: the topics read whole); the records replayed are
    fetched by partition and offset either way."""
    if not operator or not operator.strip():
        raise ReplayRefused("replay needs an operator identity (--operator): every replay is audited")
    source = selection or TopicsSelection(kafka, topics)
    letters = await source.letters(filters)
    if only is not None:
        letters = [d for d in letters if d.id in set(only)]
    outcomes = await source.outcomes(letters)
    report = ReplayReport(dry_run=dry_run)
    for d in letters:
        if d.id in outcomes.replayed:
            report.already_replayed.append(d.id)
        elif d.by_reference:
            report.by_reference.append(d.id)
        elif limit is None or len(report.selected) < limit:
            report.selected.append(d.id)
        else:
            continue
        report.letters[d.id] = d.listed(outcomes)
    if dry_run or not report.selected:
        return report
    chosen = await fetch_dead_letters(kafka, topics.dead_letter, report.selected)
    gone = [dl_id for dl_id in report.selected if dl_id not in chosen]  # deleted since it was listed: not replayed
    report.selected = [dl_id for dl_id in report.selected if dl_id in chosen]
    for dl_id in gone:
        report.letters.pop(dl_id, None)
    producer = clients.producer(kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for dl_id in report.selected:
            d = chosen[dl_id]
            now = datetime.now(UTC)
            replay_headers = [(wire.REPLAY_OF, dl_id.encode()), (wire.REPLAY_OPERATOR, operator.encode())]
            headers = [*d.original_headers, *replay_headers]
            # a later closure (router/closures.py) goes back to the pending closures; a source record a feed
            # publisher could not map goes to that publisher (the remap topic, with the dead letter's context: the
            # publisher, the feed position), to be mapped again; everything else is a transfer
            if d.field(wire.DLQ_ORIGINAL_TOPIC) == topics.pending_closures:
                topic = topics.pending_closures
            elif d.publisher is not None:
                topic = topics.remap
                headers = [*((k, v) for k, v in d.headers if k.startswith(wire.DLQ_PREFIX)), *replay_headers]
                report.remapped.append(dl_id)
            else:
                topic = topics.transfers
            # the audit record first, the message only once the broker acknowledged it: a principal that may
            # write the transfers topic but not the audit topic (the router's, a publisher's) is refused here,
            # having replayed nothing; and whoever reads the message finds its audit record already written (the
            # ``replayed`` event is written only for a replay its audit record names, router/_replays.py). A
            # failure between the two leaves an audited replay that sent nothing: listed ``replayed``, say so
            audit = {"operator": operator, "at": now.isoformat(), "dead_letter": dl_id, **d.summary()}
            await producer.send_and_wait(topics.audit, value=json.dumps(audit).encode(), key=dl_id.encode())
            await producer.send_and_wait(topic, value=d.value, key=d.key, headers=headers)
            report.replayed.append(dl_id)
            if progress is not None:  # (replayed so far, of how many): the CLI's progress bar
                progress(len(report.replayed), len(report.selected))
            await asyncio.sleep(1.0 / rate_per_second)
    finally:
        await producer.stop()
    return report
