"""Synthetic transfers for every council, step-down and step-up (all names invented)."""

from __future__ import annotations

from typing import Any

from casebridge.scenarios import STEP_UP, exemption, step_down, step_up
from contracts import TransferMessage

__all__ = ["STEP_UP", "exemption", "step_down", "step_up", "step_up_s47", "transfer"]


def transfer(doc: dict[str, Any]) -> TransferMessage:
    return TransferMessage.model_validate(doc)


def step_up_s47(council: str, n: int = 1, **changes: Any) -> dict[str, Any]:
    """The council's synthetic step-up, to child protection (s.47): the only level an exemption is for (G1)."""
    doc = step_up(council, n, **changes)
    doc["pathway"]["to_level"] = "child-protection-s47"
    return doc
