"""Synthetic transfers for every council, step-down and step-up (all names invented)."""

from __future__ import annotations

from typing import Any

from casebridge.scenarios import STEP_UP, exemption, step_down, step_up
from contracts import TransferMessage

__all__ = ["STEP_UP", "exemption", "step_down", "step_up", "transfer"]


def transfer(doc: dict[str, Any]) -> TransferMessage:
    return TransferMessage.model_validate(doc)
