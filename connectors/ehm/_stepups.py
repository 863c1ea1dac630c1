from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import structlog
from pydantic import ValidationError

from contracts import Council, ServiceLevel, TransferMessage, field_errors
from mappings import MappingError, load_mapping

from .._feed import FileCursor, idempotent_producer, poll_forever
from ._connector import EhmConnector

log = structlog.get_logger("casebridge.connectors.ehm")
_MAPPING = load_mapping("ehm-stepup")


def stepup_transfer_id(council: Council, request_id: str) -> str:
    """Stable for the handover: the same EHM Step-Up request always yields the same transfer id."""
    return f"{council.value}-ehm-{request_id}".lower()


class StepUpPublisher:
    """Reads EHM's Step-Up requests from a durable cursor and publishes them as step-up transfers.

    Delivery guarantee: at-least-once, with stable transfer and message ids (from the request id),
    so a re-publication after a crash is the same transfer downstream.
    """

    def __init__(
        self,
        ehm: EhmConnector,
        bootstrap_servers: str,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council = Council.NORTH_SOMERSET,
        from_level: ServiceLevel = ServiceLevel.INTENSIVE_EARLY_HELP,
    ) -> None:
        self.ehm = ehm
        self.transfers_topic = transfers_topic
        self.dead_letter_topic = dead_letter_topic
        self.cursor = FileCursor(cursor)
        self.council = council
        self.from_level = from_level
        self.producer = idempotent_producer(bootstrap_servers)

    async def start(self) -> None:
        await self.ehm.start()
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.ehm.stop()

    async def poll_once(self) -> int:
        after = self.cursor.load()
        requests, last = await self.ehm.stepup_requests(after)
        pending = [await self._publish(r) for r in requests]
        for fut in pending:
            await fut  # acknowledged by the broker before the cursor moves
        if last != after:
            self.cursor.save(last)
        return len(pending)

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, "ehm-stepups")

    async def _publish(self, request: dict[str, Any]) -> Awaitable[Any]:
        episode = await self.ehm.episode(request["episode_id"])
        transfer_id = stepup_transfer_id(self.council, request["request_id"])
        envelope = {
            "transfer_id": transfer_id,
            "message_id": f"{transfer_id}-m1",
            "council": self.council.value,
            "from_level": self.from_level.value,
        }
        key = f"ehm:{episode['episode_id']}".encode()
        try:
            transfer = TransferMessage.model_validate(
                _MAPPING.apply({"episode": episode, "request": request, "envelope": envelope})
            )
        except (MappingError, ValidationError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, MappingError)
                else "; ".join(f"{e.field}: {e.rule}" for e in field_errors(exc))
            )
            error_class = "MappingError" if isinstance(exc, MappingError) else "ContractViolation"
            log.warning("ehm_stepup_unmappable", transfer_id=transfer_id, error_class=error_class)
            sent = await self.producer.send(
                self.dead_letter_topic,
                value=json.dumps({"episode": episode, "request": request}).encode(),
                key=key,
                headers=[
                    ("casebridge.dlq.stage", b"map"),
                    ("casebridge.dlq.error.class", error_class.encode()),
                    ("casebridge.dlq.error.message", reason.encode()),
                    ("casebridge.dlq.transfer.id", transfer_id.encode()),
                    ("casebridge.dlq.council", self.council.value.encode()),
                ],
            )
            return cast(Awaitable[Any], sent)
        log.info("ehm_stepup_published", transfer_id=transfer_id)
        sent = await self.producer.send(self.transfers_topic, value=transfer.model_dump_json().encode(), key=key)
        return cast(Awaitable[Any], sent)
