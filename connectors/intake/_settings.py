"""The intake's settings: where it listens, who may post (each caller bound to one council), how much.

Tokens are ``SecretStr``: they never print, in a repr or in a validation error (``hide_input_in_errors``).
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from contracts import CaseSystem, Council

#: the file name of the intake's store under a deployment's state directory
STORE_NAME = "intake.sqlite3"

MIB = 1024 * 1024


class IntakeCaller(BaseModel):
    """One team, or one e-mail-to-form tool, allowed to post transfers for one council.

    ``name`` is what the audit trail and the logs call it (never a child's or a practitioner's name)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@\-]*$")
    token: SecretStr = Field(min_length=32)
    council: Council
    #: the source systems whose transfers this caller may post: by default the team mailbox (a team with no
    #: case system); a practitioner's form may also post step-ups from a case system with no step-up feed
    #: (Care Director, TED), whose connector the router then asks about the record
    sources: frozenset[CaseSystem] = frozenset({CaseSystem.MAILBOX})


class IntakeSettings(BaseModel):
    """``host`` / ``port`` to listen on (``port=0`` picks a free one), the ``callers`` (at least one) and the
    largest body accepted (``max_body_bytes``, 5 MiB by default; larger posts are answered 413)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8110, ge=0, le=65535)
    callers: list[IntakeCaller] = Field(min_length=1)
    max_body_bytes: int = Field(default=5 * MIB, ge=1024, le=64 * MIB)

    @model_validator(mode="after")
    def _callers_distinct(self) -> Self:
        names = [c.name for c in self.callers]
        if len(set(names)) != len(names):
            raise ValueError("callers: every caller needs its own name (the audit trail names it)")
        tokens = [c.token.get_secret_value() for c in self.callers]
        if len(set(tokens)) != len(tokens):
            raise ValueError("callers: every caller needs its own token (a token names one caller)")
        return self
