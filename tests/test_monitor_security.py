"""The monitor's page security: server-side sessions, headers, same-origin POSTs, a sign-in throttle, long tokens.

Against the app in process (httpx over ASGI, no lifespan: nothing here needs Kafka); the page in a real browser
under the same policy is tests/test_monitor_browser.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from connectors.mailbox import MailboxSettings
from monitor import (
    CSP,
    LoginThrottle,
    Monitor,
    MonitorSettings,
    MonitorSettingsError,
    Principal,
    Sessions,
    TokenGrant,
    create_app,
    load_settings,
)
from monitor._settings import TOKEN_RULE
from router.settings import Topics
from tests.monitor_support import OPERATOR_TOKEN, VIEWER_TOKEN, auth, monitor_settings

ORIGIN = "http://monitor.test"
SAME = {"Origin": ORIGIN}


def _client(settings: MonitorSettings, base_url: str = ORIGIN) -> httpx.AsyncClient:
    monitor = Monitor(settings, "127.0.0.1:1", Topics("unused"))  # routes only; the tracker never starts
    transport = httpx.ASGITransport(app=create_app(monitor), client=("198.51.100.7", 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(monitor_settings(tmp_path / "m.sqlite3")) as c:
        yield c


def _cookie(client: httpx.AsyncClient, sid: str, name: str = "casebridge_monitor") -> dict[str, str]:
    """A Cookie header with only this session id (the client's own jar emptied)."""
    client.cookies.clear()
    return {"Cookie": f"{name}={sid}"}


async def _sign_in(client: httpx.AsyncClient, token: str = OPERATOR_TOKEN) -> str:
    login = await client.post("/login", data={"token": token}, headers=SAME)
    assert (303, "/") == (login.status_code, login.headers["location"])
    return login.cookies["casebridge_monitor"]


async def test_the_cookie_is_a_session_id_and_a_signed_out_cookie_is_refused(client: httpx.AsyncClient) -> None:
    """The cookie carries a random session id, never the token; after sign-out the same cookie opens nothing."""
    sid = await _sign_in(client)
    assert OPERATOR_TOKEN not in sid and 40 <= len(sid)
    assert 200 == (await client.get("/api/me")).status_code
    assert 303 == (await client.post("/logout", headers=SAME)).status_code
    old = _cookie(client, sid)
    assert 401 == (await client.get("/api/me", headers=old)).status_code
    page = await client.get("/", headers=old)
    assert (303, "/login") == (page.status_code, page.headers["location"])
    assert 200 == (await client.get("/api/me", headers=auth(OPERATOR_TOKEN))).status_code  # bearer tokens still work


async def test_a_new_sign_in_replaces_the_session_it_came_with(client: httpx.AsyncClient) -> None:
    first = await _sign_in(client)
    second = await _sign_in(client, VIEWER_TOKEN)
    assert first != second
    assert 401 == (await client.get("/api/me", headers=_cookie(client, first))).status_code


def test_sessions_end_when_idle_and_at_the_absolute_limit() -> None:
    now = [0.0]
    sessions = Sessions(idle=30 * 60, absolute=12 * 3600, clock=lambda: now[0])
    who = Principal("ops-1", "operator")
    idle = sessions.open(who)
    now[0] = 29 * 60
    assert who == sessions.get(idle)  # used: the idle clock restarts
    now[0] = 29 * 60 + 30 * 60
    assert sessions.get(idle) is None  # 30 minutes unused
    busy = sessions.open(who)
    for minute in range(0, 12 * 60, 20):
        now[0] = 59 * 60 + minute * 60
        assert who == sessions.get(busy)
    now[0] = 59 * 60 + 12 * 3600
    assert sessions.get(busy) is None  # 12 hours after sign-in, however busy
    assert not sessions.revoke(busy) and sessions.get("made-up") is None


async def test_every_answer_carries_the_security_headers_and_api_answers_are_not_stored(
    client: httpx.AsyncClient,
) -> None:
    """CSP without inline script or style, frame-ancestors 'none', DENY, nosniff, no-referrer; no-store on the API."""
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP and "frame-ancestors 'none'" in CSP
    await _sign_in(client)
    answers = {
        "/": await client.get("/"),
        "/login": await client.get("/login"),
        "/api/me": await client.get("/api/me"),
        "/api/overview": await client.get("/api/overview"),
        "/api/transfers/nope": await client.get("/api/transfers/nope"),
        "401": await client.get("/api/me", headers=auth("not-a-token-" + "x" * 32)),
        "/static/monitor.js": await client.get("/static/monitor.js"),
        "/metrics": await client.get("/metrics"),
    }
    for name, r in answers.items():
        assert CSP == r.headers["content-security-policy"], name
        assert ("DENY", "nosniff", "no-referrer") == (
            r.headers["x-frame-options"],
            r.headers["x-content-type-options"],
            r.headers["referrer-policy"],
        ), name
        if not name.startswith("/static/"):
            assert "no-store" == r.headers["cache-control"], name
    assert answers["/static/monitor.js"].headers["content-type"].startswith("text/javascript")
    for page in (answers["/"].text, answers["/login"].text):  # nothing inline for the CSP to block
        assert "<script>" not in page and "<style" not in page and "style=" not in page and " on" + "click" not in page
    assert '<script src="/static/monitor.js"></script>' in answers["/"].text
    assert 200 == (await client.get("/static/monitor.css")).status_code
    assert 404 == (await client.get("/static/index.html")).status_code


async def test_a_cross_origin_post_with_the_operators_cookie_is_refused(client: httpx.AsyncClient) -> None:
    """403 for another Origin, a cross-site fetch with no Origin, or neither header; the page's own origin passes;
    a Bearer client with no cookie is exempt."""
    await _sign_in(client)
    url, body = "/api/transfers/ns-1/milestones", {"milestone": "step-down-meeting-held"}
    for headers in [
        {"Origin": "https://evil.example"},
        {"Origin": "http://monitor.test.evil.example"},
        {"Origin": "null"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {},
    ]:
        refused = await client.post(url, json=body, headers=headers)
        assert (403, "cross-origin request refused") == (refused.status_code, refused.json()["detail"]), headers
        assert "no-store" == refused.headers["cache-control"]
    # Origin: null with same-origin is the page's own form post under Referrer-Policy: no-referrer (Chromium)
    for headers in [SAME, {"Sec-Fetch-Site": "same-origin"}, {"Origin": "null", "Sec-Fetch-Site": "same-origin"}]:
        passed = await client.post(url, json=body, headers=headers)
        assert 404 == passed.status_code, headers  # past the guard: no such transfer in the tracker
    async with _client(monitor_settings_like(client)) as api:  # no cookie jar, no Origin
        assert 404 == (await api.post(url, json=body, headers=auth(OPERATOR_TOKEN))).status_code
    refused_login = await client.post("/login", data={"token": OPERATOR_TOKEN}, headers={"Origin": "https://x.example"})
    assert 403 == refused_login.status_code
    assert 403 == (await client.post("/logout", headers={"Sec-Fetch-Site": "cross-site"})).status_code
    assert 200 == (await client.get("/api/me")).status_code  # the refused logout did not sign out


def monitor_settings_like(client: httpx.AsyncClient) -> MonitorSettings:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    settings: MonitorSettings = transport.app.state.monitor.settings  # type: ignore[attr-defined]
    return settings


async def test_the_sixth_bad_sign_in_in_a_minute_gets_429_and_the_log_holds_no_token(client: httpx.AsyncClient) -> None:
    """Five wrong tokens answer 401; the sixth attempt, even with a right token, 429 with Retry-After. Each failure is
    logged with the client address and the outcome only."""
    wrong = "wrong-token-" + "x" * 40
    with capture_logs() as logs:
        for _ in range(5):
            assert 401 == (await client.post("/login", data={"token": wrong}, headers=SAME)).status_code
        throttled = await client.post("/login", data={"token": OPERATOR_TOKEN}, headers=SAME)
    assert 429 == throttled.status_code
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert "casebridge_monitor" not in throttled.cookies
    logins = [e for e in logs if e["event"] == "monitor_login"]
    assert ["refused"] * 5 + ["throttled"] == [e["outcome"] for e in logins]
    assert all({"event", "client", "outcome", "log_level"} == set(e) for e in logins)
    assert {"198.51.100.7"} == {e["client"] for e in logins}
    assert wrong not in repr(logs) and OPERATOR_TOKEN not in repr(logs)
    assert 200 == (await client.get("/api/me", headers=auth(OPERATOR_TOKEN))).status_code  # the API is not throttled


async def test_a_client_cannot_dodge_the_throttle_with_x_forwarded_for(client: httpx.AsyncClient) -> None:
    """Without trust_proxy, every request that names a forwarded address shares one bucket."""
    for n in range(5):
        headers = {**SAME, "X-Forwarded-For": f"203.0.113.{n}"}
        assert 401 == (await client.post("/login", data={"token": "w" * 40}, headers=headers)).status_code
    headers = {**SAME, "X-Forwarded-For": "203.0.113.99"}
    assert 429 == (await client.post("/login", data={"token": "w" * 40}, headers=headers)).status_code


def test_the_throttle_forgets_failures_after_the_window() -> None:
    now = [100.0]
    throttle = LoginThrottle(5, 60.0, clock=lambda: now[0])
    for i in range(5):
        now[0] = 100.0 + i
        throttle.failed("a")
    assert 56 == throttle.retry_after("a") and throttle.retry_after("b") is None
    now[0] = 160.5
    assert throttle.retry_after("a") is None  # the first failure aged out


async def test_over_https_the_cookie_is_secure_and_host_prefixed(tmp_path: Path) -> None:
    """secure_cookies (or a trusted proxy's X-Forwarded-Proto: https) gives ``__Host-``, Secure, Path=/."""
    settings = monitor_settings(tmp_path / "m.sqlite3").model_copy(update={"trust_proxy": True})
    async with _client(settings) as proxied:
        headers = {"Origin": "https://monitor.test", "X-Forwarded-Proto": "https"}
        login = await proxied.post("/login", data={"token": VIEWER_TOKEN}, headers=headers)
        assert 303 == login.status_code
        cookie = login.headers["set-cookie"]
        assert cookie.startswith("__Host-casebridge_monitor=") and "Secure" in cookie and "Path=/" in cookie
        sid = cookie.split(";")[0].split("=", 1)[1]
        secure_cookie = _cookie(proxied, sid, "__Host-casebridge_monitor")
        me = await proxied.get("/api/me", headers={"X-Forwarded-Proto": "https", **secure_cookie})
        assert 200 == me.status_code
        plain = await proxied.post("/login", data={"token": VIEWER_TOKEN}, headers={"Origin": "http://monitor.test"})
        assert "Secure" not in plain.headers["set-cookie"]
    untrusted = monitor_settings(tmp_path / "n.sqlite3")
    async with _client(untrusted) as direct:  # an X-Forwarded-Proto nobody vouches for changes nothing
        headers = {"Origin": "http://monitor.test", "X-Forwarded-Proto": "https"}
        login = await direct.post("/login", data={"token": VIEWER_TOKEN}, headers=headers)
        assert login.headers["set-cookie"].startswith("casebridge_monitor=")
    secure = monitor_settings(tmp_path / "o.sqlite3").model_copy(update={"secure_cookies": True})
    async with _client(secure, "https://monitor.test") as tls:
        login = await tls.post("/login", data={"token": VIEWER_TOKEN}, headers={"Origin": "https://monitor.test"})
        assert login.headers["set-cookie"].startswith("__Host-casebridge_monitor=")
        assert 200 == (await tls.get("/api/me")).status_code


SHORT = "short-but-secret-token-0123"  # 27 characters


def test_a_short_token_is_refused_naming_the_rule_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASEBRIDGE_MONITOR__TOKENS", f'[{{"token": "{SHORT}", "name": "ops-1", "role": "operator"}}]')
    with pytest.raises(ValidationError) as caught:
        MonitorSettings()
    assert "at least 43 characters" in str(caught.value) and SHORT not in str(caught.value)
    with pytest.raises(MonitorSettingsError) as refused:
        load_settings()
    assert [f"CASEBRIDGE_MONITOR__TOKENS[0].token: {TOKEN_RULE} (value not shown)"] == (refused.value.problems)
    with pytest.raises(ValidationError) as direct:
        TokenGrant.model_validate({"token": SHORT, "name": "x", "role": "boss"})
    assert SHORT not in str(direct.value) and "boss" not in str(direct.value)
    assert TokenGrant.model_validate({"token": secrets.token_urlsafe(32), "name": "x", "role": "viewer"})


@pytest.mark.parametrize(
    "token",
    ["t" * 32, secrets.token_urlsafe(32)[:42], secrets.token_urlsafe(32)[:40] + "+/=", " " + secrets.token_urlsafe(32)],
)
def test_a_token_shorter_than_32_random_bytes_url_safe_is_refused_naming_how_to_make_one(token: str) -> None:
    """32 random bytes are 43 url-safe base64 characters (``secrets.token_urlsafe(32)``): fewer, or characters
    outside A-Z a-z 0-9 - _, are refused with the rule and the command that makes one, never the token."""
    with pytest.raises(ValidationError) as refused:
        TokenGrant.model_validate({"token": token, "name": "x", "role": "viewer"})
    assert TOKEN_RULE in str(refused.value) and token not in str(refused.value)
    assert "secrets.token_urlsafe(32)" in TOKEN_RULE and "43" in TOKEN_RULE


def test_a_mailbox_setting_error_never_prints_its_input() -> None:
    """A misspelt key of the mailbox table (its password under ``passwd``) is refused naming the key, not the value."""
    with pytest.raises(ValidationError) as refused:
        MailboxSettings.model_validate(
            {"host": "relay.example", "username": "cb", "password": "x", "passwd": "relay-secret-0123456789",
             "sender": "cb@council.example", "mailboxes": {"luton": "team@luton.example"}}
        )  # fmt: skip
    assert "passwd" in str(refused.value) and "relay-secret-0123456789" not in str(refused.value)


def test_casebridge_monitor_refuses_a_short_token_in_one_line_without_printing_it(tmp_path: Path) -> None:
    """`casebridge monitor` exits 2 with one line naming CASEBRIDGE_MONITOR__TOKENS and the rule; the token never
    appears (it stops before Kafka is needed)."""
    env = {
        **os.environ,
        "CASEBRIDGE_MONITOR__TOKENS": f'[{{"token": "{SHORT}", "name": "ops-1", "role": "operator"}}]',
        "CASEBRIDGE_MONITOR__DB": str(tmp_path / "m.sqlite3"),
        "CASEBRIDGE_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "casebridge", "monitor"], env=env, capture_output=True, text=True, timeout=60
    )
    assert 2 == done.returncode
    assert "" == done.stdout
    assert [
        f"error: CASEBRIDGE_MONITOR__TOKENS[0].token: {TOKEN_RULE} (value not shown)"
    ] == done.stderr.strip().splitlines()
    assert SHORT not in done.stderr
    bad_json = {**env, "CASEBRIDGE_MONITOR__TOKENS": f'[{{"token": "{SHORT}"'}
    done = subprocess.run(
        [sys.executable, "-m", "casebridge", "monitor"], env=bad_json, capture_output=True, text=True, timeout=60
    )
    assert (2, ["error: CASEBRIDGE_MONITOR__TOKENS: is not valid JSON (value not shown)"]) == (
        done.returncode,
        done.stderr.strip().splitlines(),
    )
