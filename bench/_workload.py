"""The benchmark's input: realistic canonical transfer messages with sequence numbers, and the checks on them.

Every record is a valid North Somerset LCS -> EHM step-down (so every one completes in the
router), 2 to 8 KB of JSON, the size coming from the documents' content. The data is
synthetic: made-up names and identifiers, text from a fixed word list.

Each record carries its sequence number in the ``bench.seq`` header. A run proves that all
``n`` sequence numbers arrived exactly once with :class:`SeqCounter` (it fails loudly).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from contracts import SYNTHETIC_NHS_NUMBERS, SYNTHETIC_UPNS, UPN_LETTERS, synthetic_nhs_number, synthetic_upn

SEQ_HEADER = "bench.seq"
MIN_BYTES = 2_000
MAX_BYTES = 8_000

_TEXT = (
    "family school attendance support visit plan review progress health routine worker meeting agreed goals "
    "parent carer home safety needs strengths outcomes sleep bedtime nursery college speech language therapy "
    "housing benefits budget advice group session weekly fortnightly contact telephone letter target achieved "
    "partly ongoing concern improved stable positive engagement consent shared summary actions next steps "
    "lead practitioner wellbeing emotional behaviour boundaries praise encouragement attendance officer "
    "health visitor midwife dentist appointment transport breakfast club holiday activities youth centre"
)
_WORDS = _TEXT.split()
_GIVEN = ("Alex", "Jordan", "Robin", "Casey", "Riley", "Morgan", "Sam", "Charlie", "Jamie", "Avery", "Quinn", "Rowan")
_FAMILY = ("Exampleton", "Testwood", "Sampleford", "Mockley", "Placeholder", "Fixtureby", "Dummington", "Trialsworth")
_LOCALITIES = ("North", "East", "South")
_GENDERS = ("female", "male", "other", "unknown")
_EXTRA_DOCS = ("assessment", "case-notes", "review-minutes", "cin-plan")


class BenchCheckFailed(AssertionError):
    """A variant did not see every sequence number exactly once: its figures mean nothing."""


def _paragraphs(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choices(_WORDS, k=rng.randint(40, 110))).capitalize() + "." for _ in range(count)]


@dataclass(frozen=True)
class Record:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class Workload:
    """Deterministic: record ``seq`` is the same bytes on every call with the same seed and pool."""

    def __init__(self, seed: int = 7, pool: int | None = None) -> None:
        self.seed = seed
        #: how many distinct children / transfers; ``None``: one per sequence number (the drains).
        #: The soak cycles through a pool so the in-process target stays bounded.
        self.pool = pool
        self._paras = _paragraphs(random.Random(seed), 600)

    def _text(self, rng: random.Random, size: int) -> str:
        parts: list[str] = []
        total = 0
        while total < size:
            p = rng.choice(self._paras)
            parts.append(p)
            total += len(p) + 1
        return " ".join(parts)[:size].rstrip() or "Notes."

    def document(self, seq: int) -> dict[str, Any]:
        ident = seq if self.pool is None else seq % self.pool
        rng = random.Random(seq * 1_000_003 + self.seed)
        locality = _LOCALITIES[ident % 3]
        professionals: dict[str, Any] = {
            "support_leader": {"name": f"Leader {locality} (synthetic)", "role": "Family Wellbeing Support Leader"},
            "social_worker": {"name": f"{rng.choice(_GIVEN)} Socialworker", "role": "Social Worker"},
        }
        if rng.random() < 0.4:
            professionals["family_support_worker"] = {
                "name": f"{rng.choice(_GIVEN)} Supportworker",
                "role": "Family Support Worker",
                "organisation": "Family Wellbeing (synthetic)",
            }
        doc: dict[str, Any] = {
            "schema_version": 1,
            "transfer_id": f"bench-{ident}",
            "message_id": f"bench-{ident}-m{seq}",
            "correlation_id": f"bench-{ident}",
            "council": "north-somerset",
            "requested_at": f"2026-11-{1 + ident % 28:02d}T{8 + ident % 9:02d}:{ident % 60:02d}:00Z",
            "pathway": {
                "direction": "step-down",
                "from_level": rng.choice(("child-in-need-s17", "child-protection-s47")),
                "to_level": "early-help",
                "from_system": "lcs",
                "to_system": "ehm",
            },
            "urgency": "urgent" if rng.random() < 0.1 else "routine",
            "child": {
                "identifiers": [{"system": "lcs", "id": f"LCS-B{ident}"}],
                "given_name": rng.choice(_GIVEN),
                "family_name": rng.choice(_FAMILY),
                "date_of_birth": f"{2008 + rng.randint(0, 16)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "gender": rng.choice(_GENDERS),
                # temporary UPNs (a letter last), valid check letters; NHS numbers valid in the 999 test range,
                # distinct for the first SYNTHETIC_NHS_NUMBERS children
                "upn": synthetic_upn(ident % SYNTHETIC_UPNS, temporary=rng.choice(UPN_LETTERS)),
                "nhs_number": synthetic_nhs_number(ident % SYNTHETIC_NHS_NUMBERS),
                "locality": locality,
                "disabled": rng.random() < 0.05,
            },
            "consent": {
                "given_by": "Parent (synthetic)",
                "given_on": "2026-10-28",
                "scope": ["referral", "information-sharing"] + (["recommendations"] if rng.random() < 0.5 else []),
                "signed": True,
            },
            "management_decision": {
                "decided_by": {"name": f"{rng.choice(_GIVEN)} Teammanager", "role": "Team Manager"},
                "forum": "Step-down meeting",
                "rationale": "Needs can be met by early help; risks reduced.",
                "decided_on": "2026-10-30",
            },
            "documents": [],
            "professionals": professionals,
            "source_record": {
                "system": "lcs",
                "record_id": f"LCS-B{ident}",
                "request_id": f"SDR-B{ident}",
                "state": "open",
            },
            "deadlines": [
                {
                    "rule_id": "NS-4",
                    "due": (date(2026, 11, 1 + ident % 28) + timedelta(days=13)).strftime("%Y-%m-%dT08:00:00Z"),
                    "what": "step-down meeting within 2 weeks",
                }
            ],
        }
        kinds = ["meeting-notes", "plan", *rng.sample(_EXTRA_DOCS, rng.randint(0, 2))]
        doc["documents"] = [{"type": k, "title": f"{k} (synthetic)", "content": ""} for k in kinds]
        room = rng.randint(MIN_BYTES + 50, MAX_BYTES - 50) - len(json.dumps(doc)) - 4
        share = max(room // len(kinds), 8)
        for d in doc["documents"]:
            d["content"] = self._text(rng, share)
        return doc

    def key(self, seq: int) -> bytes:
        """Record ``seq``'s Kafka key: its child, ``lcs:<first identifier>`` (as the LCS publisher keys it)."""
        ident = seq if self.pool is None else seq % self.pool
        return f"lcs:LCS-B{ident}".encode()

    def record(self, seq: int) -> Record:
        # keyed by the document's child (the router refuses a record keyed otherwise: ``flow.keyed``)
        return Record(self.key(seq), json.dumps(self.document(seq)).encode(), [(SEQ_HEADER, str(seq).encode())])

    def records(self, start: int, stop: int) -> Iterator[Record]:
        for seq in range(start, stop):
            yield self.record(seq)


