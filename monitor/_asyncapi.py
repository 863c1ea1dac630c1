"""casebridge's topics and messages as an AsyncAPI 3.0 document, generated from the pydantic contracts.

``python -m monitor.asyncapi`` writes ``contracts/asyncapi.json``; a drift test fails when
the contracts or topics change without it being regenerated. The monitor serves it at
``/asyncapi.json``.
"""

from __future__ import annotations

import json
import typing
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from connectors.intake import INTAKE_AUDIT_PREFIX, IntakeAudit
from connectors.kafka import SaslMechanism
from contracts import EVENT_ADAPTER, SCHEMA_VERSION, TransferMessage, wire
from router._pending import PendingClosure
from router.closures import AllocationAudit
from router.settings import ALLOCATION_AUDIT_PREFIX, RetrySettings, Topics, TopicSettings
from router.topics import configs

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


def _header_schema(names: dict[str, str], note: str = "") -> dict[str, Any]:
    """Kafka headers as an object of strings (each header's value is UTF-8 text unless its description says it is
    a big-endian integer); none is required."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: {"type": "string", "description": text} for name, text in names.items()},
    }
    if note:
        schema["description"] = note
    return schema


# each header's description is its meaning in contracts/wire.py, where the code takes its name from
#: what the router's ``dead_letter_headers`` (router/_outbox.py) writes after the original record's headers
DLQ_HEADERS = wire.describe(wire.DLQ_HEADERS)
#: a map-stage dead letter's publisher and feed position (connectors/_feed.py; replay sends it back to it)
PUBLISHER_HEADERS = wire.describe(wire.PUBLISHER_HEADERS)
#: Spring Kafka's names for the same facts (``contracts.wire.spring_dlt_headers``), on every dead letter
SPRING_DLT_HEADERS = wire.describe(wire.SPRING_DLT_HEADERS)
#: added by the outbox to a record too big to dead-letter whole (its value is then absent)
DLQ_BY_REFERENCE_HEADERS = wire.describe(wire.DLQ_BY_REFERENCE_HEADERS)
#: the subset a source connector's map-stage dead letter carries (connectors/_feed.py)
MAP_STAGE_HEADERS = wire.MAP_STAGE_HEADERS
#: router/_retry.py: on a record in a delayed retry tier (stripped again before it is dead-lettered or delivered)
RETRY_HEADERS = wire.describe(wire.RETRY_HEADERS)
#: router/_retry.py: on a dead letter an operator replayed (casebridge replay) to its original topic
REPLAY_HEADERS = wire.describe(wire.REPLAY_HEADERS)
#: the W3C trace context a publisher puts on a transfer (connectors/_tracing.py)
TRACE_HEADERS = wire.describe(wire.TRACE_HEADERS)
#: on every event
EVENT_HEADERS = wire.describe(wire.EVENT_HEADERS)

_TRANSFER_KEY = "the child, e.g. lcs:LCS-12 (a child's transfers stay in order)"


def _binding(config: dict[str, str], topics: TopicSettings) -> dict[str, Any]:
    """A Kafka channel binding from the configuration ``router/topics.py`` creates the topic with (its defaults)."""
    topic_config: dict[str, Any] = {}
    if "cleanup.policy" in config:
        topic_config["cleanup.policy"] = config["cleanup.policy"].split(",")
    else:
        topic_config["cleanup.policy"] = ["delete"]
    if "retention.ms" in config:
        topic_config["retention.ms"] = int(config["retention.ms"])
    return {
        "partitions": topics.partitions,
        "topicConfiguration": topic_config,
        "x-replication": "the deployment's [topics] replication_factor, by default 3 or the number of brokers where "
        "fewer; min.insync.replicas one less (at least 1). Partitions and retention are the defaults of [topics]; "
        "an existing kept or compacted topic that would lose records is refused at start",
        "bindingVersion": "0.5.0",
    }


def asyncapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    transfer = _hoist(TransferMessage.model_json_schema(ref_template=REF), schemas)
    schemas["TransferMessage"] = transfer
    event = _hoist(EVENT_ADAPTER.json_schema(ref_template=REF), schemas)
    schemas["TransferEvent"] = event
    schemas["AuditRecord"] = _hoist(_Audit.model_json_schema(ref_template=REF), schemas)
    schemas["AllocationAudit"] = _hoist(AllocationAudit.model_json_schema(ref_template=REF), schemas)
    schemas["IntakeAudit"] = _hoist(IntakeAudit.model_json_schema(ref_template=REF), schemas)
    schemas["PendingClosure"] = _hoist(PendingClosure.model_json_schema(ref_template=REF), schemas)
    schemas["PendingNotice"] = {
        "type": "object",
        "title": "PendingNotice",
        "description": "LU-7: a notice due when the transfer is allocated (router/_pending.py)",
        "properties": {
            "rule": {"type": "string", "description": "the rule id, e.g. LU-7"},
            "channel": {"$ref": REF.format(model="CaseSystem")},
            "to": {"type": "array", "items": {"type": "string", "enum": ["social_worker", "manager"]}},
            "notice": {"$ref": REF.format(model="TransferMessage")},
        },
        "required": ["rule", "channel", "to", "notice"],
    }
    schemas["AllocationMark"] = {
        "type": "object",
        "title": "AllocationMark",
        "description": "the transfer was allocated (key allocated:<transfer id>); its notices are now due",
        "properties": {
            "allocated_at": {"type": "string", "format": "date-time"},
            "confirm_with": {
                "description": "the target that must confirm it; null: an operator's audit record",
                "anyOf": [{"$ref": REF.format(model="CaseSystem")}, {"type": "null"}],
            },
        },
        "required": ["allocated_at"],
    }
    schemas["SignalMark"] = {
        "type": "object",
        "title": "SignalMark",
        "description": "a signal read before the transfer's pending closure (key signal:<transfer id>); the closure "
        "acts on it once it is read",
        "properties": {
            "signal": {"enum": ["allocated", "accepted"], "description": "the trigger it is"},
            "go": {"type": "boolean", "description": "false: the front door did not accept (the closure is cancelled)"},
            "read_at": {"type": "string", "format": "date-time"},
        },
        "required": ["signal", "go", "read_at"],
    }
    schemas["RetryState"] = {
        "type": "object",
        "title": "RetryState",
        "description": "a child with transfers waiting in a retry tier: the tier, and the retry ids pending there",
        "properties": {
            "tier": {"type": "integer", "minimum": 0},
            "pending": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["tier", "pending"],
    }
    schemas["FeedCursor"] = {
        "type": "object",
        "title": "FeedCursor",
        "description": "a source feed's position: the last one whose outputs Kafka acknowledged",
        "properties": {"after": {"type": "integer", "minimum": 0}},
        "required": ["after"],
    }
    schemas["CompletedTransfers"] = {
        "type": "object",
        "title": "CompletedTransfers",
        "description": "a child's completed transfers: per transfer id, the message id that completed it and a "
        "digest of its content (a later copy with that content is a duplicate)",
        "properties": {
            "completed": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"message_id": {"type": "string"}, "content": {"type": "string"}},
                    "required": ["message_id", "content"],
                },
            }
        },
        "required": ["completed"],
    }
    schemas["ChildHistory"] = {
        "type": "array",
        "title": "ChildHistory",
        "description": "the child's completed step-downs of the last year, oldest first (LU-9, NS-10)",
        "items": {
            "type": "object",
            "properties": {
                "transfer_id": {"type": "string"},
                "council": {"$ref": REF.format(model="Council")},
                "at": {"type": "string", "format": "date-time"},
                "team": {"type": ["string", "null"]},
                "social_worker": {"type": ["string", "null"], "description": "a member of staff, not the family"},
            },
            "required": ["transfer_id", "council", "at"],
        },
    }
    schemas["SourceSystemRecord"] = {
        "type": "object",
        "title": "SourceSystemRecord",
        "description": "stage map: the source system's own record as its connector read it (an LCS change, an EHM "
        "step-up request, a Care Director or TED change), which could not be mapped to a TransferMessage; its shape "
        "is the source system's, not casebridge's. Holds personal data.",
    }
    schemas["UnreadableBytes"] = {
        "type": "string",
        "title": "UnreadableBytes",
        "description": "stage validate, error class MalformedJson: the bytes as they were on the transfers topic, "
        "not JSON (or not an object); anything at all",
    }
    schemas["ByReference"] = {
        "type": "null",
        "title": "ByReference",
        "description": "casebridge.dlq.by.reference = true: no value; the record stays at its original topic, "
        "partition and offset",
    }
    schemas["DeadLetterValue"] = {
        "title": "DeadLetterValue",
        "description": "A dead letter's value is the original record's bytes, unchanged, so its shape depends on "
        "where it failed (casebridge.dlq.stage): a TransferMessage (validate: one the contract refused, may be "
        "partly invalid; protocol, deliver, internal), the source system's record (map), a PendingClosure "
        "(close-later, original topic <prefix>.pending-closures), arbitrary bytes (validate, MalformedJson), or "
        "no value at all (by reference). anyOf, not oneOf: a source record and a TransferMessage are both objects.",
        "anyOf": [
            {"$ref": REF.format(model="TransferMessage")},
            {"$ref": REF.format(model="SourceSystemRecord")},
            {"$ref": REF.format(model="PendingClosure")},
            {"$ref": REF.format(model="UnreadableBytes")},
            {"$ref": REF.format(model="ByReference")},
        ],
    }

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

    dead_letter_note = (
        "The original record's headers byte for byte (a retried message's without casebridge.retry.*), then "
        "casebridge.dlq.*, then Spring Kafka's kafka_dlt-* (the same origin and reason). A source connector's "
        "map-stage dead letter carries only " + ", ".join(MAP_STAGE_HEADERS) + "."
    )
    tombstone = " A tombstone (no value) removes the key."
    messages = {
        "TransferMessage": message(
            "TransferMessage",
            "Transfer request",
            "One handover of one child between services (holds personal data: the child, consent, documents).",
            "TransferMessage",
            _TRANSFER_KEY,
            headers=_header_schema(
                {**TRACE_HEADERS, **REPLAY_HEADERS},
                "the source's own headers, if any; the trace context when the publisher traces; casebridge.replay.* "
                "only on a replayed dead letter",
            ),
        ),
        "RetriedTransfer": message(
            "RetriedTransfer",
            "Transfer waiting for a retry",
            "A TransferMessage byte for byte, waiting in a delayed retry tier for its target.",
            "TransferMessage",
            _TRANSFER_KEY,
            headers=_header_schema(
                {**RETRY_HEADERS, **REPLAY_HEADERS, **TRACE_HEADERS}, "the original headers, then casebridge.retry.*"
            ),
        ),
        "TransferEvent": message(
            "TransferEvent",
            "Transfer event",
            "One step of one transfer; no personal data (ids, council, pathway, rule ids, outcomes).",
            "TransferEvent",
            "the transfer id",
            headers=_header_schema(EVENT_HEADERS),
        ),
        "DeadLetter": message(
            "DeadLetter",
            "Dead letter",
            "The original record byte for byte (see DeadLetterValue: what it is depends on the stage), with why "
            "it could not be handled in casebridge.dlq.* headers.",
            "DeadLetterValue",
            "the original record's key",
            headers=_header_schema(
                {**DLQ_HEADERS, **DLQ_BY_REFERENCE_HEADERS, **PUBLISHER_HEADERS, **SPRING_DLT_HEADERS}, dead_letter_note
            ),
        ),
        "ParkedDeadLetter": message(
            "ParkedDeadLetter",
            "Parked dead letter",
            "A replayed dead letter that failed again: as a dead letter, with the replay's casebridge.replay.* "
            "headers among the original ones.",
            "DeadLetterValue",
            "the original record's key",
            headers=_header_schema(
                {
                    **REPLAY_HEADERS,
                    **DLQ_HEADERS,
                    **DLQ_BY_REFERENCE_HEADERS,
                    **PUBLISHER_HEADERS,
                    **SPRING_DLT_HEADERS,
                },
                "the replayed record's headers (casebridge.replay.* among them), then casebridge.dlq.* and "
                "kafka_dlt-*; a remapped source record that still cannot be mapped: its new map-stage headers",
            ),
        ),
        "RemapRecord": message(
            "RemapRecord",
            "Replayed map-stage dead letter",
            "A source record a feed publisher could not map (holds personal data, as a transfer does), replayed by "
            "casebridge replay for that publisher to map again: the dead letter's value byte for byte.",
            "DeadLetterValue",
            "the dead letter's key",
            headers=_header_schema(
                {**REPLAY_HEADERS, **PUBLISHER_HEADERS, **DLQ_HEADERS},
                "the dead letter's casebridge.dlq.* (casebridge.dlq.publisher names who maps it), then "
                "casebridge.replay.*",
            ),
        ),
        "AuditRecord": message(
            "AuditRecord", "Replay audit record", "One replayed dead letter.", "AuditRecord", "the dead letter id"
        ),
        "AllocationAudit": message(
            "AllocationAudit",
            "Allocation audit record",
            "One allocation recorded by an operator (BA-9, casebridge allocate); no worker's name.",
            "AllocationAudit",
            f"{ALLOCATION_AUDIT_PREFIX}<transfer id>",
        ),
        "IntakeAudit": message(
            "IntakeAudit",
            "Intake audit record",
            "One post to the intake, accepted or refused: the caller's name, the time, the transfer id, the outcome "
            "(and the fields a refused transfer broke, never their values); no personal data.",
            "IntakeAudit",
            f"{INTAKE_AUDIT_PREFIX}<transfer id> ({INTAKE_AUDIT_PREFIX}- for none)",
        ),
        "RetryState": message(
            "RetryState",
            "Retry state",
            "Which children wait in a retry tier, so a restarted router keeps each child's order." + tombstone,
            "RetryState",
            "the child key, as the transfer's",
        ),
        "FeedCursor": message(
            "FeedCursor",
            "Feed cursor",
            "A source feed's cursor (a publisher's, a reporter's), so the process taking the feeds over resumes there.",
            "FeedCursor",
            "the feed's name, <system>-<feed> (e.g. lcs-stepdowns)",
        ),
        "CompletedTransfers": message(
            "CompletedTransfers",
            "Completed transfers",
            "Each child's completed transfers, so a copy of one is written off as duplicate, not run again.",
            "CompletedTransfers",
            "the child key, as the transfer's",
        ),
        "ChildHistory": message(
            "ChildHistory",
            "Child step-down history",
            "A child's recent step-downs, for routing a step-up back (LU-9, NS-10)." + tombstone,
            "ChildHistory",
            "one of the child's identifiers, system:id (one record per identifier)",
        ),
        "PendingNotice": message(
            "PendingNotice",
            "Pending notice",
            "A notice due on allocation (LU-7); tombstoned once sent." + tombstone,
            "PendingNotice",
            "the transfer id",
        ),
        "AllocationMark": message(
            "AllocationMark",
            "Allocation mark",
            "The transfer was allocated: its pending notices are due." + tombstone,
            "AllocationMark",
            "allocated:<transfer id>",
        ),
        "SignalMark": message(
            "SignalMark",
            "Signal mark",
            "A signal (an allocation, the front door's decision) read before its pending closure; tombstoned once "
            "acted on." + tombstone,
            "SignalMark",
            "signal:<transfer id>",
        ),
        "PendingClosure": message(
            "PendingClosure",
            "Pending closure",
            "A source record kept open, to close later (LU-4, SW22-10, NS-12, BA-9); tombstoned once closed. Ids, "
            "times and hashed child keys, no child data." + tombstone,
            "PendingClosure",
            "the transfer id",
        ),
    }

    topics = Topics("{prefix}")
    topic_settings = TopicSettings()
    created = configs(topics, 1, topic_settings, 1)
    prefix = {
        "prefix": {"description": "the deployment's topic prefix (CASEBRIDGE_TOPIC_PREFIX)", "default": "casebridge"}
    }

    def channel(address: str, created_as: str, description: str, *names: str, **params: Any) -> dict[str, Any]:
        return {
            "address": address,
            "description": description,
            "parameters": {**prefix, **params},
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
            "bindings": {"kafka": _binding(created[created_as], topic_settings)},
        }

    tiers = RetrySettings().tiers
    channels = {
        "transfers": channel(
            topics.transfers, topics.transfers, "Transfer requests from source connectors.", "TransferMessage"
        ),
        "events": channel(topics.events, topics.events, "Every step of every transfer.", "TransferEvent"),
        "retry": channel(
            "{prefix}.retry.{tier}",
            topics.retry(0),
            f"Delayed retry tiers ({', '.join(f'{t:g} s' for t in tiers)} by default) for transfers whose target "
            "was unavailable; after the last, the dead-letter topic.",
            "RetriedTransfer",
            tier={"description": "tier number, 0 first", "enum": [str(i) for i in range(len(tiers))]},
        ),
        "deadLetters": channel(
            topics.dead_letter, topics.dead_letter, "Messages that could not be handled.", "DeadLetter"
        ),
        "parking": channel(topics.parking, topics.parking, "Replayed messages that failed again.", "ParkedDeadLetter"),
        "remap": channel(
            topics.remap,
            topics.remap,
            "Replayed map-stage dead letters, for the feed publisher each names to map again.",
            "RemapRecord",
        ),
        "audit": channel(
            topics.audit,
            topics.audit,
            "Operators' actions: replays and recorded allocations.",
            "AuditRecord",
            "AllocationAudit",
        ),
        "intakeAudit": channel(
            topics.intake_audit,
            topics.intake_audit,
            "Every post to the intake, apart from the operators' audit topic: the casebridge run principal writes it "
            "(and may not write the audit topic).",
            "IntakeAudit",
        ),
        "retryState": channel(
            topics.retry_state, topics.retry_state, "Compacted: children waiting in a retry tier.", "RetryState"
        ),
        "lifecycle": channel(
            topics.lifecycle,
            topics.lifecycle,
            "Compacted: each child's completed transfers (a copy of one is a duplicate).",
            "CompletedTransfers",
        ),
        "feedCursors": channel(
            topics.feed_cursors,
            topics.feed_cursors,
            "Compacted, one partition: each source feed's cursor; the process whose <group_id>-feeds group holds "
            "partition 0 runs the deployment's feeds.",
            "FeedCursor",
        ),
        "childHistory": channel(
            topics.history, topics.history, "Compacted: each child's step-downs of the last year.", "ChildHistory"
        ),
        "pendingNotices": channel(
            topics.pending_notices,
            topics.pending_notices,
            "Compacted: notices due on allocation, and allocation marks.",
            "PendingNotice",
            "AllocationMark",
        ),
        "pendingClosures": channel(
            topics.pending_closures,
            topics.pending_closures,
            "Compacted: source records to close later, and signal marks.",
            "PendingClosure",
            "SignalMark",
        ),
    }

    channels["feedCursors"]["bindings"]["kafka"]["partitions"] = 1  # created so (router/topics.py)

    def operation(action: str, ch: str, summary: str, group: str | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{ch}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{ch}/messages/{n}"} for n in channels[ch]["messages"]],
        }
        if group is not None:
            op["bindings"] = {
                "kafka": {
                    "groupId": {"type": "string", "description": group},
                    "bindingVersion": "0.5.0",
                }
            }
        return op

    router_group = "the router's group: the deployment's group_id, by default <prefix>-router"
    operations = {
        "publishTransfer": operation("send", "transfers", "A source connector (e.g. the LCS publisher) publishes."),
        "replayTransfer": operation(
            "send", "transfers", "casebridge replay republishes a dead letter, with casebridge.replay.*."
        ),
        "routeTransfer": operation("receive", "transfers", "The router consumes, checks and delivers.", router_group),
        "emitEvent": operation("send", "events", "The router and connectors record each step."),
        "trackEvents": operation("receive", "events", "The monitor's flow tracker reads every step (no group)."),
        "retryLater": operation("send", "retry", "The router parks a transfer in a delayed retry tier."),
        "retryDue": operation("receive", "retry", "The router takes a retried transfer again once due.", router_group),
        "deadLetter": operation(
            "send",
            "deadLetters",
            "The router, the closure scheduler and source connectors dead-letter what they cannot handle.",
        ),
        "replayDeadLetters": operation(
            "receive", "deadLetters", "An operator lists and replays dead letters (no group)."
        ),
        "park": operation("send", "parking", "A replayed message that failed again."),
        "replayToPublisher": operation(
            "send", "remap", "casebridge replay sends a map-stage dead letter to its publisher (casebridge.replay.*)."
        ),
        "remapSourceRecord": operation(
            "receive",
            "remap",
            "Each feed publisher of casebridge run maps its own again: the transfer to the transfers topic (with "
            "casebridge.replay.*), or, still unmappable, the parking topic; it writes the replayed event.",
            "<prefix>-remap-<system>-<feed>, one per feed publisher",
        ),
        "audit": operation("send", "audit", "Each replay and each recorded allocation is audited."),
        "auditIntakePost": operation(
            "send", "intakeAudit", "The intake audits each post (an accepted one before it is answered)."
        ),
        "keepRetryState": operation("send", "retryState", "The router records which children wait in a tier."),
        "rememberCompleted": operation("send", "lifecycle", "The router records each completed transfer."),
        "saveFeedCursor": operation("send", "feedCursors", "The feeds' owner saves a cursor once a page is acked."),
        "ownFeeds": operation(
            "receive",
            "feedCursors",
            "Each casebridge run process is a member; the one given partition 0 reads the cursors and runs the feeds.",
            "<group_id>-feeds",
        ),
        "rememberStepDown": operation("send", "childHistory", "The router records each completed step-down."),
        "holdNotice": operation("send", "pendingNotices", "The router records a notice due on allocation."),
        "sendNotices": operation(
            "receive", "pendingNotices", "The lifecycle loop sends due notices.", "<group_id>-lifecycle"
        ),
        "holdClosure": operation("send", "pendingClosures", "The router records a source record to close later."),
        "closeLater": operation(
            "receive", "pendingClosures", "The lifecycle loop closes due records.", "<group_id>-lifecycle"
        ),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "casebridge",
            "version": version("casebridge"),
            "description": "Step-up / step-down handovers between children's case systems over Apache Kafka. "
            f"Transfer message schema {SCHEMA_VERSION} (docs/contract-compatibility.md).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "casebridge kafka start: plaintext, local development only (set "
                "CASEBRIDGE_BOOTSTRAP_SERVERS for others)",
            },
            "council": {
                "host": "{bootstrap}",
                "protocol": "kafka-secure",
                "description": "a council's cluster, as casebridge kafka start --secure makes one: TLS (the [kafka] "
                "table's security_protocol SASL_SSL or SSL, ca_file), and one of these security schemes",
                "variables": {"bootstrap": {"description": "the brokers' host:port (bootstrap_servers)"}},
                "security": [{"$ref": f"#/components/securitySchemes/{name}"} for name in security_schemes()],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": _asyncapi_discriminators(dict(sorted(schemas.items()))),
            "securitySchemes": security_schemes(),
        },
    }


#: AsyncAPI 3.0's security scheme type for each SASL mechanism casebridge speaks (connectors/kafka.py)
_SASL_SCHEMES = {"SCRAM-SHA-512": "scramSha512", "SCRAM-SHA-256": "scramSha256", "PLAIN": "plain"}


def security_schemes() -> dict[str, Any]:
    """How a client authenticates to a council's cluster: each SASL mechanism of the ``[kafka]`` table, and a
    client certificate (mutual TLS), named by the AsyncAPI type (any one of them is enough)."""
    mechanisms = typing.get_args(SaslMechanism)
    if set(mechanisms) != set(_SASL_SCHEMES):
        raise RuntimeError(f"a SASL mechanism without an AsyncAPI security scheme: {sorted(mechanisms)}")
    out: dict[str, Any] = {
        _SASL_SCHEMES[m]: {
            "type": _SASL_SCHEMES[m],
            "description": f'SASL {m} over TLS: security_protocol = "SASL_SSL", sasl_mechanism = "{m}", '
            "username and the password by reference ({ file = ... } or { env = ... })",
        }
        for m in mechanisms
    }
    out["X509"] = {
        "type": "X509",
        "description": "a client certificate (mutual TLS): cert_file and key_file (PEM), with security_protocol "
        '"SSL" alone or beside SASL over TLS',
    }
    return out


def render() -> str:
    return json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    ASYNCAPI_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {ASYNCAPI_FILE}")
    return 0
