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
