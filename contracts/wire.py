"""casebridge's Kafka wire vocabulary, stated once: header names and their meaning, record keys, event ids.

Every producer and reader in ``router/``, ``connectors/``, ``monitor/`` and ``casebridge/`` takes these names from
here (``tests/test_wire.py`` fails on a header name spelled anywhere else), and the AsyncAPI document
(``monitor/_asyncapi.py``) takes each header's description from ``MEANING``, so the document and the code cannot
drift apart. A header's value is UTF-8 text unless its meaning says it is a big-endian integer.

Nothing here may change without a migration: these names, keys and ids are what is already on the topics (a
changed event-id namespace would give a re-run's events new ids; a changed key would move a child's transfers to
another partition, out of order with the ones before).
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._common import CaseSystem

if TYPE_CHECKING:
    from ._events import TransferEvent
    from ._transfer import TransferMessage

#: every header name defined here -> its one-line meaning (the AsyncAPI document's header descriptions)
MEANING: dict[str, str] = {}


def _header(name: str, meaning: str) -> str:
    MEANING[name] = meaning
    return name


def describe(names: Iterable[str]) -> dict[str, str]:
    """The headers ``names``, in order, each with its meaning."""
    return {name: MEANING[name] for name in names}


# -- events (<prefix>.events) ---------------------------------------------------------------------------------

EVENT_TYPE = _header("event_type", "the event's type, as its payload's event_type")
EVENT_HEADERS = (EVENT_TYPE,)

_EVENT_HEADER_LISTS: dict[str, list[tuple[str, bytes]]] = {}


def event_headers(event_type: str) -> list[tuple[str, bytes]]:
    """An event record's headers: its type. One list per event type, shared: never modify it."""
    headers = _EVENT_HEADER_LISTS.get(event_type)
    if headers is None:
        headers = _EVENT_HEADER_LISTS[event_type] = [(EVENT_TYPE, event_type.encode())]
    return headers


# -- trace context (W3C, written by OpenTelemetry's propagator on a published transfer) -------------------------

TRACEPARENT = _header("traceparent", "W3C trace context: the publisher's trace, which the router continues")
TRACESTATE = _header("tracestate", "W3C trace state, beside traceparent (when the tracer has any)")
TRACE_HEADERS = (TRACEPARENT, TRACESTATE)

# -- dead letters (<prefix>.dlq, <prefix>.dlq.parking) ----------------------------------------------------------

DLQ_PREFIX = "casebridge.dlq."
DLQ_ORIGINAL_TOPIC = _header(
    DLQ_PREFIX + "original.topic", "topic the record was read from (for a retried message: where it first entered)"
)
DLQ_ORIGINAL_PARTITION = _header(DLQ_PREFIX + "original.partition", "its partition")
DLQ_ORIGINAL_OFFSET = _header(DLQ_PREFIX + "original.offset", "its offset")
DLQ_ORIGINAL_TIMESTAMP = _header(DLQ_PREFIX + "original.timestamp", "its timestamp (ms since the epoch)")
DLQ_CONSUMER_GROUP = _header(
    DLQ_PREFIX + "consumer.group", "the consumer group that read it (<group>-lifecycle for a close-later dead letter)"
)
DLQ_STAGE = _header(DLQ_PREFIX + "stage", "map, validate, protocol, deliver, internal or close-later")
DLQ_ERROR_CLASS = _header(DLQ_PREFIX + "error.class", "the error class, e.g. ProtocolRuleNotMet")
DLQ_ERROR_MESSAGE = _header(DLQ_PREFIX + "error.message", "why (field and rule names, codes; no personal data)")
DLQ_ATTEMPTS = _header(DLQ_PREFIX + "attempts", "delivery attempts made")
DLQ_FIRST_FAILURE = _header(DLQ_PREFIX + "first.failure", "ISO 8601")
DLQ_LAST_FAILURE = _header(DLQ_PREFIX + "last.failure", "ISO 8601")
DLQ_RULE_IDS = _header(DLQ_PREFIX + "rule.ids", "comma-separated protocol rule ids")
DLQ_TRANSFER_ID = _header(DLQ_PREFIX + "transfer.id", "the transfer id, when the message had a readable one")
DLQ_COUNCIL = _header(DLQ_PREFIX + "council", "the council")
DLQ_VERSION = _header(DLQ_PREFIX + "version", "the casebridge version that dead-lettered it")
#: what the router's dead letter carries after the original record's headers, in this order
DLQ_HEADERS = (
    DLQ_ORIGINAL_TOPIC,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_TIMESTAMP,
    DLQ_CONSUMER_GROUP,
    DLQ_STAGE,
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_ATTEMPTS,
    DLQ_FIRST_FAILURE,
    DLQ_LAST_FAILURE,
    DLQ_RULE_IDS,
    DLQ_TRANSFER_ID,
    DLQ_COUNCIL,
    DLQ_VERSION,
)

