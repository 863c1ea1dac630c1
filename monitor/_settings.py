"""The monitor's settings, from ``CASEBRIDGE_MONITOR__*`` environment variables; tokens never print.

A setting that cannot be used is refused by name and rule, never by value (``hide_input_in_errors``):
``load_settings`` turns pydantic's errors into one line per problem, e.g.
``CASEBRIDGE_MONITOR__TOKENS[0].token: a token must be 32 random bytes: at least 43 characters ... (value not shown)``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

Role = Literal["viewer", "operator"]
ENV_PREFIX = "CASEBRIDGE_MONITOR__"
#: the shortest token accepted: 32 random bytes, url-safe base64 (``secrets.token_urlsafe(32)`` gives 43 characters)
TOKEN_MIN_LENGTH = 43
#: how to make one, as the refusal says it
TOKEN_RULE = (
    f"a token must be 32 random bytes: at least {TOKEN_MIN_LENGTH} characters of A-Z a-z 0-9 - _, made with"
    " python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
)
_URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


class TokenGrant(BaseModel):
    """One access token: who holds it (an operator name, used in the replay audit) and their role."""

    model_config = ConfigDict(hide_input_in_errors=True)

    token: SecretStr
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@\-]*$")
    role: Role

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        value = token.get_secret_value()  # the message names the rule, never the value or its length
        if len(value) < TOKEN_MIN_LENGTH or not _URL_SAFE.fullmatch(value):
            raise ValueError(TOKEN_RULE)
        return token


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


class MonitorSettings(BaseSettings):
    """``CASEBRIDGE_MONITOR__DB``, ``__TOKENS`` (JSON list of {token, name, role}), ``__HOST``, ``__PORT``,
    ``__SESSION_IDLE_MINUTES``, ``__SESSION_MAX_HOURS``, ``__SECURE_COOKIES``, ``__TRUST_PROXY``,
    ``__LOGIN_FAILURES_PER_MINUTE``, ``__BEHIND_THRESHOLD``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", hide_input_in_errors=True)

    db: Path = Path(".casebridge/monitor.sqlite3")
    tokens: list[TokenGrant] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    lag_interval_seconds: float = Field(default=5.0, gt=0)
    #: the tracker is "behind" (a banner on the page, ``degraded`` in /healthz) with more events than this unstored
    behind_threshold: int = Field(default=1000, ge=0)
    #: a page session ends after this long without a request ...
    session_idle_minutes: float = Field(default=30.0, gt=0)
    #: ... and this long after sign-in, whatever happens
    session_max_hours: float = Field(default=12.0, gt=0)
    #: the page is served over https (a TLS proxy in front): the cookie is ``Secure`` and ``__Host-`` prefixed
    secure_cookies: bool = False
    #: believe X-Forwarded-Proto / X-Forwarded-Host / X-Forwarded-For (only behind a proxy that sets them)
    trust_proxy: bool = False
    #: failed sign-ins allowed per client address per minute; the next answers 429
    login_failures_per_minute: int = Field(default=5, ge=1)

    def principal(self, token: str | None) -> Principal | None:
        """Who holds ``token``, or None (compared in constant time)."""
        if not token:
            return None
        for grant in self.tokens:
            if secrets.compare_digest(grant.token.get_secret_value().encode(), token.encode()):
                return Principal(grant.name, grant.role)
        return None


class MonitorSettingsError(ValueError):
    """Settings that cannot be used: one line per problem, naming the variable and the rule, never the value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _variable(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return f"{ENV_PREFIX}*"
    name = f"{ENV_PREFIX}{str(loc[0]).upper()}"
    for part in loc[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def problems_of(exc: ValidationError) -> list[str]:
    """``exc`` as lines naming each variable and its rule (pydantic's message), without any input value."""
    return [
        f"{_variable(error['loc'])}: {error['msg'].removeprefix('Value error, ')} (value not shown)"
        for error in exc.errors(include_input=False, include_url=False, include_context=False)
    ]


def load_settings() -> MonitorSettings:
    """The settings from the environment, or ``MonitorSettingsError`` (values never in its message)."""
    try:
        return MonitorSettings()
    except ValidationError as exc:
        raise MonitorSettingsError(problems_of(exc)) from None
    except SettingsError as exc:  # a value that is not JSON where JSON is needed: pydantic-settings names the field
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else "*"
        raise MonitorSettingsError([f"{_variable((field,))}: is not valid JSON (value not shown)"]) from None
