"""What the page, the JSON API and the metrics show, computed from the store (ids and counts only)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from mappings import DeadlineState, DeadlineStatus, deadlines_for, load_deadlines

from ._lag import Watch
from ._store import IN_FLIGHT, Store

#: computing every transfer's deadlines costs ~50 ms per 1,000 transfers: reuse for a few seconds
_CACHE_SECONDS = 5.0
_cache: dict[int, tuple[int, float, list[tuple[dict[str, Any], DeadlineStatus]]]] = {}


def deadlines(store: Store, now: datetime | None = None) -> list[tuple[dict[str, Any], DeadlineStatus]]:
    """Every started deadline of every transfer of a council that has deadlines, with its transfer.

    Without an explicit ``now`` the result is cached per store until a new event arrives
    or a few seconds pass (the page and the metrics ask often).
    """
    if now is not None:
        return _deadlines(store, now)
    hit = _cache.get(id(store))
    if hit is not None and hit[0] == store.version and time.monotonic() - hit[1] < _CACHE_SECONDS:
        return hit[2]
    result = _deadlines(store, datetime.now(UTC))
    _cache[id(store)] = (store.version, time.monotonic(), result)
    return result


def _deadlines(store: Store, now: datetime) -> list[tuple[dict[str, Any], DeadlineStatus]]:
    rules = load_deadlines()
    councils = {r.council for r in rules}
    candidates = [t for t in store.transfers(limit=1_000_000) if t["council"] in councils]
    timelines = store.timelines(t["transfer_id"] for t in candidates)
    return [
        (t, status)
        for t in candidates
        for status in deadlines_for(rules, t["council"], t["direction"], timelines[t["transfer_id"]], now)
    ]


def overview(store: Store, watch: Watch, now: datetime | None = None) -> dict[str, Any]:
    timed = deadlines(store, now)
    overdue = [
        {"transfer_id": t["transfer_id"], "council": t["council"], **s.model_dump(mode="json")}
        for t, s in timed
        if s.state is DeadlineState.OVERDUE
    ]
    by_deadline: dict[str, int] = {str(state): 0 for state in DeadlineState}
    for _, s in timed:
        by_deadline[s.state] += 1
    by_state = store.by_state()
    by_status = watch.by_status()
    return {
        "generated_at": (now or datetime.now(UTC)).isoformat(),
        "total": sum(by_state.values()),
        "by_state": by_state,
        "counts": store.counts(),
        "in_flight": sum(n for s, n in by_state.items() if s in IN_FLIGHT),
        "in_flight_transfers": store.transfers(states=IN_FLIGHT, limit=50),
        "deadlines": by_deadline,
        "overdue": sorted(overdue, key=lambda o: o["due_at"])[:100],
        "dead_letters": {
            "total": len(watch.dead_letters),
            "waiting": by_status["waiting"],
            "by_status": by_status,
            "top_reasons": watch.top_reasons(),
            "latest": watch.dead_letters[-20:][::-1],
        },
        "consumer_lag": watch.lag,
        "lag_refreshed_at": datetime.fromtimestamp(watch.refreshed_at, UTC).isoformat() if watch.refreshed_at else None,
    }


def transfer_detail(store: Store, watch: Watch, transfer_id: str, now: datetime | None = None) -> dict[str, Any] | None:
    row = store.transfer(transfer_id)
    if row is None:
        return None
    now = now or datetime.now(UTC)
    timeline = store.timelines([transfer_id])[transfer_id]
    statuses = deadlines_for(load_deadlines(), row["council"], row["direction"], timeline, now)
    return {
        "transfer": row,
        "timeline": store.timeline(transfer_id),
        "deadlines": [s.model_dump(mode="json") for s in statuses],
        "dead_letters": [d for d in watch.dead_letters if d["transfer_id"] == transfer_id],
    }
