"""Secrets in a deployment file: always by reference (an environment variable or a file), never inline.

``token = { env = "LCS_TOKEN" }`` or ``token = { file = "/run/secrets/lcs-token" }``. The reference is
resolved when the file is validated, so ``casebridge config check`` finds a missing credential before
anything starts; the value is a ``SecretStr`` and never prints (repr, errors, logs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, SecretStr, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError


class SecretRef(BaseModel):
    """Where a secret is: exactly one of ``env`` (a variable's name) or ``file`` (a path; relative to the
    deployment file's folder)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    env: str | None = None
    file: Path | None = None
    _value: SecretStr = PrivateAttr(default=SecretStr(""))

    @model_validator(mode="wrap")
    @classmethod
    def _resolved(cls, data: Any, handler: Any, info: ValidationInfo) -> SecretRef:
        if isinstance(data, SecretStr):  # a secret already in hand (``given``: tests, in-process wiring)
            ref = cls.model_construct(env=None, file=None)
            ref._value = data
            return ref
        if isinstance(data, SecretRef):
            return data
        if not isinstance(data, dict):
            raise PydanticCustomError(
                "secret_inline",
                'a secret is never written inline: use { env = "VARIABLE" } or { file = "PATH" }',
            )
        ref = handler(data)
        base = Path((info.context or {}).get("base", "."))
        ref._value = ref._resolve(base)
        return ref  # type: ignore[no-any-return]

    def _resolve(self, base: Path) -> SecretStr:
        if (self.env is None) == (self.file is None):
            raise PydanticCustomError("secret_reference", "name exactly one of env or file")
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise PydanticCustomError(
                    "secret_missing", "environment variable {name} is not set", {"name": self.env}
                )
            return SecretStr(value)
        assert self.file is not None
        path = self.file if self.file.is_absolute() else base / self.file
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PydanticCustomError(
                "secret_missing", "secret file {path} cannot be read ({why})", {"path": str(path), "why": exc.strerror}
            ) from None
        if not value:
            raise PydanticCustomError("secret_missing", "secret file {path} is empty", {"path": str(path)})
        return SecretStr(value)

    @classmethod
    def given(cls, value: str | SecretStr) -> SecretRef:
        """A secret already in hand (in-process wiring: tests, benchmarks)."""
        return cls.model_validate(value if isinstance(value, SecretStr) else SecretStr(value))

    @property
    def value(self) -> SecretStr:
        return self._value

    def __repr__(self) -> str:
        where = f"env={self.env}" if self.env else f"file={self.file}" if self.file else "given"
        return f"SecretRef({where})"

    __str__ = __repr__
