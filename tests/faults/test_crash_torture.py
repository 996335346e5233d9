"""A crash torture test in the spirit of SQLite's: the grid run in a child process killed with SIGKILL at
seeded random moments of its cells (fits, artifact and row writes), resumed each time; every resumed
folder ends equal to an uninterrupted run, with no duplicate, no damaged row and no stray temp file."""

from __future__ import annotations

import random
import signal
import time

from .conftest import stable_rows, start_child, temp_files

KILL_MOMENTS = 8  # kill moments in all (each costs a child start, about 4 s on 2 cores)
SEED = 19
SLOW_FSYNC_S = 0.03  # each fsync of the child waits this long first: writes are about half of a cell's time
KILL_WINDOW_S = 1.5  # a kill lands at most this long after the first cell began (about the cells' time)


def run_killed(out, cache, log, delay: float | None) -> bool:
    """One child run into ``out``, SIGKILLed ``delay`` seconds after its first cell began (``None``: not
    killed); returns whether it was killed (False: it ended by itself, with status 0)."""
    child = start_child(out, cache, log, SLOW_FSYNC_S)
    start = log.stat().st_size
    t_end = time.monotonic() + 120
    while delay is not None and child.poll() is None and time.monotonic() < t_end:
        if b": training" in log.read_bytes()[start:]:
            time.sleep(delay)
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=60)
                return True
            break
        time.sleep(0.005)
    assert child.wait(timeout=120) == 0, log.read_text()[-3000:]
    return False


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(clean_run, tmp_path):
    cache, clean = clean_run
    expected = stable_rows(clean)
    rng = random.Random(SEED)
    log = tmp_path / "log.txt"
    folders: list = []
    folder, kills = None, 0
    for _ in range(KILL_MOMENTS):
        if folder is None:  # a new round: a fresh folder
            folder = tmp_path / f"round{len(folders)}"
            folders.append(folder)
        if run_killed(folder, cache, log, rng.uniform(0, KILL_WINDOW_S)):
            kills += 1
        else:  # it ended before its moment: the grid is complete
            folder = None
    if folder is not None:
        run_killed(folder, cache, log, None)  # the last round resumed to its end
    assert kills >= KILL_MOMENTS // 2, f"only {kills} of {KILL_MOMENTS} moments fell inside a run"
    for folder in folders:
        assert stable_rows(folder) == expected, folder.name
        assert temp_files(folder) == [], folder.name
