"""Synthetic children and step-down requests, created through the sandbox systems' own APIs.

Every name here is invented; nothing comes from the seed documents.
"""

from __future__ import annotations

import copy
import itertools
import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx

import contracts

GIVEN = ["Robin", "Alex", "Jamie", "Charlie", "Frankie", "Sasha", "Remy", "Toby", "Nell", "Ira"]
FAMILY = ["Exampleton", "Testwood", "Sampleford", "Mockbury", "Fictionby", "Placeholt"]
_counter = itertools.count(1)


def synthetic_child(locality: str = "North", **changes: Any) -> dict[str, Any]:
    """An invented child, distinct per call: NHS number from the 999 test range, both check characters valid."""
    n = next(_counter)
    child = {
        "given_name": GIVEN[n % len(GIVEN)],
        "family_name": f"{FAMILY[n % len(FAMILY)]}-{n}",
        "date_of_birth": f"20{10 + n % 10}-0{1 + n % 9}-1{n % 10}",
        "gender": "unknown",
        "nhs_number": contracts.synthetic_nhs_number(n % contracts.SYNTHETIC_NHS_NUMBERS),  # 999 range, valid
        "upn": contracts.synthetic_upn(n),  # a valid check letter
        "locality": locality,
    }
    child.update(changes)
    return child


def good_request(**changes: Any) -> dict[str, Any]:
    """A North Somerset step-down request that meets every rule."""
    req: dict[str, Any] = {
        "meeting_notes": "Step-down meeting held; the family agree to early help.",
        "plan": "Weekly family support worker visits; school attendance support.",
        "support_leader": "Avery Support-North",
        "family_support_worker": None,
        "target_level": "early_help",
        "consent": {
            "given_by": "Parent (synthetic)",
            "given_on": "2026-11-01",
            "scope": ["referral", "information-sharing"],
        },
        "management_decision": {
            "decided_by": "Morgan Testmanager",
            "role": "Team Manager",
            "forum": "Step-down meeting",
            "rationale": "Risks reduced; needs can be met by early help.",
            "decided_on": "2026-11-02",
        },
        "requested_by": "Sam Fictional (Social Worker)",
    }
    req.update(changes)
    return req


def swindon_request(**changes: Any) -> dict[str, Any]:
    """A Swindon 2026 step-down request that meets every rule of its protocol (SW26-4, SW26-6, SW26-7).

    Agreed at the weekly Transfer Meeting with consent to share information (SW26-4); the
    assessment (strengths, risk and need, outcomes achieved) and the proposed plan (SW26-6);
    the early intervention Lead Practitioner the child is allocated to (SW26-7). No handover
    date: pass ``handover_due`` (ISO 8601, with a zone) to state one (SW26-6: within 10 days).
    """
    req: dict[str, Any] = {
        "assessment": "Strengths: engaged parent. Risk and need: school attendance. Outcomes achieved: home stable.",
        "plan": "Proposed early intervention plan: weekly key worker sessions; attendance support.",
        "lead_practitioner": "Jo Leadpractitioner",
        "lead_practitioner_organisation": "Early Intervention",
        "target_level": "early_help",
        "consent": {
            "given_by": "Parent (synthetic)",
            "given_on": "2026-11-01",
            "scope": ["referral", "information-sharing"],
        },
        "management_decision": {
            "decided_by": "Morgan Testmanager",
            "role": "Team Manager",
            "forum": "Transfer Meeting",
            "rationale": "Social work record complete; needs can be met by early intervention.",
            "decided_on": "2026-11-02",
        },
        "requested_by": "Sam Fictional (Social Worker)",
    }
    req.update(changes)
    return req


#: council -> its complete LCS step-down request (what ``LcsSandboxClient.request_stepdown`` starts from)
STEPDOWN_REQUEST = {"north-somerset": good_request, "swindon": swindon_request}


