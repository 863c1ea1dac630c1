from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from contracts import CaseSystem, Council, TransferMessage, wire

from .._feed import FeedPublisher, Mapped, Remap
from ..kafka import Kafka
from ._connector import TedConnector
from ._mapping import stepdown_transfer


def transfer_id_for(council: Council, request_id: str) -> str:
    """Stable for the handover: the same TED step-down request always yields the same transfer id."""
    return f"{council.value}-ted-{request_id}".lower()


class TedPublisher(FeedPublisher):
    """Reads TED's change feed and publishes each step-down request as a canonical transfer.

    The mapping (``mappings/data/ted-stepdown.toml``) carries TED's coded reason as the transfer's
    ``purpose_code``; whether that reason is allowed (BA-5) is the protocol's decision, in the
    router, like every other rule. A request the mapping or the contract refuses is dead-lettered at
    the ``map`` stage. At-least-once: the cursor moves only after Kafka acknowledged what was
    published; ids are stable per request and feed position.
    """

    feed = "ted-changes"
    what = "ted_stepdown_request"

    def __init__(
        self,
        ted: TedConnector,
        kafka: Kafka,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council = Council.BARNSLEY,
        remap: Remap | None = None,
    ) -> None:
        super().__init__(ted, kafka, transfers_topic, dead_letter_topic, cursor, council, remap)
        self.ted = ted

    async def collect(self, after: int) -> tuple[list[Awaitable[Any]], int]:
        changes, last = await self.ted.changes(after)
        pending = [
            await self._publish(change["ref"], change["seq"])
            for change in changes
            if change["kind"] == "stepdown_requested"
        ]
        return pending, last

    async def _publish(self, request_id: str, seq: int) -> Awaitable[Any]:
        request = await self.ted.stepdown_request(request_id)
        case = await self.ted.case(request["case_id"])
        return await self.publish({"case": case, "request": request}, seq)

    async def reread(self, source: dict[str, Any]) -> dict[str, Any]:
        request = await self.ted.stepdown_request(source["request"]["request_id"])
        return {"case": await self.ted.case(request["case_id"]), "request": request}

    def mapping(self, source: dict[str, Any], position: int) -> Mapped:
        case, request = source["case"], source["request"]
        transfer_id = transfer_id_for(self.council, request["request_id"])

        def build() -> TransferMessage:
            return stepdown_transfer(case, request, transfer_id, f"{transfer_id}-c{position}", self.council)

        return Mapped(transfer_id, wire.child_key(CaseSystem.TED, case["id"]).encode(), build)
