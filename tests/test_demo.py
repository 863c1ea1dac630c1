"""`casebridge demo`: every council deployed with ``casebridge run --config`` on its sandboxes, each case ends as
expected, every case counted, each council's topic prefix named for looking at it afterwards."""

from __future__ import annotations

import re

from casebridge.demo import PLAYS, run_demo


async def test_demo_deploys_every_council_and_every_case_ends_as_expected(kafka_bootstrap: str) -> None:
    lines: list[str] = []
    assert await run_demo(kafka_bootstrap, out=lines.append), "\n".join(lines)[-6000:]
    text = "\n".join(lines)
    counted = re.search(r"^(\d+) of (\d+) cases ended as expected", text, re.MULTILINE)
    assert counted is not None and counted[1] == counted[2], text[-3000:]
    described = sum(1 for line in lines if line.startswith("- "))
    assert int(counted[2]) == described >= 19  # every transfer the demo made is a case, and counted
    for council in PLAYS:
        [prefix] = set(re.findall(rf"demo-[0-9a-z]+-{re.escape(council)}(?![-\w])", text))
        assert f"casebridge dlq list --bootstrap {kafka_bootstrap} --prefix {prefix}" in text
        assert "casebridge run --config" in text
    assert "casebridge monitor --bootstrap" in text and "CASEBRIDGE_MONITOR__TOKENS" in text
    for landed in ("team Family Safeguarding Team", "Step Down to SBC Early Help", "(URGENT)", "fix: "):
        assert landed in text
    assert "moves no clock" in text  # LU-4 is said, not shown
    assert "Traceback" not in text
