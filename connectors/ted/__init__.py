"""TED (Barnsley's social care system, seed 003): closing after step-down, EHA closure on step-up, referrals.

As a *source of step-downs* (record = the social care case, ``TED-n``): ``state`` refuses a
step-down made for monitoring or only for an onward referral (BA-5, ``RuleRefused``), so
nothing is sent; ``close`` needs the target's acknowledged receipt (BA-15), records the
step-down on TED as sent (purpose, Team Manager, lead professional name and organisation:
BA-5/BA-6, the channel and its reference), then closes the case; for a disabled child with
a direct payment / individual budget it calls ``keep-open`` instead (BA-13): the step-down
is recorded and the case stays open to the DCT family support worker (``keeps_open``
tells the router which rule kept it open). As a *source of step-ups* (record = the open
EHA held on TED, ``EHA-n``), ``close`` closes it with the reason "step up to social care"
(BA-3). As a *target* it records a step-up as a referral.

Delivery guarantee: effectively once per transfer. Referrals and sent step-downs are
written with ``PUT`` keyed by transfer id (idempotent); closing a record already closed by
the same transfer counts as closed.
"""

from ._connector import DCT_FSW, STEP_UP_REASON, TedConnector, check_stepdown, keeps_open

__all__ = ["DCT_FSW", "STEP_UP_REASON", "TedConnector", "check_stepdown", "keeps_open"]
