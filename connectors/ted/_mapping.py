"""TED's step-down request as a canonical transfer (``mappings/data/ted-stepdown.toml``): one mapping for the
publisher (on the feed) and the connector (BA-9: the step-down again, documents included, at allocation)."""

from __future__ import annotations

from typing import Any

from contracts import Council, TransferMessage
from mappings import load_mapping

_MAPPING = load_mapping("ted-stepdown")


def stepdown_transfer(
    case: dict[str, Any], request: dict[str, Any], transfer_id: str, message_id: str, council: Council
) -> TransferMessage:
    envelope = {"transfer_id": transfer_id, "message_id": message_id, "council": council.value}
    return TransferMessage.model_validate(_MAPPING.apply({"case": case, "request": request, "envelope": envelope}))
