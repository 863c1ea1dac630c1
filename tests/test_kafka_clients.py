"""One Kafka client factory (connectors/kafka.py): its settings are checked together, each wrong one in one line
naming the key; every client it builds carries the TLS context and SASL credentials; the deployment file's
``[kafka]`` table and ``CASEBRIDGE_KAFKA__*`` reach it; ``casebridge run`` refuses unencrypted Kafka outside a
local development deployment; and no module but the factory (and bench/) builds a Kafka client."""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faststream.kafka.security import parse_security
from faststream.security import SASLScram256, SASLScram512
from pydantic import ValidationError
from typer.testing import CliRunner, Result

from casebridge.cli import app
from casebridge.deployment import DeploymentError, load
from connectors import kafka as clients
from connectors.kafka import KafkaConnection, KafkaSecurity
from router import Settings

ROOT = Path(__file__).parent.parent
PASSWORD = "router-password-not-for-printing-0123"
TOKENS = {"LCS_TOKEN": "t-lcs-0123456789", "EHM_TOKEN": "t-ehm-0123456789"}


# -- a synthetic CA, a broker certificate for localhost, and a client certificate (mutual TLS) -------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, ca: bool = False,
    dns: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )  # fmt: skip
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        assert issuer is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_file, key_file = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = _issue("casebridge test CA", None, ca=True)
    server, server_key = _issue("localhost", (ca.subject, ca_key), dns="localhost")
    client, client_key = _issue("operator", (ca.subject, ca_key))
    ca_file, _ = _write(folder, "ca", ca, ca_key)
    server_file, server_key_file = _write(folder, "broker", server, server_key)
    client_file, client_key_file = _write(folder, "client", client, client_key)
    password = folder / "router.password"
    password.write_text(PASSWORD + "\n")
    not_pem = folder / "not.pem"
    not_pem.write_text("this is not a certificate\n")
    return {"ca": ca_file, "server": server_file, "server_key": server_key_file, "cert": client_file,
            "key": client_key_file, "password": password, "not_pem": not_pem}  # fmt: skip