#: added to a record too big to dead-letter whole (its value is then absent)
DLQ_BY_REFERENCE = _header(
    DLQ_PREFIX + "by.reference", "true: the value is not here; the record is at original.topic/partition/offset"
)
DLQ_ORIGINAL_SIZE = _header(
    DLQ_PREFIX + "original.size", "the size in bytes it would have had (key, value and headers)"
)
DLQ_BY_REFERENCE_HEADERS = (DLQ_BY_REFERENCE, DLQ_ORIGINAL_SIZE)

#: a map-stage dead letter names the feed publisher that made it and the feed position it was read at
DLQ_PUBLISHER = _header(
    DLQ_PREFIX + "publisher",
    "map stage: the feed publisher that could not map the record, <feed>/<council> (e.g. "
    "lcs-changes/north-somerset); casebridge replay sends it to that publisher on the remap topic",
)
DLQ_FEED_POSITION = _header(
    DLQ_PREFIX + "feed.position",
    "map stage: the feed position it was read at (the remapped transfer's message id uses it)",
)
PUBLISHER_HEADERS = (DLQ_PUBLISHER, DLQ_FEED_POSITION)


def dlq_field(name: str) -> str:
    """A dead-letter header's name within its context (``router.deadletters.DeadLetter.context``): without the
    ``casebridge.dlq.`` prefix, e.g. ``stage``."""
    return name.removeprefix(DLQ_PREFIX)


#: Spring Kafka's names for the same facts (``KafkaHeaders.DLT_*``), on every dead letter
DLT_PREFIX = "kafka_dlt-"
DLT_ORIGINAL_TOPIC = _header(
    DLT_PREFIX + "original-topic",
    "UTF-8: casebridge.dlq.original.topic, the topic a redrive writes the dead letter back to; for a map-stage "
    "dead letter (a source record) the remap topic, <prefix>.remap, where its publisher maps it again (a redrive "
    "keeps casebridge's headers: casebridge.dlq.publisher names the publisher)",
)
DLT_ORIGINAL_PARTITION = _header(
    DLT_PREFIX + "original-partition",
    "a 4-byte big-endian integer (as Spring's DeadLetterPublishingRecoverer writes it): "
    "casebridge.dlq.original.partition; 0 for a map-stage dead letter",
)
DLT_ORIGINAL_OFFSET = _header(
    DLT_PREFIX + "original-offset",
    "an 8-byte big-endian integer: casebridge.dlq.original.offset; for a map-stage dead letter the feed position",
)
DLT_EXCEPTION_FQCN = _header(
    DLT_PREFIX + "exception-fqcn", "UTF-8: casebridge.dlq.error.class (casebridge's error class, not a Java class)"
)
DLT_EXCEPTION_MESSAGE = _header(DLT_PREFIX + "exception-message", "UTF-8: casebridge.dlq.error.message")
SPRING_DLT_HEADERS = (
    DLT_ORIGINAL_TOPIC,
    DLT_ORIGINAL_PARTITION,
    DLT_ORIGINAL_OFFSET,
    DLT_EXCEPTION_FQCN,
    DLT_EXCEPTION_MESSAGE,
)


