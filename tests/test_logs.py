"""Logs are JSON lines with a correlation id, and never carry personal data."""

from __future__ import annotations

import json

import pytest
import structlog

from casebridge.logs import REDACTED, configure_logging


@pytest.fixture(autouse=True)
def _reset_structlog() -> object:
    yield
    structlog.reset_defaults()


def test_personal_data_is_redacted_at_any_depth(capsys: pytest.CaptureFixture[str]) -> None:
    """Names, dates of birth, NHS numbers and notes never reach a log line, even nested."""
    configure_logging(json=True)
    structlog.get_logger("casebridge.test").warning(
        "careless_call",
        transfer_id="t-1",
        nhs_number="9990001235",
        payload={
            "child": {"given_name": "Robin"},
            "documents": [{"content": "private notes"}],
            "date_of_birth": "2016-04-09",
        },
    )
    line = capsys.readouterr().err.strip()
    assert not any(secret in line for secret in ("9990001235", "Robin", "private notes", "2016-04-09"))
    record = json.loads(line)
    assert ("careless_call", "t-1", "[redacted]") == (record["event"], record["correlation_id"], record["nhs_number"])


# ------------------------------------------------------------------ synthetic data only


def nhs_number(first_nine: str) -> str:
    """A synthetic NHS number (the 999 range is never issued): nine digits and their modulus-11 check digit."""
    check = 11 - sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=True)) % 11
    assert check != 10, "no valid number starts this way"
    return first_nine + str(0 if check == 11 else check)


NHS = nhs_number("999123451")  # 9991234514 at the time of writing; computed, not copied
NHS_SPACED = f"{NHS[:3]} {NHS[3:6]} {NHS[6:]}"
NHS_DASHED = f"{NHS[:3]}-{NHS[3:6]}-{NHS[6:]}"
GIVEN = "Jane"
SAYS_NHS = f"while reading child {NHS}"


def _valid_timestamp_like() -> str:
    """A 10-digit unix-timestamp-like number that *passes* the NHS check: the context alone must spare it."""
    n = 1764600000
    while True:
        digits = str(n)
        check = 11 - sum(int(d) * w for d, w in zip(digits, range(10, 1, -1), strict=False)) % 11
        if check != 10 and (0 if check == 11 else check) == int(digits[9]):
            return digits
        n += 1


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]


def test_a_traceback_is_formatted_before_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    """A pydantic ValidationError's text (input_value='Jane', an NHS number) never reaches the line; its fields do."""
    from pydantic import BaseModel

    class Child(BaseModel):
        given_name: int
        nhs_number: int

    # the data is not written in the lines that fail: a traceback quotes its source lines
    record, other, message = {"given_name": GIVEN, "nhs_number": f"NHS {NHS_SPACED}"}, {"given_name": GIVEN}, SAYS_NHS
    configure_logging(json=True)
    log = structlog.get_logger("casebridge.test")
    try:
        Child.model_validate(record)
    except ValueError:
        log.exception("record_invalid", transfer_id="t-1")
    try:
        try:
            Child.model_validate(other)
        except ValueError as exc:
            raise RuntimeError(message) from exc
    except RuntimeError:
        log.error("record_invalid_chained", exc_info=True)
    out = capsys.readouterr().err
    for secret in ("Jane", NHS, NHS_SPACED):
        assert secret not in out
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert "given_name [int_parsing]" in str(first["exception"])  # what was wrong is still said
    assert "ValidationError" in str(second["exception"]) and "RuntimeError" in str(second["exception"])


def test_a_library_traceback_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    """A standard-library record's exc_info (uvicorn's 'Exception in ASGI application') is formatted, then redacted."""
    import logging

    configure_logging(json=False)  # the console renderer too: it must not format the exception itself
    text = f"input_value='{GIVEN} Doe', input_type=str; nhs {NHS}"
    try:
        raise ValueError(text)
    except ValueError:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=True)
    out = capsys.readouterr().err
    assert "Exception in ASGI application" in out and "ValueError" in out
    assert "Jane" not in out and NHS not in out


@pytest.mark.parametrize(
    "key", ["Given_Name", "childName", "NHS_Number", "DateOfBirth", "post_code", "homeAddress", "Mobile", "e-mail"]
)
def test_personal_keys_match_whatever_their_case_or_separators(capsys: pytest.CaptureFixture[str], key: str) -> None:
    configure_logging(json=True)
    structlog.get_logger("casebridge.test").warning("careless_call", **{key: "Jane Doe"}, nested={key: "Jane Doe"})
    out = capsys.readouterr().err
    assert "Jane" not in out
    record = json.loads(out)
    assert (REDACTED, REDACTED) == (record[key], record["nested"][key])


def test_casebridge_keys_and_ids_are_never_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """transfer_id, topic, rule_ids... keep their values, however they look; an id of a child is not its data."""
    stamp = _valid_timestamp_like()
    safe = {
        "transfer_id": f"t-{stamp}-router",
        "correlation_id": f"ns-{stamp}",
        "topic": f"demo-{stamp}.transfers",
        "topic_name": f"demo-{stamp}.audit",
        "rule_ids": ["NS-4", "SW22-13"],
        "error_class": "ValidationError",
        "council": "north-somerset",
        "caller": "ehm",
        "loop": "router",
        "offset": int(stamp),
        "child_id": "c-42",
        "hostname": "broker-1",
    }
    configure_logging(json=True)
    structlog.get_logger("casebridge.test").info("router_started", **safe)
    record = _lines(capsys)[0]
    assert {k: record[k] for k in safe} == {k: (list(v) if isinstance(v, list) else v) for k, v in safe.items()}


