"""One error tree. Whether an error is worth retrying is a property of its class.

Connectors translate vendor failures at their boundary (``raise ... from exc``); the
router alone decides how to retry. Messages never carry personal data.
"""

from __future__ import annotations

from typing import ClassVar


class CasebridgeError(Exception):
    retriable: ClassVar[bool] = False
    #: the rule ids this failure is about, where a protocol rule is the cause
    rule_ids: tuple[str, ...] = ()

    #: the message is built from templates only (system, method, path with ids blanked, status, rule): safe to log
    templated: bool = False


class TransientError(CasebridgeError):
    """Worth retrying: timeouts, refused or reset connections, 5xx, 429."""

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TargetUnavailable(TransientError):
    """The case system did not answer, or answered 5xx / 429."""


class PermanentError(CasebridgeError):
    """Retrying will not help until something is fixed: dead-letter at once."""


class TargetRefused(PermanentError):
    """The case system refused the request (4xx other than 429)."""

    def __init__(self, message: str, *, status: int, rule_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.rule_ids = rule_ids


class RecordClosed(PermanentError):
    """NS-7: the source record is closed, so it can no longer be stepped down."""

    rule_ids = ("NS-7",)


class RuleRefused(PermanentError):
    """A connector refuses a request because a protocol rule forbids it (before or after asking the system)."""

    def __init__(self, message: str, *, rule_ids: tuple[str, ...]) -> None:
        super().__init__(message)
        self.rule_ids = rule_ids
