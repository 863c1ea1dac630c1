"""The e-mail a team mailbox receives for a transfer: a data-minimised summary and the documents (pure)."""

from __future__ import annotations

import mimetypes
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from contracts import Person, TransferMessage, wire

TRANSFER_HEADER = "X-Casebridge-Transfer-Id"


def message_reference(transfer_id: str) -> str:
    """Stable per transfer: the left part of the Message-ID, and the receipt's reference."""
    return f"casebridge-{uuid.uuid5(wire.MAILBOX_MESSAGE_NS, transfer_id)}"


def message_id(transfer_id: str, domain: str) -> str:
    """The same transfer always gets the same Message-ID, so a resend is recognisably the same mail."""
    return f"<{message_reference(transfer_id)}@{domain}>"


def attachment_name(index: int, kind: str, media_type: str) -> str:
    extension = mimetypes.guess_extension(media_type.split(";")[0].strip()) or ".bin"
    return f"{index:02d}-{kind}{extension}"


def _person(p: Person | None) -> str:
    if p is None:
        return "not named"
    return ", ".join(x for x in (p.name, p.role, p.organisation) if x)


def summary(transfer: TransferMessage, team: str) -> str:
    """The body text. G4: what a receiving team needs to open the case, nothing more.

    Sent: the child's name, date of birth and source reference; consent or its exemption;
    the management decision; the named professionals; outcome, purpose, deadlines; the list
    of documents. Not sent: NHS number, UPN, gender, locality, identifiers on other systems.
    """
    t, p, child = transfer, transfer.pathway, transfer.child
    lines = [
        f"{p.direction.value.capitalize()} for the {team} team ({t.council.value})",
        f"From {p.from_level.value} on {p.from_system.value} to {p.to_level.value}.",
        "",
        f"Transfer: {t.transfer_id}",
        f"Requested: {t.requested_at.isoformat()}",
        f"Urgency: {t.urgency.value}",
        "",
        "Child",
        f"  Name: {child.given_name} {child.family_name}",
        f"  Date of birth: {child.date_of_birth.isoformat()}"
        if child.date_of_birth is not None
        else f"  Expected date of birth (unborn): {child.expected_date_of_birth or '-'}",
        f"  Reference on {t.source_record.system.value}: {t.source_record.record_id}",
        "",
    ]
    if t.consent is not None:
        scope = ", ".join(s.value for s in t.consent.scope)
        signed = "signed" if t.consent.signed else "not signed"
        lines.append(f"Consent: given by {t.consent.given_by} on {t.consent.given_on.isoformat()} ({scope}; {signed})")
    elif t.consent_exemption is not None:
        e = t.consent_exemption
        lines.append(
            f"Consent: not sought ({e.reason}), decided by {_person(e.decided_by)} on {e.decided_on.isoformat()}"
        )
    else:
        lines.append("Consent: none recorded")
    if t.management_decision is not None:
        md = t.management_decision
        forum = f" at {md.forum}" if md.forum else ""
        lines += [
            f"Management decision: {_person(md.decided_by)}{forum}, {md.decided_on.isoformat()}",
            f"  Rationale: {md.rationale}",
        ]
    pros = t.professionals
    lines += [
        f"Lead professional: {_person(pros.lead_professional)}",
        f"Social worker: {_person(pros.social_worker)}",
    ]
    if pros.family_support_worker is not None:
        lines.append(f"Family support worker: {_person(pros.family_support_worker)}")
    if t.assessment_outcome:
        lines.append(f"Assessment outcome: {t.assessment_outcome}")
    if t.purpose:
        lines.append(f"Purpose: {t.purpose}")
    if t.deadlines:
        lines += ["", "Deadlines"]
        lines += [f"  {dl.rule_id}: {dl.what}, due {dl.due.isoformat()}" for dl in t.deadlines]
    lines += ["", "Documents"]
    attached = [d for d in t.documents if d.content is not None]
    for i, d in enumerate(attached, start=1):
        title = f" ({d.title})" if d.title else ""
        lines.append(f"  attached: {attachment_name(i, d.type.value, d.media_type)}: {d.type.value}{title}")
    for d in t.documents:
        if d.content is None:
            lines.append(f"  held on {t.source_record.system.value}, not attached: {d.type.value} ref {d.reference}")
    if not t.documents:
        lines.append("  none")
    return "\n".join(lines) + "\n"


def build_message(
    transfer: TransferMessage, *, sender: str, recipient: str, team: str, now: datetime | None = None
) -> EmailMessage:
    """The mail for ``transfer``: subject without personal data, stable Message-ID, documents attached byte for byte."""
    domain = sender.rsplit("@", 1)[1]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = (
        f"OFFICIAL-SENSITIVE: {transfer.pathway.direction.value} {transfer.transfer_id} ({transfer.council.value})"
    )
    msg["Message-ID"] = message_id(transfer.transfer_id, domain)
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg[TRANSFER_HEADER] = transfer.transfer_id
    msg.set_content(summary(transfer, team))
    attached = [d for d in transfer.documents if d.content is not None]
    for i, d in enumerate(attached, start=1):
        assert d.content is not None
        maintype, _, subtype = d.media_type.split(";")[0].strip().partition("/")
        msg.add_attachment(
            d.content.encode("utf-8"),
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment_name(i, d.type.value, d.media_type),
        )
    return msg
