"""The process's Prometheus registry and the case-system call metrics (the HTTP boundary, ``_http.py``).

``casebridge run`` serves this registry on ``GET /metrics`` when the deployment file has a ``[metrics] port``
(``casebridge/metrics.py`` adds the router's, the loops' and the deployment's metrics to it). Labels are
system names, call templates (the path with ids blanked, as in error messages), error classes: never an id of
a transfer, a child or a record, never anything personal.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: the one registry of this process (private: not prometheus_client's global one, which holds process metrics
#: of whichever library registers there)
REGISTRY = CollectorRegistry(auto_describe=True)

#: seconds; case-system calls answer in milliseconds to seconds, a slow one runs into its deadline (10 s)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CALL_SECONDS = Histogram(
    "casebridge_case_system_request_seconds",
    "Case-system HTTP calls: seconds until the answer (or the failure), by system and operation (method and path"
    " with ids blanked)",
    ("system", "operation"),
    buckets=CALL_BUCKETS,
    registry=REGISTRY,
)
CALL_ERRORS = Counter(
    "casebridge_case_system_errors",
    "Case-system HTTP calls that failed, by system, operation and error class (the status class, e.g. 5xx, 429,"
    " 4xx, or the transport exception's class, e.g. ConnectError, timeout)",
    ("system", "operation", "error_class"),
    registry=REGISTRY,
)
CALL_RETRIES = Counter(
    "casebridge_case_system_retries",
    "Case-system HTTP calls repeating one that failed transiently (unavailable: 5xx, 429, timeout, transport),"
    " whoever repeats it (the router's in-process retries and tiers, a feed's next poll)",
    ("system", "operation"),
    registry=REGISTRY,
)


def status_class(status: int) -> str:
    """An HTTP status as an error class label: 429 on its own (rate limited), else 4xx / 5xx."""
    return "429" if status == 429 else f"{status // 100}xx"


class RetryMemory:
    """Which calls of one client failed transiently last time, so a repeat of one counts as a retry.

    Held in memory only (paths with ids, never exported), bounded: past ``most`` the oldest is forgotten.
    """

    def __init__(self, most: int = 4096) -> None:
        self.most = most
        self._failed: dict[tuple[str, str], None] = {}

    def repeats(self, method: str, path: str) -> bool:
        return (method, path) in self._failed

    def failed(self, method: str, path: str) -> None:
        key = (method, path)
        self._failed.pop(key, None)
        self._failed[key] = None
        while len(self._failed) > self.most:
            del self._failed[next(iter(self._failed))]

    def answered(self, method: str, path: str) -> None:
        self._failed.pop((method, path), None)
