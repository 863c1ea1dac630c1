"""casebridge's monitor: the flow tracker, the monitoring page and JSON API, metrics, AsyncAPI.

The tracker reads ``<prefix>.events`` into SQLite (each transfer's state and timeline,
no personal data), rebuildable from Kafka. ``casebridge monitor`` serves the page, the
API, ``/metrics`` for Prometheus and ``/asyncapi.json``, behind viewer/operator tokens.
"""

from ._asyncapi import asyncapi_document
from ._index import DeadLetterIndex
from ._lag import Watch, group_lag
from ._service import Monitor
from ._sessions import LoginThrottle, Sessions
from ._settings import TOKEN_MIN_LENGTH, MonitorSettings, MonitorSettingsError, Principal, TokenGrant, load_settings
from ._store import Store
from ._tracker import Tracker, drop_store
from ._views import deadlines, overview, transfer_detail
from ._web import CSP, create_app, milestones

__all__ = [
    "Monitor",
    "MonitorSettings",
    "MonitorSettingsError",
    "load_settings",
    "TOKEN_MIN_LENGTH",
    "Principal",
    "TokenGrant",
    "Store",
    "Tracker",
    "DeadLetterIndex",
    "Watch",
    "drop_store",
    "group_lag",
    "Sessions",
    "LoginThrottle",
    "CSP",
    "create_app",
    "milestones",
    "overview",
    "transfer_detail",
    "deadlines",
    "asyncapi_document",
]
