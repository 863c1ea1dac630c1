"""Fencing a member that lost its partitions without knowing it (paused past its session timeout, then resumed).

A router process paused (SIGSTOP, a long GC, a VM frozen) for longer than the group's session timeout is dropped
from the group; its partitions go to another member, which restores their state and reads their uncommitted
records again. When the paused process resumes it still holds the batch it had in hand, and until its own
heartbeat learns it was dropped it would go on delivering, emitting and writing state for partitions that are no
longer its own.

The fence is a lease on the group membership, confirmed with the group coordinator: before it handles a record, a
member that has not had its membership confirmed in the last ``RECHECK_SECONDS`` sends a heartbeat for its
generation. A coordinator that answers "unknown member" or "illegal generation" means the partitions are gone, and
so does a lease that ran out unconfirmed (no answer within the session timeout): the router then handles no more
records, drops its unsent writes and fails its hand-overs (``Outbox.fence``), so nothing of its batches is
committed (offset commits carry the generation and the broker refuses a stale one anyway), and it rejoins as a
fresh member (the in-process recovery of ``casebridge.stack``). While the process runs normally the check costs
one heartbeat round trip every ``RECHECK_SECONDS`` per consumer, and nothing between batches.

What it does not cover: writes the producer already held when the pause began land when it resumes (they are the
outputs of records handled while the member still owned them, idempotent and with deterministic event ids), and
the steps of a record already in progress at the pause finish that record (a case system call already under way).
Kafka transactions would close that last window; see docs/scaling-out.md for why they are not used yet.
"""

from __future__ import annotations

from connectors._membership import RECHECK_SECONDS, Membership

__all__ = ["RECHECK_SECONDS", "Membership"]
