"""Export the contracts as JSON Schema files (``python -m contracts.schema``).

The exported files are committed; ``tests/test_contract_schema.py`` fails when a model
changes without them being regenerated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import SCHEMA_VERSION
from ._events import EVENT_ADAPTER
from ._transfer import TransferMessage

SCHEMA_DIR = Path(__file__).parent / "schemas"
#: the dialect pydantic generates
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: a stable identifier per schema file, not a download address: one file per major version, the minor
#: version (additive, docs/contract-compatibility.md) in ``x-casebridge-version``
ID_BASE = "urn:casebridge:contracts:schemas:"


def render() -> dict[str, str]:
    """The schema files' names and their exact text."""
    schemas = {
        "transfer-message.v1.schema.json": TransferMessage.model_json_schema(),
        "transfer-event.v1.schema.json": EVENT_ADAPTER.json_schema(),
    }
    for name, schema in schemas.items():
        schema["$schema"] = DIALECT
        schema["$id"] = ID_BASE + name
        schema["x-casebridge-version"] = SCHEMA_VERSION
    return {name: json.dumps(s, indent=2, sort_keys=True) + "\n" for name, s in schemas.items()}


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (SCHEMA_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
