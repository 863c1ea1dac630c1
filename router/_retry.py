"""Delayed retry tiers, and the per-child order across them.

A transfer whose target stays unavailable through the in-process retries moves to retry
tier 0 (e.g. 30 s later), then tier 1 (e.g. 5 min), then the dead-letter topic. While one
of a child's transfers waits in a tier, that child is *parked*: its later messages follow
it into the same tier instead of overtaking it; other children keep flowing.

Which children are parked, with which messages pending, is kept in a compacted topic so
a restarted router knows it. Updates are idempotent (sets of message ids), so a batch
processed twice after a crash leaves the same state.

The state is held per partition: a child's state record is on the partition number of its
transfers (the same key, the producer's murmur2, the same partition count: checked at start),
and a router process holds the state of exactly the partitions the group assigned it
(``restore`` when assigned, before any of their records is processed; ``drop`` when revoked).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from contracts import wire

from ._state import PartitionedTable

# the retry tiers' and a replay's header names (contracts/wire.py), under the names this package uses
RETRY_PREFIX = wire.RETRY_PREFIX
H_ID = wire.RETRY_ID
H_TIER = wire.RETRY_TIER
H_DUE = wire.RETRY_DUE
H_ATTEMPTS = wire.RETRY_ATTEMPTS
H_FIRST = wire.RETRY_FIRST_FAILURE
H_ORIG_TOPIC = wire.RETRY_ORIGINAL_TOPIC
H_ORIG_PARTITION = wire.RETRY_ORIGINAL_PARTITION
H_ORIG_OFFSET = wire.RETRY_ORIGINAL_OFFSET
H_REPLAY_OF = wire.REPLAY_OF
H_REPLAY_OPERATOR = wire.REPLAY_OPERATOR


def header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for k, v in record.headers or ():
        if k == name:
            return bytes(v).decode()
    return None


def original_headers(record: ConsumerRecord[bytes, bytes]) -> list[tuple[str, bytes]]:
    """The record's headers as the source published them (without casebridge's retry bookkeeping)."""
    return [(k, bytes(v)) for k, v in (record.headers or ()) if not k.startswith(RETRY_PREFIX)]


@dataclass(frozen=True)
class Origin:
    """Where a message first entered casebridge, and what it has been through since."""

    retry_id: str
    topic: str
    partition: int
    offset: int
    attempts: int
    first_failure: datetime | None

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> Origin:
        rid = header(record, H_ID)
        if rid is None:
            return cls(
                f"{record.topic}/{record.partition}/{record.offset}",
                record.topic,
                record.partition,
                record.offset,
                0,
                None,
            )
        first = header(record, H_FIRST)
        return cls(
            rid,
            header(record, H_ORIG_TOPIC) or record.topic,
            int(header(record, H_ORIG_PARTITION) or record.partition),
            int(header(record, H_ORIG_OFFSET) or record.offset),
            int(header(record, H_ATTEMPTS) or 0),
            datetime.fromisoformat(first) if first else None,
        )

    def retry_headers(
        self, tier: int, due: datetime, attempts: int, first_failure: datetime
    ) -> list[tuple[str, bytes]]:
        values = {
            H_ID: self.retry_id,
            H_TIER: str(tier),
            H_DUE: due.isoformat(),
            H_ATTEMPTS: str(attempts),
            H_FIRST: first_failure.isoformat(),
            H_ORIG_TOPIC: self.topic,
            H_ORIG_PARTITION: str(self.partition),
            H_ORIG_OFFSET: str(self.offset),
        }
        return [(k, v.encode()) for k, v in values.items()]


def due_at(record: ConsumerRecord[bytes, bytes]) -> datetime:
    value = header(record, H_DUE)
    return datetime.fromisoformat(value) if value else datetime.now(UTC)


@dataclass
class Parked:
    tier: int
    pending: set[str] = field(default_factory=set)


class RetryState(PartitionedTable[Parked]):
    """Children with transfers in retry tiers: the tier their earliest waits in, and what is pending."""

    def __init__(self) -> None:
        super().__init__(_parked)

    @property
    def parked(self) -> dict[bytes, Parked]:
        return self.entries

    def tier_of(self, key: bytes | None) -> int | None:
        p = self.entries.get(key) if key is not None else None
        return p.tier if p is not None else None

    def park(self, key: bytes, retry_id: str, tier: int, partition: int | None = None) -> Parked:
        p = self.entries.get(key) or Parked(tier)
        self.put(key, p, partition)
        p.tier = max(p.tier, tier)
        p.pending.add(retry_id)
        return p

    def resolve(self, key: bytes, retry_id: str) -> Parked | None:
        """Forget a message that left the tiers; returns the remaining state (None: the child flows again)."""
        p = self.entries.get(key)
        if p is None:
            return None
        p.pending.discard(retry_id)
        if not p.pending:
            self.forget(key)
            return None
        return p

    @staticmethod
    def encode(p: Parked | None) -> bytes | None:
        return None if p is None else json.dumps({"tier": p.tier, "pending": sorted(p.pending)}).encode()


def _parked(raw: bytes) -> Parked:
    doc = json.loads(raw)
    return Parked(int(doc["tier"]), set(doc["pending"]))
