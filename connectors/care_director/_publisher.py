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
from ._connector import CareDirectorConnector
from ._outcomes import outcome_of

log = structlog.get_logger("casebridge.connectors.care_director")
_MAPPING = load_mapping("care-director-stepdown")


def transfer_id_for(council: Council, referral_id: str) -> str:
    """Stable for the handover: the same Care Director referral always yields the same transfer id."""
    return f"{council.value}-cd-{referral_id}".lower()


class CareDirectorPublisher:
    """Reads Care Director's change feed and publishes step-down referrals as canonical transfers.

    The assessment the referral follows chooses the level stepped down to (SW22-7, from the
    outcome data); a referral whose assessment outcome is not a step-down outcome is
    dead-lettered at the ``map`` stage naming SW22-7. At-least-once: the cursor moves only
    after Kafka acknowledged what was published; ids are stable per referral and feed position.
    """

    def __init__(
        self,
        cd: CareDirectorConnector,
        bootstrap_servers: str,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council = Council.SWINDON_2022,
    ) -> None:
        self.cd = cd
        self.transfers_topic = transfers_topic
        self.dead_letter_topic = dead_letter_topic
        self.cursor = FileCursor(cursor)
        self.council = council
        self.producer = idempotent_producer(bootstrap_servers)
        self.published = 0

    async def start(self) -> None:
        await self.cd.start()
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.cd.stop()

    async def poll_once(self) -> int:
        """Publish every new step-down referral in the feed; returns how many records were sent."""
        after = self.cursor.load()
        changes, last = await self.cd.changes(after)
        pending = [
            await self._publish(change["ref"], change["seq"])
            for change in changes
            if change["kind"] == "stepdown_referred"
        ]
        for fut in pending:
            await fut  # acknowledged by the broker before the cursor moves
        if last != after:
            self.cursor.save(last)
        self.published += len(pending)
        return len(pending)

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, "care-director-changes")

    async def _publish(self, referral_id: str, seq: int) -> Awaitable[Any]:
        referral = (await self.cd.http.request("GET", f"/api/stepdown-referrals/{referral_id}")).json()
        assessment = (await self.cd.http.request("GET", f"/api/assessments/{referral['assessment_id']}")).json()
        person = (await self.cd.http.request("GET", f"/api/persons/{referral['person_id']}")).json()
        transfer_id = transfer_id_for(self.council, referral_id)
        key = f"care-director:{person['id']}".encode()
        try:
            outcome = outcome_of(assessment["outcome_code"])
            if outcome is None or not outcome.step_down:
                raise MappingError(
                    "care-director-outcomes.toml: field assessment.outcome_code is not a step-down outcome (SW22-7)"
                )
            envelope = {
                "transfer_id": transfer_id,
                "message_id": f"{transfer_id}-c{seq}",
                "council": self.council.value,
                "to_level": outcome.to_level.value,
                "outcome_label": outcome.label,
            }
            source = {"person": person, "assessment": assessment, "referral": referral, "envelope": envelope}
            transfer = TransferMessage.model_validate(_MAPPING.apply(source))
        except (MappingError, ValidationError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, MappingError)
                else "; ".join(f"{e.field}: {e.rule}" for e in field_errors(exc))
            )
            error_class = "MappingError" if isinstance(exc, MappingError) else "ContractViolation"
            rules = b"SW22-7" if "SW22-7" in reason else b""
            log.warning("care_director_referral_unmappable", transfer_id=transfer_id, error_class=error_class)
            raw = json.dumps({"person": person, "assessment": assessment, "referral": referral}).encode()
            sent = await self.producer.send(
                self.dead_letter_topic,
                value=raw,
                key=key,
                headers=[
                    ("casebridge.dlq.stage", b"map"),
                    ("casebridge.dlq.error.class", error_class.encode()),
                    ("casebridge.dlq.error.message", reason.encode()),
                    ("casebridge.dlq.rule.ids", rules),
                    ("casebridge.dlq.transfer.id", transfer_id.encode()),
                    ("casebridge.dlq.council", self.council.value.encode()),
                    ("casebridge.dlq.last.failure", datetime.now(UTC).isoformat().encode()),
                ],
            )
            return cast(Awaitable[Any], sent)
        log.info("care_director_referral_published", transfer_id=transfer_id)
        sent = await self.producer.send(self.transfers_topic, value=transfer.model_dump_json().encode(), key=key)
        return cast(Awaitable[Any], sent)