# -- synthetic transfers for every council (canonical messages, as a source connector publishes them)
EXAMPLES = Path(contracts.__file__).parent / "examples"
STEP_DOWN_EXAMPLE = {
    "swindon": "swindon-2026.step-down.lcs-ehm.json",
    "swindon-2022": "swindon-2022.step-down.care-director-ehh.json",
    "luton": "luton.step-down.fst-eh.json",
    "barnsley": "barnsley.step-down.ted-eh-mailbox.json",
    "north-somerset": "north-somerset.step-down.lcs-ehm.json",
}
# council -> (from system, to system, from level, step-up documents, management decision forum / role)
STEP_UP = {
    "swindon": ("ehm", "lcs", "early-help", ["early-help-assessment"], (None, "Duty Manager")),
    "swindon-2022": (
        "care-director",
        "mailbox",
        "early-help",
        ["early-help-assessment", "taf-plan"],
        (None, "Line Manager"),
    ),
    "luton": ("mailbox", "mailbox", "early-help", ["escalation-summary"], ("Escalation Review Meeting", "EH Manager")),
    "barnsley": ("ted", "ted", "early-help", ["early-help-assessment", "case-notes"], (None, "EH Manager")),
    "north-somerset": ("ehm", "lcs", "intensive-early-help", ["step-up-form", "case-notes"], (None, "Team Manager")),
}


@cache
def _example(name: str) -> dict[str, Any]:
    """An example transfer, parsed once (callers deep-copy it)."""
    doc: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return doc


def step_down(council: str, n: int = 1, **changes: Any) -> dict[str, Any]:
    """The council's synthetic step-down, with its own ids (n), top-level changes applied."""
    doc: dict[str, Any] = copy.deepcopy(_example(STEP_DOWN_EXAMPLE[council]))
    system = doc["pathway"]["from_system"]
    doc.update(transfer_id=f"{council}-sd-{n}", message_id=f"{council}-sd-{n}-m1", correlation_id=f"{council}-sd-{n}")
    doc["child"]["identifiers"] = [{"system": system, "id": f"{system.upper()}-{n}"}]
    doc["source_record"] = {**doc["source_record"], "record_id": f"{system.upper()}-{n}"}
    doc["deadlines"] = []
    doc.update(changes)
    return doc


def step_up(council: str, n: int = 1, **changes: Any) -> dict[str, Any]:
    """The council's synthetic step-up from early help, meeting every rule."""
    src, dst, level, documents, (forum, role) = STEP_UP[council]
    doc = step_down("north-somerset", n)
    doc.update(
        transfer_id=f"{council}-su-{n}",
        message_id=f"{council}-su-{n}-m1",
        correlation_id=f"{council}-su-{n}",
        council=council,
        pathway={
            "direction": "step-up",
            "from_level": level,
            "to_level": "child-in-need-s17",
            "from_system": src,
            "to_system": dst,
        },
        management_decision={
            "decided_by": {"name": "Morgan Testmanager", "role": role},
            "forum": forum,
            "rationale": "Concerns have escalated; needs cannot be met by early help.",
            "decided_on": "2026-10-30",
        },
        documents=[{"type": d, "content": f"{d} (synthetic)"} for d in documents],
        professionals={"family_support_worker": {"name": "Kit Supportworker", "role": "Family Support Worker"}},
        source_record={"system": src, "record_id": f"EH-{n}", "request_id": f"SUR-{n}", "state": "open"},
        deadlines=[],
    )
    doc["child"]["identifiers"] = [{"system": src, "id": f"EH-{n}"}]
    doc["consent"]["scope"] = ["referral", "information-sharing"]
    doc.update(changes)
    return doc


def on_record(doc: dict[str, Any], system: str, record_id: str) -> dict[str, Any]:
    """``doc`` about the child whose record ``record_id`` is on ``system`` (its only identifier, its source record)."""
    doc["child"]["identifiers"] = [{"system": system, "id": record_id}]
    doc["source_record"]["record_id"] = record_id
    return doc


def s47_step_up(record_id: str, n: int = 1) -> dict[str, Any]:
    """Swindon 2022: a s.47 step-up from FISS on the Care Director record, agreed at the transfer discussion."""
    doc = on_record(step_up("swindon-2022", n), "care-director", record_id)
    doc["pathway"].update(from_level="intensive-early-help", to_level="child-protection-s47")
    doc["management_decision"]["forum"] = "Transfer Meeting"
    return doc


def exemption(role: str) -> dict[str, Any]:
    """G1: the s.47 exemption, decided by a named manager in ``role``."""
    return {
        "reason": "significant-harm-s47",
        "decided_by": {"name": "Dana Dutymanager", "role": role},
        "decided_on": "2026-10-30",
    }


