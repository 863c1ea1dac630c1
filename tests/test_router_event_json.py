"""The hand-built JSON of the five hot events is, byte for byte, what the pydantic models give."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

import contracts
from bench._workload import Workload
from contracts import CaseSystem, Direction, ServiceLevel, TransferMessage
from router._event_json import encode_event, event_type_of, transfer_head, utc_datetime, utc_text
from router.flow import _Emitter, event_id

_KINDS = [
    contracts.TransferRequested,
    contracts.TransferValidated,
    contracts.TransferDelivered,
    contracts.TransferAcknowledged,
    contracts.SourceClosed,
]
_REFS = ["MEM-bench-1", "a", "ehm:123.x_y-z", "A" * 128, "0"]
_TEXTS = [None, "lead", "Family Wellbeing North", "team-7 (East) / duty", "x", "~!#$%&'()*+,-./:;<=>?@[]^_`{|}"]
_RULES = [[], ["NS-2"], ["SW22-7", "LU-9", "G1"], ["BA-13", "NS-10", "SW26-3"]]
#: a transfer's requested_at: UTC, BST, other whole-minute offsets either side, or none (an old event's shape)
_ZONES = [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5)), timezone(timedelta(minutes=-30))]


def _requested_at(rng: random.Random) -> datetime | None:
    if rng.random() < 0.1:
        return None
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(-(10**8), 10**8))
    at = at.replace(microsecond=rng.choice([0, 1, rng.randint(1, 999_999)]))
    return at.astimezone(rng.choice(_ZONES))


def _transfers(count: int) -> list[TransferMessage]:
    workload = Workload()
    return [TransferMessage.model_validate_json(workload.record(seq).value) for seq in range(count)]


def _fields(kind: type[Any], rng: random.Random) -> dict[str, Any]:
    systems = list(CaseSystem)
    if kind is contracts.TransferRequested:
        return {
            "direction": rng.choice(list(Direction)),
            "from_level": rng.choice(list(ServiceLevel)),
            "to_level": rng.choice(list(ServiceLevel)),
            "from_system": rng.choice(systems),
            "to_system": rng.choice(systems),
            "requested_at": _requested_at(rng),
        }
    if kind is contracts.TransferDelivered:
        return {
            "target_system": rng.choice(systems),
            "target_reference": rng.choice(_REFS),
            "assigned_role": rng.choice(_TEXTS),
            "rule_ids": rng.choice(_RULES),
            "team": rng.choice(_TEXTS),
            "urgent": rng.random() < 0.5,
        }
    if kind is contracts.TransferAcknowledged:
        return {"target_system": rng.choice(systems), "target_reference": rng.choice(_REFS)}
    if kind is contracts.SourceClosed:
        return {"source_system": rng.choice(systems), "source_reference": rng.choice(_REFS)}
    return {}


def _model_json(kind: type[Any], eid: str, transfer: TransferMessage, at: datetime, fields: dict[str, Any]) -> bytes:
    event = kind(
        event_id=eid,
        transfer_id=transfer.transfer_id,
        correlation_id=transfer.correlation_id,
        council=transfer.council,
        occurred_at=at,
        **fields,
    )
    return event.model_dump_json().encode()


def test_perf_event_json_equals_model_dump_json_for_many_inputs() -> None:
    """Over 60 transfers x 5 event kinds x random fields and times (microseconds zero or not): the same bytes."""
    utc_text(0)  # the cached second is then another one than the first asked for
    rng = random.Random(3)
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
    checked = 0
    for transfer in _transfers(60):
        head = transfer_head(transfer)
        assert head is not None
        for kind in _KINDS:
            for _ in range(8):
                micros = start + rng.randint(0, 10**8) * 1_000_000 + rng.choice([0, 1, rng.randint(1, 999_999)])
                fields = _fields(kind, rng)
                eid = event_id(transfer.message_id, kind.__name__)
                encoded = encode_event(kind, eid, head, utc_text(micros), fields)
                at = utc_datetime(micros)
                assert micros == (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
                assert encoded == _model_json(kind, eid, transfer, at, fields)
                assert event_type_of(kind) == kind.model_fields["event_type"].default
                checked += 1
    assert 60 * 5 * 8 == checked


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (contracts.TransferDelivered, {"target_reference": " MEM-1 "}),  # the model strips it
        (contracts.TransferDelivered, {"team": 'Team "North"'}),  # needs escaping
        (contracts.TransferDelivered, {"team": "Équipe Nord"}),  # not ASCII
        (contracts.TransferDelivered, {"team": "North\n"}),
        (contracts.TransferDelivered, {"assigned_role": " lead"}),
        (contracts.TransferDelivered, {"rule_ids": ["NS-٣"]}),  # a non-ASCII digit: the model's pattern decides
        (contracts.TransferDelivered, {"target_system": "ehm"}),  # a string, not the enum member
        (contracts.TransferAcknowledged, {"target_reference": "x" * 129}),
        (contracts.SourceClosed, {"source_reference": "LCS 1"}),
        (contracts.TransferRequested, {"requested_at": datetime(2026, 12, 21, 10, 15)}),  # naive: the model refuses
        (contracts.TransferRequested, {"requested_at": "2026-12-21T10:15:00Z"}),  # a string: the model parses it
        # an offset of seconds: pydantic writes its hours and minutes only, the model decides
        (contracts.TransferRequested, {"requested_at": datetime(2026, 12, 21, tzinfo=timezone(timedelta(seconds=30)))}),
    ],
)
def test_perf_event_json_leaves_anything_not_plain_to_the_model(kind: type[Any], fields: dict[str, Any]) -> None:
    """A value that needs escaping, stripping or the model's own check gets no template: None, the model decides."""
    [transfer] = _transfers(1)
    head = transfer_head(transfer)
    assert head is not None
    base = _fields(kind, random.Random(1))
    base.update(fields)
    assert encode_event(kind, "e-1", head, utc_text(1_790_000_000_000_000), base) is None


