"""A notice waiting for an event (LU-7: tell the social worker and manager when the case is allocated)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from contracts import CaseSystem, TransferMessage


@dataclass(frozen=True)
class PendingNotice:
    rule: str
    channel: CaseSystem
    to: list[str]
    #: the notice itself: who it is about and to whom, no case documents (G4)
    notice: TransferMessage

    def encode(self) -> bytes:
        return json.dumps(
            {
                "rule": self.rule,
                "channel": self.channel.value,
                "to": self.to,
                "notice": self.notice.model_dump(mode="json"),
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PendingNotice:
        doc = json.loads(raw)
        return cls(
            doc["rule"], CaseSystem(doc["channel"]), list(doc["to"]), TransferMessage.model_validate(doc["notice"])
        )