@pytest.mark.parametrize(
    "text",
    [
        f"value {NHS_SPACED} rejected",
        f"value {NHS_DASHED} rejected",
        f"value NHS{NHS} rejected",
        f"nhs: {NHS} rejected",
        f"NHS no. {NHS_SPACED}",
        f"standalone {NHS}.",
        f"id={NHS}",
        "upn A123456789012 rejected",
        "upn a12345678901b rejected",
        "postcode bs1 4dj rejected",
        "postcode BS14DJ rejected",
        "at (Bs20 7ab).",
    ],
)
def test_shaped_personal_data_is_masked_in_any_text(capsys: pytest.CaptureFixture[str], text: str) -> None:
    configure_logging(json=True)
    structlog.get_logger("casebridge.test").warning("library_error", error=text, errors=[text])
    out = capsys.readouterr().err
    for secret in (NHS, NHS_SPACED, NHS_DASHED, "123456789012", "4dj", "4DJ", "7ab"):
        assert secret not in out, (secret, out)
    assert "[redacted]" in json.loads(out)["error"]


def test_an_nhs_number_as_an_int_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    structlog.get_logger("casebridge.test").warning("careless_call", value=int(NHS), values={"x": int(NHS)})
    assert NHS not in capsys.readouterr().err


def test_ten_digit_runs_in_casebridge_identifiers_survive(capsys: pytest.CaptureFixture[str]) -> None:
    """A timestamp that passes the NHS check is masked alone, but not inside a topic name or an id casebridge made."""
    stamp = _valid_timestamp_like()
    made = [f"demo-{stamp}.transfers", f"t-{stamp}-router", f"demo.{stamp}.audit", f"cb_{stamp}"]
    configure_logging(json=True)
    log = structlog.get_logger("casebridge.test")
    log.warning("library_error", error=f"topic {made[0]} and id {made[1]}; also {made[2]}, {made[3]}")
    log.warning("library_error", error=f"created at {stamp}")
    log.warning("library_error", error="created at 1764600000")  # fails the check: not an NHS number
    first, second, third = _lines(capsys)
    assert all(m in str(first["error"]) for m in made)
    assert stamp not in str(second["error"])
    assert "created at 1764600000" == third["error"]


def test_objects_are_logged_by_type_name_never_by_repr(capsys: pytest.CaptureFixture[str]) -> None:
    """A pydantic model, a dataclass or an exception holding a child is written as <TypeName>."""
    import dataclasses
    import datetime as dt

    from pydantic import BaseModel

    class Child(BaseModel):
        given_name: str

    @dataclasses.dataclass
    class Record:
        family_name: str

    configure_logging(json=True)
    structlog.get_logger("casebridge.test").warning(
        "careless_call",
        model=Child(given_name="Jane"),
        record=Record("Doe"),
        error=ValueError("Jane Doe"),
        when=dt.date(2016, 4, 9),
        nested={"items": [Child(given_name="Jane")]},
    )
    out = capsys.readouterr().err
    assert not any(secret in out for secret in ("Jane", "Doe", "2016"))
    record = json.loads(out)
    assert ("<Child>", "<Record>", "<ValueError>", ["<Child>"]) == (
        record["model"],
        record["record"],
        record["error"],
        record["nested"]["items"],
    )


def test_uvicorn_httpx_and_aiokafka_lines_go_through_the_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    """A sandbox server as the project starts it: its access log line (a name in the query) and errors are redacted.

    uvicorn's default log_config gives its loggers their own handlers that do not propagate: they would bypass it.
    """
    import logging
    import threading
    import time

    import httpx
    import uvicorn
    from fastapi import FastAPI

    from sandboxes._common import _config

    app = FastAPI()

    @app.get("/children")
    def children(given_name: str) -> dict[str, int]:
        return {"found": 0}

    @app.get("/boom")
    def boom() -> None:
        raise ValueError(SAYS_NHS)  # shaped data: a name in an exception's own message cannot be recognised

    configure_logging(json=True)
    logging.getLogger("httpx").setLevel(logging.INFO)
    try:
        server = uvicorn.Server(_config(app, "127.0.0.1", 0, "info", access_log=True))  # as run_forever starts it
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert 200 == client.get("/children", params={"given_name": "Jane"}).status_code
            assert 500 == client.get("/boom").status_code
        logging.getLogger("aiokafka").error("Unable to send %s for BS1 4DJ", NHS)
        server.should_exit = True
        thread.join(10)
    finally:
        logging.getLogger("httpx").setLevel(logging.NOTSET)
    out = capsys.readouterr().err
    lines = [json.loads(line) for line in out.strip().splitlines()]  # every line is the pipeline's JSON
    events = " ".join(str(line["event"]) for line in lines)
    assert "GET /children?[redacted]" in events  # the access line is there, its query masked
    assert "HTTP Request: GET" in events  # httpx's line too
    assert "Exception in ASGI application" in events
    assert [] == [secret for secret in ("Jane", NHS, "BS1 4DJ") if secret in out]
