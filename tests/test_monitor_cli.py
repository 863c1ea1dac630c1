"""`casebridge monitor` serves the page and API from CASEBRIDGE_* settings, tokens from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.monitor_support import OPERATOR_TOKEN, VIEWER_TOKEN, auth


def test_casebridge_monitor_command_serves_with_tokens_from_the_environment(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The command starts, answers 401 without a token, and knows the operator named in CASEBRIDGE_MONITOR__TOKENS."""
    port = free_port()
    tokens = [
        {"token": VIEWER_TOKEN, "name": "viewer-1", "role": "viewer"},
        {"token": OPERATOR_TOKEN, "name": "ops-cli", "role": "operator"},
    ]
    env = {
        **os.environ,
        "CASEBRIDGE_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CASEBRIDGE_TOPIC_PREFIX": topic_prefix,
        "CASEBRIDGE_MONITOR__TOKENS": json.dumps(tokens),
        "CASEBRIDGE_MONITOR__DB": str(tmp_path / "monitor.sqlite3"),
    }
    command = [sys.executable, "-m", "casebridge", "monitor", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None, "casebridge monitor exited"
                assert time.monotonic() < deadline, "casebridge monitor did not start"
                time.sleep(0.3)
        assert 401 == httpx.get(f"{url}/api/overview", timeout=10).status_code
        me = httpx.get(f"{url}/api/me", headers=auth(OPERATOR_TOKEN), timeout=10).json()
        assert ("ops-cli", "operator") == (me["name"], me["role"])
        assert 0 == httpx.get(f"{url}/api/overview", headers=auth(), timeout=10).json()["total"]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert (tmp_path / "monitor.sqlite3").exists()
    assert OPERATOR_TOKEN not in output and VIEWER_TOKEN not in output  # tokens never printed
