"""The canonical transfer contract: strict, named errors, examples for every seed protocol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from contracts import (
    SCHEMA_VERSION,
    Council,
    Sex,
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
    assert "1.0" == message.schema_version  # written by 1.0 as the integer 1, read by 1.1 as 1.0


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


def test_schema_version_of_an_unknown_major_is_refused_by_name() -> None:
    """A major version this reader does not know (2, 2.0) is refused, the version named in rule and message."""
    assert [("schema_version", "unknown_version_2.0")] == _errors(example(schema_version=2))
    with pytest.raises(ValidationError) as caught:
        TransferMessage.model_validate(example(schema_version="2.0"))
    [error] = field_errors(caught.value)
    assert ("schema_version", "unknown_version_2.0") == (error.field, error.rule)
    assert "schema version 2.0 is a major version this reader does not know (it reads 1.0, 1.1)" in error.message


def test_a_version_that_is_not_major_minor_is_refused_not_echoed_and_never_crashes() -> None:
    """A float, a list, an object, a boolean or an enormous number as schema_version: one clear field error."""
    for value in (1.1, [], {}, True, None, 10**30, "one"):
        assert [("schema_version", "unreadable_version")] == _errors(example(schema_version=value)), value


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


# -- contract 1.1: additive and compatible (docs/contract-compatibility.md) --------------------


def _v11(**child: object) -> dict[str, object]:
    """A 1.1 message: the seed example with 1.1's optional fields."""
    doc = example()
    doc.pop("schema_version")
    doc["child"].update(child)
    return doc


def test_a_1_0_message_is_read_by_1_1_and_written_back_as_1_0() -> None:
    """Every committed 1.0 example reads as 1.0 and serialises byte-for-byte as 1.0 readers expect."""
    for name in SEED_EXAMPLES:
        raw = json.loads((EXAMPLES / name).read_text())
        assert 1 == raw["schema_version"] and "sex" not in raw["child"], name  # written by 1.0
        message = TransferMessage.model_validate(raw)
        assert ("1.0", None, None) == (message.schema_version, message.child.sex, message.child.expected_date_of_birth)
        out = json.loads(message.model_dump_json())
        assert 1 == out["schema_version"] and {"sex", "expected_date_of_birth"}.isdisjoint(out["child"]), name


def test_a_1_1_message_is_refused_by_a_1_0_reader_naming_the_version() -> None:
    """A 1.0 reader (knows only 1.0) refuses a 1.1 message by its version, before any field it does not know."""
    doc = _v11(sex="F")
    message = TransferMessage.model_validate(doc)  # the 1.1 reader
    assert ("1.1", Sex.FEMALE) == (message.schema_version, message.child.sex)
    wire = json.loads(message.model_dump_json())
    assert ("1.1", "F") == (wire["schema_version"], wire["child"]["sex"])
    with pytest.raises(ValidationError) as caught:
        TransferMessage.model_validate(wire, context={"schema_versions": ("1.0",)})
    [error] = field_errors(caught.value)
    assert ("schema_version", "newer_version_1.1") == (error.field, error.rule)
    assert "schema version 1.1 is newer than this reader knows (it reads 1.0)" in error.message


def test_a_message_stamped_1_0_may_not_use_what_1_1_added() -> None:
    """Stamped 1.0 but carrying child.sex: refused, naming the field, so a 1.0 reader is never surprised."""
    doc = example()
    doc["child"]["sex"] = "M"
    assert [("$", "needs_version_1.1")] == _errors(doc)


def test_sex_takes_the_census_values_only() -> None:
    """child.sex is the DfE children in need census's M, F or U; anything else is refused by field."""
    for value in ("M", "F", "U"):
        assert value == TransferMessage.model_validate(_v11(sex=value)).child.sex
    assert [("child.sex", "enum")] == _errors(_v11(sex="female"))


def test_an_unborn_child_has_an_expected_date_of_birth_instead() -> None:
    """Census rules 8525 and 8750: exactly one of the dates; an unborn child's sex, if stated, is U."""
    unborn = TransferMessage.model_validate(_v11(date_of_birth=None, expected_date_of_birth="2027-03-01"))
    assert (True, "1.1", None) == (unborn.child.unborn, unborn.schema_version, unborn.child.date_of_birth)
    assert [("child", "date_of_birth_or_expected")] == _errors(_v11(date_of_birth=None))
    assert [("child", "date_of_birth_or_expected")] == _errors(_v11(expected_date_of_birth="2027-03-01"))
    assert [("child", "unborn_sex")] == _errors(_v11(date_of_birth=None, expected_date_of_birth="2027-03-01", sex="F"))


