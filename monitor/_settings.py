"""The monitor's settings, from ``CASEBRIDGE_MONITOR__*`` environment variables; tokens never print."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["viewer", "operator"]


class TokenGrant(BaseModel):
    """One access token: who holds it (an operator name, used in the replay audit) and their role."""

    token: SecretStr = Field(min_length=16)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@\-]*$")
    role: Role


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


class MonitorSettings(BaseSettings):
    """``CASEBRIDGE_MONITOR__DB``, ``__TOKENS`` (JSON list of {token, name, role}), ``__HOST``, ``__PORT``."""

    model_config = SettingsConfigDict(env_prefix="CASEBRIDGE_MONITOR__", extra="ignore")

    db: Path = Path(".casebridge/monitor.sqlite3")
    tokens: list[TokenGrant] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    lag_interval_seconds: float = Field(default=5.0, gt=0)

    def principal(self, token: str | None) -> Principal | None:
        """Who holds ``token``, or None (compared in constant time)."""
        if not token:
            return None
        for grant in self.tokens:
            if secrets.compare_digest(grant.token.get_secret_value().encode(), token.encode()):
                return Principal(grant.name, grant.role)
        return None
