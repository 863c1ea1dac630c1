"""The monitoring page and its JSON API (FastAPI; one HTML page with plain JS, no build step).

Access is by token (``CASEBRIDGE_MONITOR__TOKENS``): a bearer header for the API and
metrics; for the page, the login form opens a server-side session (``_sessions.Sessions``) whose
random id is all the cookie carries (idle and absolute expiry, revoked at sign-out). No token, no page.
Every answer carries a strict Content-Security-Policy (no inline script or style), frame and sniffing
guards and ``Cache-Control: no-store``; every POST that could ride on the cookie must come from the page's
own origin (Origin, else Sec-Fetch-Site), and failed sign-ins are throttled per client address. Viewers see
everything; replaying dead letters, recording milestones and recording allocations need the
operator role, and the replay and the allocation are the router's own (``router.deadletters.replay``,
``router.allocations.allocate``), audited under the token's operator name.
Everything shown is ids, councils, states, rule ids and reasons:
events carry no personal data, and neither does anything here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts import Council, Person
from mappings import load_deadlines
from router.allocations import AllocationNotPending, AllocationRefused, MilestoneAudit, allocate
from router.deadletters import Filters, Status, replay, router_members

from ._asyncapi import asyncapi_document
from ._service import Monitor
from ._sessions import LoginThrottle, Sessions
from ._settings import MonitorSettings, Principal
from ._views import DEAD_LETTER_PAGE, DEAD_LETTER_PAGE_MAX, charts, dead_letter_page, overview, transfer_detail

log = structlog.get_logger("casebridge.monitor")
COOKIE = "casebridge_monitor"
#: the cookie's name when served over https: Secure, Path=/, no Domain (the browser enforces all three)
SECURE_COOKIE = "__Host-casebridge_monitor"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_STATIC = {
    "monitor.js": "text/javascript",
    "charts.js": "text/javascript",
    "monitor.css": "text/css",
    "login.css": "text/css",
}


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
    """A replay from the page, in two steps: a preview (``dry_run``) of what the filters select, then a confirmation
    naming exactly the dead letters the preview listed (``dead_letter_ids``); only those are replayed. The filters
    are the CLI's (``casebridge replay``); at least one is required, so nobody replays everything by a slip."""

    model_config = ConfigDict(extra="forbid")

    transfer_id: str | None = Field(default=None, min_length=1, max_length=128)
    council: Council | None = None
    pathway: Literal["step-up", "step-down"] | None = None
    rule_id: str | None = Field(default=None, min_length=1, max_length=32)
    error_class: str | None = Field(default=None, min_length=1, max_length=64)
    dry_run: bool = False
    #: the confirmation: the ids the preview listed (required unless ``dry_run``)
    dead_letter_ids: list[str] | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def _filtered_and_confirmed(self) -> ReplayRequest:
        if not any((self.transfer_id, self.council, self.pathway, self.rule_id, self.error_class)):
            raise ValueError("give at least one filter (transfer_id, council, pathway, rule_id, error_class)")
        if not self.dry_run and self.dead_letter_ids is None:
            raise ValueError("dead_letter_ids: required to replay: preview first (dry_run), then confirm its ids")
        return self


class MilestoneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    milestone: str = Field(min_length=1, max_length=64)


class AllocationRequest(BaseModel):
    """An allocation the receiving team made where its system cannot report it (a team mailbox). The operator is
    the token's name, not a field; the worker's name goes to the pending closure only (never echoed or logged)."""

    model_config = ConfigDict(extra="forbid")

    worker: str = Field(min_length=1, max_length=128)
    organisation: str = Field(min_length=1, max_length=128)


def _settings(request: Request) -> MonitorSettings:
    settings: MonitorSettings = request.app.state.monitor.settings
    return settings


def _forwarded(request: Request, header: str) -> str | None:
    """The first value of an X-Forwarded-* header, only when the settings trust the proxy that sets it."""
    if not _settings(request).trust_proxy:
        return None
    value = request.headers.get(header, "").split(",")[0].strip()
    return value or None


