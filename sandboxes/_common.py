"""Shared plumbing for the sandbox case systems.

Bearer-token auth, JSON error bodies, a small sqlite3 helper, fault injection
(``/_sandbox/faults``) and an in-process uvicorn runner (:func:`serve`).

Nothing here logs request bodies or record contents: log lines carry ids only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Self

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "FAULTS_PATH",
    "Clock",
    "Database",
    "FaultList",
    "FaultOut",
    "FaultRegistry",
    "FaultSpec",
    "FaultsCleared",
    "SandboxError",
    "ServerHandle",
    "StrictModel",
    "bearer_auth",
    "dump_json",
    "fault_router",
    "install_common",
    "lifespan_closing",
    "parse_prefixed_id",
    "run_forever",
    "serve",
    "utcnow",
]

logger = logging.getLogger("sandboxes")

FAULTS_PATH = "/_sandbox/faults"
_SANDBOX_PREFIX = "/_sandbox"

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class StrictModel(BaseModel):
    """Base for every request/response body: unknown fields are a 422."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# --------------------------------------------------------------------------- errors


class SandboxError(Exception):
    """An error answered as ``{"error": <code>, ...extra}`` with the given status."""

    def __init__(
        self,
        status_code: int,
        error: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.error = error
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, **self.extra},
            status_code=self.status_code,
            headers=self.headers or None,
        )


RuleHint = Callable[[Request, Sequence[Mapping[str, Any]]], "str | None"]


def _field_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(parts)


