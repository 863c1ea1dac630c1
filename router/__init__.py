"""The router: consumes transfer messages, checks each council's protocol, delivers, closes.

Read ``router/flow.py`` for the flow of one transfer and ``router/app.py`` for how it is
wired to Kafka (consumption, commits, dead letters).
"""

__version__ = "0.1.0"

from .app import Router, build_router  # noqa: E402  (the version must exist before the outbox imports it)
from .flow import Outcome, TransferFlow  # noqa: E402
from .settings import Settings, Topics  # noqa: E402

__all__ = ["Outcome", "Router", "Settings", "Topics", "TransferFlow", "__version__", "build_router"]