def spring_dlt_headers(
    topic: str, partition: int, offset: int, error_class: str, message: str
) -> list[tuple[str, bytes]]:
    """The dead letter's origin and reason under Spring Kafka's names, encoded as its
    ``DeadLetterPublishingRecoverer`` writes them: the topic, class and message UTF-8, the partition a 4-byte and
    the offset an 8-byte big-endian integer (so a Spring ``@Header Integer``/``Long`` reads them). The exception
    "class" is casebridge's error class (``ContractViolation``, ``TargetRefused``, ...), the message its reason
    (no personal data: the same text as ``casebridge.dlq.error.message``)."""
    return [
        (DLT_ORIGINAL_TOPIC, topic.encode()),
        (DLT_ORIGINAL_PARTITION, struct.pack(">i", partition)),
        (DLT_ORIGINAL_OFFSET, struct.pack(">q", offset)),
        (DLT_EXCEPTION_FQCN, error_class.encode()),
        (DLT_EXCEPTION_MESSAGE, message.encode()),
    ]


#: the subset a source connector's map-stage dead letter carries (``connectors._feed``)
MAP_STAGE_HEADERS = (
    DLQ_STAGE,
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_RULE_IDS,
    DLQ_TRANSFER_ID,
    DLQ_COUNCIL,
    DLQ_LAST_FAILURE,
    *PUBLISHER_HEADERS,
    *SPRING_DLT_HEADERS,
)
#: the reason of a map-stage dead letter, written afresh when a remapped record fails again
MAP_STAGE_REASON_HEADERS = (DLQ_ERROR_CLASS, DLQ_ERROR_MESSAGE, DLQ_LAST_FAILURE)

# -- delayed retry tiers (<prefix>.retry.<tier>): stripped again before a record is dead-lettered or delivered --

RETRY_PREFIX = "casebridge.retry."
RETRY_ID = _header(RETRY_PREFIX + "id", "the retry's id (one per message and tier entry)")
RETRY_TIER = _header(RETRY_PREFIX + "tier", "the tier it waits in, 0 first")
RETRY_DUE = _header(RETRY_PREFIX + "due", "ISO 8601: not handled before this time")
RETRY_ATTEMPTS = _header(RETRY_PREFIX + "attempts", "delivery attempts made so far")
RETRY_FIRST_FAILURE = _header(RETRY_PREFIX + "first.failure", "ISO 8601: the first failure")
RETRY_ORIGINAL_TOPIC = _header(RETRY_PREFIX + "original.topic", "the topic it first entered")
RETRY_ORIGINAL_PARTITION = _header(RETRY_PREFIX + "original.partition", "its partition there")
RETRY_ORIGINAL_OFFSET = _header(RETRY_PREFIX + "original.offset", "its offset there")
RETRY_HEADERS = (
    RETRY_ID,
    RETRY_TIER,
    RETRY_DUE,
    RETRY_ATTEMPTS,
    RETRY_FIRST_FAILURE,
    RETRY_ORIGINAL_TOPIC,
    RETRY_ORIGINAL_PARTITION,
    RETRY_ORIGINAL_OFFSET,
)

# -- replays (casebridge replay): on a dead letter an operator replayed to its original topic -------------------

REPLAY_PREFIX = "casebridge.replay."
REPLAY_OF = _header(
    REPLAY_PREFIX + "of", "the dead letter's id (<partition>:<offset> on the dead-letter topic) this record replays"
)
REPLAY_OPERATOR = _header(REPLAY_PREFIX + "operator", "who replayed it (casebridge replay --operator)")
REPLAY_HEADERS = (REPLAY_OF, REPLAY_OPERATOR)

#: the prefixes of casebridge's own header families
PREFIXES = (DLQ_PREFIX, DLT_PREFIX, RETRY_PREFIX, REPLAY_PREFIX)

# -- record keys ----------------------------------------------------------------------------------------------


def child_key(system: CaseSystem, record_id: object) -> str:
    """A child's key, ``<system>:<id>`` (e.g. ``lcs:LCS-12``): a transfer's record key (its first identifier's),
    a retry state's and a lifecycle entry's; each of the child's identifiers is one in the step-down history."""
    return f"{system.value}:{record_id}"


def transfer_key(transfer: TransferMessage) -> bytes:
    """A transfer's record key on the transfers and retry topics: its child's (``child.identifiers[0]``), so one
    child's transfers keep their order on one partition."""
    return transfer.child_key.encode()


