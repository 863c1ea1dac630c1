"""Page sessions and the sign-in throttle, both in memory (a restart signs everyone out).

A session id is ``secrets.token_urlsafe(32)``, the only thing the cookie carries; it maps to
the token holder's name and role, and ends after ``idle`` seconds without use, ``absolute``
seconds after sign-in, or at sign-out (``revoke``): an old cookie is refused afterwards.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from ._settings import Principal

Clock = Callable[[], float]


@dataclass
class _Session:
    principal: Principal
    opened: float
    seen: float


class Sessions:
    """Session id -> principal, with an idle and an absolute expiry; at most ``limit`` live (oldest dropped)."""

    def __init__(self, idle: float, absolute: float, *, clock: Clock = time.monotonic, limit: int = 10_000) -> None:
        self.idle, self.absolute, self._clock, self._limit = idle, absolute, clock, limit
        self._live: OrderedDict[str, _Session] = OrderedDict()

    def open(self, principal: Principal) -> str:
        now = self._clock()
        self._purge(now)
        while len(self._live) >= self._limit:
            self._live.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._live[sid] = _Session(principal, now, now)
        return sid

    def get(self, sid: str | None) -> Principal | None:
        """The principal of a live session (its idle clock restarts), or None."""
        if not sid:
            return None
        session = self._live.get(sid)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._live[sid]
            return None
        session.seen = now
        return session.principal

    def revoke(self, sid: str | None) -> bool:
        return bool(sid) and self._live.pop(sid or "", None) is not None

    def __len__(self) -> int:
        return len(self._live)

    def _expired(self, session: _Session, now: float) -> bool:
        return now - session.seen >= self.idle or now - session.opened >= self.absolute

    def _purge(self, now: float) -> None:
        for sid in [sid for sid, s in self._live.items() if self._expired(s, now)]:
            del self._live[sid]


class LoginThrottle:
    """Failed sign-ins per client address in a sliding window; after ``limit``, refused until the oldest ages out."""

    def __init__(
        self, limit: int, window: float = 60.0, *, clock: Clock = time.monotonic, addresses: int = 10_000
    ) -> None:
        self.limit, self.window, self._clock, self._addresses = limit, window, clock, addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None if it may now."""
        failures = self._recent(address)
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[0] + self.window - self._clock()))

    def failed(self, address: str) -> None:
        self._failures.setdefault(address, deque())
        self._recent(address).append(self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self._addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address, deque())
        cutoff = self._clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        return failures
