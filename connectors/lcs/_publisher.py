from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import structlog
from pydantic import ValidationError

from contracts import Council, TransferMessage, field_errors
from mappings import MappingError, load_mapping

from .._feed import FileCursor, idempotent_producer, poll_forever
from ._connector import LcsConnector

log = structlog.get_logger("casebridge.connectors.lcs")
_MAPPING = load_mapping("lcs-stepdown")


def transfer_id_for(council: Council, request_id: str) -> str:
    """Stable for the handover: the same LCS request always yields the same transfer id."""
    return f"{council.value}-lcs-{request_id}".lower()


class LcsPublisher:
    """Reads LCS's change feed and publishes step-down requests as canonical transfers.

    ``stepdown_requested`` publishes the request; ``record_reopened`` publishes again the
    child's pending requests (a step-down held by NS-7 completes once the record is open).
    """

    def __init__(
        self,
        lcs: LcsConnector,
        bootstrap_servers: str,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council = Council.NORTH_SOMERSET,
    ) -> None:
        self.lcs = lcs
        self.transfers_topic = transfers_topic
        self.dead_letter_topic = dead_letter_topic
        self.cursor = FileCursor(cursor)
        self.council = council
        self.producer = idempotent_producer(bootstrap_servers)
        self.published = 0

    async def start(self) -> None:
        await self.lcs.start()
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.lcs.stop()

    async def poll_once(self) -> int:
        """Publish everything new in the feed; returns how many transfers were published."""
        after = self.cursor.load()
        changes, last = await self.lcs.changes(after)
        pending: list[Awaitable[Any]] = []
        for change in changes:
            if change["kind"] == "stepdown_requested":
                pending.append(await self._publish(change["request_id"], change["seq"]))
            elif change["kind"] == "record_reopened":
                for req in await self.lcs.pending_requests(change["child_id"]):
                    pending.append(await self._publish(req["request_id"], change["seq"]))
        for fut in pending:
            await fut  # acknowledged by the broker before the cursor moves
        if last != after:
            self.cursor.save(last)
        self.published += len(pending)
        return len(pending)

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, "lcs-changes")

    async def _publish(self, request_id: str, seq: int) -> Awaitable[Any]:
        request = await self.lcs.request(request_id)
        child = await self.lcs.child(request["child_id"])
        transfer_id = transfer_id_for(self.council, request_id)
        envelope = {
            "transfer_id": transfer_id,
            "message_id": f"{transfer_id}-c{seq}",
            "council": self.council.value,
            "published_at": datetime.now(UTC).isoformat(),
        }
        key = f"lcs:{child['id']}".encode()
        try:
            transfer = TransferMessage.model_validate(
                _MAPPING.apply({"child": child, "request": request, "envelope": envelope})
            )
        except (MappingError, ValidationError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, MappingError)
                else "; ".join(f"{e.field}: {e.rule}" for e in field_errors(exc))
            )
            error_class = "MappingError" if isinstance(exc, MappingError) else "ContractViolation"
            log.warning("lcs_request_unmappable", transfer_id=transfer_id, error_class=error_class)
            raw = json.dumps({"child": child, "request": request}).encode()
            sent = await self.producer.send(
                self.dead_letter_topic,
                value=raw,
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
        log.info("lcs_request_published", transfer_id=transfer_id)
        sent = await self.producer.send(self.transfers_topic, value=transfer.model_dump_json().encode(), key=key)
        return cast(Awaitable[Any], sent)
