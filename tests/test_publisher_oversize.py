"""A publisher never dies on an oversized source record (issue #19 item 1): the contract refuses a transfer whose
inline documents pass MAX_INLINE_DOCUMENT_BYTES, so it is dead-lettered at the map stage, whole when it fits and by
reference (no value: the case system keeps the record) when it would pass Kafka's 1 MiB; the feed goes on."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, ClassVar

from connectors._feed import FeedPublisher, Mapped
from connectors.memory import MemorySource
from contracts import Council, TransferMessage
from contracts.wire import DLQ_BY_REFERENCE as H_BY_REFERENCE
from contracts.wire import DLQ_ORIGINAL_SIZE as H_ORIGINAL_SIZE
from router.app import ensure_topics
from router.settings import Topics
from tests.council_data import step_down
from tests.support import read


class _Feed(FeedPublisher):
    """A feed of three source records: too big to dead-letter whole, too big for the contract only, and valid."""

    feed: ClassVar[str] = "test-changes"
    what: ClassVar[str] = "test_request"

    def __init__(self, sources: list[dict[str, Any]], *args: Any) -> None:
        super().__init__(*args)
        self.sources = sources

    def mapping(self, source: dict[str, Any], position: int) -> Mapped:
        first = source["child"]["identifiers"][0]
        return Mapped(
            source["transfer_id"],
            f"{first['system']}:{first['id']}".encode(),
            lambda: TransferMessage.model_validate(source),
        )

    async def collect(self, after: int) -> tuple[list[Awaitable[Any]], int]:
        pending = [await self.publish(s, i) for i, s in enumerate(self.sources, start=1) if i > after]
        return pending, len(self.sources)


def _with_documents(n: int, size: int) -> dict[str, Any]:
    doc = step_down("north-somerset", 90 + n)
    kinds = ["plan", "assessment", "closure-summary"]
    doc["documents"] = [{"type": kinds[i], "content": "x" * size} for i in range(n)]
    return doc


async def test_an_oversized_source_record_is_dead_lettered_by_reference_and_the_feed_goes_on(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, [topics.transfers, topics.dead_letter])
    huge, large, fine = _with_documents(3, 400_000), _with_documents(2, 400_000), step_down("north-somerset", 99)
    feed = _Feed(
        [huge, large, fine], MemorySource(), kafka_bootstrap, topics.transfers, topics.dead_letter,
        tmp_path / "cursor.json", Council.NORTH_SOMERSET,
    )  # fmt: skip
    await feed.start()
    try:
        assert 3 == await feed.poll_once()  # the publisher did not die; nothing of the feed is left behind
        assert 0 == await feed.poll_once()
    finally:
        await feed.stop()
    assert 3 == feed.cursor.load()
    letters = await read(kafka_bootstrap, topics.dead_letter, lambda rs: len(rs) >= 2, timeout=30)
    by_id = {dict(r.headers)["casebridge.dlq.transfer.id"].decode(): r for r in letters}
    whole, by_reference = by_id[large["transfer_id"]], by_id[huge["transfer_id"]]
    assert (None, b"true") == (by_reference.value, dict(by_reference.headers)[H_BY_REFERENCE])
    assert int(dict(by_reference.headers)[H_ORIGINAL_SIZE]) > 1_000_000
    assert large == json.loads(whole.value or b"") and H_BY_REFERENCE not in dict(whole.headers)
    for r in (whole, by_reference):
        reason = dict(r.headers)["casebridge.dlq.error.message"].decode()
        assert "documents: inline_documents_too_large" in reason and "xxxx" not in reason
    [published] = await read(kafka_bootstrap, topics.transfers, lambda rs: len(rs) >= 1, timeout=30)
    assert fine["transfer_id"] == json.loads(published.value or b"")["transfer_id"]


class _PaddingFeed(_Feed):
    """A mapping that builds without the contract's check (``model_copy``): a source record marked ``pad`` maps to
    a transfer of about 1 MiB, which the producer would refuse."""

    def mapping(self, source: dict[str, Any], position: int) -> Mapped:
        from contracts import Document, DocumentType

        plain = {k: v for k, v in source.items() if k != "pad"}
        mapped = super().mapping(plain, position)
        if "pad" not in source:
            return mapped
        doc = Document.model_construct(type=DocumentType.PLAN, content="x" * source["pad"], reference=None,
                                       media_type="text/plain", title=None)  # fmt: skip
        return Mapped(mapped.transfer_id, mapped.key, lambda: mapped.build().model_copy(update={"documents": [doc]}))


async def test_a_transfer_too_big_to_publish_is_dead_lettered_at_the_map_stage_and_the_loop_goes_on(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Issue #19: a mapped transfer over the producer's limit (the contract's whole-size bound, or the encoded size
    the publisher checks before it sends) is dead-lettered at the map stage naming its size; the running loop does
    not die, and its cursor moves past it."""
    import asyncio

    topics = Topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, [topics.transfers, topics.dead_letter])
    padded = {**step_down("north-somerset", 91), "pad": 1_060_000}
    whole = step_down("north-somerset", 92)  # every field within its bound, the whole over MAX_TRANSFER_BYTES
    whole["documents"] = [{"type": "plan", "content": "x" * 650_000}]
    whole["deadlines"] = [{"rule_id": "NS-4", "due": "2026-11-16T10:15:00Z", "what": "é" * 5_000}] * 50
    fine = step_down("north-somerset", 93)
    feed = _PaddingFeed(
        [padded, whole, fine], MemorySource(), kafka_bootstrap, topics.transfers, topics.dead_letter,
        tmp_path / "cursor.json", Council.NORTH_SOMERSET,
    )  # fmt: skip
    await feed.start()
    try:
        await asyncio.wait_for(feed.run(interval=0.05, stop=lambda: feed.cursor.load() >= 3), 60)
    finally:
        await feed.stop()
    assert (3, 3) == (feed.cursor.load(), feed.published)
    letters = await read(kafka_bootstrap, topics.dead_letter, lambda rs: len(rs) >= 2, timeout=30)
    reasons = {
        dict(r.headers)["casebridge.dlq.transfer.id"].decode(): (
            dict(r.headers)["casebridge.dlq.stage"],
            dict(r.headers)["casebridge.dlq.error.message"].decode(),
        )
        for r in letters
    }
    stage, reason = reasons[padded["transfer_id"]]
    assert b"map" == stage and reason.startswith("transfer_too_large: the transfer is 106")
    assert "xxxx" not in reason
    stage, reason = reasons[whole["transfer_id"]]
    assert (b"map", "$: transfer_too_large") == (stage, reason)
    [published] = await read(kafka_bootstrap, topics.transfers, lambda rs: len(rs) >= 1, timeout=30)
    assert fine["transfer_id"] == json.loads(published.value or b"")["transfer_id"]
