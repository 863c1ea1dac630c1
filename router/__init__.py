"""The router: consumes transfer messages, checks each council's protocol, delivers, closes.

Read ``router/flow.py`` for the flow of one transfer and ``router/app.py`` for how it is
wired to Kafka (consumption, commits, dead letters).
"""

__version__ = "0.1.0"

from .app import Router, build_router
from .flow import Outcome, TransferFlow
from .settings import Settings, Topics

__all__ = ["Outcome", "Router", "Settings", "Topics", "TransferFlow", "__version__", "build_router"]
