"""The operator commands start fast (issue #18: `dlq list --transfer ID` under 1 s over 100,000 dead letters,
bench/dlq_index.py): the packages import their re-exported names when first used (``contracts/_lazy.py``), and the
CLI imports the router's Kafka wiring, the web application and the local broker only in the commands that use
them."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

PACKAGES = ["contracts", "router", "connectors", "monitor"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_of_a_package_resolves_and_an_unknown_one_is_an_attribute_error(name: str) -> None:
    package = importlib.import_module(name)
    public = [n for n in package.__all__ if not n.startswith("__")]
    assert sorted(public) == sorted(package._WHERE), "each public name says where it is defined"
    for n in public:
        assert getattr(package, n) is getattr(importlib.import_module(package._WHERE[n], name), n)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        package.not_a_name  # noqa: B018


def test_the_cli_module_imports_no_web_application_router_wiring_or_local_broker() -> None:
    heavy = ["faststream", "fastapi", "uvicorn", "uvloop", "casebridge.localkafka", "router.app", "monitor._web"]
    code = f"import sys, json, casebridge.cli; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [], "imported by `import casebridge.cli`, which every command pays for"
