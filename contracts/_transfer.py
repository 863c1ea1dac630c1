"""The canonical transfer message: one child's step-up or step-down, schema version 1.1.

Version 1.1 (additive, docs/contract-compatibility.md): ``child.sex`` (the DfE children in need census
values) beside ``child.gender``; an unborn child (``child.expected_date_of_birth`` where there is no
``date_of_birth``); the service levels ``family-help`` and ``multi-agency-child-protection``. A message
that uses none of them is stamped 1.0 and written as a 1.0 reader reads it (``"schema_version": 1``, no
1.1 keys), so a 1.0 reader still reads it.

Field names follow what councils already know from the DfE children's social care data
(Standard Safeguarding Dataset / CSC API payload): ``upn``, ``nhs_number``,
``date_of_birth``, ``la_child_id`` style per-system identifiers, ``lead_professional``.
Everything personal lives under ``child`` and in document content so that the router can
log and emit events from the rest without personal data.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import wire
from ._common import (
    KNOWN_VERSIONS,
    LEVELS_SINCE_1_1,
    SCHEMA_VERSION,
    AwareDatetime,
    CaseSystem,
    Council,
    Direction,
    Identifier,
    NonEmpty,
    RuleId,
    ServiceLevel,
    Strict,
)
from ._identifiers import NhsNumber, Upn


class Pathway(Strict):
    direction: Direction
    from_level: ServiceLevel
    to_level: ServiceLevel
    from_system: CaseSystem
    to_system: CaseSystem

    @model_validator(mode="after")
    def _direction_matches_levels(self) -> Self:
        going_up = self.to_level.rank > self.from_level.rank
        if self.from_level.rank == self.to_level.rank or going_up != (self.direction is Direction.STEP_UP):
            raise ValueError(
                f"direction {self.direction.value!r} does not match levels "
                f"{self.from_level.value!r} -> {self.to_level.value!r}"
            )
        return self


class SystemIdentifier(Strict):
    system: CaseSystem
    id: Identifier


class Gender(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class Sex(StrEnum):
    """The child's sex as the DfE children in need census records it (``<Sex>``, N00783): M, F or U.

    U is "not known", and the only value for an unborn child (census rule 8750). Schema 1.1.
    """

    MALE = "M"
    FEMALE = "F"
    UNKNOWN = "U"


class Child(Strict):
    """The child. Every field here is personal data: never log it.

    Exactly one of ``date_of_birth`` and ``expected_date_of_birth`` (census rule 8525): an unborn child has
    the expected date only (schema 1.1), and its ``sex``, where stated, is U (census rule 8750).
    """

    identifiers: list[SystemIdentifier] = Field(min_length=1, max_length=16)
    given_name: NonEmpty
    family_name: NonEmpty
    date_of_birth: date | None = Field(default=None, description="required unless expected_date_of_birth is given")
    expected_date_of_birth: date | None = Field(
        default=None,
        description="schema 1.1: an unborn child's expected date of birth, where there is no date of birth",
    )
    gender: Gender = Gender.UNKNOWN
    sex: Sex | None = Field(default=None, description="schema 1.1: the DfE census sex (M, F, U), beside gender")
    upn: Upn | None = None
    nhs_number: NhsNumber | None = None
    locality: str | None = Field(default=None, max_length=64)
    disabled: bool = False
    direct_payment: bool = Field(default=False, description="direct payment or individual budget in place (BA-13)")

    @model_validator(mode="after")
    def _born_or_expected(self) -> Self:
        if (self.date_of_birth is None) == (self.expected_date_of_birth is None):
            raise PydanticCustomError(
                "date_of_birth_or_expected",
                "give exactly one of date_of_birth and expected_date_of_birth (an unborn child: the expected date)",
            )
        if self.expected_date_of_birth is not None and self.sex not in (None, Sex.UNKNOWN):
            raise PydanticCustomError("unborn_sex", "an unborn child's sex is U (DfE census rule 8750)")
        return self

    @property
    def unborn(self) -> bool:
        return self.date_of_birth is None

    @property
    def since_1_1(self) -> list[str]:
        """The fields set here that a 1.0 reader does not know."""
        return [n for n in ("expected_date_of_birth", "sex") if getattr(self, n) is not None]

    @model_serializer(mode="wrap")
    def _as_its_version(self, handler: SerializerFunctionWrapHandler) -> Any:
        """1.1's fields only where set: a 1.0 message written by 1.1 is one a 1.0 reader reads."""
        out = handler(self)
        if isinstance(out, dict):
            for name in ("expected_date_of_birth", "sex"):
                if out.get(name) is None:
                    out.pop(name, None)
        return out

    def identifier(self, system: CaseSystem) -> str | None:
        return next((i.id for i in self.identifiers if i.system is system), None)


