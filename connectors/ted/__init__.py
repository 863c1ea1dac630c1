"""TED (Barnsley's social care system, seed 003): closing after step-down, EHA closure on step-up, referrals.

The connector decides no protocol rule: the council's protocol does (BA-5 "never for
monitoring" is the Barnsley protocol's ``purpose-not`` check; BA-13 is its ``keep_open``).

As a *source of step-downs* (record = the social care case, ``TED-n``): ``state`` reads the
case; ``close`` needs the target's acknowledged receipt (BA-15), records the step-down on TED
as sent (purpose and its code, Team Manager, lead professional name and organisation, the
channel and its reference), then closes the case. Where the protocol keeps the case open for
a disabled child with a direct payment (BA-13), the router calls ``keep_open`` instead: the
step-down is recorded as sent and TED's ``keep-open`` shows why the case stays open (to the
DCT family support worker). As a *source of step-ups* (record = the open EHA held on TED,
``EHA-n``), ``close`` closes it with the reason "step up to social care" (BA-3). As a
*target* it records a step-up as a referral.

``TedPublisher`` reads TED's step-down request feed and publishes each request as a transfer
(``mappings/data/ted-stepdown.toml``), at least once with stable ids: a TED step-down starts
from TED.

Delivery guarantee: effectively once per transfer. Referrals and sent step-downs are
written with ``PUT`` keyed by transfer id (idempotent); closing a record already closed by
the same transfer counts as closed.
"""

from ._connector import DCT_FSW, STEP_UP_REASON, TedConnector
from ._publisher import TedPublisher, transfer_id_for

__all__ = ["DCT_FSW", "STEP_UP_REASON", "TedConnector", "TedPublisher", "transfer_id_for"]
