"""How casebridge reaches Kafka, and the one place its Kafka clients are built.

``KafkaSecurity`` says how to talk to the cluster (security protocol, SASL mechanism and credentials, the CA
to trust, a client certificate for mutual TLS); ``KafkaConnection`` adds where it is (bootstrap servers).
Both are checked together when built: SASL needs a mechanism, a username and a password; a certificate
needs its key; every file must exist and be readable, and the TLS files must load. Each problem is one line
naming the key; the password is a ``SecretStr`` and never prints.

Every client in the project is built here (``producer``, ``consumer``, ``admin``, ``client``, ``broker``
for FastStream), so a deployment's TLS and SASL settings reach all of them (tests/test_kafka_clients.py
checks that no other module builds one). A bare ``str`` where a connection is expected is bootstrap servers
over PLAINTEXT (tests, in-process wiring).

This module imports neither ``router`` nor ``casebridge`` (they import it).
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker
    from faststream.security import BaseSecurity

SecurityProtocol: TypeAlias = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism: TypeAlias = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]

#: the protocols that need a local-development deployment: nothing is encrypted on the wire
UNENCRYPTED: frozenset[str] = frozenset({"PLAINTEXT", "SASL_PLAINTEXT"})
_TLS = frozenset({"SSL", "SASL_SSL"})
_SASL = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def _no_key_password() -> bytes:
    """An encrypted client key is refused (OpenSSL would otherwise prompt on the terminal)."""
    return b""


@functools.lru_cache(maxsize=16)
def _tls_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """One TLS context per set of files, shared by every client of the process (loading the system's CAs takes
    ~0.1-0.2 s on this machine: once, not once a client); a file that fails to load is not cached."""
    context: ssl.SSLContext = create_ssl_context(
        cafile=ca_file, certfile=cert_file, keyfile=key_file, password=_no_key_password
    )
    return context


class KafkaSecurity(BaseModel):
    """How to talk to the cluster: the deployment file's ``[kafka]`` table, or ``CASEBRIDGE_KAFKA__*``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    username: str | None = Field(default=None, min_length=1)
    #: the SASL password (the deployment file names it by reference: ``{ file = ... }`` or ``{ env = ... }``)
    password: SecretStr | None = None
    #: the SASL password read from this file (``CASEBRIDGE_KAFKA__PASSWORD_FILE`` for the operator commands)
    password_file: Path | None = Field(default=None, exclude=True)
    #: the CA that signed the brokers' certificates (default: the system's trusted CAs)
    ca_file: Path | None = None
    #: a client certificate and its key (PEM, unencrypted), for mutual TLS
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("ca_file", "cert_file", "key_file", "password_file")
    @classmethod
    def _readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        base = (info.context or {}).get("base")
        path = value if value.is_absolute() or base is None else Path(base) / value
        try:
            with path.open("rb") as f:
                f.read(1)
        except OSError as exc:
            raise PydanticCustomError(
                "file_unreadable", "file {path} cannot be read ({why})", {"path": str(path), "why": exc.strerror}
            ) from None
        return path

    @model_validator(mode="after")
    def _together(self) -> KafkaSecurity:
        protocol = self.security_protocol
        if self.password_file is not None:
            if self.password is not None:
                raise PydanticCustomError("kafka_settings", "give password or password_file, not both")
            try:
                value = self.password_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                raise PydanticCustomError(
                    "kafka_settings", "password_file {path} cannot be read as text", {"path": str(self.password_file)}
                ) from None
            if not value:
                raise PydanticCustomError(
                    "kafka_settings", "password_file {path} is empty", {"path": str(self.password_file)}
                )
            object.__setattr__(self, "password", SecretStr(value))
        if protocol in _SASL:
            missing = [k for k in ("sasl_mechanism", "username", "password") if getattr(self, k) is None]
            if missing:
                raise PydanticCustomError(
                    "kafka_settings",
                    "security_protocol {protocol} needs {missing} (sasl_mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or"
                    " PLAIN; the password by reference)",
                    {"protocol": protocol, "missing": ", ".join(missing)},
                )
        else:
            given = [k for k in ("sasl_mechanism", "username", "password") if getattr(self, k) is not None]
            if given:
                raise PydanticCustomError(
                    "kafka_settings",
                    "{given} given, but security_protocol {protocol} does not use SASL: set security_protocol ="
                    ' "SASL_SSL" or remove them',
                    {"given": ", ".join(given), "protocol": protocol},
                )
        if protocol not in _TLS:
            given = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k) is not None]
            if given:
                raise PydanticCustomError(
                    "kafka_settings",
                    "{given} given, but security_protocol {protocol} does not use TLS: set security_protocol ="
                    ' "SSL" or "SASL_SSL", or remove them',
                    {"given": ", ".join(given), "protocol": protocol},
                )
        if (self.cert_file is None) != (self.key_file is None):
            raise PydanticCustomError(
                "kafka_settings", "cert_file and key_file go together (mutual TLS): give both or neither"
            )
        if protocol in _TLS:
            self._check_tls()
        return self

    def _check_tls(self) -> None:
        """The TLS files load now, not at the first connection (one line naming the file that does not)."""
        try:
            _tls_context(self.ca_file, None, None)
        except (ssl.SSLError, ValueError):
            raise PydanticCustomError(
                "kafka_settings", "ca_file {path} is not a PEM certificate", {"path": str(self.ca_file)}
            ) from None
        if self.cert_file is not None:
            try:
                _tls_context(self.ca_file, self.cert_file, self.key_file)
            except (ssl.SSLError, ValueError):
                raise PydanticCustomError(
                    "kafka_settings",
                    "cert_file {cert} and key_file {key} are not a PEM certificate and its unencrypted key",
                    {"cert": str(self.cert_file), "key": str(self.key_file)},
                ) from None

    def describe(self) -> str:
        """What is in use, without secrets: ``SASL_SSL, SCRAM-SHA-512 as router, CA /etc/ca.pem``."""
        parts: list[str] = [self.security_protocol]
        if self.security_protocol in _SASL:
            parts.append(f"{self.sasl_mechanism} as {self.username}")
        if self.security_protocol in _TLS:
            parts.append(f"CA {self.ca_file}" if self.ca_file else "the system's CAs")
            if self.cert_file:
                parts.append(f"client certificate {self.cert_file}")
        return ", ".join(parts)