def _handshake(client_ctx: ssl.SSLContext, pki: dict[str, Path]) -> dict[str, object]:
    """A TLS handshake in memory against a 'broker' holding our CA's certificate for localhost and requiring a
    client certificate from our CA; returns the client certificate the broker saw."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki["server"], pki["server_key"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(pki["ca"])
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), done
    return server.getpeercert() or {}


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[tuple[object, ...], str]]:
    return [(tuple(e["loc"]), e["msg"]) for e in exc.value.errors(include_input=False)]


# -- the settings, checked together ---------------------------------------------------------------------------


def test_sasl_needs_a_mechanism_a_username_and_a_password_and_says_which_is_missing() -> None:
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="SASL_SSL", username="router")
    [(loc, message)] = _errors(raised)
    assert () == loc
    assert message.startswith("security_protocol SASL_SSL needs sasl_mechanism, password")


def test_an_unknown_mechanism_or_protocol_is_refused_naming_the_key() -> None:
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI", username="u", password=PASSWORD)
    assert [("sasl_mechanism",)] == [loc for loc, _ in _errors(raised)]
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="TLS")
    assert [("security_protocol",)] == [loc for loc, _ in _errors(raised)]


def test_a_missing_ca_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="SSL", ca_file=missing)
    [(loc, message)] = _errors(raised)
    assert ("ca_file",) == loc
    assert f"file {missing} cannot be read (No such file or directory)" == message


def test_a_ca_file_that_is_not_pem_and_a_certificate_without_its_key_are_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="SSL", ca_file=pki["not_pem"])
    assert [((), f"ca_file {pki['not_pem']} is not a PEM certificate")] == _errors(raised)
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="SSL", ca_file=pki["ca"], cert_file=pki["cert"])
    assert [((), "cert_file and key_file go together (mutual TLS): give both or neither")] == _errors(raised)
    with pytest.raises(ValidationError) as raised:  # the key of another certificate
        KafkaSecurity(security_protocol="SSL", ca_file=pki["ca"], cert_file=pki["cert"], key_file=pki["server_key"])
    assert "are not a PEM certificate and its unencrypted key" in _errors(raised)[0][1]


def test_credentials_or_tls_files_on_a_protocol_that_does_not_use_them_are_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="PLAINTEXT", username="router", password=PASSWORD)
    assert "username, password given, but security_protocol PLAINTEXT does not use SASL" in _errors(raised)[0][1]
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", username="u", password=PASSWORD,
                      ca_file=pki["ca"])  # fmt: skip
    assert "ca_file given, but security_protocol SASL_PLAINTEXT does not use TLS" in _errors(raised)[0][1]


def test_the_password_never_prints(pki: dict[str, Path]) -> None:
    conn = KafkaConnection(bootstrap_servers="kafka:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                           username="router", password=PASSWORD, ca_file=pki["ca"])  # fmt: skip
    assert PASSWORD not in repr(conn) + str(conn) + conn.describe()
    assert f"SASL_SSL, SCRAM-SHA-512 as router, CA {pki['ca']}" == conn.describe()
    with pytest.raises(ValidationError) as raised:
        KafkaSecurity(security_protocol="PLAINTEXT", password=PASSWORD)
    assert PASSWORD not in str(raised.value)


# -- what the factory builds, per protocol ----------------------------------------------------------------------


def test_plaintext_clients_carry_the_address_only() -> None:
    assert {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"} == clients.client_kwargs(
        "127.0.0.1:9092"
    )
    assert clients.broker_security("127.0.0.1:9092") is None


def test_ssl_trusts_the_ca_file_and_presents_the_client_certificate(pki: dict[str, Path]) -> None:
    conn = KafkaConnection(bootstrap_servers="localhost:9093", security_protocol="SSL", ca_file=pki["ca"],
                           cert_file=pki["cert"], key_file=pki["key"])  # fmt: skip
    kw = clients.client_kwargs(conn)
    assert {"bootstrap_servers", "security_protocol", "ssl_context"} == set(kw)
    assert "SSL" == kw["security_protocol"]
    context = kw["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert ssl.CERT_REQUIRED == context.verify_mode and context.check_hostname
    peer = _handshake(context, pki)  # our CA trusted, our certificate presented
    assert ((("commonName", "operator"),),) == peer["subject"]
    # without the CA file the same broker is not trusted (the system's CAs do not know it)
    plain = KafkaConnection(bootstrap_servers="localhost:9093", security_protocol="SSL", cert_file=pki["cert"],
                            key_file=pki["key"])  # fmt: skip
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(clients.client_kwargs(plain)["ssl_context"], pki)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_sasl_ssl_clients_carry_the_mechanism_the_credentials_and_the_tls_context(
    pki: dict[str, Path], mechanism: str
) -> None:
    conn = KafkaConnection(bootstrap_servers="localhost:9093", security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                           username="router", password_file=pki["password"], ca_file=pki["ca"])  # fmt: skip
    kw = clients.client_kwargs(conn)
    assert ("SASL_SSL", mechanism, "router", PASSWORD) == (
        kw["security_protocol"],
        kw["sasl_mechanism"],
        kw["sasl_plain_username"],
        kw["sasl_plain_password"],
    )
    assert {"commonName": "casebridge test CA"} == {
        k: v for rdn in kw["ssl_context"].get_ca_certs()[0]["subject"] for k, v in rdn
    }
    # every kind of client the project builds carries them (built, never started: no broker is asked)
    producer, consumer = clients.producer(conn, acks="all"), clients.consumer(conn, "t.events", group_id=None)
    admin, client = clients.admin(conn), clients.client(conn)
    built = {"producer": producer.client, "consumer": consumer._client, "admin": admin._client, "client": client}
    try:
        for kind, low in built.items():
            got = (low._security_protocol, low._sasl_mechanism, low._sasl_plain_username, low._sasl_plain_password)
            assert ("SASL_SSL", mechanism, "router", PASSWORD) == got, kind
            assert isinstance(low._ssl_context, ssl.SSLContext), kind
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()
        await client.close()
    broker = clients.broker(conn, logger=None)
    params = broker._connection_kwargs
    assert ("SASL_SSL", mechanism, "router", PASSWORD) == (
        params["security_protocol"], params["sasl_mechanism"], params["sasl_plain_username"],
        params["sasl_plain_password"],
    )  # fmt: skip
    assert isinstance(params["ssl_context"], ssl.SSLContext)
    assert ["localhost:9093"] == params["bootstrap_servers"]


def test_sasl_plaintext_has_no_tls_context_and_faststream_gets_the_matching_security() -> None:
    conn = KafkaConnection(bootstrap_servers="k:9092", security_protocol="SASL_PLAINTEXT",
                           sasl_mechanism="SCRAM-SHA-256", username="viewer", password=PASSWORD)  # fmt: skip
    kw = clients.client_kwargs(conn)
    assert "ssl_context" not in kw and "SASL_PLAINTEXT" == kw["security_protocol"]
    security = clients.broker_security(conn)
    assert isinstance(security, SASLScram256) and not security.use_ssl
    assert {"security_protocol": "SASL_PLAINTEXT", "ssl_context": None, "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_plain_username": "viewer", "sasl_plain_password": PASSWORD} == parse_security(security)  # fmt: skip


def test_ssl_only_gives_faststream_a_tls_security_without_sasl(pki: dict[str, Path]) -> None:
    security = clients.broker_security(KafkaConnection(security_protocol="SSL", ca_file=pki["ca"]))
    assert security is not None and not isinstance(security, SASLScram512)
    assert "SSL" == parse_security(security)["security_protocol"]
    assert isinstance(parse_security(security)["ssl_context"], ssl.SSLContext)


# -- settings from the environment (the operator commands) and from the deployment file ---------------------------


@pytest.fixture
def no_casebridge_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("CASEBRIDGE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_operator_settings_come_from_casebridge_kafka_variables(
    no_casebridge_env: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    env = no_casebridge_env
    env.setenv("CASEBRIDGE_BOOTSTRAP_SERVERS", "kafka.council.example:9093")
    env.setenv("CASEBRIDGE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("CASEBRIDGE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    env.setenv("CASEBRIDGE_KAFKA__USERNAME", "operator")
    env.setenv("CASEBRIDGE_KAFKA__PASSWORD_FILE", str(pki["password"]))
    env.setenv("CASEBRIDGE_KAFKA__CA_FILE", str(pki["ca"]))
    kw = clients.client_kwargs(Settings().connection)
    assert ("kafka.council.example:9093", "SASL_SSL", "operator", PASSWORD) == (
        kw["bootstrap_servers"],
        kw["security_protocol"],
        kw["sasl_plain_username"],
        kw["sasl_plain_password"],
    )


def _invoke(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(app, args, env=env)


def _one_error(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert 1 == len(lines), lines
    return lines[0]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"CASEBRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "CASEBRIDGE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
          "CASEBRIDGE_KAFKA__USERNAME": "operator"},
         "error: CASEBRIDGE_KAFKA: security_protocol SASL_SSL needs password"),
        ({"CASEBRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL", "CASEBRIDGE_KAFKA__CA_FILE": "/nowhere/ca.pem"},
         "error: CASEBRIDGE_KAFKA__CA_FILE: file /nowhere/ca.pem cannot be read (No such file or directory)"),
        ({"CASEBRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "CASEBRIDGE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-1",
          "CASEBRIDGE_KAFKA__USERNAME": "operator", "CASEBRIDGE_KAFKA__PASSWORD": PASSWORD},
         "error: CASEBRIDGE_KAFKA__SASL_MECHANISM: Input should be 'SCRAM-SHA-512', 'SCRAM-SHA-256' or 'PLAIN'"),
    ],
)  # fmt: skip
@pytest.mark.parametrize(
    "command",
    [["dlq", "list"], ["replay", "--operator", "ops", "--dry-run"],
     ["allocate", "T-1", "--worker", "A Worker", "--organisation", "Org", "--operator", "ops"]],
)  # fmt: skip
def test_operator_commands_refuse_wrong_kafka_settings_in_one_line_exit_2(
    no_casebridge_env: pytest.MonkeyPatch, variables: dict[str, str], expected: str, command: list[str]
) -> None:
    result = _invoke(command, {**variables, "CASEBRIDGE_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert 2 == result.exit_code, result.output
    line = _one_error(result)
    assert line.startswith(expected), line
    assert PASSWORD not in result.output


SECURED = """
councils = ["north-somerset"]
bootstrap_servers = "kafka.council.example:9093"
topic_prefix = "cb-secure"
{top}
[kafka]
{kafka}