def test_every_protocol_check_and_summary_that_reads_the_date_of_birth_takes_an_unborn_child() -> None:
    """Each council's protocol checks an unborn child as any other; the mailbox summary says the expected date."""
    from connectors._base import step_up_body
    from connectors.mailbox._message import summary
    from mappings import Facts, load_protocols

    doc = _v11(date_of_birth=None, expected_date_of_birth="2027-03-01", sex="U")
    unborn = TransferMessage.model_validate(doc)
    born = TransferMessage.model_validate(example())
    protocol = load_protocols()[born.council]
    assert [v.rule_id for v in protocol.check(born, Facts())] == [v.rule_id for v in protocol.check(unborn, Facts())]
    assert "Expected date of birth (unborn): 2027-03-01" in summary(unborn, "Early Help")
    body = step_up_body(unborn, "child")["child"]
    assert ("2027-03-01", None) == (body["expected_date_of_birth"], body.get("date_of_birth"))


def test_schemas_state_their_dialect_id_and_version() -> None:
    """Each committed schema names its JSON Schema dialect, a stable $id and the contract version."""
    from jsonschema import Draft202012Validator

    for path in Path(SCHEMA_DIR).glob("*.json"):
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        assert ("https://json-schema.org/draft/2020-12/schema", f"urn:casebridge:contracts:schemas:{path.name}") == (
            schema["$schema"],
            schema["$id"],
        )
        assert SCHEMA_VERSION == schema["x-casebridge-version"]
    schema = json.loads((Path(SCHEMA_DIR) / "transfer-message.v1.schema.json").read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema)
    assert [] == list(
        validator.iter_errors(json.loads(TransferMessage.model_validate(_v11(sex="U")).model_dump_json()))
    )
    assert [] != list(validator.iter_errors({**example(), "schema_version": "2.0"}))


ILLUSTRATIVE = EXAMPLES / "illustrative"


def _illustrative(direction: str) -> dict[str, Any]:
    [path] = ILLUSTRATIVE.glob(f"families-first-example.{direction}.*.json")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_families_first_levels_describe_a_step_up_and_a_step_down_of_the_illustrative_council() -> None:
    """Family Help and multi-agency child protection: the illustrative council's committed step-down and step-up
    (an unborn child) meet its protocol and route as it says; without plan and lead practitioner the step-down is
    held with both rules; a step between levels of the same rank (Family Help and child in need) is refused."""
    from mappings import Facts, load_protocols

    protocol = load_protocols()[Council.FAMILIES_FIRST_EXAMPLE]
    down = TransferMessage.model_validate(_illustrative("step-down"))
    up = TransferMessage.model_validate(_illustrative("step-up"))
    assert ("1.1", "1.1", True) == (down.schema_version, up.schema_version, up.child.unborn)
    assert ("multi-agency-child-protection", "family-help") == (down.pathway.from_level, down.pathway.to_level)
    assert ([], []) == ([v.rule_id for v in protocol.check(down, Facts())], [v.rule_id for v in protocol.check(up)])
    route = protocol.route(down, Facts())
    assert ("lead-professional", "Family Help") == (route.role, route.team)
    assert protocol.route(up, Facts()).urgent  # FFX-3: to the MACPT, urgent
    bare = {**_illustrative("step-down"), "documents": [], "professionals": {}}
    assert ["FFX-6", "FFX-7"] == [v.rule_id for v in protocol.check(TransferMessage.model_validate(bare))]
    no_consent = {**_illustrative("step-up"), "consent": None}
    assert ["FFX-2"] == [v.rule_id for v in protocol.check(TransferMessage.model_validate(no_consent))]
    sideways = _illustrative("step-down")
    sideways["pathway"].update(from_level="child-in-need-s17", to_level="family-help")
    assert [("pathway", "value_error")] == _errors(sideways)
    stamped_1_0 = {**_illustrative("step-down"), "schema_version": 1}
    assert [("$", "needs_version_1.1")] == _errors(stamped_1_0)


