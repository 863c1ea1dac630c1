"""Faults of the monitor's own storage (issue #19 items 4 and 7), against `casebridge monitor` as a process.

The database locked by another process for several seconds, then its disk full (a real 4 MiB tmpfs, filled
to the last byte), each while events are produced: afterwards every event is in the store exactly once,
the lag the monitor reported during the fault was above 0 and it said it was not storing, /healthz answered
promptly throughout, and the outage was logged once (not once per attempt). Each prints its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.settings import Topics
from tests.faults_support import leaks
from tests.monitor_support import (
    MonitorProcess,
    auth,
    keyed,
    monitor_process,
    requested_events,
    stored_event_ids,
)
from tests.support import ns_transfer, produce

LOCK_SECONDS = 8.0
FULL_SECONDS = 5.0
#: /healthz must answer within this while the store is locked or full (it never touches SQLite)
HEALTHZ_BOUND_SECONDS = 1.0


@dataclass
class Probe:
    """/healthz polled every 100 ms during a fault: its latencies and what it said."""

    latencies: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_lag(self) -> int:
        return max((b["tracker"]["lag"] or 0 for b in self.bodies), default=0)

    @property
    def said_not_storing(self) -> bool:
        return any(not b["tracker"]["storing"] for b in self.bodies)

    def problems(self) -> set[str]:
        return {p["kind"] for b in self.bodies for p in b["problems"]}


async def _probe(url: str, probe: Probe, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            r = await client.get(f"{url}/healthz")
            probe.latencies.append(time.monotonic() - started)
            r.raise_for_status()
            probe.bodies.append(r.json())
            await asyncio.sleep(0.1)


async def _until_stored(db: Path, wanted: set[str], timeout: float = 60.0) -> float:
    """Seconds until the store holds every id in ``wanted``."""
    started = time.monotonic()
    while not wanted <= set(stored_event_ids(db)):
        assert time.monotonic() - started < timeout, f"{len(wanted - set(stored_event_ids(db)))} events not stored"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def _until_health(url: str, ok: Any, timeout: float = 30.0) -> dict[str, Any]:
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            body: dict[str, Any] = (await client.get(f"{url}/healthz")).json()
            if ok(body):
                return body
            assert time.monotonic() - started < timeout, f"/healthz never got there: {body}"
            await asyncio.sleep(0.1)


def _figures(fault: str, produced: list[str], stored: list[str], recover: float, probe: Probe) -> dict[str, Any]:
    figures = {
        "produced": len(produced),
        "stored": len(set(stored) & set(produced)),
        "lost": len(set(produced) - set(stored)),
        "duplicated": len(stored) - len(set(stored)),
        "seconds_to_recover": round(recover, 2),
        "healthz_max_latency_s": round(max(probe.latencies), 3),
        "healthz_probes": len(probe.latencies),
        "max_lag_reported": probe.max_lag,
    }
    print(f"\n{fault}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


async def _dead_letter_of_a_child(bootstrap: str, topics: Topics) -> dict[str, str]:
    """A dead letter holding a synthetic child's whole transfer (as the router writes one), for the monitor to index
    while it runs at DEBUG; the child's personal data, for the log scan."""
    doc = ns_transfer(1)
    headers = [(f"casebridge.dlq.{k}", v.encode()) for k, v in {"transfer.id": "ns-1", "council": "north-somerset",
               "error.class": "TargetRefused", "error.message": "refused", "stage": "deliver"}.items()]  # fmt: skip
    await produce(bootstrap, topics.dead_letter, [(b"lcs:LCS-1", json.dumps(doc).encode())], headers)
    c = doc["child"]
    return {k: str(c[k]) for k in ("given_name", "family_name", "date_of_birth", "nhs_number", "upn") if c.get(k)}


def _assert_outage_logged_once(m: MonitorProcess) -> None:
    out = m.output()
    assert 1 == out.count("tracker_store_failing"), out[-3000:]  # once per outage, not once per attempt
    assert 1 == out.count("tracker_store_recovered"), out[-3000:]
    assert "Traceback" not in out


