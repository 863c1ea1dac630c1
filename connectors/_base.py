"""The shape every connector shares: a small base class with a fixed lifecycle.

``start()`` opens connections, ``stop()`` closes them; in between a *target* receives
transfers (``deliver`` then ``confirm``) and a *source* answers for the record a transfer
came from (``state``, ``close``). A reader who knows one connector knows them all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from contracts import CaseSystem, DocumentType, RecordState, TransferMessage
from mappings import Route


@dataclass(frozen=True)
class Receipt:
    """The target's word that it holds the transfer (its own reference for it)."""

    system: CaseSystem
    reference: str
    created: bool = True
    acknowledged: bool = False


@dataclass(frozen=True)
class SourceState:
    state: RecordState
    #: the transfer that closed the record, when casebridge closed it (idempotent re-runs)
    closed_by_transfer: str | None = None


class Connector(ABC):
    system: ClassVar[CaseSystem]

    async def start(self) -> None:
        """Open connections. The default has none to open."""

    async def stop(self) -> None:
        """Close connections. The default has none to close."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class Target(Connector):
    """A system that receives transfers."""

    @abstractmethod
    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        """Hand the transfer over, idempotently on ``transfer.transfer_id``."""

    @abstractmethod
    async def confirm(self, transfer: TransferMessage) -> Receipt:
        """Ask the target whether it holds the transfer now (its acknowledgement)."""

    async def leader_away(self, locality: str) -> bool | None:
        """NS-2 fact: is the locality's Support Leader away? ``None`` where the target does not say."""
        return None


class Source(Connector):
    """A system transfers come from, whose record casebridge closes after delivery."""

    @abstractmethod
    async def state(self, transfer: TransferMessage) -> SourceState:
        """The source record's state now."""

    @abstractmethod
    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        """Close the source record after the target acknowledged; idempotent. Returns its reference."""

    async def keep_open(self, transfer: TransferMessage, receipt: Receipt, rule_ids: list[str]) -> str | None:
        """The protocol keeps the source record open after the handover (``rule_ids`` say why).

        A system with a place for it records why (TED's keep-open, BA-13); idempotent. Returns its
        reference, or ``None`` where the system records nothing (the default).
        """
        return None


#: the documents a step-up referral or contact carries (SW22-3, SW22-6, NS-9)
STEP_UP_DOCUMENTS = frozenset(
    {DocumentType.EHA, DocumentType.TAF_PLAN, DocumentType.STEP_UP_FORM, DocumentType.CASE_NOTES}
)


def step_up_body(transfer: TransferMessage, subject: str) -> dict[str, Any]:
    """What a social care front door receives for a step-up: the child (under ``subject``), summary, documents."""
    child = transfer.child
    decision = transfer.management_decision
    p = transfer.pathway
    return {
        subject: {
            "given_name": child.given_name,
            "family_name": child.family_name,
            # an unborn child (schema 1.1) has the expected date only; a front door that needs a date of birth
            # refuses it, naming the field, rather than receiving a guessed one
            **(
                {"date_of_birth": child.date_of_birth.isoformat()}
                if child.date_of_birth is not None
                else {"expected_date_of_birth": child.expected_date_of_birth.isoformat()}
                if child.expected_date_of_birth is not None
                else {}
            ),
            "source_reference": transfer.source_record.record_id,
        },
        "urgency": transfer.urgency.value,
        "summary": decision.rationale if decision else f"{p.direction.value} from {p.from_system.value}",
        "received_from": p.from_system.value,
        "documents": [
            {"type": d.type.value, "title": d.title, "content": d.content, "reference": d.reference}
            for d in transfer.documents
            if d.type in STEP_UP_DOCUMENTS
        ],
    }
