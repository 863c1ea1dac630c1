from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from contracts import CaseSystem, Council, TransferMessage, wire
from mappings import MappingError, load_mapping

from .._feed import FeedPublisher, Mapped, Remap
from ..kafka import Kafka
from ._connector import CareDirectorConnector
from ._outcomes import outcome_of

_MAPPING = load_mapping("care-director-stepdown")


def transfer_id_for(council: Council, referral_id: str) -> str:
    """Stable for the handover: the same Care Director referral always yields the same transfer id."""
    return f"{council.value}-cd-{referral_id}".lower()


class CareDirectorPublisher(FeedPublisher):
    """Reads Care Director's change feed and publishes step-down referrals as canonical transfers.

    The assessment the referral follows chooses the level stepped down to (SW22-7, from the
    outcome data); a referral whose assessment outcome is not a step-down outcome is
    dead-lettered at the ``map`` stage naming SW22-7. At-least-once: the cursor moves only
    after Kafka acknowledged what was published; ids are stable per referral and feed position.
    """

    feed = "care-director-changes"
    what = "care_director_referral"

    def __init__(
        self,
        cd: CareDirectorConnector,
        kafka: Kafka,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council = Council.SWINDON_2022,
        remap: Remap | None = None,
    ) -> None:
        super().__init__(cd, kafka, transfers_topic, dead_letter_topic, cursor, council, remap)
        self.cd = cd

    async def collect(self, after: int) -> tuple[list[Awaitable[Any]], int]:
        changes, last = await self.cd.changes(after)
        pending = [
            await self._publish(change["ref"], change["seq"])
            for change in changes
            if change["kind"] == "stepdown_referred"
        ]
        return pending, last

    async def _publish(self, referral_id: str, seq: int) -> Awaitable[Any]:
        return await self.publish(await self._read(referral_id), seq)

    async def _read(self, referral_id: str) -> dict[str, Any]:
        referral = await self.cd.referral(referral_id)
        assessment = await self.cd.assessment(referral["assessment_id"])
        person = await self.cd.person(referral["person_id"])
        return {"person": person, "assessment": assessment, "referral": referral}

    async def reread(self, source: dict[str, Any]) -> dict[str, Any]:
        return await self._read(source["referral"]["referral_id"])

    def mapping(self, source: dict[str, Any], position: int) -> Mapped:
        assessment = source["assessment"]
        transfer_id = transfer_id_for(self.council, source["referral"]["referral_id"])
        key = wire.child_key(CaseSystem.CARE_DIRECTOR, source["person"]["id"]).encode()

        def build() -> TransferMessage:
            outcome = outcome_of(assessment["outcome_code"])
            if outcome is None or not outcome.step_down:
                code = str(assessment["outcome_code"])[:60]
                raise MappingError(
                    f"care-director-outcomes.toml: field assessment.outcome_code ({code!r}) is not a step-down"
                    " outcome (SW22-7)",
                    rule_ids=("SW22-7",),
                )
            envelope = {
                "transfer_id": transfer_id,
                "message_id": f"{transfer_id}-c{position}",
                "council": self.council.value,
                "to_level": outcome.to_level.value,
                "outcome_label": outcome.label,
            }
            return TransferMessage.model_validate(_MAPPING.apply({**source, "envelope": envelope}))

        return Mapped(transfer_id, key, build)
