"""The long form of the broker-outage fault: the broker down for 2 minutes (the default test run keeps it to 35 s).

    .venv/bin/python -m bench.broker_outage              # down 120 s
    .venv/bin/python -m bench.broker_outage --seconds 420

Runs ``tests/test_faults_broker.py``'s down-for-a-while test (a ``casebridge run`` subprocess on North Somerset's
sandboxes and a broker of the test's own) with the broker away that long, and prints its figures: delivered,
dead-lettered, duplicated, lost, seconds to recover, log lines and bytes, the outage lines, CPU while away.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the broker stays away")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CASEBRIDGE_FAULT_DOWN_SECONDS": str(args.seconds)}
    test = "tests/test_faults_broker.py::test_broker_down_for_a_while_waited_out_logged_once_away_and_once_back"
    command = [sys.executable, "-m", "pytest", test, "-q", "-s", "-p", "no:cacheprovider"]
    return subprocess.call(command, cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main())
