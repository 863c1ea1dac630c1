"""What the page, the JSON API and the metrics show, computed from the store (ids and counts only)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from mappings import DeadlineState, DeadlineStatus, deadlines_for, due_at, load_deadlines

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
            "latest": watch.page(limit=20)[0],
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
        "dead_letters": watch.of_transfer(transfer_id),
    }


#: ``GET /api/dead-letters``: the page's length by default, and at most
DEAD_LETTER_PAGE = 200
DEAD_LETTER_PAGE_MAX = 1000


def dead_letter_page(
    watch: Watch, status: str | None = None, limit: int = DEAD_LETTER_PAGE, before: str | None = None, offset: int = 0
) -> dict[str, Any]:
    """One page of the dead letters, newest first (``Watch.page``), with the counts of them all: ``total``, ``matching``
    (of ``status``, if given), ``by_status``, ``top_reasons``, and ``next_before`` (the cursor of the next page, None
    on the last). ``KeyError`` when ``before`` names no dead letter listed."""
    letters, next_before = watch.page(status, limit, before, offset)
    by_status = watch.by_status()
    total = sum(by_status.values())
    return {
        "dead_letters": letters,
        "by_status": by_status,
        "top_reasons": watch.top_reasons(10),
        "total": total,
        "matching": total if status is None else by_status.get(status, 0),
        "limit": limit,
        "offset": offset,
        "before": before,
        "next_before": next_before,
    }


# -- the charts (GET /api/charts) -------------------------------------------------------------

#: the days the transfers chart shows (UTC, today included)
CHART_DAYS = 30
#: the days ahead the deadlines chart shows (UTC, today included)
DUE_DAYS = 14
#: handover latency histogram: bucket i holds latencies below LATENCY_EDGES[i]; the last bucket, the rest
LATENCY_EDGES = (60.0, 600.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0, 14 * 86400.0, 28 * 86400.0)
LATENCY_LABELS = ("<1 min", "<10 min", "<1 h", "<4 h", "<1 day", "<3 days", "<1 week", "<2 weeks", "<4 weeks", "longer")
#: waiting dead letters by age since they were dead-lettered
AGE_EDGES = (3600.0, 86400.0, 7 * 86400.0)
AGE_LABELS = ("<1 h", "<1 day", "<1 week", "older")
#: a Monday with no bank holiday in the four weeks after it: a deadline's nominal length is timed from here
_NOMINAL_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
#: the deadlines a handover runs against: those whose clock starts at the request
HANDOVER_CLOCK = "requested"


def handover_deadlines(council: str, pathway: str) -> list[dict[str, Any]]:
    """The protocol deadlines (``mappings/data/deadlines.toml``) a council's handover on this pathway is held to: its
    rules whose clock starts at the request; ``seconds`` is the nominal length (``due_at`` from a plain Monday: a
    working-days rule is measured over weekends, without bank holidays) and ``bucket`` the latency bucket it ends in."""
    out = []
    for rule in load_deadlines():
        if (rule.council, rule.direction, rule.start) != (council, pathway, HANDOVER_CLOCK):
            continue
        seconds = (due_at(_NOMINAL_START, rule.length, rule.unit) - _NOMINAL_START).total_seconds()
        bucket = next((i for i, edge in enumerate(LATENCY_EDGES) if seconds <= edge), len(LATENCY_EDGES))
        out.append(
            {
                "rule_id": rule.rule_id,
                "what": rule.what,
                "length": rule.length,
                "unit": str(rule.unit),
                "seconds": seconds,
                "bucket": bucket,
            }
        )
    return out


def _days(first: date, n: int) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range(n)]


_charts_cache: dict[int, tuple[tuple[int, int, tuple[str, ...]], float, dict[str, Any]]] = {}


def charts(store: Store, watch: Watch, now: datetime | None = None) -> dict[str, Any]:
    """``chart_figures``; without an explicit ``now``, cached per store until a new event or dead letter arrives or
    a few seconds pass (every open page asks every 2 s; the ages over 100,000 dead letters take ~0.4 s)."""
    expired = watch.expired_ids()
    if now is not None:
        return chart_figures(store, expired, now)
    key = (store.version, store.index_version, expired)
    hit = _charts_cache.get(id(store))
    if hit is not None and hit[0] == key and time.monotonic() - hit[1] < _CACHE_SECONDS:
        return hit[2]
    result = chart_figures(store, expired, None)
    _charts_cache[id(store)] = (key, time.monotonic(), result)
    return result


def chart_figures(store: Store, expired: tuple[str, ...], now: datetime | None) -> dict[str, Any]:
    """What the page's four charts draw (ids, councils, states and rule ids only): transfers per day by state and by
    council (the last ``CHART_DAYS`` UTC days, by request day), the handover latency histogram per council and
    pathway with the deadlines it is held to, deadlines not yet met falling due in the next ``DUE_DAYS`` UTC days
    (from ``deadlines``, as the overview), and dead letters waiting by age (but those the watch found ``expired``).
    Counted in SQLite (GROUP BY) but the deadlines, which are timed in Python as everywhere else (working days, bank
    holidays, UK time)."""
    given, now = now, now or datetime.now(UTC)
    today = now.astimezone(UTC).date()
    days = _days(today - timedelta(days=CHART_DAYS - 1), CHART_DAYS)
    by_state, by_council = store.transfers_per_day(days[0])

    groups: dict[tuple[str, str], list[int]] = {}
    for r in store.latency_histogram(LATENCY_EDGES):
        groups.setdefault((r["council"], r["pathway"]), [0] * len(LATENCY_LABELS))[r["bucket"]] = r["n"]
    latency = [
        {
            "council": council,
            "pathway": pathway,
            "counts": counts,
            "total": sum(counts),
            "deadlines": handover_deadlines(council, pathway),
        }
        for (council, pathway), counts in sorted(groups.items())
    ]

    due_days = _days(today, DUE_DAYS)
    until = datetime.combine(today + timedelta(days=DUE_DAYS), datetime.min.time(), UTC)
    due: dict[tuple[str, str, str], int] = {}
    for t, s in deadlines(store, given):  # cached, as the overview's, unless ``now`` is given
        if s.state in (DeadlineState.MET, DeadlineState.CANCELLED) or not now <= s.due_at < until:
            continue
        key = (s.due_at.astimezone(UTC).date().isoformat(), t["council"] or "", s.rule_id)
        due[key] = due.get(key, 0) + 1
    ages = store.waiting_dead_letter_ages(now, AGE_EDGES, expired)
    return {
        "generated_at": now.isoformat(),
        "transfers": {"days": days, "by_state": by_state, "by_council": by_council},
        "latency": {"buckets": list(LATENCY_LABELS), "edges_seconds": list(LATENCY_EDGES), "groups": latency},
        "due": {
            "days": due_days,
            "by_day": [{"day": d, "council": c, "rule_id": r, "n": n} for (d, c, r), n in sorted(due.items())],
        },
        "dead_letters_waiting": {
            "buckets": list(AGE_LABELS),
            "counts": [ages.get(i, 0) for i in range(len(AGE_LABELS))],
        },
    }
