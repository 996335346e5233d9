"""A crash torture test in the spirit of SQLite's: the grid run in a child process killed with SIGKILL at
seeded random moments of its cells (fits, artifact and row writes), resumed each time; every resumed
folder ends equal to an uninterrupted run, with no duplicate, no damaged row and no stray temp file."""

from __future__ import annotations

import os
import random
import signal
import time

from .conftest import stable_rows, temp_files

KILL_MOMENTS = 20  # kill moments in all (each a child forked by the fork server: no interpreter start)
SEED = 19
SLOW_FSYNC_S = 0.03  # each fsync of the child waits this long first: writes are about half of a cell's time
KILL_WINDOW_S = 1.5  # a kill lands at most this long after the first cell began (about the cells' time)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a finished child not yet reaped is a zombie: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run_killed(server, out, cache, log, delay: float | None) -> bool:
    """One child run into ``out``, SIGKILLed ``delay`` seconds after its first cell began (``None``: not
    killed); returns whether it was killed (False: it ended by itself, with status 0)."""
    log.touch()
    start = log.stat().st_size
    pid = server.run(out, cache, log, SLOW_FSYNC_S)
    t_end = time.monotonic() + 120
    while delay is not None and alive(pid) and time.monotonic() < t_end:
        if b": training" in log.read_bytes()[start:]:
            time.sleep(delay)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                assert server.wait(pid) == -signal.SIGKILL
                return True
            break
        time.sleep(0.005)
    assert server.wait(pid) == 0, log.read_text()[-3000:]
    return False


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(clean_run, forkserver, tmp_path):
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
        if run_killed(forkserver, folder, cache, log, rng.uniform(0, KILL_WINDOW_S)):
            kills += 1
        else:  # it ended before its moment: the grid is complete
            folder = None
    if folder is not None:
        run_killed(forkserver, folder, cache, log, None)  # the last round resumed to its end
    print(f"{kills} of {KILL_MOMENTS} moments killed a run; {len(folders)} rounds")  # shown with -s
    assert kills >= KILL_MOMENTS // 2, f"only {kills} of {KILL_MOMENTS} moments fell inside a run"
    for folder in folders:
        assert stable_rows(folder) == expected, folder.name
        assert temp_files(folder) == [], folder.name


COLD_MOMENTS = 6  # kills while a fresh cache is filled (trunk extraction, IDE training and embedding)
COLD_WINDOW_S = 2.5  # after the fork: within the time to fill the tiny set's cache (about 3 s)


def test_sigkill_while_the_cache_is_filled_then_resume_equals_an_uninterrupted_run(
    clean_run, forkserver, tmp_path
):
    _, clean = clean_run
    log = tmp_path / "log.txt"
    rng = random.Random(SEED + 1)
    log.touch()
    rounds: list = []  # (cache, results) folders; a new round, cold again, after a run ended by itself
    current, kills = None, 0
    for _ in range(COLD_MOMENTS):
        if current is None:
            current = tmp_path / f"cache{len(rounds)}", tmp_path / f"res{len(rounds)}"
            rounds.append(current)
        pid = forkserver.run(current[1], current[0], log, SLOW_FSYNC_S)
        time.sleep(rng.uniform(0, COLD_WINDOW_S))
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        status = forkserver.wait(pid)
        assert status in (0, -signal.SIGKILL), log.read_text()[-3000:]
        kills += status == -signal.SIGKILL
        if status == 0:  # it ended before its moment (a fast machine): the next moment starts cold
            current = None
    print(f"{kills} of {COLD_MOMENTS} moments killed a run filling the cache; {len(rounds)} rounds")  # -s
    assert kills >= COLD_MOMENTS // 2, f"only {kills} of {COLD_MOMENTS} moments fell inside a run"
    for cache, out in rounds:
        assert forkserver.wait(forkserver.run(out, cache, log, None)) == 0, log.read_text()[-3000:]
        assert stable_rows(out) == stable_rows(clean), out.name
        leftovers = [p.name for p in cache.rglob("*") if p.suffix in (".part", ".rows", ".tmp")]
        assert leftovers == [], cache.name
    assert "rebuilding" not in log.read_text() and "Traceback" not in log.read_text()