def _is_https(request: Request) -> bool:
    """Whether the browser reached the page over https: ``secure_cookies``, a trusted proxy's X-Forwarded-Proto,
    or the connection itself (never an X-Forwarded-Proto the settings do not trust)."""
    if _settings(request).secure_cookies:
        return True
    proto = _forwarded(request, "x-forwarded-proto")
    if proto is not None:
        return proto.lower() == "https"
    if "x-forwarded-proto" in request.headers:  # untrusted: the server may have applied it; ignore it
        return False
    return request.url.scheme == "https"


def _own_origin(request: Request) -> str | None:
    host = _forwarded(request, "x-forwarded-host") or request.headers.get("host")
    if not host:
        return None
    return f"{'https' if _is_https(request) else 'http'}://{host.lower()}"


def _client(request: Request) -> str:
    """The client address for the sign-in throttle. A forwarded address counts only behind a trusted proxy; without
    one, every request that carries X-Forwarded-For shares one bucket (a client cannot rotate its way out)."""
    forwarded = _forwarded(request, "x-forwarded-for")
    if forwarded is not None:
        return forwarded
    if "x-forwarded-for" in request.headers:
        return "untrusted-x-forwarded-for"
    return request.client.host if request.client else "unknown"


def _cookie_name(request: Request) -> str:
    return SECURE_COOKIE if _is_https(request) else COOKIE


def _session_id(request: Request) -> str | None:
    return request.cookies.get(_cookie_name(request))


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def _who(request: Request) -> Principal | None:
    token = _bearer(request)
    if token is not None:
        return _settings(request).principal(token)
    sessions: Sessions = request.app.state.sessions
    return sessions.get(_session_id(request))


