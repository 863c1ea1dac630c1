"""Care Director (Swindon's social care system, seed 001): closure after step-down, contacts for step-ups.

As a *source* it answers for the child's person record and writes the social care
closure record once the target acknowledged the step-down: the lead service from the
assessment outcome (SW22-7 data in ``mappings/data/care-director-outcomes.toml``,
SW22-11), the Lead Professional (SW22-11/12) and the named receiving early-help worker,
without whom Care Director refuses to close (SW22-10, a ``TargetRefused`` naming the rule).
As a *target* it records a step-up as a contact for the duty ATM (SW22-6), carrying the
EHA and TAF plan (SW22-3) and the urgency (SW22-1).

``CareDirectorPublisher`` reads the change feed and publishes each step-down referral to
early help as a transfer (``mappings/data/care-director-stepdown.toml``), at least once with
stable ids, the level chosen by the assessment outcome (SW22-7).

Delivery guarantee: effectively once per transfer. Contacts are written with
``PUT /api/contacts/{transfer_id}`` (idempotent); closing a record already closed by the
same transfer counts as closed.
"""

from ._connector import CareDirectorConnector, closure_record
from ._outcomes import ASSESSMENT_OUTCOMES, AssessmentOutcome, load_outcomes, outcome_of
from ._publisher import CareDirectorPublisher, transfer_id_for

__all__ = [
    "ASSESSMENT_OUTCOMES",
    "AssessmentOutcome",
    "CareDirectorConnector",
    "CareDirectorPublisher",
    "closure_record",
    "load_outcomes",
    "outcome_of",
    "transfer_id_for",
]
