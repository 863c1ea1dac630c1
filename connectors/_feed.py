"""Change feeds read from a case system, resumed from a durable cursor after a restart."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiokafka import AIOKafkaProducer
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_random_exponential

log = structlog.get_logger("casebridge.connectors")


class FileCursor:
    """The last feed position whose outputs Kafka acknowledged; written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            return int(json.loads(self.path.read_text(encoding="utf-8"))["after"])
        except FileNotFoundError:
            return 0

    def save(self, after: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"after": after}), encoding="utf-8")
        os.replace(tmp, self.path)


def idempotent_producer(bootstrap_servers: str) -> AIOKafkaProducer:
    """The producer every connector publishes with: idempotent, acknowledged by all replicas."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5)


async def poll_forever(
    poll_once: Callable[[], Awaitable[int]], interval: float, stop: Callable[[], bool], name: str
) -> None:
    """Poll a feed until ``stop()``; a case system that is down is waited for (tenacity backoff), not fatal."""

    def note(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("feed_unavailable", feed=name, error_class=type(exc).__name__, attempt=state.attempt_number)

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda e: getattr(e, "retriable", False)),
        wait=wait_random_exponential(multiplier=0.5, max=30),
        before_sleep=note,
        reraise=True,
    )
    while not stop():
        async for attempt in retrying:
            with attempt:
                found = await poll_once()
        if found == 0:
            await asyncio.sleep(interval)
