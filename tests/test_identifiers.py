"""A child's NHS number and UPN carry check characters; the contract refuses a wrong one by field and rule only.

NHS number: modulus 11 over the first nine digits (weights 10..2), 11 - remainder, 11 -> 0, 10 -> no number.
UPN (DfE): characters 2-13 weighted by their position (2..13), a temporary UPN's last letter valued by its place
in ABCDEFGHJKLMNPQRTUVWXYZ; the sum mod 23 picks the check letter (character 1) from that same list.
Every number here is synthetic: the NHS 999 test range, UPNs made with the algorithm.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from bench._workload import Workload
from casebridge.scenarios import synthetic_child
from connectors.memory import MemorySource, MemoryTarget
from contracts import (
    SYNTHETIC_NHS_NUMBERS,
    UPN_LETTERS,
    CaseSystem,
    TransferMessage,
    field_errors,
    is_valid_nhs_number,
    is_valid_upn,
    nhs_check_digit,
    synthetic_nhs_number,
    synthetic_upn,
    upn_check_letter,
)
from mappings import load_protocols
from router.flow import TransferFlow
from router.settings import RetrySettings
from tests.support import EXAMPLES, example

# -------------------------------------------------------------------------------- helpers


def _with_child(**child: Any) -> dict[str, Any]:
    doc = example()
    doc["child"] = {**doc["child"], **child}
    return doc


def _refused(doc: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        TransferMessage.model_validate(doc)
    return caught.value


def _everything_said(exc: ValidationError) -> str:
    """The refusal as it is shown: str and repr (contracts hide the input), the contract's field errors, and
    pydantic's errors / JSON as the project reads them (``include_input=False``)."""
    return "\n".join(
        [
            str(exc),
            repr(exc),
            repr(field_errors(exc)),
            exc.json(include_input=False),
            repr(exc.errors(include_input=False)),
        ]
    )


def _nhs_reference(first_nine: str) -> int | None:
    """The NHS Data Dictionary's steps written out one by one (independent of the contract's code)."""
    weights = [10, 9, 8, 7, 6, 5, 4, 3, 2]
    total = 0
    for i in range(9):
        total += int(first_nine[i]) * weights[i]
    check = 11 - total % 11
    if check == 11:
        check = 0
    return None if check == 10 else check


#: the DfE letter table (value -> letter), as the guidance lists it
_DFE_TABLE = {
    0: "A", 1: "B", 2: "C", 3: "D", 4: "E", 5: "F", 6: "G", 7: "H", 8: "J", 9: "K", 10: "L", 11: "M",
    12: "N", 13: "P", 14: "Q", 15: "R", 16: "T", 17: "U", 18: "V", 19: "W", 20: "X", 21: "Y", 22: "Z",
}  # fmt: skip


def _upn_reference(upn_without_check: str) -> str:
    """The DfE steps written out: character n (2..13) times n, letters by the table, sum mod 23 -> letter."""
    letter_value = {letter: value for value, letter in _DFE_TABLE.items()}
    total = 0
    for position in range(2, 14):
        char = upn_without_check[position - 2]
        value = int(char) if char.isdigit() else letter_value[char]
        total += value * position
    return _DFE_TABLE[total % 23]


def _first_nine_with_check(wanted: int | None) -> str:
    """A 999-range first nine digits whose check digit is ``wanted`` (None: remainder 10, no number)."""
    return next(p for n in range(10**6) if nhs_check_digit(p := f"999{n:06d}") == wanted)


# -------------------------------------------------------------------------------- NHS number


def test_nhs_check_digit_follows_modulus_11_worked_by_hand() -> None:
    """999 000 001 -> 9*10 + 9*9 + 9*8 + 1*2 = 245; 245 mod 11 = 3; 11 - 3 = 8: 9990000018 (and two more)."""
    assert 8 == nhs_check_digit("999000001")
    # 999 000 002 -> 243 + 4 = 247; mod 11 = 5; 11 - 5 = 6
    assert 6 == nhs_check_digit("999000002")
    # 999 999 999 -> 9 * 54 = 486; mod 11 = 2; 11 - 2 = 9
    assert 9 == nhs_check_digit("999999999")
    assert all(is_valid_nhs_number(n) for n in ("9990000018", "9990000026", "9999999999"))
    assert not any(
        is_valid_nhs_number(n) for n in ("9990000019", "9990000010", "999000001", "99900000188", "999000001x")
    )


def test_nhs_check_digit_agrees_with_the_steps_written_out_over_many_numbers() -> None:
    """Every 7th first-nine of the 999 range: the contract's check digit is the reference one."""
    for n in range(0, 10**6, 7):
        first_nine = f"999{n:06d}"
        assert _nhs_reference(first_nine) == nhs_check_digit(first_nine), first_nine


def test_valid_nhs_numbers_pass_the_contract_including_check_digit_0() -> None:
    """Numbers with their check digit validate, among them one where 11 - remainder is 11 (check digit 0)."""
    zero = _first_nine_with_check(0) + "0"
    for number in ["9990000018", "9990000026", synthetic_nhs_number(12_345), zero]:
        assert number == TransferMessage.model_validate(_with_child(nhs_number=number)).child.nhs_number


