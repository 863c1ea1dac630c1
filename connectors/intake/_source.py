"""The team's record, as the router sees it: Luton's teams have no case system, so the intake's store is it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import structlog

from contracts import CaseSystem, RecordState, TransferMessage

from .._base import Receipt, Source, SourceState
from ._store import IntakeStore

log = structlog.get_logger("casebridge.intake")


class IntakeSource(Source):
    """``CaseSystem.MAILBOX`` as a source, over the intake's store (``store_path``: the same file the
    :class:`IntakeServer` writes).

    ``state``: the team's record is open unless the store records it closed (by which transfer, so a re-run
    of that transfer goes on). ``close`` records the protocol's closure record (``transfer.closure``) and
    ``keep_open`` the rules that keep it open; both idempotent, both seen by the team at
    ``GET /api/transfers/{transfer_id}``. Nothing here is remote: every call is a local SQLite write."""

    system: ClassVar[CaseSystem] = CaseSystem.MAILBOX

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self._store: IntakeStore | None = None

    @property
    def store(self) -> IntakeStore:
        if self._store is None:
            self._store = IntakeStore(self.store_path)
        return self._store

    async def start(self) -> None:
        _ = self.store

    async def stop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    async def state(self, transfer: TransferMessage) -> SourceState:
        by = self.store.closed_by(transfer.council.value, transfer.source_record.record_id)
        if by is not None:
            return SourceState(RecordState.CLOSED, closed_by_transfer=by)
        return SourceState(RecordState.OPEN)

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        reference = self.store.close_record(transfer, f"INTAKE-{transfer.transfer_id}-closed")
        log.info("intake_record_closed", transfer_id=transfer.transfer_id, reference=reference)
        return reference

    async def keep_open(self, transfer: TransferMessage, receipt: Receipt, rule_ids: list[str]) -> str | None:
        reference = self.store.keep_open(transfer, rule_ids, f"INTAKE-{transfer.transfer_id}-kept-open")
        log.info("intake_record_kept_open", transfer_id=transfer.transfer_id, rule_ids=sorted(set(rule_ids)))
        return reference
