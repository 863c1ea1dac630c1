"""A consumer's lease on its group membership, confirmed with the group coordinator (``router/_fencing.py`` says
why and how the router uses it; the feeds' lease, ``connectors/_cursors.py``, uses it too)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

#: how old a membership confirmation may be before a record is handled on its strength
RECHECK_SECONDS = 2.0
#: how old a confirmation is when the next one is asked for in the background (the member does not wait for it)
RENEW_SECONDS = RECHECK_SECONDS / 2


class Membership:
    """One consumer's lease on its group membership (one per subscriber: transfers, each retry tier)."""

    def __init__(self, session_timeout: float) -> None:
        self.session_timeout = session_timeout
        self.confirmed_at = time.monotonic()
        self._lock = asyncio.Lock()
        self._renewing: asyncio.Future[bool] | None = None

    async def current(self, consumer: Any) -> bool:
        """True if this member may still act on its partitions; False: it was dropped from the group (fenced).

        A confirmation younger than ``RENEW_SECONDS`` is enough; past it, one is asked in the background while the
        last one still holds (younger than ``RECHECK_SECONDS``), so a member that runs steadily never waits for a
        heartbeat. One older than that (after a pause) is asked for, and waited for, before anything else."""
        age = time.monotonic() - self.confirmed_at
        if age < RECHECK_SECONDS:
            if age >= RENEW_SECONDS and (self._renewing is None or self._renewing.done()):
                self._renewing = asyncio.ensure_future(self._confirm(consumer, RENEW_SECONDS))
            return True
        return await self._confirm(consumer, RECHECK_SECONDS)

    async def _confirm(self, consumer: Any, younger_than: float) -> bool:
        """Ask the coordinator, unless a confirmation younger than ``younger_than`` came meanwhile."""
        async with self._lock:
            if time.monotonic() - self.confirmed_at < younger_than:
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
                # the coordinator said this member (or its generation) is gone: the next ask waits for its own answer,
                # whether this one was waited for or asked in the background
                self.confirmed_at = float("-inf")
                return False
            # unanswered (the coordinator away): still a member until the lease of the last confirmation runs out
            return time.monotonic() - self.confirmed_at < self.session_timeout
