"""Liquidlogic LCS (social care): step-down requests out, close authorisations in.

Delivery guarantee: at-least-once publication, idempotent downstream. The publisher reads
LCS's change feed from a durable cursor and saves the cursor only after Kafka acknowledged
what it published, so a restart never misses a request; it may publish one again, with the
same transfer id (derived from the LCS request id) and the same message id (derived from
the feed position), which the router and EHM treat as the same transfer. Closing is
idempotent: a record already closed by the same transfer counts as closed. The Front Door's
decisions on step-up contacts (NS-12) are read from their own feed and reported as events, at
least once, with ids derived from the feed position.
"""

from ._connector import LcsConnector, decision_events
from ._publisher import LcsPublisher
from ._reporter import DecisionReporter

__all__ = ["DecisionReporter", "LcsConnector", "LcsPublisher", "decision_events"]