def seq_of(headers: Any) -> int:
    """The record's sequence number (from its ``bench.seq`` header)."""
    for k, v in headers or ():
        if k == SEQ_HEADER:
            return int(bytes(v))
    raise BenchCheckFailed(f"a record has no {SEQ_HEADER} header")


def seq_of_message_id(message_id: str) -> int:
    """The sequence number the workload put in a message id (``bench-<ident>-m<seq>``)."""
    return int(message_id.rsplit("-m", 1)[1])


class SeqCounter:
    """How often each of ``n`` sequence numbers arrived; ``check()`` insists on exactly once each."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.counts = bytearray(n)
        self.out_of_range = 0

    def add(self, seq: int) -> None:
        if 0 <= seq < self.n:
            self.counts[seq] = min(self.counts[seq] + 1, 255)
        else:
            self.out_of_range += 1

    @property
    def seen(self) -> int:
        return sum(self.counts) + self.out_of_range

    def check(self, what: str) -> None:
        missing = [i for i, c in enumerate(self.counts) if c == 0]
        duplicated = [i for i, c in enumerate(self.counts) if c > 1]
        if missing or duplicated or self.out_of_range:
            raise BenchCheckFailed(
                f"{what}: exactly-once check failed over {self.n} sequence numbers: "
                f"{len(missing)} missing (first {missing[:5]}), {len(duplicated)} duplicated "
                f"(first {duplicated[:5]}), {self.out_of_range} out of range"
            )


class Ledger:
    """What one router member's target wrote, appended to a file one ``write(2)`` a line, so that it outlives a
    SIGKILL: ``<seq> <unix time>`` for every write (created or not: a second write is a delivery twice)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def wrote(self, seq: int) -> None:
        os.write(self.fd, b"%d %.4f\n" % (seq, time.time()))

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class LedgerReader:
    """A member's ledger read as it grows (complete lines only: a SIGKILL may cut the last one)."""

    path: Path
    #: how often each sequence number was written
    writes: Counter[int] = field(default_factory=Counter)
    #: (unix time, sequence number) of each write, in order
    times: list[tuple[float, int]] = field(default_factory=list)
    _offset: int = 0

    def poll(self) -> LedgerReader:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return self
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        for line in chunk[:end].splitlines():
            seq, _, at = line.partition(b" ")
            self.writes[int(seq)] += 1
            self.times.append((float(at), int(seq)))
        return self
