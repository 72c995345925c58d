"""Helper of tests/test_crash.py, run in a subprocess: enforce on a prepared LETHE_HOME.

    python crash_enforce.py LETHE_HOME POLICY AS_OF RUN_ID

Prints `ready` once everything is imported and loaded, waits for a `go` line on stdin (so
the test can start the clock right before enforcement), then prints `done` when it ends.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from lethe.declaration.policy import load_policy
from lethe.engine.enforcement import enforce
from lethe.operations.home import Home


def main() -> None:
    root, policy_path, as_of, run_id = sys.argv[1:5]
    policy = load_policy(policy_path)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    enforce(Home(Path(root)), policy, dt.date.fromisoformat(as_of), run_id)
    print("done", flush=True)


if __name__ == "__main__":
    main()
