"""The durable per-child history of step-downs (LU-9, NS-10).

A step-up soon after a step-down goes back to the team (and social worker) that stepped the
child down. The router remembers every completed step-down in a compacted topic keyed by
each of the child's identifiers (``lcs:LCS-12``, ``mailbox:FST-4``, ...), so a step-up that
arrives months later, from another system, finds it; a restarted router reads the topic back.

Values hold ids, the council, the time, the team and the social worker's name (a member of
staff, not the family); nothing here is logged. Entries older than a year are dropped.

In memory a child's entries are a tuple of ``Entry`` tuples (a ``StepDownMemory``'s fields,
the time in UTC with its one shared tzinfo): exact tuples of plain values, which the garbage
collector stops scanning once it has collected them (a NamedTuple, being a subclass, it scans on every
full collection), so a year of step-downs adds nothing to the router's full-collection pauses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from operator import itemgetter

from aiokafka.structs import ConsumerRecord
from pydantic_core import to_json

from connectors.kafka import Kafka
from contracts import TransferMessage, wire
from mappings import StepDownMemory

from ._reading import fold_compacted, replay_compacted

KEEP = timedelta(days=366)
#: a StepDownMemory's fields as an exact tuple (transfer id, council, at in UTC, team, social worker)
Entry = tuple[str, str, datetime, str | None, str | None]
_AT = itemgetter(2)


def child_keys(transfer: TransferMessage) -> list[str]:
    return [wire.child_key(i.system, i.id) for i in transfer.child.identifiers]


def hashed_key(key: str) -> str:
    """A child key as kept outside the history topic (a pending closure): its SHA-256, so no NHS number is copied."""
    return hashlib.sha256(key.encode()).hexdigest()


class ChildHistory:
    def __init__(self) -> None:
        self.by_key: dict[str, tuple[Entry, ...]] = {}

    def lookup(self, transfer: TransferMessage) -> tuple[StepDownMemory, ...]:
        """The child's remembered step-downs under any of its identifiers, oldest first."""
        seen: dict[str, Entry] = {}
        for key in child_keys(transfer):
            for e in self.by_key.get(key, ()):
                seen[e[0]] = e
        return tuple(StepDownMemory._make(e) for e in sorted(seen.values(), key=_AT))

    def remember(self, transfer: TransferMessage) -> list[tuple[bytes, bytes]]:
        """Add a completed step-down; returns the (key, value) records to write to the compacted topic.

        The team remembered is the one that stepped the child down: the social worker's organisation.
        """
        sw = transfer.professionals.social_worker
        at = transfer.requested_at.astimezone(UTC)  # UTC's one tzinfo, not a parsed offset object per entry
        memory: Entry = (
            transfer.transfer_id,
            transfer.council.value,
            at,
            sw.organisation if sw else None,
            sw.name if sw else None,
        )
        out = []
        for key in child_keys(transfer):
            entries = [e for e in self.by_key.get(key, ()) if e[0] != transfer.transfer_id]
            entries = [e for e in [*entries, memory] if e[2] >= at - KEEP]
            entries.sort(key=_AT)
            self.by_key[key] = kept = tuple(entries)
            out.append((key.encode(), self.encode(kept)))
        return out

    @staticmethod
    def encode(entries: Iterable[Entry]) -> bytes:
        # pydantic-core's serialiser: a fifth of json.dumps's cost for these few fields (compact JSON, UTF-8)
        return to_json(
            [
                {"transfer_id": tid, "council": council, "at": at.isoformat(), "team": team, "social_worker": sw}
                for tid, council, at, team, sw in entries
            ]
        )

    def apply(self, records: Iterable[ConsumerRecord[bytes, bytes]]) -> None:
        """Rebuild from the compacted topic (last value per key wins)."""
        fold_compacted(self.by_key, records, bytes.decode, decode)

    async def load(self, kafka: Kafka, topic: str) -> None:
        self.by_key.update(await replay_compacted(kafka, topic, bytes.decode, decode))


def decode(raw: bytes) -> tuple[Entry, ...]:
    return tuple(
        (
            d["transfer_id"],
            d["council"],
            datetime.fromisoformat(d["at"]).astimezone(UTC),
            d.get("team"),
            d.get("social_worker"),
        )
        for d in json.loads(raw)
    )