def test_a_target_mapping_that_needs_a_date_of_birth_refuses_an_unborn_child_naming_the_field() -> None:
    """The EHM tray and LCS contact templates need a date of birth: an unborn child is refused, never given one."""
    from mappings import MappingError, load_mapping

    unborn = TransferMessage.model_validate(_v11(date_of_birth=None, expected_date_of_birth="2027-03-01"))
    for name in ("ehm-stepdown-tray", "lcs-contact"):
        with pytest.raises(MappingError, match=r"needs source path 'transfer\.child\.date_of_birth'"):
            load_mapping(name).apply({"transfer": unborn.model_dump(mode="json")})


async def test_router_on_kafka_reads_1_0_and_1_1_and_dead_letters_2_0_naming_the_version(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """On a real broker: a 1.0 message and a 1.1 one (an unborn child) complete; a 2.0 one is dead-lettered at
    validate with the version named in its reason."""
    from connectors.memory import MemorySource, MemoryTarget
    from contracts import CaseSystem
    from router import Topics
    from tests.support import count_type, events_of, ns_transfer, produce, read, running_router

    topics = Topics(topic_prefix)
    v10 = ns_transfer(1)
    v11 = ns_transfer(2)
    v11.pop("schema_version")
    v11["child"].update(date_of_birth=None, expected_date_of_birth="2027-03-01", sex="U")
    v20 = ns_transfer(3, schema_version="2.0")
    items = [(f"lcs:LCS-{n}".encode(), json.dumps(d).encode()) for n, d in ((1, v10), (2, v11), (3, v20))]
    target = MemoryTarget()
    async with running_router(
        kafka_bootstrap, topic_prefix, {CaseSystem.EHM: target}, {CaseSystem.LCS: MemorySource()}
    ):
        await produce(kafka_bootstrap, topics.transfers, items)
        records = await read(kafka_bootstrap, topics.events, count_type("source-closed", 2), timeout=60)
        [dead] = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 1, timeout=30)
    closed = {e.transfer_id for e in events_of(records) if e.event_type == "source-closed"}
    assert {"ns-1", "ns-2"} == closed
    headers = dict(dead.headers)
    assert (b"validate", b"ContractViolation", b"schema_version: unknown_version_2.0") == (
        headers["casebridge.dlq.stage"],
        headers["casebridge.dlq.error.class"],
        headers["casebridge.dlq.error.message"],
    )
    assert b"ns-3" == headers["casebridge.dlq.transfer.id"]


