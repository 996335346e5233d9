"""The tiny synthetic run the runner, query, explain, configs and semantic tests share (seconds on CPU)."""

from __future__ import annotations

import csv

from hashbench.cli import main
from hashbench.ide import IDEConfig
from hashbench.pipeline import RunConfig

TINY = {"n_train_ids": 16, "n_test_ids": 16}  # synthetic identities per split
OPTIONS = [a for k, v in TINY.items() for a in ("--dataset-option", f"{k}={v}")]  # the same, for the CLI


def tiny_run_config(tmp_path, **kw) -> RunConfig:
    """LSH and ITQ at 16 and 32 bits on the tiny synthetic set at 64 x 32, one IDE epoch, into
    ``tmp_path/res`` with the cache in ``tmp_path/cache``; ``kw`` overrides any field."""
    base = dict(
        dataset="synthetic",
        dataset_options=TINY,
        methods=["lsh", "itq"],
        bits=[16, 32],
        input_size=(64, 32),
        ide=IDEConfig(epochs=1, batch_size=32),
        out=tmp_path / "res",
        cache_dir=tmp_path / "cache",
        progress=False,
        device="cpu",
    )
    return RunConfig(**{**base, **kw})


def csv_rows(folder) -> list[dict]:
    """The rows of ``folder/results.csv`` as written (text)."""
    with open(folder / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def cli(capsys, *args):
    """``hashbench ARGS`` in this process: (exit code, stdout, the last line of stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    return code, captured.out, err[-1] if err else ""