[systems.lcs]
kind = "lcs"
url = "https://lcs.council.example/api"
token = {{ env = "LCS_TOKEN" }}

[systems.ehm]
kind = "ehm"
url = "https://ehm.council.example/api"
token = {{ env = "EHM_TOKEN" }}
"""


def _deployment_file(tmp_path: Path, kafka: str, top: str = "") -> Path:
    path = tmp_path / "north-somerset.toml"
    path.write_text(SECURED.format(top=top, kafka=kafka))
    return path


@pytest.fixture
def tokens(no_casebridge_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in TOKENS.items():
        no_casebridge_env.setenv(name, value)
    return no_casebridge_env


def test_the_kafka_table_takes_the_password_by_reference_and_files_relative_to_it(
    tokens: pytest.MonkeyPatch, pki: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_bytes(pki["ca"].read_bytes())
    (tmp_path / "router.password").write_text(PASSWORD)
    path = _deployment_file(
        tmp_path,
        """security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
username = "router"
password = { file = "router.password" }
ca_file = "ca.pem"
""",
    )
    conn = load(path).settings.connection
    assert (tmp_path / "ca.pem", "router", PASSWORD) == (conn.ca_file, conn.username, conn.password and
                                                          conn.password.get_secret_value())  # fmt: skip
    assert "kafka.council.example:9093" == clients.client_kwargs(conn)["bootstrap_servers"]
    # the environment overrides it, as every key: the user, and the password file
    other = tmp_path / "operator.password"
    other.write_text("another-password-0123456789")
    tokens.setenv("CASEBRIDGE_KAFKA__USERNAME", "router-2")
    tokens.setenv("CASEBRIDGE_KAFKA__PASSWORD_FILE", str(other))
    conn = load(path).settings.connection
    assert ("router-2", "another-password-0123456789") == (conn.username, conn.password and
                                                            conn.password.get_secret_value())  # fmt: skip
    tokens.delenv("CASEBRIDGE_KAFKA__PASSWORD_FILE")  # a password written inline in the environment: refused too
    tokens.setenv("CASEBRIDGE_KAFKA__PASSWORD", PASSWORD)
    with pytest.raises(DeploymentError) as raised:
        load(path)
    [problem] = raised.value.problems
    assert problem.startswith(
        "north-somerset.toml: CASEBRIDGE_KAFKA__PASSWORD (environment): kafka.password: a secret is never written"
    ), problem
    assert PASSWORD not in str(raised.value)


def test_the_kafka_table_refuses_an_inline_password_and_names_file_line_and_key(
    tokens: pytest.MonkeyPatch, pki: dict[str, Path], tmp_path: Path
) -> None:
    path = _deployment_file(
        tmp_path,
        f"""security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
