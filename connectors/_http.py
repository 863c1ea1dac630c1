"""The HTTP boundary every connector shares: auth, timeouts, and translation of failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from contracts import CaseSystem, TransferMessage

from ._base import Source
from ._budget import call_deadline
from ._errors import CasebridgeError, TargetRefused, TargetUnavailable
from ._metrics import CALL_ERRORS, CALL_RETRIES, CALL_SECONDS, RetryMemory, status_class
from ._tracing import calling


class HttpClient:
    """A case system reached by base URL and bearer token, as the real one is."""

    def __init__(self, system: str, base_url: str, token: SecretStr, timeout: float = 10.0) -> None:
        self.system = system
        #: the whole request, however slowly the system trickles its answer (httpx's timeout is per read)
        self.deadline = timeout
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
            timeout=timeout,
        )
        self._retries = RetryMemory()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send; translate transport failures, 5xx and 429 to TargetUnavailable, other 4xx to TargetRefused (their
        messages built from templates only: ``templated``, safe to log). Each call is measured
        (``connectors._metrics``): its seconds, its error class if it failed, whether it repeats a transient
        failure; labelled by system and the call's template, never an id."""
        operation = f"{method} {_template(path)}"
        if self._retries.repeats(method, path):
            CALL_RETRIES.labels(self.system, operation).inc()
        started = time.monotonic()
        error_class: str | None = None
        transient = False
        with calling(self.system, operation) as span:
            try:
                response = await self._send(method, path, **kwargs)
                if span is not None:
                    span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 400:
                    error_class = status_class(response.status_code)
                return self._checked(method, path, response)
            except CasebridgeError as exc:
                exc.templated = True
                transient = exc.retriable
                if error_class is None:  # no answer: the transport's own exception class (ConnectError, ReadTimeout)
                    error_class = type(exc.__cause__ or exc).__name__
                if span is not None:
                    span.set_attribute("error.type", error_class)
                raise
            finally:
                CALL_SECONDS.labels(self.system, operation).observe(time.monotonic() - started)
                if error_class is not None:
                    CALL_ERRORS.labels(self.system, operation, error_class).inc()
                if transient:
                    self._retries.failed(method, path)
                else:
                    self._retries.answered(method, path)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = call_deadline(self.deadline)  # the connector's own, or less: what the retry budget has left
        try:
            async with asyncio.timeout(deadline):
                return await self._client.request(method, path, **kwargs)
        except TimeoutError as exc:
            raise TargetUnavailable(
                f"{self.system}: {method} {_template(path)} did not answer within {deadline:.3g} s"
            ) from exc
        except httpx.TimeoutException as exc:
            raise TargetUnavailable(f"{self.system}: {method} {_template(path)} timed out") from exc
        except httpx.TransportError as exc:
            raise TargetUnavailable(f"{self.system}: {method} {_template(path)} failed: {type(exc).__name__}") from exc

    def _checked(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        if response.status_code == 429 or response.status_code >= 500:
            raise TargetUnavailable(
                f"{self.system}: {method} {_template(path)} answered {response.status_code}",
                retry_after=_retry_after(response),
            )
        if response.status_code in (401, 403):
            raise TargetRefused(
                f"{self.system}: {method} {_template(path)} answered {response.status_code}: check the credentials"
                f" casebridge uses for {self.system} (its token in the deployment file)",
                status=response.status_code,
            )
        if response.status_code >= 400:
            rule = _rule_of(response)
            raise TargetRefused(
                f"{self.system}: {method} {_template(path)} refused with {response.status_code}"
                + (f" ({rule})" if rule else ""),
                status=response.status_code,
                rule_ids=(rule,) if rule else (),
            )
        return response


def _template(path: str) -> str:
    """The path with ids blanked, so no identifier reaches an error message."""
    return "/".join("{id}" if any(c.isdigit() for c in part) else part for part in path.split("/"))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _rule_of(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    rule = body.get("rule") if isinstance(body, dict) else None
    return rule if isinstance(rule, str) else None


class HttpConnection:
    """The lifecycle every HTTP connector shares: a client opened at ``start()``, closed at ``stop()``."""

    system: ClassVar[CaseSystem]

    def __init__(self, base_url: str, token: SecretStr, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self._token = token
        self._timeout = timeout
        self._http: HttpClient | None = None

    async def start(self) -> None:
        self._http = HttpClient(self.system.value, self.base_url, self._token, self._timeout)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    @property
    def http(self) -> HttpClient:
        if self._http is None:
            raise RuntimeError(f"{type(self).__name__} used before start()")
        return self._http

    async def feed_page(self, path: str, key: str, after: int) -> tuple[list[dict[str, Any]], int]:
        """One page of a case system's feed after the cursor (its items under ``key``), and the next cursor."""
        feed = (await self.http.request("GET", path, params={"after": after, "limit": 500})).json()
        return list(feed[key]), int(feed["last_seq"])

    async def close_once(self, path: str, body: dict[str, Any], source: Source, transfer: TransferMessage) -> None:
        """POST a close; a 409 because this same transfer already closed the record counts as done (re-runs)."""
        try:
            await self.http.request("POST", path, json=body)
        except TargetRefused as exc:
            if exc.status != 409 or (await source.state(transfer)).closed_by_transfer != transfer.transfer_id:
                raise
