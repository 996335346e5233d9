"""A run of the fault tests' grid in its own process: ``python -m tests.faults.child OUT CACHE [SLOW]``
(from the repository root). LSH and ITQ (``n_iter=3``) at 16 and 32 bits on the tiny synthetic set.

``SLOW`` (seconds) makes every ``os.fsync`` of the child sleep that long first, so that the moments a
file is being written (a temp file complete but not yet in place) are a large part of a cell's time and
a random kill often lands in one."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from hashbench.runner import run

from ..tiny import tiny_run_config

GRID = dict(
    methods=["lsh", "itq"],
    bits=[16, 32],
    method_params={"itq": {"n_iter": 3}},
    reference=False,
    attribute_queries=False,
)


def grid_config(out: Path, cache: Path):
    return tiny_run_config(out.parent, **GRID, out=out, cache_dir=cache)


def main(argv: list[str]) -> None:
    """``OUT CACHE [SLOW]``: the grid into OUT with its cache in CACHE (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr, force=True)
    if len(argv) > 2:
        slow, fsync = float(argv[2]), os.fsync

        def slow_fsync(fd: int) -> None:
            time.sleep(slow)
            fsync(fd)

        os.fsync = slow_fsync
    run(grid_config(Path(argv[0]), Path(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