class Person(Strict):
    """A professional (not the family). Names here are staff names: still kept out of logs."""

    name: NonEmpty
    role: NonEmpty
    organisation: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")


class ConsentScope(StrEnum):
    REFERRAL = "referral"
    INFORMATION_SHARING = "information-sharing"
    STATUTORY_ASSESSMENT = "statutory-assessment"
    RECOMMENDATIONS = "recommendations"


class Consent(Strict):
    given_by: NonEmpty
    given_on: date
    scope: list[ConsentScope] = Field(min_length=1, max_length=8)
    signed: bool = False


class ConsentExemption(Strict):
    """G1: the only exemption is risk of significant harm, decided by a named manager."""

    reason: Literal["significant-harm-s47"]
    decided_by: Person
    decided_on: date


class ManagementDecision(Strict):
    decided_by: Person
    forum: str | None = Field(
        default=None,
        max_length=256,
        description="panel or meeting that ratified it, e.g. 'Transfer Meeting', 'CIN Panel'",
    )
    rationale: NonEmpty
    decided_on: date


class DocumentType(StrEnum):
    MEETING_NOTES = "meeting-notes"
    PLAN = "plan"
    ASSESSMENT = "assessment"
    EHA = "early-help-assessment"
    TAF_PLAN = "taf-plan"
    CIN_PLAN = "cin-plan"
    REVIEW_MINUTES = "review-minutes"
    CASE_NOTES = "case-notes"
    STEP_UP_FORM = "step-up-form"
    CLOSURE_SUMMARY = "closure-summary"
    ESCALATION_SUMMARY = "escalation-summary"
    CONSENT_FORM = "consent-form"


class Document(Strict):
    """A document travels inline (``content``) or by reference to the source system, not both."""

    type: DocumentType
    title: str | None = Field(default=None, max_length=256)
    content: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    reference: Identifier | None = None
    media_type: str = Field(default="text/plain", max_length=128)

    @model_validator(mode="after")
    def _content_or_reference(self) -> Self:
        if (self.content is None) == (self.reference is None):
            raise ValueError("exactly one of content or reference is required")
        return self


class Professionals(Strict):
    social_worker: Person | None = None
    lead_professional: Person | None = None
    support_leader: Person | None = None
    family_support_worker: Person | None = None


class RecordState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class SourceRecord(Strict):
    system: CaseSystem
    record_id: Identifier
    request_id: Identifier | None = None
    state: RecordState
    closed_at: AwareDatetime | None = None


