"""The transfers each child completed: what makes a copy of a completed transfer a ``duplicate``.

A transfer is published again with the same transfer id more often than one would think: a publisher's retry
after a lost acknowledgement, a second feed process, an operator re-sending a request, a replay of a dead letter
whose transfer completed since. Each copy has the child's key, so it is on the partition of the first; the
router process that owns the partition holds that partition's completed transfers (compacted topic
``<prefix>.lifecycle``, keyed by child: transfer id -> the message id that completed it and a digest of its
content) and writes a copy off as ``duplicate`` instead of running it again: one ``delivered`` event per
transfer, one set of closures.

A copy is a duplicate when its content is the completed one's, byte for byte but for its message id. A
publication that says something new (SW22-10: the step-down again, now naming the worker) runs again, as do
the copies of a transfer that did not complete (held, dead-lettered, still retrying): that is how a held
transfer is sent again once its record is reopened.
"""

from __future__ import annotations

import hashlib
import json

from pydantic_core import to_json

from ._state import PartitionedTable


def content_digest(value: bytes, message_id: str) -> str:
    """The transfer's bytes without its message id, hashed: two publications of one content have one digest."""
    return hashlib.sha256(value.replace(message_id.encode(), b"")).hexdigest()[:32]


def _decode(raw: bytes) -> dict[str, tuple[str, str]]:
    doc = json.loads(raw)
    return {str(t): (str(c["message_id"]), str(c["content"])) for t, c in doc["completed"].items()}


class CompletedTransfers(PartitionedTable[dict[str, tuple[str, str]]]):
    """Per child (the transfers' record key): each completed transfer id, the message id that completed it and
    the digest of its content."""

    def __init__(self) -> None:
        super().__init__(_decode)

    def completed_by(self, key: bytes | None, transfer_id: str, value: bytes, message_id: str) -> str | None:
        """The message id that completed ``transfer_id`` of this child with this content, or None: not completed
        here, or completed with other content (this publication runs)."""
        done = self.entries.get(key) if key is not None else None
        first = done.get(transfer_id) if done is not None else None
        if first is None or first[1] != content_digest(value, message_id):
            return None
        return first[0]

    def complete(self, key: bytes, transfer_id: str, value: bytes, message_id: str, partition: int) -> bytes:
        """Remember a completion; returns the child's record for the lifecycle topic (every completion of theirs)."""
        done = dict(self.entries.get(key) or {})
        done[transfer_id] = (message_id, content_digest(value, message_id))
        self.put(key, done, partition)
        # pydantic-core's serialiser (compact JSON, the child's transfers in the order completed): a fraction of
        # json.dumps's cost, paid once a transfer
        return to_json({"completed": {t: {"message_id": m, "content": c} for t, (m, c) in done.items()}})
