"""Helper of tests/test_reliability_crash.py, run in a subprocess: `lethe ARGS` killed with
SIGKILL (no cleanup of any kind: no finally, no atexit) at one point of the code.

    python reliability_driver.py POINT -- ARGS...

POINT is `MODULE:ATTR:WHEN:N`: the Nth call of MODULE.ATTR kills the process right before
it runs (WHEN = before) or right after it returns (WHEN = after). Two points watch a
file instead: `landing-unlink` (right before a loaded landing file is removed, its rows
committed) and `backup-partial` (right after the backup's copy is written, not yet
renamed into place), and `run-db-created` (right after SQLite creates the run's event
database, before Dagster creates its tables). `compaction-file-too-large`,
`disk-full-after-enforcement` and `backup-file-too-large` kill nothing: from the warehouse
rewrite, the end of enforcement or the backup on, writes fail as on a full disk.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import resource
import shutil
import signal
import sys
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def patch(point: str) -> None:
    if point == "landing-unlink":
        unlink = pathlib.Path.unlink

        def watched_unlink(self: pathlib.Path, *args: Any, **kwargs: Any) -> None:
            if self.parent.name == "landing":
                die()
            unlink(self, *args, **kwargs)

        pathlib.Path.unlink = watched_unlink  # type: ignore[method-assign]
        return
    if point == "compaction-file-too-large":
        # Not a kill: the warehouse rewrite's fresh file cannot grow past half the size of
        # the warehouse (a write that fails, as on a full disk), the process goes on.
        from lethe.engine import enforcement

        compact = enforcement.compact

        def limited_compact(path: pathlib.Path, *args: Any, **kwargs: Any) -> None:
            if path.name == "warehouse.duckdb":
                limit = path.stat().st_size // 2
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            compact(path, *args, **kwargs)

        enforcement.compact = limited_compact
        return
    if point == "backup-file-too-large":
        # Not a kill: from the backup step on, no file can grow past 64 KiB (a full disk).
        from lethe.operations import backup

        create_backup = backup.create_backup

        def limited_backup(home: Any, *args: Any, **kwargs: Any) -> Any:
            limit = 64 * 1024
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            return create_backup(home, *args, **kwargs)

        backup.create_backup = limited_backup
        import assets.operations

        assets.operations.create_backup = limited_backup
        return
    if point == "disk-full-after-enforcement":
        # Not a kill: once enforcement is done, no file may grow past the warehouse's size:
        # later steps' writes stay in the WAL, their checkpoints (and the backup's) fail.
        import assets.enforcement

        enforce = assets.enforcement.enforce

        def enforce_then_fill(home: Any, *args: Any, **kwargs: Any) -> Any:
            result = enforce(home, *args, **kwargs)
            limit = home.warehouse.stat().st_size
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            return result

        assets.enforcement.enforce = enforce_then_fill
        return
    if point == "run-db-created":
        # The first moment the run's own event database exists: SQLite has created the
        # file, Dagster has not yet created its tables (what a slow start-up exposes).
        import sqlite3.dbapi2

        connect = sqlite3.dbapi2.connect

        def watched_connect(database: Any, *args: Any, **kwargs: Any) -> Any:
            path = pathlib.Path(str(database).removeprefix("file:").split("?")[0])
            new_run_db = (
                path.parent.name == "runs" and path.name != "index.db" and not path.exists()
            )
            con = connect(database, *args, **kwargs)
            if new_run_db and path.exists():
                die()
            return con

        sqlite3.dbapi2.connect = watched_connect
        sqlite3.connect = watched_connect
        return
    if point == "backup-partial":
        copy = shutil.copyfileobj

        def watched_copy(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            copy(src, dst, *args, **kwargs)
            if ".partial" in str(getattr(dst, "name", "")):
                die()

        shutil.copyfileobj = watched_copy
        return
    module_name, attr, when, nth = point.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == int(nth) and when == "before":
            die()
        result = original(*args, **kwargs)
        if calls == int(nth) and when == "after":
            die()
        return result

    setattr(module, attr, wrapper)


def main() -> None:
    point, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: reliability_driver.py POINT -- ARGS..."
    patch(point)
    from lethe.cli import main as lethe

    sys.argv = ["lethe", *args]
    lethe()


if __name__ == "__main__":
    main()