class Urgency(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"


class Purpose(StrEnum):
    """Why a step is made, as a code the source system records (BA-5 refuses the last two)."""

    #: early help (or the receiving service) will work with the family
    SUPPORT = "support"
    #: only so that someone keeps an eye on the child
    MONITORING = "monitoring"
    #: only to make an onward referral
    ONWARD_REFERRAL = "onward-referral"


class Deadline(Strict):
    rule_id: RuleId
    due: AwareDatetime
    what: NonEmpty


class ClosureRecord(Strict):
    """The source record's final entry, as the council's protocol words it (SW26-5, SW22-11, BA-3).

    The router fills it in from the protocol just before it asks the source system to close.
    """

    reason: NonEmpty
    lead_professional: Person | None = None
    rule_ids: list[RuleId] = Field(default_factory=list, max_length=50)


_VERSION = re.compile(r"[0-9]{1,4}(\.[0-9]{1,4})?")
SchemaVersion = Annotated[
    str,
    WithJsonSchema(
        {
            "description": "MAJOR.MINOR of this contract; 1.0 producers write the integer 1 (read as 1.0). A reader "
            "accepts the versions it knows and refuses any other, naming it (docs/contract-compatibility.md)",
            "anyOf": [{"const": 1}, {"enum": list(KNOWN_VERSIONS)}],
        }
    ),
]


def _version_text(value: object) -> str:
    """The version as MAJOR.MINOR text (1 -> 1.0), for the known forms and for naming an unknown one.

    Only an integer or a string of digits and a dot is a version; anything else (a float, a list, ...) is
    "unreadable", never echoed.
    """
    if isinstance(value, bool):
        return "unreadable"
    if isinstance(value, int):
        return f"{value}.0" if 0 <= value <= 9999 else "unreadable"
    if isinstance(value, str):
        text = value.strip()
        if _VERSION.fullmatch(text):
            return text if "." in text else f"{text}.0"
    return "unreadable"


#: a transfer's inline documents together, in UTF-8 bytes. Above it, documents travel by reference (the source system
#: keeps them, ``Document.reference``). With the rest of a transfer and the dead-letter context headers this keeps a
#: transfer under Kafka's default 1 MiB message size, so it can always be published, dead-lettered and replayed whole.
MAX_INLINE_DOCUMENT_BYTES = 700_000
#: documents on one transfer (inline or by reference)
MAX_DOCUMENTS = 100
#: a whole transfer as written (``model_dump_json``, UTF-8 bytes). With the retry and dead-letter context headers
#: (a few KB) it stays under ``MAX_DEAD_LETTER_BYTES`` (1,000,000, under Kafka's default 1 MiB), so a transfer that
#: passes the contract can be published, sent to a retry tier and dead-lettered whole
MAX_TRANSFER_BYTES = 900_000
#: JSON writes a control character as ``\u00XX``: 6 bytes; any other character is at most 4 bytes of UTF-8
_BYTES_A_CHARACTER = 6
#: an upper bound of what a transfer's other fields (every one bounded in length or count, none of those that
#: ``_large_text`` counts) add when written, keys and punctuation included; ``tests/test_contracts.py`` writes a
#: transfer with each of them at its bound and checks it stays under
_REST_BYTES = 80_000


def _person_text(p: Person | None) -> int:
    return 0 if p is None else len(p.name) + len(p.role)


def _large_text(t: TransferMessage) -> int:
    """Characters in the fields that can hold more than a few hundred (the NonEmpty texts, the documents)."""
    c, pros = t.child, t.professionals
    n = len(c.given_name) + len(c.family_name)
    n += sum(map(_person_text, (pros.social_worker, pros.lead_professional, pros.support_leader,
                                pros.family_support_worker)))  # fmt: skip
    if t.consent is not None:
        n += len(t.consent.given_by)
    if t.consent_exemption is not None:
        n += _person_text(t.consent_exemption.decided_by)
    if t.management_decision is not None:
        n += len(t.management_decision.rationale) + _person_text(t.management_decision.decided_by)
    if t.closure is not None:
        n += len(t.closure.reason) + _person_text(t.closure.lead_professional)
    n += sum(len(d.what) for d in t.deadlines)
    for doc in t.documents:
        n += len(doc.content or "") + len(doc.title or "") + len(doc.reference or "") + len(doc.media_type) + 64
    return n


class TransferMessage(Strict):
    """One handover of one child between services; the unit the router routes.

    ``schema_version`` is checked first against the versions this reader knows (``KNOWN_VERSIONS``, or the
    validation context's ``schema_versions``: how a reader of an older minor version is modelled); another
    is refused as ``schema_version: unknown_version_<v>`` (a major version this reader does not know) or
    ``newer_version_<v>`` (a later minor version: upgrade the reader before its producers).

    Size: at most MAX_TRANSFER_BYTES (900,000) bytes as written (UTF-8 JSON), inline documents together at most
    MAX_INLINE_DOCUMENT_BYTES (700,000; larger ones by reference), so that with its Kafka headers it always fits
    a 1 MiB record (``x-casebridge-max-bytes``); refused as ``transfer_too_large`` over it.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-casebridge-max-bytes": MAX_TRANSFER_BYTES,
            "x-casebridge-max-inline-document-bytes": MAX_INLINE_DOCUMENT_BYTES,
        }
    )

    schema_version: SchemaVersion = Field(default=SCHEMA_VERSION)
    transfer_id: Identifier = Field(description="stable for the handover: the same transfer published twice has one id")
    message_id: Identifier = Field(description="unique per publication of the transfer")
    correlation_id: Identifier
    council: Council
    requested_at: AwareDatetime
    pathway: Pathway
    urgency: Urgency = Urgency.ROUTINE
    child: Child
    consent: Consent | None = None
    consent_exemption: ConsentExemption | None = None
    management_decision: ManagementDecision | None = None
    documents: list[Document] = Field(default_factory=list, max_length=MAX_DOCUMENTS)
    professionals: Professionals = Field(default_factory=Professionals)
    source_record: SourceRecord
    deadlines: list[Deadline] = Field(default_factory=list, max_length=50)
    assessment_outcome: str | None = Field(
        default=None, max_length=128, description="Care Director assessment outcome (SW22-7)"
    )
    purpose: str | None = Field(
        default=None,
        max_length=256,
        description="why the step is made, in words; BA-5 reads it only where purpose_code is absent",
    )
    purpose_code: Purpose | None = Field(
        default=None,
        description="why the step is made, as the source system's coded reason (BA-5 refuses monitoring and "
        "onward-referral); preferred over the free-text purpose",
    )
    family_hub_universal: bool = Field(
        default=False, description="NS-14: supported step-down to universal in a Family Hub"
    )
    open_to_council_service: bool = Field(
        default=False, description="SW22-2: the family is open to a council service (line manager decides first)"
    )
    services: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=20,
        description="services that will support the family after the handover (SW22-12: more than one needs a lead)",
    )
    closure: ClosureRecord | None = Field(
        default=None, description="filled in by the router from the protocol before the source record is closed"
    )

    @field_validator("documents")
    @classmethod
    def _inline_documents_fit(cls, documents: list[Document]) -> list[Document]:
        """Inline documents together within ``MAX_INLINE_DOCUMENT_BYTES`` (the larger ones go by reference)."""
        size = 0
        for d in documents:
            if d.content is not None:
                size += len(d.content) if d.content.isascii() else len(d.content.encode())
        if size > MAX_INLINE_DOCUMENT_BYTES:
            raise PydanticCustomError(
                "inline_documents_too_large",
                "the inline documents together are {size} bytes, over {limit}: send the larger ones by reference",
                {"size": size, "limit": MAX_INLINE_DOCUMENT_BYTES},
            )
        return documents

    @model_validator(mode="after")
    def _fits_in_a_record(self) -> Self:
        """The whole transfer as written within ``MAX_TRANSFER_BYTES``. Written exactly only when a cheap upper bound
        (its large texts at 6 bytes a character, the rest at its bound) does not already say it fits: a
        transfer of ordinary size costs no second serialisation."""
        if _BYTES_A_CHARACTER * _large_text(self) + _REST_BYTES <= MAX_TRANSFER_BYTES:
            return self
        size = len(self.__pydantic_serializer__.to_json(self))
        if size > MAX_TRANSFER_BYTES:
            raise PydanticCustomError(
                "transfer_too_large",
                "the transfer is {size} bytes as written, over {limit}: send documents by reference and keep texts "
                "short",
                {"size": size, "limit": MAX_TRANSFER_BYTES},
            )
        return self

    @field_validator("schema_version", mode="before")
    @classmethod
    def _known_version(cls, value: object, info: ValidationInfo) -> str:
        known: tuple[str, ...] = tuple((info.context or {}).get("schema_versions", KNOWN_VERSIONS))
        version = _version_text(value)
        if version in known:
            return version
        if version == "unreadable":
            raise PydanticCustomError("unreadable_version", "schema_version is not a MAJOR.MINOR version such as 1.1")
        majors = {k.split(".")[0] for k in known}
        reads = ", ".join(known)
        if version.split(".")[0] in majors:
            raise PydanticCustomError(
                f"newer_version_{version}",
                "schema version {version} is newer than this reader knows (it reads {reads}): upgrade the reader "
                "before its producers",
                {"version": version, "reads": reads},
            )
        raise PydanticCustomError(
            f"unknown_version_{version}",
            "schema version {version} is a major version this reader does not know (it reads {reads}); it is "
            "refused, not guessed at",
            {"version": version, "reads": reads},
        )

    @model_validator(mode="after")
    def _version_covers_fields(self) -> Self:
        """A message without a version is stamped with the lowest that has what it uses (1.0 where it can); one
        stamped 1.0 uses nothing a 1.0 reader would refuse. (After validation, not before: a ``before`` model
        validator would make pydantic build the whole JSON document in Python first, twice the cost.)"""
        stated = "schema_version" in self.model_fields_set
        if stated and self.schema_version != "1.0":
            return self
        c, p = self.child, self.pathway
        plain = (
            c.sex is None
            and c.date_of_birth is not None
            and p.from_level not in LEVELS_SINCE_1_1
            and p.to_level not in LEVELS_SINCE_1_1
            and self.council is not Council.FAMILIES_FIRST_EXAMPLE
        )
        if not stated:
            self.__dict__["schema_version"] = "1.0" if plain else "1.1"  # frozen: set once, as validation ends
            return self
        if plain:
            return self
        used = [f"child.{n}" for n in c.since_1_1]
        used += ["child.date_of_birth (absent)"] if c.unborn else []
        used += [f"pathway.{n}" for n in ("from_level", "to_level") if getattr(p, n) in LEVELS_SINCE_1_1]
        used += ["council"] if self.council is Council.FAMILIES_FIRST_EXAMPLE else []
        raise PydanticCustomError(
            "needs_version_1.1",
            "the message says schema version 1.0 but uses what 1.1 added ({used}): stamp it 1.1",
            {"used": ", ".join(used)},
        )

    @field_serializer("schema_version")
    def _version_as_written(self, version: str) -> int | str:
        """Written as its version's readers read it: 1.0 as the integer 1 (a 1.0 reader's ``Literal[1]``)."""
        return 1 if version == "1.0" else version

    @property
    def child_key(self) -> str:
        """The Kafka key: one child's messages keep their order on one partition."""
        first = self.child.identifiers[0]
        return wire.child_key(first.system, first.id)