async def test_monitor_database_locked_loses_nothing_and_says_it_is_behind(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Another process holds the store's write lock for 8 s while 40 events arrive: none lost, none twice."""
    topics = Topics(topic_prefix)
    db = tmp_path / "monitor.sqlite3"
    before, during = requested_events(f"{topic_prefix}-a", 5), requested_events(f"{topic_prefix}-b", 40)
    await produce(kafka_bootstrap, topics.events, keyed(before))
    child = await _dead_letter_of_a_child(kafka_bootstrap, topics)
    env = {"CASEBRIDGE_MONITOR__BEHIND_THRESHOLD": "10", "CASEBRIDGE_LOG_LEVEL": "DEBUG"}
    with monitor_process(kafka_bootstrap, topic_prefix, db, tmp_path, env) as m:
        await _until_stored(db, {e.event_id for e in before})
        lock = sqlite3.connect(str(db), isolation_level=None, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")  # WAL: no other writer until COMMIT; readers go on
        probe, stop = Probe(), asyncio.Event()
        probing = asyncio.create_task(_probe(m.url, probe, stop))
        try:
            locked_at = time.monotonic()
            for i in range(4):  # four bursts across the lock's window
                await produce(kafka_bootstrap, topics.events, keyed(during[i * 10 : (i + 1) * 10]))
                await asyncio.sleep(1.0)
            await _until_health(m.url, lambda b: not b["tracker"]["storing"] and b["tracker"]["lag"] == 40)
            async with httpx.AsyncClient(timeout=10) as client:  # the page's API still answers, from what is stored
                started = time.monotonic()
                overview = (await client.get(f"{m.url}/api/overview", headers=auth())).json()
                overview_latency = time.monotonic() - started
                locked_metrics = (await client.get(f"{m.url}/metrics", headers=auth())).text
            assert "casebridge_monitor_tracker_storing 0.0" in locked_metrics
            assert "casebridge_monitor_tracker_lag 40.0" in locked_metrics
            assert "casebridge_monitor_store_readable 1.0" in locked_metrics  # WAL: the figures still read
            assert 5 == overview["total"]
            assert {"tracker-not-storing"} <= {p["kind"] for p in overview["health"]["problems"]}
            assert set(stored_event_ids(db)) == {e.event_id for e in before}  # nothing written under the lock
            await asyncio.sleep(max(0.0, LOCK_SECONDS - (time.monotonic() - locked_at)))
        finally:
            lock.execute("COMMIT")
            lock.close()
        recover = await _until_stored(db, {e.event_id for e in during})
        after = await _until_health(m.url, lambda b: b["status"] == "ok" and b["tracker"]["lag"] == 0)
        stop.set()
        await probing
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = (await client.get(f"{m.url}/metrics", headers=auth())).text
    produced = [e.event_id for e in before + during]
    figures = _figures("database locked 8 s", produced, stored_event_ids(db), recover, probe)
    print(f"  /api/overview during the lock: {overview_latency:.3f} s")
    assert (0, 0) == (figures["lost"], figures["duplicated"])
    assert len(produced) == figures["stored"]
    assert probe.said_not_storing and 40 == probe.max_lag  # honest while it could not store
    assert "tracker-not-storing" in probe.problems()
    assert figures["healthz_max_latency_s"] < HEALTHZ_BOUND_SECONDS
    assert overview_latency < HEALTHZ_BOUND_SECONDS
    assert after["tracker"]["store_failures"] >= 1 and after["tracker"]["storing"]
    assert "casebridge_monitor_tracker_storing 1.0" in metrics and "casebridge_monitor_tracker_lag 0.0" in metrics
    _assert_outage_logged_once(m)
    assert [] == leaks(m.output(), [child])  # at DEBUG: the dead letter's child, in none of its forms


@contextlib.contextmanager
def _small_filesystem(where: Path, size: str = "4m") -> Iterator[Path]:
    """A size-limited tmpfs mounted at ``where`` (needs root or CAP_SYS_ADMIN: said plainly when missing)."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(
            f"the disk-full fault needs a size-limited filesystem: mount -t tmpfs failed ({done.stderr.decode()[:200]})"
            "; run the suite as root (as .ci/run does) or with CAP_SYS_ADMIN"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left; returns it (delete it to free the space)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        with contextlib.suppress(OSError):  # the last few bytes, below one chunk
            while f.write(b"\0" * 512):
                pass
    return filler


async def test_monitor_disk_full_loses_nothing_and_recovers_when_space_is_freed(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The store on a 4 MiB tmpfs filled to the last byte while 300 events arrive; space freed: none lost or twice."""
    topics = Topics(topic_prefix)
    before, during = requested_events(f"{topic_prefix}-a", 5), requested_events(f"{topic_prefix}-b", 300)
    await produce(kafka_bootstrap, topics.events, keyed(before))
    with _small_filesystem(tmp_path / "small") as small:
        db = small / "monitor.sqlite3"
        with monitor_process(kafka_bootstrap, topic_prefix, db, tmp_path) as m:
            await _until_stored(db, {e.event_id for e in before})
            filler = _fill(small)
            free = os.statvfs(small)
            print(f"\nfilled {filler.stat().st_size} bytes; {free.f_bavail * free.f_frsize} bytes left")
            probe, stop = Probe(), asyncio.Event()
            probing = asyncio.create_task(_probe(m.url, probe, stop))
            try:
                await produce(kafka_bootstrap, topics.events, keyed(during))
                full = await _until_health(m.url, lambda b: not b["tracker"]["storing"])
                assert "full" in (full["tracker"]["store_error"] or ""), full  # SQLite: "database or disk is full"
                await asyncio.sleep(FULL_SECONDS)
                await _until_health(m.url, lambda b: (b["tracker"]["lag"] or 0) > 0)
            finally:
                filler.unlink()  # space freed
            recover = await _until_stored(db, {e.event_id for e in during})
            await _until_health(m.url, lambda b: b["status"] == "ok" and b["tracker"]["lag"] == 0)
            stop.set()
            await probing
        produced = [e.event_id for e in before + during]
        figures = _figures("disk full 5 s (4 MiB tmpfs)", produced, stored_event_ids(db), recover, probe)
    assert (0, 0) == (figures["lost"], figures["duplicated"])
    assert len(produced) == figures["stored"]
    assert probe.said_not_storing and probe.max_lag > 0
    assert figures["healthz_max_latency_s"] < HEALTHZ_BOUND_SECONDS
    _assert_outage_logged_once(m)
