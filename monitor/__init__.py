"""casebridge's monitor: the flow tracker, the monitoring page and JSON API, metrics, AsyncAPI.

The tracker reads ``<prefix>.events`` into SQLite (each transfer's state and timeline,
no personal data), rebuildable from Kafka. ``casebridge monitor`` serves the page, the
API, ``/metrics`` for Prometheus and ``/asyncapi.json``, behind viewer/operator tokens.

The names below are imported when first used (PEP 562): ``casebridge dlq`` needs the store and the
dead-letter index only, not the web application (a quarter of a second of imports on each call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts._lazy import lazy_names

if TYPE_CHECKING:
    from ._asyncapi import asyncapi_document
    from ._index import DeadLetterIndex
    from ._lag import Watch, group_lag
    from ._service import Monitor
    from ._sessions import LoginThrottle, Sessions
    from ._settings import (
        TOKEN_MIN_LENGTH,
        MonitorSettings,
        MonitorSettingsError,
        Principal,
        TokenGrant,
        load_settings,
    )
    from ._store import Store
    from ._tracker import Tracker, drop_store
    from ._views import deadlines, overview, transfer_detail
    from ._web import CSP, create_app, milestones

#: each public name and the module that defines it
_WHERE = {
    "asyncapi_document": "._asyncapi",
    "DeadLetterIndex": "._index",
    "Watch": "._lag",
    "group_lag": "._lag",
    "Monitor": "._service",
    "LoginThrottle": "._sessions",
    "Sessions": "._sessions",
    "TOKEN_MIN_LENGTH": "._settings",
    "MonitorSettings": "._settings",
    "MonitorSettingsError": "._settings",
    "Principal": "._settings",
    "TokenGrant": "._settings",
    "load_settings": "._settings",
    "Store": "._store",
    "Tracker": "._tracker",
    "drop_store": "._tracker",
    "deadlines": "._views",
    "overview": "._views",
    "transfer_detail": "._views",
    "CSP": "._web",
    "create_app": "._web",
    "milestones": "._web",
}


__getattr__ = lazy_names(__name__, _WHERE, globals())


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
