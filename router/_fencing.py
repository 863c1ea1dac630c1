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
one heartbeat every ``RENEW_SECONDS`` per consumer, asked in the background while the last confirmation still
holds, so no record waits for it; only a confirmation older than ``RECHECK_SECONDS`` (after a pause) is waited for.

The producer asks the same lease before each produce request leaves (``Outbox.gate``, ``_gate_produce_requests``
in ``router/_outbox.py``): record batches it already held when the pause began are failed, never sent late over
the new owner's writes.

What it does not cover: the steps of a record already in progress at the pause finish that record (a case system
call already under way, idempotent), and what the member handled before the pause, its outputs acknowledged but
its offsets not yet committed, is read again by the new owner (at-least-once, the same event ids), as after a
SIGKILL. Kafka transactions would hide those outputs from read-committed readers; see docs/scaling-out.md for why
they are not used yet.
"""

from __future__ import annotations

from connectors._membership import RECHECK_SECONDS, Membership

__all__ = ["RECHECK_SECONDS", "Membership"]
