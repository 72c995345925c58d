"""The Dagster instance under LETHE_HOME: its runs, event logs and schedules."""

from __future__ import annotations

import os
import sys

import dagster as dg

from lethe.operations.files import owner_only_umask, write_text
from lethe.operations.home import Home

# One run at a time: runs the daemon launches (schedule, sensor, UI) queue behind each
# other, and the LETHE_HOME lock makes any run wait for a `lethe run` in progress. No
# "join the community" pop-up (nux) over the UI a compliance officer opens.
INSTANCE_CONFIG = """\
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 1
"""


def prepare_instance(home: Home) -> dg.DagsterInstance:
    """Point DAGSTER_HOME at LETHE_HOME/dagster, write its config once, and open it."""
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    home.dagster.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = home.dagster / "dagster.yaml"
    if not config.exists():  # a user's own instance config is left alone
        write_text(config, INSTANCE_CONFIG)
    return dg.DagsterInstance.get()


if __name__ == "__main__":
    with owner_only_umask():
        prepare_instance(Home.from_env(sys.argv[1] if len(sys.argv) > 1 else None).ensure())