def _same_origin(request: Request) -> bool:
    """A POST the page itself made: Origin equal to the page's own, or (no Origin) Sec-Fetch-Site same-origin/none.
    ``Origin: null`` counts as no Origin: with ``Referrer-Policy: no-referrer`` a browser sends it for the page's
    own form posts (sign-in, sign-out), and Sec-Fetch-Site then tells same-origin from cross-site.
    A Bearer-token client sending no session cookie is exempt (a browser cannot add that header cross-origin)."""
    if _bearer(request) is not None and COOKIE not in request.cookies and SECURE_COOKIE not in request.cookies:
        return True
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        return origin.lower() == _own_origin(request)
    return request.headers.get("sec-fetch-site", "").lower() in {"same-origin", "none"}


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
    app.state.sessions = sessions = Sessions(
        idle=settings.session_idle_minutes * 60, absolute=settings.session_max_hours * 3600
    )
    throttle = LoginThrottle(settings.login_failures_per_minute, 60.0)
    store = monitor.store

    unreadable_logged = [0.0]

    async def store_unreadable(request: Request, exc: Exception) -> JSONResponse:
        """A store read that failed (the file locked by another process, an I/O error): 503 saying so, one line;
        logged at most once a minute."""
        reason = str(exc)[:120] or type(exc).__name__
        if time.monotonic() - unreadable_logged[0] >= 60.0:
            unreadable_logged[0] = time.monotonic()
            log.warning("monitor_store_unreadable", path=request.url.path, reason=reason)
        return JSONResponse(
            {"detail": f"the monitor's store cannot be read right now ({reason}): try again shortly"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    app.add_exception_handler(sqlite3.Error, store_unreadable)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Cross-origin POSTs refused (403); the security headers on every answer, no-store on all but the assets."""
        if request.method in _UNSAFE_METHODS and not _same_origin(request):
            log.warning(
                "monitor_cross_origin_refused",
                path=request.url.path,
                client=_client(request),
                origin=request.headers.get("origin"),
                sec_fetch_site=request.headers.get("sec-fetch-site"),
            )
            response: Response = JSONResponse({"detail": "cross-origin request refused"}, status_code=403)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    # -- the page ------------------------------------------------------------------------

    @app.get("/", response_model=None)
    async def page(request: Request) -> Response:
        if _who(request) is None:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(_page("index.html"))

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in _STATIC:
            raise HTTPException(404, "no such file")
        return Response(_page(name), media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/login")
    async def login_page() -> HTMLResponse:
        return HTMLResponse(_page("login.html").replace("{{error}}", ""))

    @app.post("/login", response_model=None)
    async def login(request: Request) -> Response:
        client = _client(request)
        wait = throttle.retry_after(client)
        if wait is not None:
            log.warning("monitor_login", client=client, outcome="throttled")
            html = _page("login.html").replace("{{error}}", f"Too many failed sign-ins: try again in {wait} s.")
            return HTMLResponse(html, status_code=429, headers={"Retry-After": str(wait)})
        form = parse_qs((await request.body()).decode(errors="replace"))
        principal = settings.principal((form.get("token") or [""])[0].strip())
        if principal is None:
            throttle.failed(client)
            log.warning("monitor_login", client=client, outcome="refused")
            html = _page("login.html").replace("{{error}}", "That token is not valid.")
            return HTMLResponse(html, status_code=401)
        throttle.succeeded(client)
        sessions.revoke(_session_id(request))  # a session id from before sign-in is never carried over
        log.info("monitor_login", client=client, outcome="signed-in", name=principal.name)
        response = RedirectResponse("/", status_code=303)
        secure = _is_https(request)
        response.set_cookie(
            _cookie_name(request),
            sessions.open(principal),
            max_age=int(sessions.absolute),
            path="/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request) -> RedirectResponse:
        if sessions.revoke(_session_id(request)):
            log.info("monitor_logout", client=_client(request))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(
            _cookie_name(request), path="/", secure=_is_https(request), httponly=True, samesite="strict"
        )
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Always 200 while the process serves: ``status`` ok or degraded, with the problems (from memory only;
        no token needed, so without Kafka's address)."""
        return monitor.health(detail=False)

    # -- the JSON API --------------------------------------------------------------------

    @app.get("/api/me")
    async def me(principal: Viewer) -> dict[str, Any]:
        return {"name": principal.name, "role": principal.role, "milestones": milestones()}

    @app.get("/api/health")
    async def api_health(_: Viewer) -> dict[str, Any]:
        return monitor.health()

    @app.get("/api/overview")
    async def api_overview(_: Viewer) -> dict[str, Any]:
        return {**await store.read(overview, store, monitor.watch), "health": monitor.health()}

    @app.get("/api/charts")
    async def api_charts(_: Viewer) -> dict[str, Any]:
        """The page's charts (``_views.charts``): transfers per day, handover latency against deadlines, deadlines
        due in the next 14 days, dead letters waiting by age."""
        return await store.read(charts, store, monitor.watch)

    @app.get("/api/transfers")
    async def api_transfers(_: Viewer, q: str = "", state: str | None = None, limit: int = 50) -> dict[str, Any]:
        states = [state] if state else None
        rows = await store.read(lambda: store.transfers(states=states, prefix=q or None, limit=min(max(limit, 1), 500)))
        return {"transfers": rows}

    @app.get("/api/transfers/{transfer_id}")
    async def api_transfer(_: Viewer, transfer_id: str) -> dict[str, Any]:
        detail = await store.read(transfer_detail, store, monitor.watch, transfer_id)
        if detail is None:
            raise HTTPException(404, f"no transfer {transfer_id!r} in the tracker")
        return detail

    @app.get("/api/dead-letters")
    async def api_dead_letters(
        _: Viewer,
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=DEAD_LETTER_PAGE_MAX)] = DEAD_LETTER_PAGE,
        before: Annotated[str | None, Query(max_length=64)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """A page of the dead letters, newest first (``limit``, default 200, at most 1,000; ``before=<id>``: older
        than that one, the last page's ``next_before``; ``offset``: skip so many), of one status (``?status=``), each
        with its transfer id, reason and status; with every answer the total, the counts by status and the top
        reasons among those that still need a person (``_views.dead_letter_page``)."""
        try:
            return dead_letter_page(monitor.watch, status, limit, before, offset)
        except KeyError:
            raise HTTPException(
                404, f"before: no dead letter {before!r} is listed: ask again without before, from the newest"
            ) from None

    @app.get("/api/alerts")
    async def api_alerts(
        _: Viewer, status: Literal["open", "resolved"] | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """Alerts, newest first, open or resolved (``Store.alerts``); the counts are over the latest 1,000."""
        every = await store.read(store.alerts, 1000)
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
        """Preview (``dry_run``: what would be replayed, with ids, transfers, councils, reasons, and whether a router
        is consuming), or replay exactly the previewed ids."""
        filters = Filters(
            transfer_id=body.transfer_id,
            council=body.council.value if body.council else None,
            pathway=body.pathway,
            rule_id=body.rule_id,
            error_class=body.error_class,
        )
        report = await replay(
            monitor.kafka,
            monitor.topics,
            operator=principal.name,
            filters=filters,
            dry_run=body.dry_run,
            only=body.dead_letter_ids,
        )
        members = await router_members(monitor.kafka, f"{monitor.topics.prefix}-router")
        log.info(
            "monitor_replay",
            dry_run=body.dry_run,
            selected=len(report.selected),
            replayed=len(report.replayed),
            already_replayed=len(report.already_replayed),
        )
        await monitor.watch.refresh()
        return {
            "dry_run": report.dry_run,
            "selected": report.selected,
            "replayed": report.replayed,
            "already_replayed": report.already_replayed,
            "by_reference": report.by_reference,
            "letters": [report.letters[i] for i in report.selected],
            "router": "unknown" if members is None else ("consuming" if members else "none consuming"),
        }

    @app.post("/api/transfers/{transfer_id}/milestones")
    async def api_milestone(principal: Operator, transfer_id: str, body: MilestoneRequest) -> JSONResponse:
        """Audited under the token's name; the closure scheduler writes the ``milestone`` event for the audit
        record (the monitor's principal writes no events), and the tracker then shows it."""
        row = await store.read(store.transfer, transfer_id)
        if row is None:
            raise HTTPException(404, f"no transfer {transfer_id!r} in the tracker")
        rule_ids = milestones().get(body.milestone, {}).get(row["council"] or "", [])
        if not rule_ids:
            raise HTTPException(
                422, f"milestone: {body.milestone!r} marks no deadline rule of council {row['council']!r}"
            )
        audit = MilestoneAudit(
            operator=principal.name,
            at=datetime.now(UTC),
            transfer_id=transfer_id,
            milestone=body.milestone,
            council=row["council"],
            rule_ids=rule_ids,
        )
        await monitor.producer.send_and_wait(
            monitor.topics.audit, value=audit.model_dump_json().encode(), key=audit.key
        )
        return JSONResponse({**json.loads(audit.event().model_dump_json()), "recorded_by": principal.name}, 201)

    @app.post("/api/transfers/{transfer_id}/allocation")
    async def api_allocation(principal: Operator, transfer_id: str, body: AllocationRequest) -> JSONResponse:
        """The same audited allocation as ``casebridge allocate`` (LU-7 notice, SW22-10 / BA-9 closure)."""
        worker = Person(name=body.worker, role="Family Support Worker", organisation=body.organisation)
        try:
            done = await allocate(monitor.kafka, monitor.topics, transfer_id, worker, principal.name)
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
        return Response(await store.read(generate_latest, monitor.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/asyncapi.json")
    async def asyncapi(_: Viewer) -> dict[str, Any]:
        return asyncapi_document()

    return app
