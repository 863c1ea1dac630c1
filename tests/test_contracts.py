"""The canonical transfer contract: strict, named errors, examples for every seed protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts import (
    TransferDelivered,
    TransferMessage,
    field_errors,
    parse_event,
)
from contracts.schema import SCHEMA_DIR, render
from tests.support import EXAMPLES, example

SEED_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.json"))


def _errors(doc: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        TransferMessage.model_validate(doc)
    return [(e.field, e.rule) for e in field_errors(caught.value)]


def test_there_is_an_example_for_each_of_the_five_seed_protocols() -> None:
    """One synthetic example per council protocol of PROTOCOLS.md."""
    councils = {TransferMessage.model_validate_json((EXAMPLES / n).read_text()).council.value for n in SEED_EXAMPLES}
    assert {"swindon", "swindon-2022", "luton", "barnsley", "north-somerset"} == councils


@pytest.mark.parametrize("name", SEED_EXAMPLES)
def test_seed_example_validates(name: str) -> None:
    """Each committed example message is a valid transfer message."""
    message = TransferMessage.model_validate_json((EXAMPLES / name).read_text())
    assert 1 == message.schema_version


def test_unknown_field_is_refused_and_named() -> None:
    """Strict contract: an unknown field is an error naming that field."""
    assert [("surprise", "extra_forbidden")] == _errors(example(surprise=True))


def test_nested_error_names_the_dotted_path() -> None:
    """A bad nested value is named by its path and the rule it broke."""
    doc = example()
    doc["child"]["nhs_number"] = "12345"
    assert [("child.nhs_number", "string_pattern_mismatch")] == _errors(doc)


def test_error_messages_never_echo_personal_data() -> None:
    """Field errors name field and rule only; the child's values do not appear."""
    doc = example()
    doc["child"]["date_of_birth"] = "not-a-date Robin"
    errors = _errors(doc)
    assert [("child.date_of_birth", "date_from_datetime_parsing")] == errors
    with pytest.raises(ValidationError) as caught:
        TransferMessage.model_validate(doc)
    assert "Robin" not in repr(field_errors(caught.value))


def test_timestamps_must_carry_a_time_zone() -> None:
    """requested_at without a zone is refused."""
    assert [("requested_at", "value_error")] == _errors(example(requested_at="2026-11-02T10:15:00"))


def test_pathway_direction_must_match_its_levels() -> None:
    """A 'step-down' that goes up a level is refused."""
    doc = example()
    doc["pathway"]["to_level"] = "child-protection-s47"
    assert [("pathway", "value_error")] == _errors(doc)


def test_document_needs_content_or_reference_not_both() -> None:
    """A document travels inline or by reference, exactly one of them."""
    doc = example()
    doc["documents"][0]["reference"] = "DOC-1"
    assert [("documents.0", "value_error")] == _errors(doc)


def test_schema_version_other_than_1_is_refused() -> None:
    """Only schema version 1 is accepted by this contract."""
    assert [("schema_version", "literal_error")] == _errors(example(schema_version=2))


def test_events_round_trip_through_json() -> None:
    """An event serialises and parses back to the same typed event."""
    event = TransferDelivered(
        event_id="e1", transfer_id="t1", target_system="ehm", target_reference="TRAY-1", rule_ids=["NS-2"]
    )
    assert event == parse_event(event.model_dump_json())


def test_committed_json_schemas_match_the_models() -> None:
    """Schema drift: fails when a model changes and `python -m contracts.schema` was not re-run."""
    committed = {p.name: p.read_text(encoding="utf-8") for p in Path(SCHEMA_DIR).glob("*.json")}
    assert render() == committed


def test_each_council_has_a_step_down_and_a_step_up_example_and_each_meets_its_protocol() -> None:
    """The shipped examples are both directions of every seed council, and none breaks its council's rules."""
    from mappings import Facts, load_protocols

    protocols = load_protocols()
    seen = set()
    for name in SEED_EXAMPLES:
        message = TransferMessage.model_validate_json((EXAMPLES / name).read_text())
        seen.add((message.council.value, message.pathway.direction.value))
        assert [] == [v.rule_id for v in protocols[message.council].check(message, Facts())], name
    councils = ("swindon", "swindon-2022", "luton", "barnsley", "north-somerset")
    assert {(c, d) for c in councils for d in ("step-down", "step-up")} == seen
