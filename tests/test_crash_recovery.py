"""The router killed with SIGKILL while transfers flow loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import IO

from router import Topics
from tests.support import TOKEN, Systems, read

N = int(os.environ.get("CRASH_N", "2000"))


async def _start_router(env: dict[str, str], config: Path, log: IO[bytes]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "casebridge", "run", "--config", str(config),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log,
    )  # fmt: skip


async def test_router_sigkilled_three_times_while_2000_transfers_flow_delivers_each_exactly_once(
    systems: Systems, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Three SIGKILLs of `casebridge run` (router and LCS publisher) mid-flow: all 2,000 transfers reach a
    terminal state, and EHM holds exactly 2,000 distinct items."""
    lcs = systems.lcs_client
    requests = [lcs.request_stepdown(lcs.create_child(locality=["North", "East", "South"][n % 3])) for n in range(N)]
    topics = Topics(topic_prefix)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CASEBRIDGE_")}, "SANDBOX_TOKEN": TOKEN}
    config = tmp_path / "north-somerset.toml"
    config.write_text(
        f"""
councils = ["north-somerset"]
local_development = true
bootstrap_servers = "{kafka_bootstrap}"
topic_prefix = "{topic_prefix}"
state_dir = "{tmp_path / "state"}"
batch_size = 100

[systems.lcs]
kind = "lcs"
url = "{systems.lcs.url}"
token = {{ env = "SANDBOX_TOKEN" }}

[systems.ehm]
kind = "ehm"
url = "{systems.ehm.url}"
token = {{ env = "SANDBOX_TOKEN" }}
"""
    )
    log = (tmp_path / "router.log").open("ab")
    router = await _start_router(env, config, log)
    kills = 0
    try:
        for _ in range(3):
            await _wait_for_progress(systems, more_than=len(systems.ehm_client.tray()) + 50)
            router.send_signal(signal.SIGKILL)
            await router.wait()
            kills += 1
            router = await _start_router(env, config, log)

        def all_closed(records: list[object]) -> bool:
            closed = {r.key for r in records if dict(r.headers).get("event_type") == b"source-closed"}  # type: ignore[attr-defined]
            return len(closed) >= N

        records = await read(kafka_bootstrap, topics.events, all_closed, timeout=600)
    finally:
        if router.returncode is None:
            router.send_signal(signal.SIGTERM)
            await router.wait()
        log.close()

    closed = {r.key for r in records if dict(r.headers).get("event_type") == b"source-closed"}
    tray = systems.ehm_client.tray()
    assert 3 == kills
    assert {f"north-somerset-lcs-{r}".lower().encode() for r in requests} == closed
    assert N == len(tray) == len({i["transfer_id"] for i in tray})


async def _wait_for_progress(systems: Systems, more_than: int, timeout: float = 120) -> None:
    """Until EHM holds more than ``more_than`` items: the router is mid-flow, so the kill lands mid-batch."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(await asyncio.to_thread(systems.ehm_client.tray)) <= more_than and loop.time() < deadline:
        await asyncio.sleep(0.2)
