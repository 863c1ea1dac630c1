"""The local broker's secured mode: TLS, SCRAM users, KRaft's StandardAuthorizer and ACLs.

``casebridge kafka start --secure`` (``LocalKafka(..., secure=True)``) keeps under ``<home>/secure/``::

    ca.pem                  the local CA's certificate (clients trust it: ``ca_file``)
    ca.key                  the CA's private key (0600; signs nothing after start-up)
    broker.pem              the broker's certificate chain (broker, CA)
    broker.key              the broker's private key (0600)
    <principal>.password    a random SCRAM-SHA-512 password per principal (0600)
    <principal>.toml        that principal's deployment-file ``[kafka]`` table

Clients reach one SASL_SSL listener (SCRAM-SHA-512). The KRaft controller listener takes TLS with a
client certificate signed by the local CA only (``ssl.client.auth=required``), so its one principal is
the broker's own certificate, ``User:CN=casebridge-broker``, a super user beside ``User:admin``; no
ANONYMOUS principal reaches anything. ``allow.everyone.if.no.acl.found=false``: a principal may do only
what an ACL below lets it.

The ACLs are PREFIXED resource patterns on one topic prefix (``casebridge`` by default):

=========  ===============================================================================================
router     the ``casebridge run`` process (router, feed publishers, reporters): read and write transfers,
           retry tiers, retry-state, lifecycle, child-history, pending-notices, pending-closures, events, dlq,
           parking, remap (the publishers map replayed map-stage dead letters again); write intake-audit
           (the intake's record of each post); read audit; create and describe the prefix's topics; its
           groups ``<prefix>-``; idempotent write
monitor    read events, dlq, parking, audit, intake-audit, pending-notices, pending-closures; write audit,
           transfers, remap and pending-closures (its replays and recorded allocations); describe; its groups
           ``<prefix>-``
operator   the CLI (dlq list, replay, allocate): read dlq, parking, audit, intake-audit, events, pending-notices,
           pending-closures; write transfers, retry tiers, remap (a map-stage dead letter's replay), audit,
           pending-closures (a later closure's replay, an allocation); describe; describe groups
           ``<prefix>-`` (replay asks whether a router consumes)
viewer     read events; describe
publisher  write transfers
=========  ===============================================================================================

Only the router writes events and intake-audit; only the operator and the monitor write audit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import secrets
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactString, Int8, Int16, Int32, Schema, TaggedFields
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectors import kafka as clients
from connectors.kafka import KafkaConnection

__all__ = [
    "ADMIN",
    "BROKER_PRINCIPAL",
    "PRINCIPALS",
    "SCRAM_MECHANISM",
    "Grant",
    "SecureFiles",
    "acl_grants",
    "create_acls",
]

SCRAM_MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
#: the principals a council's processes use, each with its own password and ``[kafka]`` table
PRINCIPALS = ("router", "monitor", "operator", "viewer", "publisher")
BROKER_CN = "casebridge-broker"
BROKER_PRINCIPAL = f"User:CN={BROKER_CN}"
_CERT_DAYS = 825
#: how long a client closed in a loop about to end waits for TLS's close_notify exchange to finish
TLS_CLOSE_SECONDS = 0.3
_CA_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class SecureFiles:
    """The paths of one home's secured-mode material (``<home>/secure``)."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.directory / "ca.key"

    @property
    def chain_file(self) -> Path:
        return self.directory / "broker.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "broker.key"

    def password_file(self, principal: str) -> Path:
        return self.directory / f"{principal}.password"

    def settings_file(self, principal: str) -> Path:
        return self.directory / f"{principal}.toml"

    def password(self, principal: str) -> str:
        return self.password_file(principal).read_text(encoding="utf-8").strip()

    def exists(self) -> bool:
        """True once the material is complete (the admin password is written last)."""
        return self.password_file(ADMIN).is_file() and self.key_file.is_file() and self.ca_file.is_file()

    # ----------------------------------------------------------------- generation

    def generate(self) -> None:
        """Create the CA, the broker's certificate (localhost, 127.0.0.1) and every principal's password."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        now = dt.datetime.now(dt.UTC)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "casebridge local CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        broker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        broker_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_CN)]))
            .issuer_name(ca_name)
            .public_key(broker_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem, pkcs8, plain = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        _write_private(self.ca_key_file, ca_key.private_bytes(pem, pkcs8, plain))
        _write_private(self.key_file, broker_key.private_bytes(pem, pkcs8, plain))
        _write_public(self.chain_file, broker_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
        _write_public(self.ca_file, ca_cert.public_bytes(pem))
        for principal in (*PRINCIPALS, ADMIN):  # admin last: its file marks the material complete
            _write_private(self.password_file(principal), secrets.token_urlsafe(24).encode() + b"\n")
            _write_private(self.settings_file(principal), self.client_table(principal).encode())

    def client_table(self, principal: str) -> str:
        """The deployment file's ``[kafka]`` table for ``principal`` (the password by file reference)."""
        return (
            "[kafka]\n"
            'security_protocol = "SASL_SSL"\n'
            f"sasl_mechanism = {json.dumps(SCRAM_MECHANISM)}\n"
            f"username = {json.dumps(principal)}\n"
            f"password = {{ file = {json.dumps(str(self.password_file(principal)))} }}\n"
            f"ca_file = {json.dumps(str(self.ca_file))}\n"
        )

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create every principal's SCRAM credential."""
        arguments = []
        for principal in (*PRINCIPALS, ADMIN):
            arguments += ["--add-scram", f"{SCRAM_MECHANISM}=[name={principal},password={self.password(principal)}]"]
        return arguments

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context trusting the local CA (hostname checked against the certificate)."""
        context: ssl.SSLContext = create_ssl_context(cafile=str(self.ca_file))
        return context

    def client_options(self, principal: str, password: str | None = None) -> dict[str, Any]:
        """aiokafka keyword arguments for ``principal`` over SASL_SSL (``password`` overrides the file's)."""
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": self.ssl_context(),
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": principal,
            "sasl_plain_password": self.password(principal) if password is None else password,
        }

    def connection(self, bootstrap: str, principal: str) -> KafkaConnection:
        """``principal``'s connection to the broker at ``bootstrap``, as its ``[kafka]`` table gives it."""
        return KafkaConnection(
            bootstrap_servers=bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism=SCRAM_MECHANISM,
            username=principal,
            password_file=self.password_file(principal),
            ca_file=self.ca_file,
        )

    def broker_properties(self, client_listener: str, controller_listener: str) -> dict[str, str]:
        """The server.properties settings of the secured mode (listener names as given)."""
        client = client_listener.lower()
        controller = controller_listener.lower()
        mechanism = SCRAM_MECHANISM.lower()
        return {
            "listener.security.protocol.map": f"{client_listener}:SASL_SSL,{controller_listener}:SSL",
            "inter.broker.listener.name": client_listener,
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.{client}.{mechanism}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN}" password="{self.password(ADMIN)}";'
            ),
            f"listener.name.{controller}.ssl.client.auth": "required",
            # Inline PEM: Kafka's file-based PEM keystore needs an encrypted key, and the JVM cannot read
            # the PBES2 encryption of today's PKCS#8; server.properties is 0600. Properties read "\\n".
            "ssl.keystore.type": "PEM",
            "ssl.keystore.key": _one_line(self.key_file),
            "ssl.keystore.certificate.chain": _one_line(self.chain_file),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.ca_file.as_posix(),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN};{BROKER_PRINCIPAL}",
            "allow.everyone.if.no.acl.found": "false",
        }


