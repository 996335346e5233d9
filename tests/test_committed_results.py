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


def test_the_committed_market_table_is_one_clean_run_at_the_current_defaults():
    """``results/market1501/results.csv`` is one run of one clean commit on one machine, and every cell's
    recorded hyperparameters are what the runner gives that method at that length today: a change of
    a default (DeepSSH's shared top, an epoch count) without a re-run of the table fails here."""
    import json

    from hashbench.pipeline import RunConfig, make_method
    from hashbench.registry import Registry

    folder = RESULTS / "market1501"
    rows = csv_rows(folder)
    commits = {r["commit"] for r in rows}
    assert len(commits) == 1 and "+dirty" not in next(iter(commits)), commits
    assert len({r["device"] for r in rows}) == 1 and len({r["seed"] for r in rows}) == 1
    registry, records = Registry.load(), read_configs(folder)
    cells = [r for r in rows if r["bits"]]
    config = RunConfig(
        dataset="market1501",
        methods=sorted({r["method"] for r in cells}),
        bits=sorted({int(r["bits"]) for r in cells}),
        seed=int(rows[0]["seed"]),
    )
    for row in cells:
        method = make_method(registry.method(row["method"]), int(row["bits"]), config)
        recorded = records[row["config_hash"]]["config"]["params"]
        assert json.loads(json.dumps(method.get_params())) == recorded, f"{row['method']} @ {row['bits']}"
    shared = {
        records[r["config_hash"]]["config"]["params"].get("shared_top")
        for r in cells
        if r["method"] == "deepssh"
    }
    assert shared == {",".join(str(b) for b in config.bits)}  # DeepSSH's default: one top for all lengths
