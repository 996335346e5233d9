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
