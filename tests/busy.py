"""Run a command while every core is kept busy, to flush out timing assumptions in tests.

    python tests/busy.py [--hogs N] -- COMMAND...

N spinning processes (default: one per core) run at normal priority for as long as the
command runs; they are stopped when it ends, and the command's exit code is returned.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time


def _spin() -> None:
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    start = time.monotonic()
    try:
        code = subprocess.call(command)
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()
    print(f"busy run: {args.hogs} hogs, {time.monotonic() - start:.0f} s, exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