def test_perf_event_json_only_for_templated_kinds_and_plain_transfers() -> None:
    """An event kind without a template, or a transfer whose ids would need the model's check: None."""
    [transfer] = _transfers(1)
    head = transfer_head(transfer)
    assert head is not None
    alert = {"severity": "critical", "summary": "x"}
    assert encode_event(contracts.AlertRaised, "e-1", head, utc_text(1_790_000_000_000_000), alert) is None
    assert transfer_head(transfer.model_copy(update={"correlation_id": "has space"})) is None


class _Sink:
    def __init__(self) -> None:
        self.encoded: list[tuple[str, str, bytes]] = []
        self.models: list[Any] = []

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        self.encoded.append((transfer_id, event_type, value))

    async def emit(self, event: Any) -> None:
        self.models.append(event)


async def test_perf_emitter_sends_templates_and_builds_models_for_the_rest() -> None:
    """The flow's emitter: a templated event goes as bytes; a value the model refuses still raises as before."""
    [transfer] = _transfers(1)
    sink = _Sink()
    emit = _Emitter(transfer, sink)  # type: ignore[arg-type]
    p = transfer.pathway
    await emit(
        contracts.TransferRequested,
        direction=p.direction,
        from_level=p.from_level,
        to_level=p.to_level,
        from_system=p.from_system,
        to_system=p.to_system,
        requested_at=transfer.requested_at,  # a parsed transfer's time: the template writes it, no model
    )
    [(_, _, value)] = sink.encoded
    requested = contracts.parse_event(value)
    assert isinstance(requested, contracts.TransferRequested)
    assert transfer.requested_at == requested.requested_at
    sink.encoded.clear()
    await emit(contracts.TransferValidated)
    await emit(contracts.SourceClosed, source_system=CaseSystem.LCS, source_reference=" LCS-1 ")
    [(tid, event_type, value)] = sink.encoded
    assert (transfer.transfer_id, "validated") == (tid, event_type)
    validated = contracts.parse_event(value)
    assert ("validated", event_id(transfer.message_id, "TransferValidated")) == (
        validated.event_type,
        validated.event_id,
    )
    [closed] = sink.models
    assert "LCS-1" == closed.source_reference  # the model stripped it, as before
    assert event_id(transfer.message_id, "SourceClosed") == closed.event_id
    with pytest.raises(ValidationError):
        await emit(contracts.SourceClosed, source_system=CaseSystem.LCS, source_reference="LCS 1")


def test_perf_event_json_every_template_matches_its_model_fields() -> None:
    """All five hot events are built from templates: a contract change that a template does not follow
    (a field added, removed or moved) turns that template off, and this test names it."""
    from router import _event_json

    assert set(_event_json._TEMPLATES) == set(_KINDS)
