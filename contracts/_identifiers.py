"""A child's national identifiers and their check characters: the NHS number and the UPN.

Both carry a check character so a mistyped or corrupted number is refused before it
reaches another council's system. A refusal names the field and the rule
(``nhs_number_check_digit``, ``upn_check_letter``), never the value: the error message
is fixed text, and contract models hide the input in their errors
(``hide_input_in_errors``).

NHS number (NHS Data Dictionary): ten digits; the first nine are weighted 10, 9, ..., 2,
the check digit is ``11 - (sum mod 11)``, an 11 becomes 0 and a 10 means the number is
not valid (no number is issued with it).

UPN (DfE, "Unique pupil numbers: guidance"): 13 characters, the check letter first,
then the LA number (3), the establishment number (4), the year of allocation (2) and a
serial number (3). Characters 2-12 are digits; character 13 is a digit, or for a
temporary UPN a letter from ``ABCDEFGHJKLMNPQRTUVWXYZ`` (not I, O or S) whose value is
its position in that list (A=0 ... Z=22). Each of characters 2-13 is multiplied by its
position (2..13), and the sum mod 23 indexes the same list for the check letter.

Synthetic data uses the NHS 999 test range (999 000 0000 to 999 999 9999, never issued)
with valid check digits: :func:`synthetic_nhs_number` and :func:`synthetic_upn` make
distinct valid values from a seed.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

#: the DfE letters, in value order (A=0 ... Z=22): the check letter and a temporary UPN's last character
UPN_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"
_UPN_VALUE = {letter: value for value, letter in enumerate(UPN_LETTERS)}
#: a UPN character's value in its check: a digit's own, a letter's place in UPN_LETTERS; weighted by position 2-13
_UPN_CHAR_VALUE = {**{str(d): d for d in range(10)}, **_UPN_VALUE}
_UPN_POSITIONS = tuple(range(2, 14))
#: an NHS number's first nine digits are weighted 10 down to 2
_NHS_WEIGHTS = tuple(range(10, 1, -1))

NHS_NUMBER_PATTERN = r"^\d{10}$"
UPN_PATTERN = r"^[A-HJ-NP-RT-Z]\d{11}[0-9A-HJ-NP-RT-Z]$"  # the letters of UPN_LETTERS (no I, O or S)


def nhs_check_digit(first_nine: str) -> int | None:
    """The check digit for an NHS number's first nine digits, or None when none is possible (10)."""
    if len(first_nine) != 9 or not first_nine.isdigit() or not first_nine.isascii():
        raise ValueError("an NHS number's first nine characters are digits")
    remainder = sum(map(int.__mul__, map(int, first_nine), _NHS_WEIGHTS)) % 11  # (a generator costs twice this)
    check = 11 - remainder
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(value: str) -> bool:
    """Ten digits whose last is the modulus-11 check digit of the first nine."""
    if len(value) != 10 or not value.isdigit() or not value.isascii():
        return False
    return nhs_check_digit(value[:9]) == int(value[9])


def upn_check_letter(body: str) -> str:
    """The check letter for a UPN's characters 2-13 (11 digits, then a digit or a DfE letter)."""
    if (
        len(body) != 12
        or not (body[:11].isdigit() and body[:11].isascii())
        or not ((body[11].isdigit() and body[11].isascii()) or body[11] in _UPN_VALUE)
    ):
        raise ValueError("a UPN's characters 2-13 are eleven digits, then a digit or a letter of UPN_LETTERS")
    total = sum(map(int.__mul__, map(_UPN_CHAR_VALUE.__getitem__, body), _UPN_POSITIONS))
    return UPN_LETTERS[total % 23]


def is_valid_upn(value: str) -> bool:
    """13 characters whose first is the DfE check letter of the other twelve."""
    if len(value) != 13:
        return False
    try:
        return upn_check_letter(value[1:]) == value[0]
    except ValueError:
        return False


def _nhs_number(value: str) -> str:
    if not is_valid_nhs_number(value):
        # fixed text only: the value is personal data and must never appear in an error
        raise PydanticCustomError(
            "nhs_number_check_digit", "NHS number check digit is wrong (modulus 11) or the number cannot be issued"
        )
    return value


def _upn(value: str) -> str:
    if not is_valid_upn(value):
        raise PydanticCustomError("upn_check_letter", "UPN check letter (character 1) does not match characters 2-13")
    return value


NhsNumber = Annotated[
    str,
    Field(pattern=NHS_NUMBER_PATTERN, description="NHS number: 10 digits, the last a modulus-11 check digit"),
    AfterValidator(_nhs_number),
]
Upn = Annotated[
    str,
    Field(
        pattern=UPN_PATTERN,
        description="Unique Pupil Number (DfE): 13 characters, a check letter (mod 23) then 11 digits "
        "and a digit (or a letter for a temporary UPN)",
    ),
    AfterValidator(_upn),
]

#: how many distinct numbers synthetic_nhs_number makes (seeds 0 .. SYNTHETIC_NHS_NUMBERS - 1)
SYNTHETIC_NHS_NUMBERS = 900_000


def synthetic_nhs_number(seed: int) -> str:
    """A valid NHS number in the 999 test range, distinct for each seed in ``0 .. SYNTHETIC_NHS_NUMBERS - 1``.

    Seeds go nine to a block of ten numbers sharing their first eight digits: at most one of
    the ten has no check digit (remainder 10), so the seed's place among the others is always there.
    """
    if not 0 <= seed < SYNTHETIC_NHS_NUMBERS:
        raise ValueError(f"seed must be in 0..{SYNTHETIC_NHS_NUMBERS - 1}")
    block, place = divmod(seed, 9)
    prefix = f"999{block:05d}"
    partial = sum(int(d) * w for d, w in zip(prefix, range(10, 2, -1), strict=True))  # the ninth digit weighs 2
    checked = [(d, (11 - (partial + 2 * d) % 11) % 11) for d in range(10)]
    ninth, check = [(d, c) for d, c in checked if c != 10][place]
    return f"{prefix}{ninth}{check}"


#: how many distinct UPNs synthetic_upn makes (seeds 0 .. SYNTHETIC_UPNS - 1)
SYNTHETIC_UPNS = 10**11


def synthetic_upn(seed: int, temporary: str | None = None) -> str:
    """A UPN with a valid check letter, distinct for each seed (and temporary letter).

    Characters 2-12 are the seed (11 digits); character 13 is ``0``, or ``temporary``, a
    letter of :data:`UPN_LETTERS`, for a temporary UPN.
    """
    if not 0 <= seed < SYNTHETIC_UPNS:
        raise ValueError(f"seed must be in 0..{SYNTHETIC_UPNS - 1}")
    if temporary is not None and (len(temporary) != 1 or temporary not in _UPN_VALUE):
        raise ValueError("a temporary UPN ends in one of UPN_LETTERS")
    body = f"{seed:011d}{temporary or '0'}"
    return upn_check_letter(body) + body
