"""The monitoring page and its JSON API (FastAPI; one HTML page with plain JS, no build step).

Access is by token (``CASEBRIDGE_MONITOR__TOKENS``): a bearer header for the API and
metrics, a cookie set by the login form for the page. No token, no page. Viewers see
everything; replaying dead letters, recording milestones and recording allocations need the
operator role, and the replay and the allocation are the router's own (``router.deadletters.replay``,
``router.allocations.allocate``), audited under the token's operator name.
Everything shown is ids, councils, states, rule ids and reasons:
events carry no personal data, and neither does anything here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from contracts import MilestoneRecorded, Person
from mappings import load_deadlines
from router.allocations import AllocationNotPending, AllocationRefused, allocate
from router.deadletters import Filters, replay

from ._asyncapi import asyncapi_document
from ._service import Monitor
from ._settings import MonitorSettings, Principal
from ._views import overview, transfer_detail

log = structlog.get_logger("casebridge.monitor")
COOKIE = "casebridge_monitor"
_MILESTONE_NS = uuid.UUID("8d3c1f0e-5d1b-4a57-9c57-5b0c7d2f9a11")


@cache
def _page(name: str) -> str:
    return resources.files("monitor").joinpath("static", name).read_text(encoding="utf-8")


@cache
def milestones() -> dict[str, dict[str, list[str]]]:
    """Milestones an operator may record: for each, the councils whose deadline rules it starts or meets."""
    out: dict[str, dict[str, list[str]]] = {}
    for rule in load_deadlines():
        for key in (rule.start, rule.met_by):
            if key.startswith("milestone:"):
                out.setdefault(key.removeprefix("milestone:"), {}).setdefault(rule.council, []).append(rule.rule_id)
    return out


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transfer_id: str = Field(min_length=1, max_length=128)
    dry_run: bool = False


class MilestoneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    milestone: str = Field(min_length=1, max_length=64)


class AllocationRequest(BaseModel):
    """An allocation the receiving team made where its system cannot report it (a team mailbox). The operator is
    the token's name, not a field; the worker's name goes to the pending closure only (never echoed or logged)."""

    model_config = ConfigDict(extra="forbid")

    worker: str = Field(min_length=1, max_length=128)
    organisation: str = Field(min_length=1, max_length=128)


def _who(request: Request) -> Principal | None:
    settings: MonitorSettings = request.app.state.monitor.settings
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
    return settings.principal(token)


def _viewer(request: Request) -> Principal:
    principal = _who(request)
    if principal is None:
        raise HTTPException(401, "a viewer or operator token is required", headers={"WWW-Authenticate": "Bearer"})
    return principal


def _operator(principal: Annotated[Principal, Depends(_viewer)]) -> Principal:
    if not principal.is_operator:
        raise HTTPException(403, "this needs the operator role")
    return principal


Viewer = Annotated[Principal, Depends(_viewer)]
Operator = Annotated[Principal, Depends(_operator)]


def create_app(monitor: Monitor) -> FastAPI:
    settings = monitor.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await monitor.start()
        try:
            yield
        finally:
            await monitor.stop()

    app = FastAPI(title="casebridge monitor", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.monitor = monitor

    # -- the page ------------------------------------------------------------------------

    @app.get("/", response_model=None)
    async def page(request: Request) -> Response:
        if _who(request) is None:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(_page("index.html"), headers={"Cache-Control": "no-store"})

    @app.get("/login")
    async def login_page() -> HTMLResponse:
        return HTMLResponse(_page("login.html").replace("{{error}}", ""))

    @app.post("/login", response_model=None)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        token = (form.get("token") or [""])[0].strip()
        if settings.principal(token) is None:
            html = _page("login.html").replace("{{error}}", "That token is not valid.")
            return HTMLResponse(html, status_code=401)
        response = RedirectResponse("/", status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, max_age=12 * 3600)
        return response

    @app.post("/logout")
    async def logout() -> RedirectResponse:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -- the JSON API --------------------------------------------------------------------

    @app.get("/api/me")
    async def me(principal: Viewer) -> dict[str, Any]:
        return {"name": principal.name, "role": principal.role, "milestones": milestones()}

    @app.get("/api/overview")
    async def api_overview(_: Viewer) -> dict[str, Any]:
        return overview(monitor.store, monitor.watch)

    @app.get("/api/transfers")
    async def api_transfers(_: Viewer, q: str = "", state: str | None = None, limit: int = 50) -> dict[str, Any]:
        states = [state] if state else None
        return {"transfers": monitor.store.transfers(states=states, prefix=q or None, limit=min(max(limit, 1), 500))}

    @app.get("/api/transfers/{transfer_id}")
    async def api_transfer(_: Viewer, transfer_id: str) -> dict[str, Any]:
        detail = transfer_detail(monitor.store, monitor.watch, transfer_id)
        if detail is None:
            raise HTTPException(404, f"no transfer {transfer_id!r} in the tracker")
        return detail

    @app.get("/api/dead-letters")
    async def api_dead_letters(_: Viewer) -> dict[str, Any]:
        w = monitor.watch
        return {"dead_letters": w.dead_letters, "top_reasons": w.top_reasons(10)}

    @app.get("/api/alerts")
    async def api_alerts(
        _: Viewer, status: Literal["open", "resolved"] | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """Alerts, newest first, open or resolved (``Store.alerts``); the counts are over the latest 1,000."""
        every = monitor.store.alerts(limit=1000)
        chosen = [a for a in every if status is None or a["status"] == status]
        return {
            "alerts": chosen[: min(max(limit, 1), 1000)],
            "open": sum(a["status"] == "open" for a in every),
            "resolved": sum(a["status"] == "resolved" for a in every),
        }

    @app.get("/api/lag")
    async def api_lag(_: Viewer) -> dict[str, Any]:
        return {"consumer_lag": monitor.watch.lag}

    @app.post("/api/replay")
    async def api_replay(principal: Operator, body: ReplayRequest) -> dict[str, Any]:
        report = await replay(
            monitor.bootstrap_servers,
            monitor.topics,
            operator=principal.name,
            filters=Filters(transfer_id=body.transfer_id),
            dry_run=body.dry_run,
        )
        log.info(
            "monitor_replay",
            transfer_id=body.transfer_id,
            dry_run=body.dry_run,
            replayed=len(report.replayed),
            already_replayed=len(report.already_replayed),
        )
        await monitor.watch.refresh()
        return {
            "dry_run": report.dry_run,
            "selected": report.selected,
            "replayed": report.replayed,
            "already_replayed": report.already_replayed,
        }

    @app.post("/api/transfers/{transfer_id}/milestones")
    async def api_milestone(_: Operator, transfer_id: str, body: MilestoneRequest) -> JSONResponse:
        row = monitor.store.transfer(transfer_id)
        if row is None:
            raise HTTPException(404, f"no transfer {transfer_id!r} in the tracker")
        rule_ids = milestones().get(body.milestone, {}).get(row["council"] or "", [])
        if not rule_ids:
            raise HTTPException(
                422, f"milestone: {body.milestone!r} marks no deadline rule of council {row['council']!r}"
            )
        event = MilestoneRecorded(
            event_id=str(uuid.uuid5(_MILESTONE_NS, f"{transfer_id}/{body.milestone}")),
            transfer_id=transfer_id,
            council=row["council"],
            milestone=body.milestone,
            rule_ids=rule_ids,
        )
        await monitor.producer.send_and_wait(
            monitor.topics.events,
            value=event.model_dump_json().encode(),
            key=transfer_id.encode(),
            headers=[("event_type", b"milestone")],
        )
        return JSONResponse(json.loads(event.model_dump_json()), status_code=201)

    @app.post("/api/transfers/{transfer_id}/allocation")
    async def api_allocation(principal: Operator, transfer_id: str, body: AllocationRequest) -> JSONResponse:
        """The same audited allocation as ``casebridge allocate`` (LU-7 notice, SW22-10 / BA-9 closure)."""
        worker = Person(name=body.worker, role="Family Support Worker", organisation=body.organisation)
        try:
            done = await allocate(monitor.bootstrap_servers, monitor.topics, transfer_id, worker, principal.name)
        except AllocationNotPending as exc:
            raise HTTPException(409, str(exc)) from exc
        except AllocationRefused as exc:
            raise HTTPException(422, str(exc)) from exc
        log.info("monitor_allocation", transfer_id=transfer_id, rule_ids=done.rule_ids)
        return JSONResponse(
            {
                "transfer_id": done.transfer_id,
                "rule_ids": done.rule_ids,
                "closure_due": done.closure is not None,
                "notice_pending": done.notice is not None,
            },
            status_code=201,
        )

    # -- metrics and the AsyncAPI document ----------------------------------------------

    @app.get("/metrics")
    async def metrics(_: Viewer) -> Response:
        return Response(generate_latest(monitor.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/asyncapi.json")
    async def asyncapi(_: Viewer) -> dict[str, Any]:
        return asyncapi_document()

    return app
