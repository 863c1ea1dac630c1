"""The lifecycle loop's own plumbing (router/lifecycle.py), without a broker: a state partition whose restore failed
is read before anything else, and a closure's signal mark follows its signal when the signal changes.

The end-to-end behaviour (restarts, rebalances, marks on a real topic) is in tests/test_closures.py and
tests/test_notices_restart.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.structs import RecordMetadata, TopicPartition

from router import Settings
from router import lifecycle as lifecycle_module
from router._reading import ReadIncomplete
from router.lifecycle import Lifecycle


class _Consumer:
    """The loop's consumer as a restore sees it: seeks, and the partitions assigned."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.seeks: list[tuple[TopicPartition, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


@pytest.fixture
async def loop() -> AsyncIterator[Lifecycle]:
    """A lifecycle loop never started (its clients closed at the end, as a stopped one's)."""
    loop = Lifecycle(Settings(bootstrap_servers="127.0.0.1:1", topic_prefix="t"), {}, {})
    consumer = loop.consumer
    for topic in (loop.notices.topic, loop.closures.topic):
        loop.partitions[topic] = 1
    yield loop
    await consumer.stop()
    await loop.producer.stop()


async def test_a_state_partition_whose_restore_failed_is_read_at_the_start_of_the_next_round(
    loop: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    notices, closures = loop.notices.topic, loop.closures.topic
    reads: list[str] = []

    async def read_partitions(kafka: Any, topic: str, partitions: Any, apply: Any, ends: Any = None) -> int:
        reads.append(topic)
        if reads == [notices]:  # the first read of the notices' partition fails (the broker slow for 30 s)
            raise ReadIncomplete(f"topic {topic}: not read to its end")
        ends.update({p: 5 for p in partitions})
        return 0

    monkeypatch.setattr(lifecycle_module, "read_partitions", read_partitions)
    assigned = {TopicPartition(notices, 0), TopicPartition(closures, 0)}
    loop.consumer = _Consumer(assigned)  # type: ignore[assignment]
    await loop._restore(assigned)
    assert ({closures: {0}, notices: set()}, [notices, closures]) == (loop.owned, reads), "the other one restored"

    await loop._restore_left()  # what the next round does first
    assert ({closures: {0}, notices: {0}}, [notices, closures, notices]) == (loop.owned, reads)
    assert (TopicPartition(notices, 0), 5) in loop.consumer.seeks  # type: ignore[attr-defined]
    await loop._restore_left()
    assert 3 == len(reads), "restored once: not read again"


async def test_a_state_partition_that_still_cannot_be_restored_stops_the_round(
    loop: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    notices = loop.notices.topic

    async def read_partitions(kafka: Any, topic: str, partitions: Any, apply: Any, ends: Any = None) -> int:
        if not partitions:  # as the real one: nothing to read
            return 0
        raise ReadIncomplete(f"topic {topic}: not read to its end")

    monkeypatch.setattr(lifecycle_module, "read_partitions", read_partitions)
    assigned = {TopicPartition(notices, 0)}
    loop.consumer = _Consumer(assigned)  # type: ignore[assignment]
    await loop._restore(assigned)
    with pytest.raises(ReadIncomplete):
        await loop.poll_round()  # nothing read or acted on without the partition's pending entries
    loop._drop(assigned)  # revoked meanwhile: its new owner restores it
    await loop._restore_left()


async def test_a_closure_signal_mark_is_rewritten_when_the_signal_changes_before_its_pending_closure(
    loop: Lifecycle,
) -> None:
    """The front door says "not accepted", then corrects it to "accepted", both before the pending closure: the mark
    on the topic follows, so a restart restores the accepted decision (not the one corrected)."""
    step = loop.closures
    loop.owned[step.topic] = {0}
    written: list[tuple[bytes, dict[str, Any] | None]] = []

    async def send(records: list[Any]) -> list[RecordMetadata]:
        out = []
        for topic, key, value, _, partition in records:
            written.append((key, None if value is None else json.loads(value)))
            tp = TopicPartition(topic, partition or 0)
            out.append(RecordMetadata(topic, tp.partition, tp, len(written), -1, -1, -1))
        return out

    loop.send = send  # type: ignore[method-assign]
    now = datetime(2026, 12, 1, 9, tzinfo=UTC)
    step.signals["ns-77"] = ("accepted", False)
    await step._keep_signals(now)
    step.signals["ns-77"] = ("accepted", True)
    await step._keep_signals(now)
    await step._keep_signals(now)  # unchanged: not written again
    assert [False, True] == [value["go"] for _, value in written if value is not None]
    assert {b"signal:ns-77"} == {key for key, _ in written}
    assert ("accepted", True) == step.marks["ns-77"][1:]
