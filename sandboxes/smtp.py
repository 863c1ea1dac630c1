"""Sandbox SMTP relay for the team-mailbox connector: a real SMTP server (aiosmtpd) on loopback.

It behaves like a council's secure relay: STARTTLS is required before anything else,
AUTH is required (only over TLS), and every accepted message is kept byte for byte in a
Maildir (``<dir>/maildir``), with the envelope recipients in an ``X-Sandbox-Rcpt-To``
header added on top. The TLS certificate comes from a CA generated at start (trustme);
its PEM is written to ``<dir>/ca.pem`` for the connector's ``ca_file``.

Run it: ``casebridge sandbox smtp --dir smtp-sandbox --port 8025 --user casebridge --password P``.
"""

from __future__ import annotations

import logging
import mailbox
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["RCPT_HEADER", "SmtpSandbox"]

logger = logging.getLogger("sandboxes.smtp")

RCPT_HEADER = "X-Sandbox-Rcpt-To"


@dataclass
class _Handler:
    maildir: mailbox.Maildir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if session.ssl is None:  # require_starttls makes this unreachable; kept as a guard
            return "530 Must issue a STARTTLS command first"
        raw = envelope.original_content or b""
        stamped = f"{RCPT_HEADER}: {', '.join(envelope.rcpt_tos)}\r\n".encode() + bytes(raw)
        key = self.maildir.add(stamped)
        logger.info("message accepted key=%s recipients=%d", key, len(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


class SmtpSandbox:
    """A STARTTLS-only, AUTH-required SMTP server on ``host:port`` (0 picks a free port) keeping mail in a Maildir."""

    def __init__(self, directory: Path, username: str, password: str, host: str = "127.0.0.1", port: int = 0) -> None:
        if not username or not password:
            raise ValueError("the SMTP sandbox needs a username and a password")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self._port = port
        self._credentials = (username.encode(), password.encode())
        self.maildir_path = self.directory / "maildir"
        self.maildir = mailbox.Maildir(self.maildir_path, create=True)
        self.ca_file = self.directory / "ca.pem"
        self._controller: Controller | None = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == self._credentials
        return AuthResult(success=ok, handled=False)

    def start(self) -> Self:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(self.host, "localhost").configure_cert(context)
        port = self._port or _free_port(self.host)
        self._controller = Controller(
            _Handler(self.maildir),
            hostname=self.host,
            port=port,
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=self._authenticate,
        )
        self._controller.start()
        logger.info("smtp sandbox serving on %s:%s", self.host, port)
        return self

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("SmtpSandbox not started")
        return int(self._controller.port)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[bytes]:
        """Every accepted message, byte for byte (after the added recipients header), in Maildir key order."""
        return [self.maildir.get_bytes(key) for key in sorted(self.maildir.keys())]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