def _one_line(path: Path) -> str:
    """A PEM file as one java.util.Properties value (newlines as ``\\n`` escapes)."""
    return path.read_text(encoding="ascii").strip().replace("\n", "\\n")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)


# --------------------------------------------------------------------------- ACLs

# Kafka's wire codes (org.apache.kafka.common.resource / acl)
_RESOURCE = {"topic": 2, "group": 3, "cluster": 4}
_PREFIXED, _LITERAL = 4, 3
_OPERATION = {
    "read": 3, "write": 4, "create": 5, "describe": 8, "describe-configs": 10, "idempotent-write": 12,
}  # fmt: skip
_ALLOW = 3


@dataclass(frozen=True)
class Grant:
    """One allowed operation set of one principal on one resource (topics and groups PREFIXED)."""

    principal: str
    resource: str  # topic | group | cluster
    name: str
    operations: tuple[str, ...]

    def describe(self) -> str:
        pattern = "" if self.resource == "cluster" else " (prefixed)"
        return f"User:{self.principal} {'+'.join(self.operations)} {self.resource} {self.name}{pattern}"


def acl_grants(prefix: str = "casebridge") -> list[Grant]:
    """What each principal may do on the topics and groups of ``prefix`` (see the module's table)."""
    topic = f"{prefix}."
    groups = f"{prefix}-"
    rw = ("read", "write")
    grants: list[Grant] = []

    def allow(principal: str, resource: str, names: Iterable[str], operations: Sequence[str]) -> None:
        for name in names:
            grants.append(Grant(principal, resource, name, tuple(operations)))

    router_owned = (
        "transfers", "retry.", "retry-state", "lifecycle", "child-history", "pending-notices", "pending-closures",
        "events", "dlq", "parking", "remap", "feed-cursors",
    )  # fmt: skip
    allow("router", "topic", (topic + t for t in router_owned), rw)
    allow("router", "topic", [topic + "audit"], ["read"])
    allow("router", "topic", [topic + "intake-audit"], ["write"])  # the intake's posts (connectors/intake)
    allow("router", "topic", [topic], ["create", "describe", "describe-configs"])
    allow("router", "group", [groups], ["read", "describe"])
    allow("router", "cluster", ["kafka-cluster"], ["idempotent-write"])

    # the monitor replays and records allocations too (router/deadletters.replay, router/allocations.allocate):
    # a replay writes the message back (transfers, or pending-closures for a later closure) and its audit record;
    # an allocation reads what waits for one (pending-closures, pending-notices), audits it, marks the closure due
    allow(
        "monitor",
        "topic",
        (topic + t for t in ("events", "dlq", "parking", "intake-audit", "pending-notices")),
        ["read"],
    )
    allow("monitor", "topic", (topic + t for t in ("audit", "pending-closures")), rw)
    allow("monitor", "topic", [topic + t for t in ("transfers", "remap")], ["write"])
    allow("monitor", "topic", [topic], ["describe"])
    allow("monitor", "group", [groups], ["read", "describe"])

    allow(
        "operator",
        "topic",
        (topic + t for t in ("dlq", "parking", "intake-audit", "events", "pending-notices")),
        ["read"],
    )
    allow("operator", "topic", (topic + t for t in ("transfers", "retry.", "remap")), ["write"])
    allow("operator", "topic", (topic + t for t in ("audit", "pending-closures")), rw)
    allow("operator", "topic", [topic], ["describe"])
    allow("operator", "group", [groups], ["describe"])

    allow("viewer", "topic", [topic + "events"], ["read"])
    allow("viewer", "topic", [topic], ["describe"])

    allow("publisher", "topic", [topic + "transfers"], ["write"])
    return grants