username = "router"
password = "{PASSWORD}"
ca_file = "{pki["ca"]}"
""",
    )
    with pytest.raises(DeploymentError) as raised:
        load(path)
    [problem] = raised.value.problems
    assert problem.startswith("north-somerset.toml: line 10: kafka.password: a secret is never written inline"), problem
    assert PASSWORD not in str(raised.value)
    path = _deployment_file(tmp_path, 'security_protocol = "SASL_SSL"\nusername = "router"\n')
    with pytest.raises(DeploymentError) as raised:
        load(path)
    assert [
        "north-somerset.toml: line 6: kafka: security_protocol SASL_SSL needs sasl_mechanism, password"
        " (sasl_mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN; the password by reference)"
    ] == raised.value.problems


def test_config_check_reports_the_security_in_use_without_the_password(
    tokens: pytest.MonkeyPatch, pki: dict[str, Path], tmp_path: Path
) -> None:
    path = _deployment_file(
        tmp_path,
        f"""security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
username = "router"
password = {{ file = "{pki["password"]}" }}
ca_file = "{pki["ca"]}"
cert_file = "{pki["cert"]}"
key_file = "{pki["key"]}"
""",
    )
    result = _invoke(["config", "check", str(path)], dict(TOKENS))
    assert 0 == result.exit_code, result.output
    assert (
        f"  kafka security: SASL_SSL, SCRAM-SHA-512 as router, CA {pki['ca']}, client certificate {pki['cert']}"
        in result.output.splitlines()
    )
    assert PASSWORD not in result.output


@pytest.mark.parametrize(
    "kafka",
    ['security_protocol = "PLAINTEXT"',
     'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\nusername = "router"\n'
     'password = { env = "KAFKA_PASSWORD" }'],
)  # fmt: skip
def test_run_refuses_unencrypted_kafka_unless_the_deployment_is_local_development(
    tokens: pytest.MonkeyPatch, tmp_path: Path, kafka: str
) -> None:
    env = {**TOKENS, "KAFKA_PASSWORD": PASSWORD}
    path = _deployment_file(tmp_path, kafka)
    protocol = re.search(r'security_protocol = "(\w+)"', kafka).group(1)  # type: ignore[union-attr]
    for command in (["run", "--config", str(path)], ["config", "check", str(path)]):
        result = _invoke(command, env)
        assert 2 == result.exit_code, result.output
        line = _one_error(result)
        assert f"north-somerset.toml: kafka.security_protocol is {protocol}" in line, line
        assert "local_development = true" in line and PASSWORD not in result.output
    local = _deployment_file(tmp_path, kafka, top="local_development = true")
    result = _invoke(["config", "check", str(local)], env)
    assert 0 == result.exit_code, result.output
    assert "(local_development = true)" in result.output


def test_every_example_and_the_local_deployments_say_local_development() -> None:
    from casebridge import localdeploy

    for example in sorted((ROOT / "examples").glob("*.toml")):
        assert re.search(r"^local_development = true\b", example.read_text(), re.M), example.name
    source = Path(localdeploy.__file__).read_text()
    assert '"local_development = true' in source


# -- one factory: no other module builds a Kafka client ------------------------------------------------------------

CONSTRUCTS = re.compile(r"\b(AIOKafkaProducer|AIOKafkaConsumer|AIOKafkaAdminClient|AIOKafkaClient|KafkaBroker)\s*\(")
PACKAGES = ("contracts", "connectors", "mappings", "router", "sandboxes", "casebridge", "monitor")
#: the factory itself; and the local broker's own readiness probe (casebridge/localkafka.py, plaintext only,
#: owned by the secure-broker work), which asks the broker it just started whether it answers
ALLOWED = {"connectors/kafka.py", "casebridge/localkafka.py"}


def _constructions(text: str) -> list[str]:
    return [m.group(1) for m in CONSTRUCTS.finditer(text)]


def test_the_scan_finds_a_client_built_directly() -> None:
    assert ["AIOKafkaProducer", "KafkaBroker"] == _constructions(
        "p = AIOKafkaProducer(bootstrap_servers=s)\nb = faststream.kafka.KafkaBroker (s)\n# AIOKafkaClient is a type"
    )


def test_no_module_but_the_factory_builds_a_kafka_client() -> None:
    found = {}
    scanned = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            scanned += 1
            if rel not in ALLOWED and (names := _constructions(path.read_text(encoding="utf-8"))):
                found[rel] = names
    assert scanned > 50
    assert {} == found, "build Kafka clients with connectors.kafka (producer, consumer, admin, client, broker)"
    assert _constructions((ROOT / "connectors" / "kafka.py").read_text())  # the factory is where they are built
