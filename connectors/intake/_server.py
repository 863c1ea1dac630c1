"""The authenticated intake: where a team with no case system (Luton's) hands over a transfer.

``POST /api/transfers`` (``Authorization: Bearer TOKEN``, a canonical ``contracts.TransferMessage`` as JSON):

- 401 without a token or with one no caller holds (compared in constant time, with every caller's);
- 413 over ``max_body_bytes``;
- 403 when the transfer's council is not the caller's;
- 422 when the contract refuses it: ``{"error": "invalid-transfer", "errors": [{field, rule, message}]}``, the
  router's shape (``contracts.field_errors``), never the value; the intake is the mailbox source, so
  ``pathway.from_system`` and ``source_record.system`` must be ``mailbox``;
- 202 ``{"transfer_id", "status": "accepted"}`` once the broker acknowledged (acks=all) the transfer on the
  transfers topic, keyed by child like every publisher (``<system>:<id>`` of the first identifier), and its
  audit record;
- 200 ``already received`` for the same transfer id with the same content (``message_id`` aside), 409 with
  different content;
- 503 when the broker did not acknowledge (nothing is recorded as published; posting again is safe).

Every post, accepted or refused, writes an audit record (:class:`IntakeAudit`) to the intake audit topic
(``<prefix>.intake-audit``, kept as the audit topic is; the ``casebridge run`` principal writes it, not the operators'
audit topic), keyed ``intake/<transfer id>``: the caller's name, the time, the transfer id, the outcome; never
personal data.

``GET /api/transfers/{transfer_id}`` (same auth): received / closed (with the closure reason) / kept-open,
for transfers of the caller's council only (another council's is answered 404, as an unknown one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
import uvicorn
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from contracts import FieldError, TransferMessage, field_errors, wire
from router import topics as topic_setup
from router.settings import Topics, TopicSettings

from .._feed import idempotent_producer
from .._tracing import headers_with_context, publishing
from ..kafka import Kafka
from ._settings import IntakeCaller, IntakeSettings
from ._store import IntakeStore, digest

log = structlog.get_logger("casebridge.intake")

#: the intake audit topic's key prefix for an intake post
INTAKE_AUDIT_PREFIX = wire.INTAKE_AUDIT_PREFIX

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")

Outcome = Literal[
    "accepted",
    "already-received",
    "conflict",
    "refused-unauthenticated",
    "refused-too-large",
    "refused-council",
    "refused-invalid",
    "unavailable",
]


class IntakeAudit(BaseModel):
    """One record of ``<prefix>.intake-audit``: who posted to the intake, when, which transfer, what came of it.

    ``fields`` names the fields a refused transfer broke (``field: rule``), never their values."""

    action: Literal["intake-post"] = "intake-post"
    caller: str | None
    at: datetime
    transfer_id: str | None
    council: str | None
    outcome: Outcome
    status: int
    fields: list[str] = []


class _Refused(Exception):
    def __init__(self, status: int, outcome: Outcome, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(outcome)
        self.status = status
        self.outcome = outcome
        self.body = body
        self.headers = headers
        self.fields: list[str] = []


def _now() -> datetime:
    return datetime.now(UTC)


def _peek_transfer_id(doc: Any) -> str | None:
    """A refused body's transfer id, for the audit, where it is a well-formed identifier (nothing else)."""
    value = doc.get("transfer_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and _IDENTIFIER.match(value) else None


def _intake_errors(transfer: TransferMessage, caller: IntakeCaller) -> list[FieldError]:
    """The transfer must start on a system this caller may post for (by default the team mailbox)."""
    errors = []
    allowed = ", ".join(sorted(s.value for s in caller.sources))
    if transfer.pathway.from_system not in caller.sources:
        errors.append(
            FieldError(field="pathway.from_system", rule="intake_source", message=f"this caller posts for {allowed}")
        )
    if transfer.source_record.system not in caller.sources:
        errors.append(
            FieldError(field="source_record.system", rule="intake_source", message=f"this caller posts for {allowed}")
        )
    return errors


class _InLoopServer(uvicorn.Server):
    """uvicorn on the caller's event loop; the hosting process (``casebridge run``) owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class IntakeServer:
    """The intake's HTTP endpoint, served by uvicorn on the running asyncio loop, and its Kafka producer.

    ``IntakeServer(settings, kafka, topics, store_path)``: ``settings`` says where to listen and
    who may post; transfers go to ``topics.transfers`` and audit records to ``topics.intake_audit``; ``store_path`` is
    the SQLite file of what was received (:data:`STORE_NAME` under the deployment's state directory), the same
    file the router's :class:`IntakeSource` reads and writes. ``start()`` binds and serves (``port`` 0 picks a
    free port: see :attr:`port` / :attr:`url`), ``run(interval, stop)`` returns when ``stop()`` is true (and
    raises if the server died), ``stop()`` closes it all. ``clock`` is for tests.
    """

    def __init__(
        self,
        settings: IntakeSettings,
        kafka: Kafka,
        topics: Topics,
        store_path: Path,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topics = topics
        self.store_path = store_path
        self.clock = clock
        self.port: int | None = None
        self.app = self._create_app()
        self._store: IntakeStore | None = None
        self._producer = idempotent_producer(kafka)
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None
        #: posts of one transfer id are handled one at a time (striped: bounded, whatever the traffic)
        self._locks = [asyncio.Lock() for _ in range(64)]

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the intake is not started")
        host = self.settings.host
        host = "127.0.0.1" if host in {"", "0.0.0.0"} else "::1" if host == "::" else host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def store(self) -> IntakeStore:
        if self._store is None:
            raise RuntimeError("the intake is not started")
        return self._store

    async def start(self) -> None:
        # the router creates them too; whichever starts first, they are created alike (the router's partitions,
        # the audit trail kept forever: router/topics.py)
        mine = {self.topics.transfers, self.topics.intake_audit}
        await topic_setup.prepare(self.kafka, self.topics, 0, TopicSettings(), mine)
        self._store = IntakeStore(self.store_path)
        await self._producer.start()
        try:
            family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.settings.host, self.settings.port))  # a port taken fails here, not in a task
            sock.set_inheritable(True)
            self.port = int(sock.getsockname()[1])
            config = uvicorn.Config(
                self.app, log_level="warning", access_log=False, lifespan="off", server_header=False, log_config=None
            )  # log_config=None: uvicorn's lines go to the root handler, and so through the redaction
            self._server = _InLoopServer(config)
            self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="intake-http")
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("the intake's HTTP server stopped while starting")
                await asyncio.sleep(0.01)
        except BaseException:
            await self._producer.stop()
            self._store.close()
            raise
        log.info("intake_serving", host=self.settings.host, port=self.port, callers=len(self.settings.callers))

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        """Serve until ``stop()``; an HTTP server that died raises (the stack then stops and is restarted)."""
        while not stop():
            if self._task is None or self._task.done():
                if self._task is not None and not self._task.cancelled() and self._task.exception() is not None:
                    raise RuntimeError("the intake's HTTP server failed") from self._task.exception()
                raise RuntimeError("the intake's HTTP server is not running")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        self._server = self._task = None
        await self._producer.stop()
        if self._store is not None:
            self._store.close()
            self._store = None
        log.info("intake_stopped")

    async def __aenter__(self) -> IntakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ the HTTP API

    def _caller(self, request: Request) -> IntakeCaller | None:
        """The caller holding the bearer token, compared in constant time with every caller's."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = token.strip().encode()
        found = None
        for caller in self.settings.callers:
            if secrets.compare_digest(caller.token.get_secret_value().encode(), given) and found is None:
                found = caller
        return found

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = _Refused(413, "refused-too-large", {"error": "too-large", "max_bytes": limit})
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _audit(self, audit: IntakeAudit) -> None:
        key = f"{INTAKE_AUDIT_PREFIX}{audit.transfer_id or '-'}".encode()
        await self._producer.send_and_wait(self.topics.intake_audit, audit.model_dump_json().encode(), key=key)

    def _lock(self, transfer_id: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(transfer_id.encode()) % len(self._locks)]

    def _create_app(self) -> FastAPI:
        app = FastAPI(title="casebridge intake", docs_url=None, redoc_url=None, openapi_url=None)

        @app.post("/api/transfers")
        async def post_transfer(request: Request) -> JSONResponse:
            caller = self._caller(request)
            transfer_id: str | None = None
            try:
                if caller is None:
                    raise _Refused(
                        401, "refused-unauthenticated", {"error": "unauthorised"}, {"WWW-Authenticate": "Bearer"}
                    )
                body = await self._body(request)
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = None
                transfer_id = _peek_transfer_id(doc)
                stated = doc.get("council") if isinstance(doc, dict) else None
                if isinstance(stated, str) and stated != caller.council.value:
                    raise _council(caller)
                try:
                    transfer = TransferMessage.model_validate_json(body)
                except ValidationError as exc:
                    raise _invalid(field_errors(exc)) from None
                if transfer.council is not caller.council:
                    raise _council(caller)
                errors = _intake_errors(transfer, caller)
                if errors:
                    raise _invalid(errors)
                transfer_id = transfer.transfer_id
                status, outcome, answer = await self._accept(transfer, caller)
            except _Refused as refused:
                status, outcome, answer = refused.status, refused.outcome, refused.body
                fields, headers = refused.fields, refused.headers
            else:
                fields, headers = [], None
            audit = IntakeAudit(
                caller=caller.name if caller else None,
                at=self.clock(),
                transfer_id=transfer_id,
                council=caller.council.value if caller else None,
                outcome=outcome,
                status=status,
                fields=fields,
            )
            if outcome != "accepted":  # an accepted post was audited before it was answered (in _accept)
                try:
                    await self._audit(audit)
                except KafkaError as exc:
                    log.error("intake_audit_failed", transfer_id=transfer_id, error_class=type(exc).__name__)
            log.info(
                "intake_post",
                caller=audit.caller,
                transfer_id=transfer_id,
                outcome=outcome,
                status=status,
                fields=fields or None,
            )
            return JSONResponse(answer, status_code=status, headers=headers)

        @app.get("/api/transfers/{transfer_id}")
        async def get_transfer(transfer_id: str, request: Request) -> JSONResponse:
            caller = self._caller(request)
            if caller is None:
                return JSONResponse({"error": "unauthorised"}, 401, headers={"WWW-Authenticate": "Bearer"})
            entry = self.store.get(transfer_id) if _IDENTIFIER.match(transfer_id) else None
            if entry is None or entry.council != caller.council.value or entry.digest is None:
                return JSONResponse({"error": "not-found"}, 404)
            log.info("intake_status_read", caller=caller.name, transfer_id=transfer_id, status=entry.status)
            return JSONResponse(entry.status_view())

        return app

    async def _accept(self, transfer: TransferMessage, caller: IntakeCaller) -> tuple[int, Outcome, dict[str, Any]]:
        """Publish a valid transfer once (per content): 202 after the broker acknowledged it and its audit."""
        content = digest(transfer)
        tid = transfer.transfer_id
        async with self._lock(tid):
            entry = self.store.receive(transfer, caller.name, content)
            if entry.digest != content:
                raise _Refused(
                    409,
                    "conflict",
                    {"error": "conflict", "transfer_id": tid, "detail": "received before with other content"},
                )
            if entry.published_at is not None or entry.status != "received":
                return 200, "already-received", {"transfer_id": tid, "status": "already received"}
            audit = IntakeAudit(
                caller=caller.name,
                at=self.clock(),
                transfer_id=tid,
                council=caller.council.value,
                outcome="accepted",
                status=202,
            )
            try:
                with publishing(tid, "intake", self.topics.transfers):  # the transfer's trace starts here
                    await self._producer.send_and_wait(
                        self.topics.transfers,
                        transfer.model_dump_json().encode(),
                        key=wire.transfer_key(transfer),
                        headers=headers_with_context(()),
                    )
                await self._audit(audit)
            except KafkaError as exc:
                log.error("intake_publish_failed", transfer_id=tid, error_class=type(exc).__name__)
                raise _Refused(
                    503, "unavailable", {"error": "unavailable", "transfer_id": tid}, {"Retry-After": "30"}
                ) from None
            self.store.published(tid)
            return 202, "accepted", {"transfer_id": tid, "status": "accepted"}


def _council(caller: IntakeCaller) -> _Refused:
    return _Refused(
        403, "refused-council", {"error": "forbidden", "detail": f"this caller posts for {caller.council.value} only"}
    )


def _invalid(errors: list[FieldError]) -> _Refused:
    refused = _Refused(
        422, "refused-invalid", {"error": "invalid-transfer", "errors": [e.model_dump() for e in errors]}
    )
    refused.fields = [f"{e.field}: {e.rule}" for e in errors[:20]]
    return refused
