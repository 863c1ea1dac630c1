"""casebridge's topics and messages as an AsyncAPI 3.0 document, generated from the pydantic contracts.

``python -m monitor.asyncapi`` writes ``contracts/asyncapi.json``; a drift test fails when
the contracts or topics change without it being regenerated. The monitor serves it at
``/asyncapi.json``.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts import EVENT_ADAPTER, TransferMessage
from router.closures import AllocationAudit

ASYNCAPI_FILE = Path(__file__).parent.parent / "contracts" / "asyncapi.json"
REF = "#/components/schemas/{model}"


def _hoist(schema: dict[str, Any], into: dict[str, Any]) -> dict[str, Any]:
    """Move a pydantic schema's ``$defs`` into components.schemas (refs already point there)."""
    for name, sub in schema.pop("$defs", {}).items():
        into[name] = sub
    return schema


def _asyncapi_discriminators(node: Any) -> Any:
    """AsyncAPI's Schema Object names the discriminator property by a string (pydantic writes OpenAPI's object)."""
    if isinstance(node, dict):
        return {
            k: v["propertyName"] if k == "discriminator" and isinstance(v, dict) else _asyncapi_discriminators(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_asyncapi_discriminators(v) for v in node]
    return node


class _Audit(BaseModel):
    """One record of ``<prefix>.audit``: who replayed which dead letter, when, and its summary."""

    operator: str
    at: str
    dead_letter: str
    id: str
    last_failure: str
    council: str
    pathway: str
    transfer_id: str
    stage: str
    error_class: str
    rule_ids: list[str]
    attempts: int
    reason: str


def _header_schema(names: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": text} for name, text in names.items()},
    }


DLQ_HEADERS = {
    "casebridge.dlq.original.topic": "topic the record was read from",
    "casebridge.dlq.original.partition": "its partition",
    "casebridge.dlq.original.offset": "its offset",
    "casebridge.dlq.original.timestamp": "its timestamp (ms since the epoch)",
    "casebridge.dlq.consumer.group": "the consumer group that read it",
    "casebridge.dlq.stage": "contract, protocol, deliver or internal",
    "casebridge.dlq.error.class": "the error class, e.g. ProtocolRuleNotMet",
    "casebridge.dlq.error.message": "why (field and rule names only, no personal data)",
    "casebridge.dlq.attempts": "delivery attempts made",
    "casebridge.dlq.first.failure": "ISO 8601",
    "casebridge.dlq.last.failure": "ISO 8601",
    "casebridge.dlq.rule.ids": "comma-separated protocol rule ids",
    "casebridge.dlq.transfer.id": "the transfer id, when the message had a readable one",
    "casebridge.dlq.council": "the council",
    "casebridge.dlq.version": "the casebridge version that dead-lettered it",
}


def asyncapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    transfer = _hoist(TransferMessage.model_json_schema(ref_template=REF), schemas)
    schemas["TransferMessage"] = transfer
    event = _hoist(EVENT_ADAPTER.json_schema(ref_template=REF), schemas)
    schemas["TransferEvent"] = event
    schemas["AuditRecord"] = _hoist(_Audit.model_json_schema(ref_template=REF), schemas)
    schemas["AllocationAudit"] = _hoist(AllocationAudit.model_json_schema(ref_template=REF), schemas)

    def message(name: str, title: str, summary: str, schema: str, key: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "title": title,
            "summary": summary,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{schema}"},
            "bindings": {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.5.0"}},
            **extra,
        }

    prefix = {
        "prefix": {"description": "the deployment's topic prefix (CASEBRIDGE_TOPIC_PREFIX)", "default": "casebridge"}
    }
    messages = {
        "TransferMessage": message(
            "TransferMessage",
            "Transfer request",
            "One handover of one child between services (holds personal data: the child, consent, documents).",
            "TransferMessage",
            "the child, e.g. lcs:LCS-12 (a child's transfers stay in order)",
        ),
        "TransferEvent": message(
            "TransferEvent",
            "Transfer event",
            "One step of one transfer; no personal data (ids, council, pathway, rule ids, outcomes).",
            "TransferEvent",
            "the transfer id",
            headers={"type": "object", "properties": {"event_type": {"type": "string"}}},
        ),
        "DeadLetter": message(
            "DeadLetter",
            "Dead letter",
            "The original record byte for byte, with why it could not be handled in casebridge.dlq.* headers.",
            "TransferMessage",
            "the original record's key",
            headers=_header_schema(DLQ_HEADERS),
        ),
        "AuditRecord": message(
            "AuditRecord", "Replay audit record", "One replayed dead letter.", "AuditRecord", "the dead letter id"
        ),
        "AllocationAudit": message(
            "AllocationAudit",
            "Allocation audit record",
            "One allocation recorded by an operator (BA-9, casebridge allocate); no worker's name.",
            "AllocationAudit",
            "allocation/<transfer id>",
        ),
    }

    def channel(address: str, description: str, *names: str, **params: Any) -> dict[str, Any]:
        return {
            "address": address,
            "description": description,
            "parameters": {**prefix, **params},
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        }

    channels = {
        "transfers": channel("{prefix}.transfers", "Transfer requests from source connectors.", "TransferMessage"),
        "events": channel("{prefix}.events", "Every step of every transfer.", "TransferEvent"),
        "retry": channel(
            "{prefix}.retry.{tier}",
            "Delayed retry tiers (30 s, 5 min by default) for transfers whose target was unavailable.",
            "TransferMessage",
            tier={"description": "tier number, 0 first"},
        ),
        "deadLetters": channel("{prefix}.dlq", "Messages that could not be handled.", "DeadLetter"),
        "parking": channel("{prefix}.parking", "Replayed messages that failed again.", "DeadLetter"),
        "audit": channel(
            "{prefix}.audit", "Operators' actions: replays and recorded allocations.", "AuditRecord", "AllocationAudit"
        ),
    }

    def operation(action: str, ch: str, summary: str) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{ch}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{ch}/messages/{n}"} for n in channels[ch]["messages"]],
        }

    operations = {
        "publishTransfer": operation("send", "transfers", "A source connector (e.g. the LCS publisher) publishes."),
        "routeTransfer": operation("receive", "transfers", "The router consumes, checks and delivers."),
        "emitEvent": operation("send", "events", "The router and connectors record each step."),
        "trackEvents": operation("receive", "events", "The monitor's flow tracker reads every step."),
        "retryLater": operation("send", "retry", "The router parks a transfer in a delayed retry tier."),
        "deadLetter": operation("send", "deadLetters", "The router dead-letters what it cannot handle."),
        "replayDeadLetters": operation("receive", "deadLetters", "An operator lists and replays dead letters."),
        "park": operation("send", "parking", "A replayed message that failed again."),
        "audit": operation("send", "audit", "Each replay and each recorded allocation is audited."),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "casebridge",
            "version": version("casebridge"),
            "description": "Step-up / step-down handovers between children's case systems over Apache Kafka.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "casebridge kafka start (set CASEBRIDGE_BOOTSTRAP_SERVERS for others)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _asyncapi_discriminators(dict(sorted(schemas.items())))},
    }


def render() -> str:
    return json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    ASYNCAPI_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {ASYNCAPI_FILE}")
    return 0