class KafkaConnection(KafkaSecurity):
    """Where the cluster is and how to talk to it."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)

    @classmethod
    def of(cls, bootstrap_servers: str, security: KafkaSecurity | None = None) -> KafkaConnection:
        """The connection to ``bootstrap_servers`` with ``security`` (already checked: not validated again)."""
        fields = {} if security is None else {k: getattr(security, k) for k in KafkaSecurity.model_fields}
        fields.pop("password_file", None)
        return cls.model_construct(bootstrap_servers=bootstrap_servers, **fields)


#: what a function that talks to Kafka takes: a connection, or bootstrap servers over PLAINTEXT
Kafka: TypeAlias = "KafkaConnection | str"


def connection(kafka: Kafka) -> KafkaConnection:
    """``kafka`` as a connection (a ``str`` is bootstrap servers over PLAINTEXT)."""
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(bootstrap_servers=kafka)


def servers(kafka: Kafka) -> str:
    """The bootstrap servers of ``kafka`` (for messages: never a credential)."""
    return connection(kafka).bootstrap_servers


def ssl_context(kafka: Kafka) -> ssl.SSLContext | None:
    """The TLS context of ``kafka`` (None unless its protocol is SSL or SASL_SSL)."""
    conn = connection(kafka)
    if conn.security_protocol not in _TLS:
        return None
    return _tls_context(conn.ca_file, conn.cert_file, conn.key_file)


def client_kwargs(kafka: Kafka) -> dict[str, Any]:
    """The aiokafka keyword arguments every client takes for ``kafka``: address, TLS context, SASL."""
    conn = connection(kafka)
    out: dict[str, Any] = {"bootstrap_servers": conn.bootstrap_servers, "security_protocol": conn.security_protocol}
    context = ssl_context(conn)
    if context is not None:
        out["ssl_context"] = context
    if conn.security_protocol in _SASL:
        assert conn.password is not None  # checked with the settings
        out["sasl_mechanism"] = conn.sasl_mechanism
        out["sasl_plain_username"] = conn.username
        out["sasl_plain_password"] = conn.password.get_secret_value()
    return out


def producer(kafka: Kafka, **kw: Any) -> AIOKafkaProducer:
    """An aiokafka producer for ``kafka``; ``kw`` are its other options (acks, idempotence, ...)."""
    return AIOKafkaProducer(**client_kwargs(kafka), **kw)


def consumer(kafka: Kafka, *topics: str, **kw: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer for ``kafka`` (subscribed to ``topics`` if given); ``kw`` are its other options."""
    return AIOKafkaConsumer(*topics, **client_kwargs(kafka), **kw)


def admin(kafka: Kafka, **kw: Any) -> AIOKafkaAdminClient:
    """An aiokafka admin client for ``kafka``."""
    return AIOKafkaAdminClient(**client_kwargs(kafka), **kw)


def client(kafka: Kafka, **kw: Any) -> AIOKafkaClient:
    """aiokafka's low-level client for ``kafka`` (metadata, DescribeGroups)."""
    return AIOKafkaClient(**client_kwargs(kafka), **kw)


def broker_security(kafka: Kafka) -> BaseSecurity | None:
    """FastStream's security object for ``kafka`` (None for PLAINTEXT)."""
    from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

    conn = connection(kafka)
    context = ssl_context(conn)
    if conn.security_protocol == "PLAINTEXT":
        return None
    if conn.security_protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    assert conn.username is not None and conn.password is not None  # checked with the settings
    sasl = {"SCRAM-SHA-512": SASLScram512, "SCRAM-SHA-256": SASLScram256, "PLAIN": SASLPlaintext}
    return sasl[conn.sasl_mechanism or "PLAIN"](
        conn.username, conn.password.get_secret_value(), ssl_context=context, use_ssl=context is not None
    )


def broker(kafka: Kafka, **kw: Any) -> KafkaBroker:
    """FastStream's KafkaBroker for ``kafka``; ``kw`` are its other options."""
    from faststream.kafka import KafkaBroker

    return KafkaBroker(servers(kafka), security=broker_security(kafka), **kw)
