"""Two runs into one results folder: every cell once, no crash, no stray temp file; a cell claimed by
another run is skipped and found finished by a later run."""

from __future__ import annotations

import logging

from filelock import FileLock

from hashbench.keys import digest_of
from hashbench.pipeline import Pipeline
from hashbench.registry import Registry
from hashbench.results import read_results
from hashbench.runner import run

from .child import grid_config
from .conftest import stable_rows, start_child, temp_files


def test_two_runs_at_once_compute_every_cell_exactly_once(clean_run, tmp_path):
    cache, clean = clean_run
    out = tmp_path / "shared"
    children = [start_child(out, cache, tmp_path / f"run{i}.log") for i in range(2)]
    for i, child in enumerate(children):
        assert child.wait(timeout=180) == 0, (tmp_path / f"run{i}.log").read_text()[-3000:]
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert not any("Traceback" in text for text in logs)
    keys = [r.key for r in read_results(out, required=()).rows]
    assert len(keys) == len(set(keys)) == 4
    assert stable_rows(out) == stable_rows(clean)
    assert temp_files(out) == []


def test_a_cell_claimed_by_another_run_is_skipped_then_found_by_a_rerun(clean_run, tmp_path, caplog):
    cache, _ = clean_run
    config = grid_config(tmp_path / "res", cache)
    pipe = Pipeline.setup(config, Registry.load())
    chash = digest_of(pipe.cell_config(pipe.method("itq", 16)))
    held = FileLock(config.out / "cells" / f"{chash}.lock")  # another run's claim
    held.acquire()
    with caplog.at_level(logging.INFO, logger="hashbench"):
        rows = run(config)
    assert ("itq", 16) not in [(r.method, r.bits) for r in rows] and len(rows) == 3
    assert any("itq @ 16 bits: being computed by another run" in r.getMessage() for r in caplog.records)
    held.release()
    assert [(r.method, r.bits) for r in run(config)] == [("itq", 16)]
    assert run(config) == []