def test_a_transfers_inline_documents_are_bounded_and_larger_ones_go_by_reference() -> None:
    """Issue #19: inline documents together within MAX_INLINE_DOCUMENT_BYTES (UTF-8), at most MAX_DOCUMENTS, so a
    transfer is always small enough to publish, dead-letter and replay whole; by reference, any size goes."""
    from contracts import MAX_DOCUMENTS, MAX_INLINE_DOCUMENT_BYTES

    doc = example(SEED_EXAMPLES[0])
    half = MAX_INLINE_DOCUMENT_BYTES // 2 + 1
    plan = {"type": "plan", "content": "x" * half}
    doc["documents"] = [plan, {**plan, "type": "assessment"}]
    assert [("documents", "inline_documents_too_large")] == _errors(doc)
    doc["documents"] = [plan, {"type": "assessment", "content": "é" * (half // 2)}]  # 2 bytes a character
    assert [("documents", "inline_documents_too_large")] == _errors(doc)
    doc["documents"] = [plan, {"type": "assessment", "reference": "DOC-1"}]  # the large one by reference
    assert 2 == len(TransferMessage.model_validate(doc).documents)
    doc["documents"] = [{"type": "plan", "reference": f"DOC-{i}"} for i in range(MAX_DOCUMENTS + 1)]
    assert [("documents", "too_long")] == _errors(doc)


def _at_every_small_bound() -> dict[str, Any]:
    """A transfer whose bounded small fields (and lists) are all at their bound, each free text of control
    characters (6 bytes each as JSON), and whose large texts and documents are as short as they can be."""
    ctl = "\x01"
    ident = "I" * 128
    person = {"name": "n", "role": "r", "organisation": ctl * 256, "email": ctl * 159 + "@" + ctl * 160}
    doc = example()
    doc.update(transfer_id=ident, message_id=ident, correlation_id=ident, urgency="urgent")
    doc["child"].update(
        identifiers=[{"system": "care-director", "id": ident}] * 16, given_name="g", family_name="f",
        locality=ctl * 64, gender="unknown", sex="U",
    )  # fmt: skip
    doc["schema_version"] = "1.1"
    doc["consent"] = {"given_by": "p", "given_on": "2026-10-28", "scope": ["information-sharing"] * 8, "signed": True}
    decided = {"decided_by": person, "decided_on": "2026-10-30"}
    doc["consent_exemption"] = {"reason": "significant-harm-s47", **decided}
    doc["management_decision"] = {**decided, "forum": ctl * 256, "rationale": "r"}
    doc["documents"] = []
    doc["professionals"] = {k: person for k in ("social_worker", "lead_professional", "support_leader",
                                                 "family_support_worker")}  # fmt: skip
    doc["source_record"] = {"system": "care-director", "record_id": ident, "request_id": ident, "state": "closed",
                            "closed_at": "2026-11-02T10:15:00.123456+05:30"}  # fmt: skip
    doc["deadlines"] = [{"rule_id": "SW22-99999", "due": "2026-11-16T10:15:00.123456+05:30", "what": "w"}] * 50
    doc.update(assessment_outcome=ctl * 128, purpose=ctl * 256, purpose_code="onward-referral",
               family_hub_universal=True, open_to_council_service=True, services=[ctl * 128] * 20)  # fmt: skip
    doc["closure"] = {"reason": "r", "lead_professional": person, "rule_ids": ["SW22-99999"] * 50}
    return doc


def test_a_transfers_other_fields_at_their_bounds_stay_within_the_cheap_size_bound() -> None:
    """The size check's fast path is sound: every field it does not count, at its bound, writes under _REST_BYTES."""
    from contracts._transfer import _REST_BYTES

    written = len(TransferMessage.model_validate(_at_every_small_bound()).model_dump_json().encode())
    assert 50_000 < written <= _REST_BYTES


def test_a_whole_transfer_is_bounded_so_it_fits_a_kafka_record_with_its_headers() -> None:
    """Issue #19: no list and no text is unbounded, and a transfer over MAX_TRANSFER_BYTES as written is refused by
    name (its size and the limit, never its content), however its bytes are spread over the fields."""
    from contracts import MAX_TRANSFER_BYTES

    doc = example()
    long = {"organisation": "o" * 257}, {"email": "a@" + "b" * 320}, {"media_type": "t" * 129}
    sw = doc["professionals"]["social_worker"]
    assert [("professionals.social_worker.organisation", "string_too_long")] == _errors(
        {**doc, "professionals": {"social_worker": {**sw, **long[0]}}}
    )
    assert [("professionals.social_worker.email", "string_too_long")] == _errors(
        {**doc, "professionals": {"social_worker": {**sw, **long[1]}}}
    )
    assert [("documents.0.media_type", "string_too_long")] == _errors(
        {**doc, "documents": [{**doc["documents"][0], **long[2]}]}
    )
    for field, item, n in (("services", "s", 21), ("deadlines", doc["deadlines"][0], 51)):
        assert [(field, "too_long")] == _errors({**doc, field: [item] * n})
    child = {**doc["child"], "identifiers": doc["child"]["identifiers"] * 17}
    assert [("child.identifiers", "too_long")] == _errors({**doc, "child": child})
    closure = {"reason": "r", "rule_ids": ["NS-4"] * 51}
    assert [("closure.rule_ids", "too_long")] == _errors({**doc, "closure": closure})
    # every field within its own bound, together over the whole: 650 KB of documents, 50 deadlines of 5,000
    # characters (2 bytes each in UTF-8)
    doc["documents"] = [{"type": "plan", "content": "x" * 650_000}]
    doc["deadlines"] = [{**doc["deadlines"][0], "what": "é" * 5_000}] * 50
    with pytest.raises(ValidationError) as caught:
        TransferMessage.model_validate(doc)
    [error] = field_errors(caught.value)
    assert ("$", "transfer_too_large") == (error.field, error.rule)
    assert f"over {MAX_TRANSFER_BYTES}" in error.message and "ééé" not in error.message and "xxx" not in error.message
    doc["deadlines"] = doc["deadlines"][:20]  # under the whole bound: accepted, and written within it
    written = TransferMessage.model_validate(doc).model_dump_json().encode()
    assert 800_000 < len(written) <= MAX_TRANSFER_BYTES
    schema = TransferMessage.model_json_schema()
    assert (MAX_TRANSFER_BYTES, 20, 50) == (
        schema["x-casebridge-max-bytes"],
        schema["properties"]["services"]["maxItems"],
        schema["properties"]["deadlines"]["maxItems"],
    )
