"""In-process target and source, for fast tests and the benchmark.

Delivery guarantee: idempotent on transfer id (a dict keyed by it); nothing survives the
process. Not for production.
"""

from __future__ import annotations

from typing import ClassVar

from contracts import CaseSystem, RecordState, TransferMessage
from mappings import Route

from ._base import Receipt, Source, SourceState, Target
from ._errors import TargetUnavailable


class MemoryTarget(Target):
    system: ClassVar[CaseSystem] = CaseSystem.EHM

    def __init__(self, unavailable: dict[str, int] | None = None) -> None:
        self.items: dict[str, tuple[TransferMessage, Route]] = {}
        self.order: list[str] = []
        self.deliveries = 0
        self.away: set[str] = set()
        #: transfer id -> how many more deliveries answer "unavailable" (a transient failure)
        self.unavailable = dict(unavailable or {})

    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        self.deliveries += 1
        if self.unavailable.get(transfer.transfer_id, 0) > 0:
            self.unavailable[transfer.transfer_id] -= 1
            raise TargetUnavailable("memory target: unavailable (injected)")
        created = transfer.transfer_id not in self.items
        if created:
            self.items[transfer.transfer_id] = (transfer, route)
            self.order.append(transfer.transfer_id)
        return Receipt(self.system, f"MEM-{transfer.transfer_id}", created=created)

    async def confirm(self, transfer: TransferMessage) -> Receipt:
        held = transfer.transfer_id in self.items
        return Receipt(self.system, f"MEM-{transfer.transfer_id}", created=False, acknowledged=held)

    async def leader_away(self, locality: str) -> bool | None:
        return locality in self.away


class MemorySource(Source):
    system: ClassVar[CaseSystem] = CaseSystem.LCS

    def __init__(self) -> None:
        self.closed: dict[str, str] = {}

    async def state(self, transfer: TransferMessage) -> SourceState:
        by = self.closed.get(transfer.source_record.record_id)
        if by is not None:
            return SourceState(RecordState.CLOSED, closed_by_transfer=by)
        return SourceState(transfer.source_record.state)

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        self.closed.setdefault(transfer.source_record.record_id, transfer.transfer_id)
        return transfer.source_record.record_id