def test_a_wrong_nhs_check_digit_is_refused_naming_field_and_rule_never_the_value() -> None:
    """Every wrong last digit of a valid number is refused as child.nhs_number / nhs_number_check_digit."""
    valid = synthetic_nhs_number(4_321)
    for digit in "0123456789":
        wrong = valid[:9] + digit
        if wrong == valid:
            continue
        exc = _refused(_with_child(nhs_number=wrong))
        assert [("child.nhs_number", "nhs_number_check_digit")] == [(e.field, e.rule) for e in field_errors(exc)]
        said = _everything_said(exc)
        assert wrong not in said and valid[:9] not in said, said


def test_a_number_whose_remainder_gives_10_is_refused_whatever_its_last_digit() -> None:
    """11 - remainder = 10: no NHS number is issued with those nine digits, so all ten endings are refused."""
    first_nine = _first_nine_with_check(None)
    for digit in "0123456789":
        exc = _refused(_with_child(nhs_number=first_nine + digit))
        assert [("child.nhs_number", "nhs_number_check_digit")] == [(e.field, e.rule) for e in field_errors(exc)]
        assert first_nine not in _everything_said(exc)


def test_a_malformed_nhs_number_is_still_a_pattern_error_and_not_echoed() -> None:
    """Nine digits: string_pattern_mismatch (the check runs on ten digits only); the value is not shown."""
    exc = _refused(_with_child(nhs_number="999000001"))
    assert [("child.nhs_number", "string_pattern_mismatch")] == [(e.field, e.rule) for e in field_errors(exc)]
    assert "999000001" not in _everything_said(exc)


def test_synthetic_nhs_numbers_are_distinct_valid_and_in_the_999_range() -> None:
    """The seed helper: every seed a different valid 999-range number; outside its seeds it refuses."""
    seeds = [*range(60_000), *range(SYNTHETIC_NHS_NUMBERS - 9_000, SYNTHETIC_NHS_NUMBERS)]
    made = [synthetic_nhs_number(seed) for seed in seeds]
    assert len(seeds) == len(set(made))
    assert all(n.startswith("999") and is_valid_nhs_number(n) for n in made)
    assert ("9990000018", "9990000026", "9999999999") == (made[0], made[1], made[-1])
    for seed in (-1, SYNTHETIC_NHS_NUMBERS):
        with pytest.raises(ValueError, match="seed"):
            synthetic_nhs_number(seed)


# -------------------------------------------------------------------------------- UPN


def test_upn_check_letters_worked_by_hand() -> None:
    """Characters 2-13 times their position, sum mod 23, letter from ABCDEFGHJKLMNPQRTUVWXYZ."""
    # 9*2 + 9*3 + 9*4 + 1*13 = 94; 94 mod 23 = 2 -> C
    assert "C" == upn_check_letter("999000000001")
    # temporary UPN, last character A = 0: 9*2 + 9*3 + 9*4 = 81; 81 mod 23 = 12 -> N
    assert "N" == upn_check_letter("99900000000A")
    # last character Z = 22: 81 + 22*13 = 367; 367 mod 23 = 22 -> Z
    assert "Z" == upn_check_letter("99900000000Z")
    # 1*2 + 2*3 + 3*4 + 4*5 + 5*6 + 6*7 + 7*8 + 8*9 + 9*10 + 0*11 + 1*12 + 2*13 = 368 = 16 * 23 -> A
    assert "A" == upn_check_letter("123456789012")
    # 8*13 = 104; 104 mod 23 = 12 -> N  (remainders past H skip I: 8 -> J)
    assert "N" == upn_check_letter("000000000008")
    # 4*2 = 8 -> J (not I)
    assert "J" == upn_check_letter("400000000000")
    assert all(is_valid_upn(u) for u in ("C999000000001", "N99900000000A", "Z99900000000Z", "A123456789012"))


@pytest.mark.parametrize("last", [*"0123456789", *UPN_LETTERS])
def test_upn_check_letter_agrees_with_the_dfe_steps_written_out(last: str) -> None:
    """Many UPNs, permanent (a digit last) and temporary (each DfE letter last): the reference letter."""
    for seed in range(0, 10**11, 7_919_111):
        body = f"{seed:011d}{last}"
        assert _upn_reference(body) == upn_check_letter(body), body
        assert is_valid_upn(_upn_reference(body) + body)


def test_every_remainder_0_to_22_gives_its_own_letter() -> None:
    """All 23 letters come out of the algorithm (I, O and S never do)."""
    letters = {upn_check_letter(f"{seed:011d}0") for seed in range(23 * 13)}
    assert set(UPN_LETTERS) == letters
    assert not letters & set("IOS")


def test_synthetic_upns_have_valid_check_letters_and_are_distinct() -> None:
    """The seed helper: permanent and temporary UPNs, distinct, each passing the contract."""
    made = {synthetic_upn(seed) for seed in range(5_000)} | {synthetic_upn(seed, "K") for seed in range(5_000)}
    assert 10_000 == len(made) and all(is_valid_upn(u) for u in made)
    for upn in [synthetic_upn(1), synthetic_upn(98_765_432_109, "Z"), "C999000000001", "N99900000000A"]:
        assert upn == TransferMessage.model_validate(_with_child(upn=upn)).child.upn


