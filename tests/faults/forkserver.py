"""A fork server for the crash torture: ``python -m tests.faults.forkserver`` imports hashbench once,
computes nothing, and forks a :mod:`tests.faults.child` run per request, so that a kill moment costs a
fork instead of a fresh interpreter importing torch (about 4 s on 2 cores).

Protocol, one line each way on stdin/stdout:

``run OUT CACHE LOG SLOW`` -> ``pid N``: fork a child running the grid into OUT (log appended to LOG,
each ``os.fsync`` slowed by SLOW seconds, ``-`` for none).
``wait N`` -> ``status S``: reap child N; S is its exit status, or minus the signal that killed it.

No thread pool exists in the server when it forks (nothing has been computed), so the children are
free to use torch's.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import hashbench.pipeline  # noqa: F401  (imported once, shared by every child)
import hashbench.runner  # noqa: F401


def child(out: str, cache: str, log: str, slow: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    from .child import main

    main([out, cache] + ([] if slow == "-" else [slow]))


def serve() -> None:
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "run":
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    child(*args)
                    status = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(status)
            print(f"pid {pid}", flush=True)
        elif cmd == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            code = os.waitstatus_to_exitcode(status)
            print(f"status {code}", flush=True)


if __name__ == "__main__":
    assert Path.cwd().joinpath("tests", "faults").is_dir(), "run from the repository root"
    serve()
