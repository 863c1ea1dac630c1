"""State per partition: a compacted topic keyed by child, held for exactly the partitions this process owns.

A child's state record is on the partition number of its transfers (the same key, the producer's murmur2, the
same partition count: checked at start), so the process that owns partition p of the transfers topic owns the
state of p's children. ``restore`` reads the partitions assigned to their end (streamed, never partial) before
any of their records is handled; ``drop`` forgets the partitions revoked. The retry state (``_retry.py``) and the
completed transfers (``_lifecycle.py``) are two such tables.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Generic, TypeVar

from aiokafka.structs import ConsumerRecord

from connectors.kafka import Kafka

from ._reading import read_partitions

V = TypeVar("V")


class PartitionedTable(Generic[V]):
    """The entries (child key -> value) of the partitions this process owns, and the partition of each."""

    def __init__(self, decode: Callable[[bytes], V]) -> None:
        self.entries: dict[bytes, V] = {}
        #: the partition each child's entry is on (what ``drop`` forgets)
        self.partition_of: dict[bytes, int] = {}
        self._decode = decode

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, key: bytes, value: V, partition: int | None) -> None:
        self.entries[key] = value
        if partition is not None:
            self.partition_of[key] = partition

    def forget(self, key: bytes) -> None:
        self.entries.pop(key, None)
        self.partition_of.pop(key, None)

    async def restore(self, kafka: Kafka, topic: str, partitions: Collection[int]) -> int:
        """Read these partitions of ``topic`` to their end (streamed, never partial: ``ReadIncomplete``) into the
        table (the last value per key wins; a tombstone forgets); returns how many records were read."""

        def apply(records: list[ConsumerRecord[bytes, bytes]]) -> None:
            for r in records:
                if r.key is None:
                    continue
                if r.value is None:
                    self.forget(r.key)
                else:
                    self.put(r.key, self._decode(r.value), r.partition)

        return await read_partitions(kafka, topic, partitions, apply)

    def drop(self, partitions: Collection[int]) -> int:
        """Forget the entries of partitions this process no longer owns; returns how many children were forgotten."""
        gone = [k for k, p in self.partition_of.items() if p in partitions]
        for k in gone:
            self.forget(k)
        return len(gone)
