"""The Dagster instance under LETHE_HOME: its runs, event logs and schedules.

By default they live in SQLite files under LETHE_HOME/dagster. With LETHE_DAGSTER_PG_URL
set they live in that PostgreSQL database instead, so that several machines (the
webserver, the daemon, run workers) share one instance.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import urlsplit

import dagster as dg
import psycopg

from lethe.errors import LetheError
from lethe.operations.files import owner_only_umask, write_text
from lethe.operations.home import Home
from lethe.operations.shards import shard_count, worker_count
from pipelines.jobs import TOP_RUN_TAG
from pipelines.resources import PARTITION_TAG

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

# With subject shards, each shard is a LETHE_HOME of its own: the queue starts runs of
# different shard partitions side by side (up to LETHE_SHARD_WORKERS), never two of one
# shard, and one run of the top LETHE_HOME (the union) at a time. A union that overlaps a
# shard run waits for that shard's lock.
SHARDED_RUNS = """\
    tag_concurrency_limits:
      - key: {partition}
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      - key: {top}
        limit: 1
"""

# The variable holding the URL of the PostgreSQL database for runs, event logs and
# schedules. The config names the variable, never its value: no password is written.
PG_URL_ENV = "LETHE_DAGSTER_PG_URL"

POSTGRES_STORAGE = f"""\
storage:
  postgres:
    postgres_url:
      env: {PG_URL_ENV}
"""


def _config(workers: int | None, postgres: bool) -> str:
    """The dagster.yaml for one shard layout (`workers` None: no shards) and storage."""
    text = INSTANCE_CONFIG
    if workers is not None:
        text = text.replace("max_concurrent_runs: 1", f"max_concurrent_runs: {workers}")
        text += SHARDED_RUNS.format(partition=PARTITION_TAG, top=TOP_RUN_TAG)
    return text + (POSTGRES_STORAGE if postgres else "")


def _generated(text: str) -> bool:
    """Whether `text` is a config Lethe writes (any other dagster.yaml is the user's own)."""
    runs = re.search(r"max_concurrent_runs: (\d+)", text)
    workers = int(runs.group(1)) if runs else 1
    return any(text == _config(w, pg) for w in (None, workers) for pg in (False, True))


def instance_config() -> str:
    """The dagster.yaml Lethe writes: SQLite storage, or PostgreSQL when LETHE_DAGSTER_PG_URL
    is set (refused in one line when that database cannot be reached); with LETHE_SHARDS > 1,
    a run queue that starts the shards' runs side by side."""
    url = os.environ.get(PG_URL_ENV)
    if url is not None:
        check_postgres(url)
    return _config(worker_count() if shard_count() > 1 else None, url is not None)


def check_postgres(url: str) -> None:
    """Refuse, in one line that never shows the password, a URL that is not a PostgreSQL
    URL or whose database does not answer; Dagster would otherwise retry and fail with a
    traceback."""
    if not url.strip().startswith("postgresql://"):
        raise LetheError(
            f"{PG_URL_ENV} must be a URL postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    try:
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LetheError(
            f"{PG_URL_ENV}: cannot open the Dagster instance's database: {_hide(reason, url)}"
        ) from None


def _hide(text: str, url: str) -> str:
    """`text` with the URL and its password masked (a driver may quote the URL back)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in (url, password):
        if secret:
            text = text.replace(secret, "***")
    return text


def prepare_instance(home: Home) -> dg.DagsterInstance:
    """Point DAGSTER_HOME at LETHE_HOME/dagster, write its config (SQLite, or PostgreSQL
    when LETHE_DAGSTER_PG_URL is set), and open it. A dagster.yaml of the user's own is
    left alone."""
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    home.dagster.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = home.dagster / "dagster.yaml"
    wanted = instance_config()
    current = config.read_text(encoding="utf-8") if config.exists() else None
    if current is None or (_generated(current) and current != wanted):
        write_text(config, wanted)
    elif not _generated(current) and PG_URL_ENV in os.environ and PG_URL_ENV not in current:
        # A set variable that changes nothing would leave runs where the user does not
        # expect them.
        raise LetheError(
            f"{PG_URL_ENV} is set but {config} is a config of your own that does not use it:"
            f" add its storage there (storage: postgres: postgres_url: env: {PG_URL_ENV})"
            " or unset the variable"
        )
    return dg.DagsterInstance.get()


if __name__ == "__main__":
    with owner_only_umask():
        try:
            prepare_instance(Home.from_env(sys.argv[1] if len(sys.argv) > 1 else None).ensure())
        except LetheError as exc:
            sys.exit(f"error: {exc}")
