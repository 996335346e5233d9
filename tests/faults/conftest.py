"""Shared by the fault tests: the grid run once, uninterrupted, with its feature cache warm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hashbench.results import scan_csv

ROOT = Path(__file__).resolve().parents[2]
# what differs between two runs of the same cell: when, how long, on what, from which checkout
VOLATILE = {"train_s", "encode_s", "encode_ms_per_image", "query_ms", "cell_s", "date", "commit", "device"}


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory):
    """(cache dir, results dir) of one uninterrupted run of the grid (:mod:`tests.faults.child`)."""
    tmp = tmp_path_factory.mktemp("faults")
    child = start_child(tmp / "clean", tmp / "cache", tmp / "clean.log")
    assert child.wait(timeout=300) == 0, (tmp / "clean.log").read_text()
    return tmp / "cache", tmp / "clean"


def stable_rows(folder: Path) -> list[dict]:
    """The rows of ``folder/results.csv`` without their volatile columns, sorted by key; the file must
    have no damaged line."""
    scan = scan_csv(folder / "results.csv")
    assert scan.damaged == ()
    rows = [{k: v for k, v in values.items() if k not in VOLATILE} for _, values in scan.good]
    return sorted(rows, key=lambda r: (r["method"], int(r["bits"] or 0), r["config_hash"]))


def start_child(out: Path, cache: Path, log: Path, slow_fsync_s: float | None = None) -> subprocess.Popen:
    """:mod:`tests.faults.child` into ``out``, its log appended to ``log``."""
    slow = [] if slow_fsync_s is None else [str(slow_fsync_s)]
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.faults.child", str(out), str(cache), *slow],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name)


class ForkServer:
    """:mod:`tests.faults.forkserver`, driven from the test: ``run`` forks a child run, ``wait`` reaps it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.forkserver"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"fork server died (status {self.proc.poll()})"
        return answer.split()[1]

    def run(self, out: Path, cache: Path, log: Path, slow_fsync_s: float | None = None) -> int:
        return int(self._ask(f"run {out} {cache} {log} {'-' if slow_fsync_s is None else slow_fsync_s}"))

    def wait(self, pid: int) -> int:
        """The child's exit status, or minus the signal that killed it."""
        return int(self._ask(f"wait {pid}"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def forkserver():
    server = ForkServer()
    yield server
    server.close()
