"""The committed results are citable: every row's full configuration is in git beside it."""

from __future__ import annotations

from pathlib import Path

from hashbench.configs import read_configs
from hashbench.keys import digest_of
from hashbench.leaderboard import result_files

from .tiny import csv_rows

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_every_committed_row_has_its_recorded_configuration():
    files = result_files(RESULTS)
    assert files, "no committed results.csv"
    for path in files:
        records = read_configs(path.parent)
        for row in csv_rows(path.parent):
            record = records.get(row["config_hash"])
            assert record is not None, f"{path}: no configs.jsonl record for {row['method']} @ {row['bits']}"
            assert digest_of(record["config"]) == row["config_hash"]
            assert record["method"] == row["method"] and str(record["bits"] or "") == row["bits"]
            assert record["config"]["seed"] == int(row["seed"])


def side_rows_and_cells(path: Path) -> list[tuple[dict, dict]]:
    """(row, its cell's row) for every row of a committed side table (``scale.csv``, ``cascade.csv``),
    checked to name a cell of ``cells.csv`` beside it with a recorded configuration, a commit and the
    cell's seed."""
    import csv

    records = read_configs(path.parent)
    with open(path.parent / "cells.csv", newline="") as f:
        cells = {(r["method"], r["bits"], r["config_hash"]): r for r in csv.DictReader(f)}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path}: empty"
    out = []
    for row in rows:
        cell = cells.get((row["method"], row["bits"], row["config_hash"]))
        assert cell is not None, f"{path}: no cells.csv row for {row['method']} @ {row['bits']}"
        assert row["config_hash"] in records and row["commit"] and row["seed"] == cell["seed"]
        out.append((row, cell))
    return out


def test_every_committed_scale_row_names_a_recorded_cell():
    """A committed ``scale.csv`` sits beside the rows of the cells it grew (``cells.csv``: their
    results.csv rows, named apart so that the leaderboard does not count them twice) and their
    configurations; each scale row's mAP at 0 distractors is its cell's."""
    for path in sorted(RESULTS.rglob("scale.csv")):
        for row, cell in side_rows_and_cells(path):
            if row["distractors"] == "0":
                assert abs(float(row["map"]) - float(cell["map"])) < 1e-3


def test_every_committed_cascade_row_names_a_recorded_cell():
    """A committed ``cascade.csv`` sits beside the rows of the cells it searched (``cells.csv``) and their
    configurations; each cell's ``full`` search is its row's mAP, and a coarse-to-fine search compares
    fewer bits."""
    for path in sorted(RESULTS.rglob("cascade.csv")):
        for row, cell in side_rows_and_cells(path):
            full = int(row["n_gallery"]) * int(row["bits"])
            if row["search"] == "full":
                assert abs(float(row["map"]) - float(cell["map"])) < 1e-3
                assert int(row["bits_compared"]) == full
            else:
                assert int(row["bits_compared"]) < full
