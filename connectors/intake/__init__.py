"""The intake: where a team with no case system casebridge can read (Luton's) hands over a transfer.

:class:`IntakeServer` is an authenticated HTTP endpoint (``POST /api/transfers``, ``GET
/api/transfers/{id}``) that publishes valid transfers to the transfers topic and audits every post;
:class:`IntakeSource` is ``CaseSystem.MAILBOX`` as the router's source, over the same store.
"""

from ._server import INTAKE_AUDIT_PREFIX, IntakeAudit, IntakeServer
from ._settings import STORE_NAME, IntakeCaller, IntakeSettings
from ._source import IntakeSource
from ._store import IntakeStore

__all__ = [
    "INTAKE_AUDIT_PREFIX",
    "STORE_NAME",
    "IntakeAudit",
    "IntakeCaller",
    "IntakeServer",
    "IntakeSettings",
    "IntakeSource",
    "IntakeStore",
]
