"""Test helpers: producing to and reading from the real broker, running a router."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from casebridge.registry import EhmSystem, LcsSystem, SystemConfig
from casebridge.scenarios import EhmSandboxClient, LcsSandboxClient
from casebridge.secrets import SecretRef
from casebridge.stack import Stack
from connectors import Receipt, Source, Target
from connectors.memory import MemorySource
from contracts import CaseSystem, TransferEvent, TransferMessage, parse_event
from router import Router, Settings, build_router
from sandboxes import ServerHandle

EXAMPLES = Path(__file__).parent.parent / "contracts" / "examples"


def example(name: str = "north-somerset.step-down.lcs-ehm.json", **changes: Any) -> dict[str, Any]:
    """A synthetic example transfer, as a dict, with top-level changes applied."""
    doc: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    doc = copy.deepcopy(doc)
    doc.update(changes)
    return doc


def ns_transfer(n: int, **changes: Any) -> dict[str, Any]:
    """The n-th distinct North Somerset step-down (its own child, transfer and record ids)."""
    doc = example()
    doc.update(transfer_id=f"ns-{n}", message_id=f"ns-{n}-m1", correlation_id=f"ns-{n}")
    doc["child"]["identifiers"] = [{"system": "lcs", "id": f"LCS-{n}"}]
    doc["source_record"] = {**doc["source_record"], "record_id": f"LCS-{n}", "request_id": f"SDR-{n}"}
    doc.update(changes)
    return doc


async def produce(
    bootstrap: str,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, headers=headers) for k, v in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read(
    bootstrap: str,
    topic: str,
    until: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout: float = 60.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the beginning until ``until(records)`` holds (or the timeout; then return what came)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until(records) and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def events_of(records: list[ConsumerRecord[bytes, bytes]]) -> list[TransferEvent]:
    return [parse_event(r.value) for r in records if r.value is not None]


def count_type(event_type: str, n: int) -> Callable[[list[ConsumerRecord[bytes, bytes]]], bool]:
    def enough(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        return sum(1 for r in records if dict(r.headers).get("event_type") == event_type.encode()) >= n

    return enough


@asynccontextmanager
async def running_router(
    bootstrap: str, prefix: str, targets: dict[CaseSystem, Target], sources: dict[CaseSystem, Source], **settings: Any
) -> AsyncIterator[Router]:
    config = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, group_id=f"{prefix}-router", **settings)
    router = build_router(config, targets, sources)
    task = asyncio.create_task(router.run_until_stopped())
    try:
        yield router
    finally:
        router.stopped.set()
        await task


TOKEN = "sandbox-test-token"


@dataclass
class Systems:
    lcs: ServerHandle
    ehm: ServerHandle
    lcs_client: LcsSandboxClient
    ehm_client: EhmSandboxClient

    def deployed(self, feeds: bool = True) -> dict[str, SystemConfig]:
        """The two sandboxes as a deployment file's ``[systems.lcs]`` and ``[systems.ehm]`` blocks."""
        token = SecretRef.given(TOKEN)
        return {
            "lcs": LcsSystem(url=self.lcs.url, token=token, feeds=feeds),
            "ehm": EhmSystem(url=self.ehm.url, token=token, feeds=feeds),
        }


async def transfer_events(
    stack: Stack, transfer_id: str, last: str | tuple[str, ...], n: int = 1
) -> list[TransferEvent]:
    """The transfer's events, read until ``n`` of type ``last`` arrived (of each type, given several)."""
    wanted = (last,) if isinstance(last, str) else last

    def done(records: list[object]) -> bool:
        mine = [e for e in events_of(records) if e.transfer_id == transfer_id]  # type: ignore[arg-type]
        return all(sum(1 for e in mine if e.event_type == kind) >= n for kind in wanted)

    records = await read(stack.settings.bootstrap_servers, stack.settings.topics.events, done, timeout=60)
    return [e for e in events_of(records) if e.transfer_id == transfer_id]


class Closing(MemorySource):
    """A memory source that keeps what each close was given (the closing transfer) by record id."""

    def __init__(self) -> None:
        super().__init__()
        self.given: dict[str, TransferMessage] = {}

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        self.given[transfer.source_record.record_id] = transfer
        return await super().close(transfer, receipt)


class MailboxSource(Closing):
    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX


class CareDirector(Closing):
    system: ClassVar[CaseSystem] = CaseSystem.CARE_DIRECTOR


async def send_transfer(settings: Settings, doc: dict[str, Any]) -> None:
    """Publish a canonical transfer keyed by its child, as a source connector does."""
    first = doc["child"]["identifiers"][0]
    key = f"{first['system']}:{first['id']}".encode()
    await produce(settings.bootstrap_servers, settings.topics.transfers, [(key, json.dumps(doc).encode())])


async def events_until(settings: Settings, transfer_id: str, *kinds: str) -> list[TransferEvent]:
    """The transfer's events, read until each of ``kinds`` arrived."""

    def done(records: list[Any]) -> bool:
        return set(kinds) <= {e.event_type for e in events_of(records) if e.transfer_id == transfer_id}

    records = await read(settings.bootstrap_servers, settings.topics.events, done, timeout=60)
    return [e for e in events_of(records) if e.transfer_id == transfer_id]


def as_assigned(router: Router, topic: str, partitions: Iterable[int]) -> None:
    """The router owns these partitions of ``topic``, their state restored, as if its group had assigned them (for
    tests that hand it batches directly, with no group): it handles no record of a partition it does not own."""
    for p in partitions:
        router._owners[p].add(topic)


def map_stage_headers(position: int = 7) -> list[tuple[str, bytes]]:
    """The headers a publisher (feed ``probe-changes``, North Somerset) puts on a map-stage dead letter of the
    source record at ``position`` that could not be mapped (``MappingError`` naming NS-6)."""
    from connectors._feed import FeedPublisher, Mapped, Remap
    from contracts import Council
    from mappings import MappingError

    class Probe(FeedPublisher):
        feed, what = "probe-changes", "probe"

        async def collect(self, after: int) -> tuple[list[Any], int]:
            return [], after

        def mapping(self, source: dict[str, Any], position: int) -> Mapped:
            raise AssertionError("not called")

    probe = Probe.__new__(Probe)
    probe.council = Council.NORTH_SOMERSET
    probe.remap = Remap("p.remap", "p.parking", "p.events", "p-remap-probe")
    failure = MappingError("probe.toml: field x (rule)", rule_ids=("NS-6",))
    return probe._map_failure_headers(Mapped("t-1", b"k", lambda: None), failure, position)  # type: ignore[arg-type, return-value, no-any-return]
