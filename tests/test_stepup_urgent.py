"""SW22-1 on the real broker: an urgent (s.47) step-up is routed before routine ones in the same batch."""

from __future__ import annotations

import asyncio
import json
from typing import ClassVar

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem
from router import Settings
from router.app import ensure_topics
from router.flow import urgent_first
from tests.council_data import step_up
from tests.support import count_type, produce, read, running_router


class _Mailbox(MemoryTarget):
    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX


class _CareDirector(MemorySource):
    system: ClassVar[CaseSystem] = CaseSystem.CARE_DIRECTOR


def _s47(n: int) -> dict[str, object]:
    doc = step_up("swindon-2022", n)
    doc["pathway"]["to_level"] = "child-protection-s47"  # type: ignore[index]
    return doc


def test_sw22_01_urgent_first_sort_key_finds_urgency_and_s47_in_the_raw_bytes() -> None:
    """SW22-1: the batch order key sees urgency and a s.47 target without parsing the message."""
    from aiokafka.structs import ConsumerRecord

    def rec(doc: dict[str, object]) -> ConsumerRecord[bytes, bytes]:
        return ConsumerRecord("t", 0, 0, 0, 0, b"k", json.dumps(doc).encode(), None, 1, 1, [])

    assert [0, 0, 1] == [
        urgent_first([rec(_s47(1))]),
        urgent_first([rec(step_up("swindon-2022", 2, urgency="urgent"))]),
        urgent_first([rec(step_up("swindon-2022", 3))]),
    ]


async def test_sw22_01_urgent_s47_step_up_is_delivered_before_routine_ones(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """SW22-1: with one delivery slot, the s.47 step-up produced last is delivered first, flagged urgent."""
    topics = Settings(topic_prefix=topic_prefix).topics
    await ensure_topics(kafka_bootstrap, [topics.transfers])
    docs = [step_up("swindon-2022", n) for n in (1, 2, 3)] + [_s47(4)]
    items = [(f"care-director:EH-{n}".encode(), json.dumps(d).encode()) for n, d in enumerate(docs, 1)]
    await produce(kafka_bootstrap, topics.transfers, items)
    mailbox = _Mailbox()
    targets = {CaseSystem.MAILBOX: mailbox}
    sources = {CaseSystem.CARE_DIRECTOR: _CareDirector()}
    async with running_router(kafka_bootstrap, topic_prefix, targets, sources, concurrency=1, batch_size=100):  # type: ignore[arg-type]
        await read(kafka_bootstrap, topics.events, count_type("source-closed", 4), timeout=60)
        await asyncio.sleep(0)
    assert "swindon-2022-su-4" == mailbox.order[0]
    _, route = mailbox.items["swindon-2022-su-4"]
    assert (True, ["SW22-1"]) == (route.urgent, route.rule_ids)