def _install_error_handlers(app: FastAPI, rule_hint: RuleHint | None) -> None:
    async def sandbox_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SandboxError)
        return exc.response()

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # Deliberately no "input" echo: bodies may hold personal data.
        detail = [
            {
                "field": _field_name(err.get("loc", ())),
                "loc": list(err.get("loc", ())),
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()
        ]
        body: dict[str, Any] = {"error": "validation_error", "detail": detail}
        if rule_hint is not None:
            rule = rule_hint(request, detail)
            if rule is not None:
                body["rule"] = rule
        return JSONResponse(body, status_code=422)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = str(exc.detail).strip().lower().replace(" ", "_") or "http_error"
        return JSONResponse({"error": code}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(SandboxError, sandbox_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


# ----------------------------------------------------------------------------- auth

_bearer = HTTPBearer(auto_error=False, description="Sandbox bearer token")


def bearer_auth(token: str) -> Callable[..., None]:
    """A FastAPI dependency that accepts only ``Authorization: Bearer <token>``.

    Missing or wrong credentials answer 401 ``{"error": "unauthorized", "reason": ...}``.
    """
    if not token:
        raise ValueError("sandbox token must not be empty")
    expected = token.encode()

    def check(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise SandboxError(401, "unauthorized", headers=challenge, reason="missing_bearer_token")
        if not secrets.compare_digest(credentials.credentials.encode(), expected):
            raise SandboxError(401, "unauthorized", headers=challenge, reason="invalid_bearer_token")

    return check


# --------------------------------------------------------------------------- sqlite


class Database:
    """One sqlite3 file, one shared connection guarded by a lock, WAL journal.

    The connection is opened lazily and closed on app shutdown, so an app
    object can be served again after a stop.
    """

    def __init__(self, path: Path, schema: str) -> None:
        self.path = Path(path)
        self._schema = schema
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        with self.transaction():
            pass  # creates the file and the schema now, so errors surface early

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(self._schema)
            self._conn = conn
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); commits on success."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads (autocommit; each statement is consistent)."""
        with self._lock:
            yield self._connection()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def dump_json(model: BaseModel) -> str:
    """A model as compact JSON text for storage."""
    return json.dumps(model.model_dump(mode="json"), separators=(",", ":"))


# -------------------------------------------------------------------- fault injection


class FaultSpec(StrictModel):
    """What to inject. ``count`` and ``seconds`` both null: until cleared."""

    status: int | None = Field(default=503, ge=400, le=599, description="status to answer; null = delay only")
    count: int | None = Field(default=None, ge=1)
    seconds: float | None = Field(default=None, gt=0)
    delay_ms: int = Field(default=0, ge=0, le=120_000)
    path_prefix: str | None = Field(default=None, min_length=1)
    retry_after: int | None = Field(default=None, ge=0)

    @field_validator("path_prefix")
    @classmethod
    def _prefix_is_a_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("path_prefix must start with '/'")
        return value

    @field_validator("delay_ms")
    @classmethod
    def _does_something(cls, value: int, info: ValidationInfo) -> int:
        if "status" in info.data and info.data["status"] is None and value == 0:
            raise ValueError("a fault needs a status, a delay_ms > 0, or both")
        return value

    @field_validator("retry_after")
    @classmethod
    def _retry_after_needs_status(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and "status" in info.data and info.data["status"] is None:
            raise ValueError("retry_after needs a status")
        return value


class FaultOut(StrictModel):
    fault_id: str
    status: int | None
    count: int | None
    seconds: float | None
    delay_ms: int
    path_prefix: str | None
    retry_after: int | None
    remaining: int | None
    created_at: datetime
    expires_at: datetime | None


class FaultList(StrictModel):
    faults: list[FaultOut]


class FaultsCleared(StrictModel):
    cleared: int


class _Fault:
    def __init__(self, fault_id: str, spec: FaultSpec, now: datetime) -> None:
        self.fault_id = fault_id
        self.spec = spec
        self.remaining = spec.count
        self.created_at = now
        self.deadline = time.monotonic() + spec.seconds if spec.seconds else None
        self.expires_at = now + timedelta(seconds=spec.seconds) if spec.seconds else None

    def live(self, now_mono: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.deadline is None or now_mono < self.deadline

    def matches(self, path: str) -> bool:
        prefix = self.spec.path_prefix
        return prefix is None or path.startswith(prefix)

    def out(self) -> FaultOut:
        s = self.spec
        return FaultOut(
            fault_id=self.fault_id,
            status=s.status,
            count=s.count,
            seconds=s.seconds,
            delay_ms=s.delay_ms,
            path_prefix=s.path_prefix,
            retry_after=s.retry_after,
            remaining=self.remaining,
            created_at=self.created_at,
            expires_at=self.expires_at,
        )


class FaultRegistry:
    """Active faults of one app (in memory; a restart clears them)."""

    def __init__(self, clock: Clock = utcnow) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._next = 1
        self._clock = clock

    def add(self, spec: FaultSpec) -> FaultOut:
        with self._lock:
            fault = _Fault(f"F-{self._next}", spec, self._clock())
            self._next += 1
            self._faults.append(fault)
            return fault.out()

    def _prune(self) -> None:
        now = time.monotonic()
        self._faults = [f for f in self._faults if f.live(now)]

    def active(self) -> list[FaultOut]:
        with self._lock:
            self._prune()
            return [f.out() for f in self._faults]

    def clear(self, fault_id: str | None = None) -> int:
        with self._lock:
            before = len(self._faults)
            if fault_id is None:
                self._faults = []
            else:
                self._faults = [f for f in self._faults if f.fault_id != fault_id]
            return before - len(self._faults)

    def take(self, path: str) -> FaultSpec | None:
        """The fault that applies to a call on ``path`` (consuming one count), if any."""
        if path == _SANDBOX_PREFIX or path.startswith(_SANDBOX_PREFIX + "/"):
            return None
        with self._lock:
            self._prune()
            for fault in self._faults:
                if fault.matches(path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault.spec
            return None


class FaultMiddleware:
    """Pure ASGI middleware answering/delaying calls that match an active fault."""

    def __init__(self, app: ASGIApp, registry: FaultRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        spec = self.registry.take(str(scope.get("path", "")))
        if spec is None:
            await self.app(scope, receive, send)
            return
        logger.info(
            "injected fault status=%s delay_ms=%s path_prefix=%s",
            spec.status,
            spec.delay_ms,
            spec.path_prefix,
        )
        if spec.delay_ms:
            await asyncio.sleep(spec.delay_ms / 1000)
        if spec.status is None:
            await self.app(scope, receive, send)
            return
        headers = {"Retry-After": str(spec.retry_after)} if spec.retry_after is not None else None
        response = JSONResponse(
            {"error": "injected_fault", "status": spec.status},
            status_code=spec.status,
            headers=headers,
        )
        await response(scope, receive, send)


def fault_router(registry: FaultRegistry) -> APIRouter:
    """``/_sandbox/faults``: POST adds, GET lists, DELETE clears (all or one)."""
    router = APIRouter(prefix=FAULTS_PATH, tags=["sandbox"])

    @router.post("", status_code=201)
    def add_fault(spec: FaultSpec) -> FaultOut:
        return registry.add(spec)

    @router.get("")
    def list_faults() -> FaultList:
        return FaultList(faults=registry.active())

    @router.delete("")
    def clear_faults() -> FaultsCleared:
        return FaultsCleared(cleared=registry.clear())

    @router.delete("/{fault_id}")
    def clear_fault(fault_id: str) -> FaultsCleared:
        cleared = registry.clear(fault_id)
        if not cleared:
            raise SandboxError(404, "fault_not_found", fault_id=fault_id)
        return FaultsCleared(cleared=cleared)

    return router


def install_common(
    app: FastAPI,
    *,
    clock: Clock = utcnow,
    rule_hint: RuleHint | None = None,
) -> FaultRegistry:
    """JSON error handlers, fault middleware and the faults router on ``app``.

    ``app`` should have been built with the :func:`bearer_auth` dependency so
    the faults router is token protected like everything else.
    """
    _install_error_handlers(app, rule_hint)
    registry = FaultRegistry(clock)
    app.add_middleware(FaultMiddleware, registry=registry)
    app.include_router(fault_router(registry))
    return registry


# -------------------------------------------------------------------------- serving


class ServerHandle:
    """A uvicorn server running on a background thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port
        url_host = "127.0.0.1" if host in {"0.0.0.0", ""} else "::1" if host == "::" else host
        if ":" in url_host:
            url_host = f"[{url_host}]"
        self.url = f"http://{url_host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread (idempotent)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r}, running={self.running})"


def _config(app: FastAPI, host: str, port: int, log_level: str, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        log_config=None,  # no handlers of uvicorn's own: its lines go to the root handler (casebridge's redaction)
        lifespan="on",
        server_header=False,
    )


def serve(
    app: FastAPI,
    host: str,
    port: int,
    *,
    startup_timeout: float = 15.0,
    log_level: str = "warning",
) -> ServerHandle:
    """Run ``app`` with uvicorn on a daemon thread; return once it accepts connections.

    ``port=0`` picks a free port; the handle's ``.port``/``.url`` carry the bound one.
    """
    server = uvicorn.Server(_config(app, host, port, log_level, access_log=False))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as exc:  # uvicorn exits this way when it cannot bind
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"sandbox-{host}:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or failure:
            raise RuntimeError(f"sandbox server failed to start on {host}:{port}: {failure!r}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"sandbox server did not start on {host}:{port}")
        time.sleep(0.01)
    sockets = [s for srv in server.servers for s in (srv.sockets or ())]
    if not sockets:
        server.should_exit = True
        raise RuntimeError("sandbox server has no listening socket")
    bound_port = int(sockets[0].getsockname()[1])
    handle = ServerHandle(server, thread, host, bound_port)
    _wait_connectable(handle, deadline)
    logger.info("sandbox %s serving on %s", app.title, handle.url)
    return handle


def _wait_connectable(handle: ServerHandle, deadline: float) -> None:
    host = handle.url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    while True:
        try:
            with socket.create_connection((host, handle.port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                handle.stop()
                raise TimeoutError(f"sandbox server on {handle.url} refuses connections") from None
            time.sleep(0.01)


def run_forever(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve ``app`` in the foreground until interrupted (for the CLIs).

    The access log is on: it holds methods, paths and statuses (ids only).
    """
    uvicorn.Server(_config(app, host, port, log_level, access_log=True)).run()


def lifespan_closing(
    db: Database,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that closes ``db`` when the server shuts down."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            db.close()

    return lifespan


def parse_prefixed_id(value: str, prefix: str) -> int | None:
    """``"LCS-12"`` -> 12 for prefix ``"LCS-"``; None when it does not fit."""
    if not value.startswith(prefix):
        return None
    digits = value[len(prefix) :]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


def row_by_prefixed_id(
    conn: sqlite3.Connection, table: str, value: str, prefix: str, *, error: str, field: str
) -> sqlite3.Row:
    """The row of ``table`` that ``value`` names (``"LCS-12"`` -> id 12), else a 404 ``error`` naming ``field``."""
    n = parse_prefixed_id(value, prefix)
    row: sqlite3.Row | None = None
    if n is not None:
        row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (n,)).fetchone()
    if row is None:
        extra: dict[str, Any] = {field: value}
        raise SandboxError(404, error, **extra)
    return row


#: a feed's cursor (the last seq read) and page size, as every sandbox feed takes them
FeedAfter = Annotated[int, Query(ge=0)]
FeedLimit = Annotated[int, Query(ge=1, le=1000)]


def feed_page(
    conn: sqlite3.Connection, select: str, after: int, limit: int, seq: str = "seq"
) -> tuple[list[Any], int, bool]:
    """One page of a feed read by cursor: the rows after ``after`` in ``seq`` order, the page's last seq
    (``after`` when empty) and whether more follow. ``select`` is the query up to its WHERE; ``seq`` is the
    ordering column as the query names it (``d.seq`` in a join), read back from the rows as ``seq``."""
    rows = conn.execute(f"{select} WHERE {seq} > ? ORDER BY {seq} LIMIT ?", (after, limit + 1)).fetchall()
    page = rows[:limit]
    return page, (page[-1]["seq"] if page else after), len(rows) > limit


def sandbox_app(
    title: str, db: Database, token: str, *, clock: Clock = utcnow, rule_hint: RuleHint | None = None
) -> FastAPI:
    """A sandbox app on ``db``: every route behind the bearer ``token``, common error handlers and faults.

    ``app.state.db`` and ``app.state.faults`` are set; ``db`` is closed when the server shuts down.
    """
    app = FastAPI(
        title=f"casebridge sandbox: {title}",
        version="1",
        dependencies=[Depends(bearer_auth(token))],
        lifespan=lifespan_closing(db),
    )
    app.state.db = db
    app.state.faults = install_common(app, clock=clock, rule_hint=rule_hint)
    return app
