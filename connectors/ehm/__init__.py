"""Liquidlogic EHM (early help): the Step-Down tray, the staff directory, allocations.

Delivery guarantee: effectively once per transfer. The tray is written with
``PUT /api/stepdown-tray/{transfer_id}``, which EHM treats as idempotent, so a redelivery
after a crash or a replay finds the existing item and creates nothing. Allocations are
reported at least once (from EHM's allocation feed, resumed from a durable cursor); their
event ids are derived from the feed position, so a repeat is recognisable. Step-Up requests
are published at least once from EHM's step-up feed (durable cursor), with stable ids.
"""

from ._connector import EhmConnector, allocation_events
from ._reporter import AllocationReporter
from ._stepups import StepUpPublisher, stepup_transfer_id

__all__ = ["AllocationReporter", "EhmConnector", "StepUpPublisher", "allocation_events", "stepup_transfer_id"]
