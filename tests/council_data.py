"""Synthetic transfers for every council, step-down and step-up (all names invented)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from contracts import TransferMessage

EXAMPLES = Path(__file__).parent.parent / "contracts" / "examples"
STEP_DOWN_EXAMPLE = {
    "swindon": "swindon-2026.step-down.lcs-ehm.json",
    "swindon-2022": "swindon-2022.step-down.care-director-ehh.json",
    "luton": "luton.step-down.fst-eh.json",
    "barnsley": "barnsley.step-down.ted-eh-mailbox.json",
    "north-somerset": "north-somerset.step-down.lcs-ehm.json",
}
# council -> (from system, to system, from level, step-up documents, management decision forum / role)
STEP_UP = {
    "swindon": ("ehm", "lcs", "early-help", ["early-help-assessment"], (None, "Duty Manager")),
    "swindon-2022": (
        "care-director",
        "mailbox",
        "early-help",
        ["early-help-assessment", "taf-plan"],
        (None, "Line Manager"),
    ),
    "luton": ("mailbox", "mailbox", "early-help", ["escalation-summary"], ("Escalation Review Meeting", "EH Manager")),
    "barnsley": ("mailbox", "ted", "early-help", ["early-help-assessment", "case-notes"], (None, "EH Manager")),
    "north-somerset": ("ehm", "lcs", "intensive-early-help", ["step-up-form", "case-notes"], (None, "Team Manager")),
}


def step_down(council: str, n: int = 1, **changes: Any) -> dict[str, Any]:
    """The council's synthetic step-down, with its own ids (n), top-level changes applied."""
    doc: dict[str, Any] = copy.deepcopy(json.loads((EXAMPLES / STEP_DOWN_EXAMPLE[council]).read_text()))
    system = doc["pathway"]["from_system"]
    doc.update(transfer_id=f"{council}-sd-{n}", message_id=f"{council}-sd-{n}-m1", correlation_id=f"{council}-sd-{n}")
    doc["child"]["identifiers"] = [{"system": system, "id": f"{system.upper()}-{n}"}]
    doc["source_record"] = {**doc["source_record"], "record_id": f"{system.upper()}-{n}"}
    doc["deadlines"] = []
    doc.update(changes)
    return doc


def step_up(council: str, n: int = 1, **changes: Any) -> dict[str, Any]:
    """The council's synthetic step-up from early help, meeting every rule."""
    src, dst, level, documents, (forum, role) = STEP_UP[council]
    doc = step_down("north-somerset", n)
    doc.update(
        transfer_id=f"{council}-su-{n}",
        message_id=f"{council}-su-{n}-m1",
        correlation_id=f"{council}-su-{n}",
        council=council,
        pathway={
            "direction": "step-up",
            "from_level": level,
            "to_level": "child-in-need-s17",
            "from_system": src,
            "to_system": dst,
        },
        management_decision={
            "decided_by": {"name": "Morgan Testmanager", "role": role},
            "forum": forum,
            "rationale": "Concerns have escalated; needs cannot be met by early help.",
            "decided_on": "2026-10-30",
        },
        documents=[{"type": d, "content": f"{d} (synthetic)"} for d in documents],
        professionals={"family_support_worker": {"name": "Kit Supportworker", "role": "Family Support Worker"}},
        source_record={"system": src, "record_id": f"EH-{n}", "request_id": f"SUR-{n}", "state": "open"},
        deadlines=[],
    )
    doc["child"]["identifiers"] = [{"system": src, "id": f"EH-{n}"}]
    doc["consent"]["scope"] = ["referral", "information-sharing"]
    doc.update(changes)
    return doc


def transfer(doc: dict[str, Any]) -> TransferMessage:
    return TransferMessage.model_validate(doc)


def exemption(role: str) -> dict[str, Any]:
    """G1: the s.47 exemption, decided by a named manager in ``role``."""
    return {
        "reason": "significant-harm-s47",
        "decided_by": {"name": "Dana Dutymanager", "role": role},
        "decided_on": "2026-10-30",
    }
