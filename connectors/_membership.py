"""A consumer's lease on its group membership, confirmed with the group coordinator (``router/_fencing.py`` says
why and how the router uses it; the feeds' lease, ``connectors/_cursors.py``, uses it too)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

#: how old a membership confirmation may be before a record is handled on its strength
RECHECK_SECONDS = 2.0


class Membership:
    """One consumer's lease on its group membership (one per subscriber: transfers, each retry tier)."""

    def __init__(self, session_timeout: float) -> None:
        self.session_timeout = session_timeout
        self.confirmed_at = time.monotonic()
        self._lock = asyncio.Lock()

    async def current(self, consumer: Any) -> bool:
        """True if this member may still act on its partitions; False: it was dropped from the group (fenced)."""
        if time.monotonic() - self.confirmed_at < RECHECK_SECONDS:
            return True
        async with self._lock:
            if time.monotonic() - self.confirmed_at < RECHECK_SECONDS:
                return True
            coordinator: Any = getattr(consumer, "_coordinator", None)
            heartbeat = getattr(coordinator, "_do_heartbeat", None)
            if heartbeat is None:  # not a group member (assigned partitions by hand): nothing to be fenced from
                return True
            generation = coordinator.generation
            asked = time.monotonic()
            answered = False
            with contextlib.suppress(Exception):  # no answer is judged by the lease below, not raised
                # aiokafka's heartbeat for the current generation: False, with the generation reset, when the
                # coordinator no longer knows this member; True also while the group rebalances (still a member)
                answered = await asyncio.wait_for(heartbeat(), self.session_timeout)
            if answered and coordinator.generation == generation:
                self.confirmed_at = asked
                return True
            if coordinator.generation != generation:
                return False  # the coordinator said this member (or its generation) is gone
            # unanswered (the coordinator away): still a member until the lease of the last confirmation runs out
            return time.monotonic() - self.confirmed_at < self.session_timeout