class _CreateAclsResponse_v2(Response):  # type: ignore[misc]  # aiokafka ships no types
    API_KEY = 30
    API_VERSION = 2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(("error_code", Int16), ("error_message", CompactString("utf-8")), ("tags", TaggedFields)),
        ),
        ("tags", TaggedFields),
    )


class _CreateAclsResponse_v3(Response):  # type: ignore[misc]  # aiokafka ships no types
    API_KEY = 30
    API_VERSION = 3
    SCHEMA = _CreateAclsResponse_v2.SCHEMA


_CREATIONS = CompactArray(
    ("resource_type", Int8),
    ("resource_name", CompactString("utf-8")),
    ("resource_pattern_type", Int8),
    ("principal", CompactString("utf-8")),
    ("host", CompactString("utf-8")),
    ("operation", Int8),
    ("permission_type", Int8),
    ("tags", TaggedFields),
)


class _CreateAclsRequest_v2(RequestStruct):  # type: ignore[misc]  # aiokafka ships no types
    # aiokafka ships CreateAcls v0-v1 only, which Kafka 4 no longer accepts (KIP-896): v2+ is flexible.
    FLEXIBLE_VERSION = True
    API_KEY = 30
    API_VERSION = 2
    RESPONSE_TYPE = _CreateAclsResponse_v2
    SCHEMA = Schema(("creations", _CREATIONS), ("tags", TaggedFields))


class _CreateAclsRequest_v3(RequestStruct):  # type: ignore[misc]  # aiokafka ships no types
    FLEXIBLE_VERSION = True
    API_KEY = 30
    API_VERSION = 3
    RESPONSE_TYPE = _CreateAclsResponse_v3
    SCHEMA = _CreateAclsRequest_v2.SCHEMA


_CreateAclsStruct: TypeAlias = _CreateAclsRequest_v2 | _CreateAclsRequest_v3


class _CreateAcls(Request[_CreateAclsStruct]):  # type: ignore[misc]  # aiokafka ships no types
    API_KEY = 30

    def __init__(self, grants: Sequence[Grant]) -> None:
        self._creations: list[tuple[Any, ...]] = [
            (
                _RESOURCE[g.resource],
                g.name,
                _LITERAL if g.resource == "cluster" else _PREFIXED,
                f"User:{g.principal}",
                "*",
                _OPERATION[operation],
                _ALLOW,
                {},
            )
            for g in grants
            for operation in g.operations
        ]

    def build(self, request_struct_class: type[_CreateAclsStruct]) -> _CreateAclsStruct:
        return request_struct_class(self._creations, {})


class AclError(Exception):
    """The broker refused to create an ACL (the message names the grant and Kafka's error)."""


async def create_acls(bootstrap: str, files: SecureFiles, grants: Sequence[Grant], timeout: float = 30.0) -> None:
    """Create ``grants`` as the admin super user (idempotent: an ACL that exists is kept as it is)."""
    client = clients.client(files.connection(bootstrap, ADMIN), request_timeout_ms=int(timeout * 1000))
    try:
        await client.bootstrap()  # bounded by request_timeout_ms; a wait_for cut mid-TLS leaks the socket
        node = next(iter(client.cluster.brokers())).nodeId
        flat = [(g, op) for g in grants for op in g.operations]
        response = await asyncio.wait_for(client.send(node, _CreateAcls(grants)), timeout)
        for (grant, operation), (code, message, _tags) in zip(flat, response.results, strict=True):
            if code:
                raise AclError(f"the broker refused the ACL {grant.describe()} ({operation}): error {code} {message}")
    finally:
        await client.close()
        # let TLS's close_notify exchange end: asyncio.run would close the loop under it, leaving the socket open
        await asyncio.sleep(TLS_CLOSE_SECONDS)
