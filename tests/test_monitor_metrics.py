"""Prometheus metrics move as transfers flow through a running system (real broker, sandboxes, router)."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from casebridge.stack import Stack
from router import Settings
from router.settings import RetrySettings
from tests.monitor_support import auth, running_monitor, wait_for
from tests.support import Systems


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(f"{url}/metrics", headers=auth())
        r.raise_for_status()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


async def test_metrics_counters_move_after_transfers_flow(
    systems: Systems, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, retry_settings: RetrySettings
) -> None:
    """Transfers by state, handover latency, retries, dead letters and consumer lag all move."""
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
    )
    stack = Stack(settings, tmp_path / "state", systems=systems.deployed())
    lcs = systems.lcs_client
    async with stack:
        with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):
            before = await scrape(server.url)
            assert 0 == total(before, "casebridge_transfers")
            assert 0 == total(before, "casebridge_handover_latency_seconds_count")
            assert 0 == total(before, "casebridge_retries_total")
            assert 0 == total(before, "casebridge_dead_letters_total")

            for _ in range(3):
                lcs.request_stepdown(lcs.create_child(locality="North"))
            lcs.request_stepdown(lcs.create_child(locality="South"), plan=None)  # NS-6 / NS-8: held
            await wait_for(f"{server.url}/api/overview", lambda o: o["by_state"] == {"completed": 3, "held": 1})
            # EHM unavailable for a while: the next transfer goes through a delayed retry tier, then completes
            systems.ehm_client.inject_fault(status=503, seconds=4)
            lcs.request_stepdown(lcs.create_child(locality="North"))
            await wait_for(f"{server.url}/api/overview", lambda o: o["by_state"] == {"completed": 4, "held": 1})
            await wait_for(
                f"{server.url}/api/lag",
                lambda b: any(r["group"] == f"{topic_prefix}-router" for r in b["consumer_lag"]),
            )

            after = await scrape(server.url)
    assert 4 == total(after, "casebridge_transfers", council="north-somerset", pathway="step-down", state="completed")
    assert 1 == total(after, "casebridge_transfers", state="held")
    assert 4 == total(after, "casebridge_handover_latency_seconds_count")
    assert 0 < total(after, "casebridge_handover_latency_seconds_sum")
    assert 1 <= total(after, "casebridge_retries_total")
    assert 1 == total(after, "casebridge_dead_letters_total", council="north-somerset")
    assert 1 == total(after, "casebridge_dead_letters_waiting")
    lag = [ls for (n, ls) in after if n == "casebridge_consumer_lag"]
    assert (("group", f"{topic_prefix}-router"), ("topic", f"{topic_prefix}.transfers")) in lag
    assert 0 < total(after, "casebridge_deadlines", rule_id="NS-4")  # each step-down's meeting is now due