def ehm_exemption(role: str, reason: str | None = "significant-harm-s47") -> dict[str, Any]:
    """G1 on EHM's Step-Up request: consent not sought, decided by a named manager in ``role``.

    ``reason`` is what EHM states (``None``: the form states no reason, so no exemption is mapped).
    """
    body: dict[str, Any] = {"decided_by": "Dana Dutymanager", "decided_by_role": role, "decided_on": "2026-11-20"}
    if reason is not None:
        body["reason"] = reason
    return body


class _SandboxClient:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def close(self) -> None:
        self.http.close()

    def inject_fault(self, **spec: Any) -> None:
        """Inject a fault: status, count or seconds, path_prefix, delay_ms, retry_after."""
        self.http.post("/_sandbox/faults", json=spec).raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete("/_sandbox/faults").raise_for_status()

    def _ok(self, response: httpx.Response) -> dict[str, Any]:
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


class LcsSandboxClient(_SandboxClient):
    """What a social worker does on LCS, through its HTTP API."""

    def create_child(self, **changes: Any) -> str:
        return str(self._ok(self.http.post("/api/children", json=synthetic_child(**changes)))["id"])

    def request_stepdown(self, child_id: str, *, council: str = "north-somerset", **changes: Any) -> str:
        """A step-down request meeting every rule of ``council``'s protocol, with ``changes`` applied
        (a field set to None is not recorded: ``lead_practitioner=None``)."""
        body = STEPDOWN_REQUEST[council](**changes)
        return str(self._ok(self.http.post(f"/api/children/{child_id}/stepdown-requests", json=body))["request_id"])

    def child(self, child_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/children/{child_id}"))

    def close_record(self, child_id: str, reason: str = "closed by mistake (out of band)") -> None:
        self._ok(
            self.http.post(f"/api/children/{child_id}/close", json={"reason": reason, "closed_by": "a social worker"})
        )

    def reopen(self, child_id: str) -> None:
        self._ok(self.http.post(f"/api/children/{child_id}/reopen", json={"reopened_by": "a team manager"}))

    def contacts(self) -> list[dict[str, Any]]:
        """The Front Door's queue (urgent first)."""
        return list(self._ok(self.http.get("/api/contacts"))["contacts"])

    def contact(self, transfer_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/contacts/{transfer_id}"))


class EhmSandboxClient(_SandboxClient):
    """What an early-help manager does on EHM, through its HTTP API."""

    def tray(self) -> list[dict[str, Any]]:
        return list(self._ok(self.http.get("/api/stepdown-tray"))["items"])

    def set_away(self, locality: str, away: bool) -> None:
        self.http.put(f"/api/localities/{locality}/support-leader/away", json={"away": away}).raise_for_status()

    def staff(self, locality: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/localities/{locality}/staff"))

    def open_episode(self, lcs_id: str = "LCS-0", locality: str = "North") -> str:
        """An early-help case on EHM (the source of a step-up); returns its episode id."""
        c = synthetic_child(locality)
        child = {k: c[k] for k in ("given_name", "family_name", "date_of_birth", "nhs_number", "locality")}
        body = {"child": {**child, "lcs_id": lcs_id}, "family_support_worker": "Kit Supportworker"}
        return str(self._ok(self.http.post("/api/episodes", json=body))["episode_id"])

    def request_stepup(self, episode_id: str, **changes: Any) -> str:
        """A Step-Up request on EHM (NS-9: form and case notes; consent; the manager's decision)."""
        body: dict[str, Any] = {
            "step_up_form": "Step-Up request form: increased concerns (synthetic).",
            "case_notes": "Case notes evidencing the conversations with the family (synthetic).",
            "to_level": "child_in_need",
            "urgent": False,
            "consent": {
                "given_by": "Parent (synthetic)",
                "given_on": "2026-11-20",
                "scope": ["referral", "information-sharing"],
            },
            "management_decision": {
                "decided_by": "Morgan Testmanager",
                "role": "Team Manager",
                "rationale": "Concerns escalating; a step-up discussion at the Front Door is needed.",
                "decided_on": "2026-11-20",
            },
            "requested_by": "Kit Supportworker (FSW)",
        }
        body.update(changes)
        return str(self._ok(self.http.post(f"/api/episodes/{episode_id}/stepup-requests", json=body))["request_id"])

    def episode(self, episode_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/episodes/{episode_id}"))

    def allocate(self, transfer_id: str, worker: str = "Kit Supportworker") -> None:
        self.http.post(
            f"/api/stepdown-tray/{transfer_id}/allocate", json={"family_support_worker": worker}
        ).raise_for_status()


class TedSandboxClient(_SandboxClient):
    """Barnsley's TED sandbox: cases, the social worker's step-down requests, early-help assessments on TED."""

    def create_case(self) -> str:
        c = synthetic_child()
        return str(self._ok(self.http.post("/api/cases", json={k: c[k] for k in _NAME_AND_BIRTH}))["id"])

    def request_stepdown(self, case_id: str, reason_code: str = "SD-EHS") -> str:
        """The social worker's step-down request on TED (TED's change feed announces it); its request id."""
        doc = step_down("barnsley")
        decision, lead = doc["management_decision"], doc["professionals"]["lead_professional"]
        request = {
            "reason_code": reason_code,
            "purpose": doc["purpose"],
            "decided_by": decision["decided_by"],
            "decided_on": decision["decided_on"],
            "rationale": decision["rationale"],
            "lead_professional": {"name": lead["name"], "organisation": lead["organisation"]},
            "consent": doc["consent"],
            "documents": [{"type": d["type"], "content": d["content"]} for d in doc["documents"]],
            "requested_by": "Social worker (synthetic)",
        }
        return str(self._ok(self.http.post(f"/api/cases/{case_id}/stepdown-requests", json=request))["request_id"])

    def open_eha(self, case_id: str) -> str:
        """An open early-help assessment on TED (the source of a Barnsley step-up); its id."""
        body = {"lead_professional": "Kit Supportworker", "started_on": "2026-09-01"}
        return str(self._ok(self.http.post(f"/api/cases/{case_id}/eha", json=body))["eha_id"])

    def case(self, case_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/cases/{case_id}"))

    def eha(self, eha_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/eha/{eha_id}"))

    def referral(self, transfer_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/referrals/{transfer_id}"))


class CareDirectorSandboxClient(_SandboxClient):
    """Swindon 2022's Care Director sandbox: persons, assessments and step-down referrals."""

    def create_person(self) -> str:
        c = synthetic_child()
        return str(self._ok(self.http.post("/api/persons", json={k: c[k] for k in _NAME_AND_BIRTH}))["id"])

    def refer(
        self, person_id: str, outcome_code: str = "ASO-EHH", worker: str | None = "Casey Hubworker", lead: bool = True
    ) -> str:
        """A completed assessment with ``outcome_code`` and the social worker's step-down referral; its id. Without
        ``worker`` and ``lead`` nobody receiving is named yet (SW22-10 keeps the record open until then)."""
        assessment = {
            "outcome_code": outcome_code,
            "analysis": "Needs can be met by early help (synthetic).",
            "signed_off_by": "Morgan Testmanager",
            "rationale": "Risks reduced; family engaged.",
            "completed_on": "2026-11-01",
        }
        found = self._ok(self.http.post(f"/api/persons/{person_id}/assessments", json=assessment))
        referral: dict[str, Any] = {  # what SW22-8 and SW22-14 ask of a step-down from a CIN plan
            "assessment_id": found["assessment_id"],
            "consent": {
                "given_by": "Parent (synthetic)",
                "given_on": "2026-11-02",
                "scope": ["recommendations", "statutory-assessment", "information-sharing"],
            },
            "lead_professional": {"name": "Quinn Placeholder", "role": "Teacher", "organisation": "Example School"},
            "documents": [{"type": "cin-plan", "title": "CIN plan", "content": "Weekly sessions (synthetic)."}],
            "requested_by": "Sam Fictional (Social Worker)",
        }
        if not lead:
            del referral["lead_professional"]
        if worker:
            referral["early_help_worker"] = {"name": worker, "role": "Family worker", "organisation": "Early Help Hub"}
        made = self._ok(self.http.post(f"/api/persons/{person_id}/stepdown-referrals", json=referral))
        return str(made["referral_id"])

    def person(self, person_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/persons/{person_id}"))


_NAME_AND_BIRTH = ("given_name", "family_name", "date_of_birth")
