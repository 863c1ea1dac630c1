"""Liquidlogic LCS (social care): step-down requests out, close authorisations in.

Delivery guarantee: at-least-once publication, idempotent downstream. The publisher reads
LCS's change feed from a durable cursor and saves the cursor only after Kafka acknowledged
what it published, so a restart never misses a request; it may publish one again, with the
same transfer id (derived from the LCS request id) and the same message id (derived from
the feed position), which the router and EHM treat as the same transfer. Closing is
idempotent: a record already closed by the same transfer counts as closed.
"""

from ._connector import LcsConnector
from ._publisher import LcsPublisher

__all__ = ["LcsConnector", "LcsPublisher"]