def test_a_wrong_upn_check_letter_is_refused_naming_field_and_rule_never_the_value() -> None:
    """Every other letter in front of the same twelve characters: child.upn / upn_check_letter, value unseen."""
    for body in ("999000000001", "99900000000A", "201234567890"):
        right = upn_check_letter(body)
        for letter in UPN_LETTERS.replace(right, ""):
            exc = _refused(_with_child(upn=letter + body))
            assert [("child.upn", "upn_check_letter")] == [(e.field, e.rule) for e in field_errors(exc)]
            assert body not in _everything_said(exc)


def test_a_changed_digit_or_swapped_pair_is_caught_by_the_upn_check_letter() -> None:
    """The point of the letter: one digit mistyped, or two neighbours swapped, no longer validates."""
    upn = synthetic_upn(20_123_456_789)
    for i in range(1, 12):
        changed = upn[:i] + str((int(upn[i]) + 1) % 10) + upn[i + 1 :]
        assert not is_valid_upn(changed), changed
        if upn[i] != upn[i + 1]:
            swapped = upn[:i] + upn[i + 1] + upn[i] + upn[i + 2 :]
            assert not is_valid_upn(swapped), swapped


@pytest.mark.parametrize("upn", ["I999000000001", "C99900000000O", "C99900000000S", "c999000000001", "C99900000001"])
def test_letters_the_dfe_never_uses_are_a_pattern_error(upn: str) -> None:
    """I, O, S (and lower case, or the wrong length) break the UPN pattern, not the check letter."""
    exc = _refused(_with_child(upn=upn))
    assert [("child.upn", "string_pattern_mismatch")] == [(e.field, e.rule) for e in field_errors(exc)]
    assert upn[1:] not in _everything_said(exc)


# -------------------------------------------------------------------------------- the router


class _Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.failures: list[Any] = []

    async def emit(self, event: Any) -> None:
        self.events.append(event)

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        self.events.append(value)

    async def dead_letter(self, record: Any, failure: Any) -> None:
        self.failures.append(failure)

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        return None


async def test_the_router_dead_letters_a_wrong_nhs_number_without_copying_it() -> None:
    """Through TransferFlow: rejected at validate, the event and the dead-letter reason name field and rule only."""
    wrong = synthetic_nhs_number(777)[:9] + str((int(synthetic_nhs_number(777)[9]) + 1) % 10)
    assert not is_valid_nhs_number(wrong)
    raw = json.dumps(_with_child(nhs_number=wrong)).encode()
    flow = TransferFlow(
        load_protocols(), {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: MemorySource()}, RetrySettings(), "g"
    )
    sink = _Sink()
    outcome = await flow.run(ConsumerRecord("t", 0, 0, 0, 0, b"k", raw, None, 1, len(raw), []), sink)  # type: ignore[arg-type]
    assert "rejected" == outcome.state
    rejected, dead = sink.events
    assert [("child.nhs_number", "nhs_number_check_digit")] == [(e.field, e.rule) for e in rejected.errors]
    assert "child.nhs_number: nhs_number_check_digit" == dead.reason == sink.failures[0].message
    said = "".join(e.model_dump_json() for e in sink.events) + repr(sink.failures)
    assert wrong not in said and wrong[:9] not in said


# -------------------------------------------------------------------------------- examples and fixtures


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_every_shipped_example_has_a_999_nhs_number_and_a_upn_with_its_check_characters(name: str) -> None:
    """The committed examples validate, with NHS numbers from the test range."""
    child = TransferMessage.model_validate_json((EXAMPLES / name).read_text()).child
    assert child.nhs_number is not None and child.upn is not None
    assert child.nhs_number.startswith("999") and is_valid_nhs_number(child.nhs_number) and is_valid_upn(child.upn)


def test_synthetic_children_of_the_sandboxes_carry_valid_identifiers() -> None:
    """casebridge.scenarios.synthetic_child: distinct 999-range NHS numbers and UPNs with check letters."""
    children = [synthetic_child() for _ in range(500)]
    assert 500 == len({c["nhs_number"] for c in children}) == len({c["upn"] for c in children})
    assert all(c["nhs_number"].startswith("999") and is_valid_nhs_number(c["nhs_number"]) for c in children)
    assert all(is_valid_upn(c["upn"]) for c in children)


def test_the_benchmarks_50000_children_have_distinct_valid_identifiers() -> None:
    """bench/_workload.py: 50,000 children, each NHS number distinct, valid and in the 999 range; each UPN valid."""
    w = Workload()
    children = [w.document(seq)["child"] for seq in range(50_000)]
    nhs = {c["nhs_number"] for c in children}
    assert 50_000 == len(nhs) == len({c["upn"] for c in children})
    assert all(n.startswith("999") and is_valid_nhs_number(n) for n in nhs)
    assert all(is_valid_upn(c["upn"]) for c in children)
