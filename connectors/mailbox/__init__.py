"""A secure team mailbox over SMTP with STARTTLS, for the steps the seeds do by e-mail.

Barnsley's early-help mailbox recording a new EHA episode (BA-7: consent, closing
assessment summary and step-down plan together), Swindon's MASH and Early Help Hub
mailboxes, Luton's teams. ``deliver`` sends a data-minimised summary (G4) with the
transfer's documents attached byte for byte, to the team mailbox the route and the
configuration choose (``mailbox_keys``). It authenticates, and refuses to send unless the
relay offers STARTTLS with a trusted certificate (``InsecureChannel``, permanent).

Delivery guarantee: at most one accepted mail per transfer from one deployment, and a
stable ``Message-ID`` per transfer. A transfer the relay accepted is recorded in a ledger
(sqlite) and never sent again; a crash between the relay's acceptance and the ledger write
can send it once more, with the same ``Message-ID``, so the receiving system can recognise
it. ``confirm`` means the relay accepted the message for the mailbox (250 after DATA) as
recorded in the ledger, not that a person has read it.
"""

from ._connector import (
    InsecureChannel,
    MailboxConnector,
    MailboxSettings,
    mailbox_keys,
    relay_tls_context,
    send_via_relay,
)
from ._message import TRANSFER_HEADER, build_message, message_id, message_reference, summary

__all__ = [
    "TRANSFER_HEADER",
    "InsecureChannel",
    "MailboxConnector",
    "MailboxSettings",
    "build_message",
    "mailbox_keys",
    "relay_tls_context",
    "send_via_relay",
    "message_id",
    "message_reference",
    "summary",
]