def event_key(event: TransferEvent) -> bytes:
    """An event's record key: its transfer id, so a transfer's events keep their order (an event without one,
    e.g. an alert about the deployment: its own event id)."""
    return (event.transfer_id or event.event_id).encode()


#: an allocation mark's key on the pending-notices topic: this + the transfer id (a pending notice's: the transfer id)
ALLOCATION_MARK_PREFIX = "allocated:"
#: a signal mark's key on the pending-closures topic: this + the transfer id (a pending closure's: the transfer id)
SIGNAL_MARK_PREFIX = "signal:"
#: the audit topic's keys: a replay's is its dead letter's id (``<partition>:<offset>``); the others' are these + ...
ALLOCATION_AUDIT_PREFIX = "allocation/"  # ... the transfer id: an allocation an operator recorded
MILESTONE_AUDIT_PREFIX = "milestone/"  # ... ``<transfer id>/<milestone>``: a milestone recorded on the monitor
#: the intake audit topic's (``<prefix>.intake-audit``) keys, apart from the audit topic: this + the transfer id
#: (``-`` for none): a post to the intake
INTAKE_AUDIT_PREFIX = "intake/"
KEY_PREFIXES = (
    ALLOCATION_MARK_PREFIX,
    SIGNAL_MARK_PREFIX,
    ALLOCATION_AUDIT_PREFIX,
    MILESTONE_AUDIT_PREFIX,
    INTAKE_AUDIT_PREFIX,
)


# -- event ids (deterministic: a re-run yields the same ids, so a reader can drop a copy) -----------------------

#: the namespace of the ids of the events casebridge makes (``event_id``)
EVENT_NS = uuid.UUID("6f1c8f64-3b7e-4d1e-9a55-0c2b8c1d7e10")
#: the ids of the events EHM's feeds report (who was allocated): ``reported_event_id(EHM_EVENT_NS, ...)``
EHM_EVENT_NS = uuid.UUID("0b8e8a7e-2f0c-4a43-8d7c-4f1f9a3e5b21")
#: the ids of the events LCS's feeds report (the Front Door's decisions)
LCS_EVENT_NS = uuid.UUID("5d0f3c2a-8b1e-4f6a-9c47-2e6b1d9a0f13")
#: not a Kafka id: a team mailbox's e-mail ``Message-ID`` per transfer (``connectors.mailbox``)
MAILBOX_MESSAGE_NS = uuid.UUID("6d1f3c52-8a4e-4f0b-9b7a-2e5c1d9a7f30")

_EVENT_NS_SHA1 = hashlib.sha1(EVENT_NS.bytes)  # uuid5's hash with the namespace already fed in


def event_id(base: str, kind: str) -> str:
    """An event's id: ``str(uuid.uuid5(EVENT_NS, f"{base}/{kind}"))``, without building a UUID object."""
    digest = _EVENT_NS_SHA1.copy()
    digest.update(f"{base}/{kind}".encode())
    return uuid5_text(digest)


def event_id_hasher(base: str) -> Any:
    """The SHA-1 state with ``EVENT_NS`` and ``f"{base}/"`` fed in: ``uuid5_text`` of a copy fed ``kind`` is
    ``event_id(base, kind)``, for many events of one base at the cost of hashing only ``kind`` each."""
    digest = _EVENT_NS_SHA1.copy()
    digest.update(f"{base}/".encode())
    return digest


def uuid5_text(digest: Any) -> str:
    """The text of the version-5 UUID whose SHA-1 ``digest`` (namespace and name fed) is given."""
    h = digest.hexdigest()
    # the version nibble becomes 5; the variant's top two bits become 10 (RFC 4122): 8, 9, a or b
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def reported_event_id(namespace: uuid.UUID, feed: str, seq: object) -> str:
    """The id of an event a source system's feed reports: ``uuid5(namespace, f"{feed}/{seq}")`` (e.g. EHM's
    ``ehm-allocation/<seq>``), the same each time the feed is read again."""
    return str(uuid.uuid5(namespace, f"{feed}/{seq}"))
