"""The router's fast paths behave exactly as the plain ones they replace."""

from __future__ import annotations

import uuid

import pytest

from connectors import PermanentError, TransientError
from router.flow import _EVENT_NS, TransferFlow, event_id
from router.settings import RetrySettings


def test_event_ids_are_uuid5_of_the_namespace_as_before() -> None:
    """event_id() gives str(uuid5(namespace, base/kind)) for any text, so re-runs keep their event ids."""
    bases = ["", "ns-1-m1", "t-1/0/17", "é ü ß", "x" * 300, "bench-49999-m49999"]
    kinds = ["TransferRequested", "SourceClosed", "rejected", "dlq", ""]
    for base in bases:
        for kind in kinds:
            assert str(uuid.uuid5(_EVENT_NS, f"{base}/{kind}")) == event_id(base, kind)


def _flow(attempts: int) -> TransferFlow:
    retry = RetrySettings(attempts=attempts, initial_seconds=0.001, max_seconds=0.002, total_seconds=5.0)
    return TransferFlow({}, {}, {}, retry, "g")


class _Calls:
    def __init__(self, failures: int, error: type[Exception] = TransientError) -> None:
        self.failures = failures
        self.error = error
        self.count = 0

    async def __call__(self) -> str:
        self.count += 1
        if self.count <= self.failures:
            raise self.error("injected")
        return "ok"


async def test_transient_failures_are_retried_with_the_first_attempt_counted() -> None:
    """Two transient failures then success: three calls, the result returned."""
    calls = _Calls(failures=2)
    assert ("ok", 3) == (await _flow(attempts=3)._retrying(calls), calls.count)


async def test_transient_failures_stop_after_the_configured_attempts() -> None:
    """Always unavailable: exactly `attempts` calls, and the error says how many."""
    calls = _Calls(failures=99)
    with pytest.raises(TransientError) as caught:
        await _flow(attempts=3)._retrying(calls)
    assert (3, 3) == (calls.count, caught.value.attempts)  # type: ignore[attr-defined]


async def test_permanent_failure_is_not_retried() -> None:
    """A permanent error surfaces at once after one call, with attempts = 1."""
    calls = _Calls(failures=99, error=PermanentError)
    with pytest.raises(PermanentError) as caught:
        await _flow(attempts=5)._retrying(calls)
    assert (1, 1) == (calls.count, caught.value.attempts)  # type: ignore[attr-defined]
