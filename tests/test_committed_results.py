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
