"""Validation runs (``--holdout N``): tuning on held-out training identities, never the test split."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from hashbench import leaderboard
from hashbench.cli import main
from hashbench.data import Record, SplitArrays, holdout_splits
from hashbench.errors import HashbenchError
from hashbench.results import ResultStore
from hashbench.runner import RunConfig, run


def _records():
    # 8 ids (1..8) over 3 cameras, 4 images per (id, camera); plus junk (-1) and distractors (0)
    recs = [Record(f"{p}_{c}_{i}", p, c) for p in range(1, 9) for c in range(1, 4) for i in range(4)]
    return recs + [Record("junk", -1, 1), Record("distractor", 0, 2)]


def test_holdout_splits_protocol():
    train = _records()
    splits, index = holdout_splits(train, 3, seed=0)
    arrays = {k: SplitArrays.of(v) for k, v in splits.records.items()}
    held = set(arrays["query"].pids)
    assert len(held) == 3 and held == set(arrays["gallery"].pids) and 0 not in held and -1 not in held
    assert not held & set(arrays["train"].pids)  # disjoint identities
    # one query per (identity, camera), the other images of held-out ids in the gallery
    pairs = list(zip(arrays["query"].pids, arrays["query"].camids, strict=True))
    assert len(pairs) == len(set(pairs)) == 3 * 3
    assert len(arrays["gallery"].pids) == 3 * 3 * 3
    # the index maps every split back to rows of the training split, each row used once
    for split, rows in index.items():
        assert [train[i] for i in rows] == splits.records[split]
    everything = np.concatenate(list(index.values()))
    assert len(everything) == len(set(everything)) == len(train)
    # seeded: the same seed draws the same split, another seed another one
    again, _ = holdout_splits(train, 3, seed=0)
    other, _ = holdout_splits(train, 3, seed=1)
    assert again.records == splits.records and other.records != splits.records
    for bad in (0, 1, 8):
        with pytest.raises(HashbenchError, match="--holdout"):
            holdout_splits(train, bad, seed=0)


def test_holdout_distractor_ids_join_the_gallery_only():
    train = _records()
    plain, _ = holdout_splits(train, 3, seed=0)
    splits, index = holdout_splits(train, 3, seed=0, n_distractor_ids=2)
    arrays = {k: SplitArrays.of(v) for k, v in splits.records.items()}
    held = set(arrays["query"].pids)
    extra = set(arrays["gallery"].pids) - held
    assert len(extra) == 2 and not extra & set(arrays["train"].pids) and not extra & {0, -1}
    # the held-out ids and their queries are those of the plain split; the distractors add every image
    # of theirs to the gallery, and none is trained on
    assert splits.records["query"] == plain.records["query"]
    assert [r for r in splits.records["gallery"] if r.pid in held] == plain.records["gallery"]
    assert np.sum(np.isin(arrays["gallery"].pids, list(extra))) == 2 * 3 * 4
    assert len(arrays["train"].pids) == len(SplitArrays.of(plain.records["train"]).pids) - 2 * 3 * 4
    everything = np.concatenate(list(index.values()))
    assert len(everything) == len(set(everything)) == len(train)
    for bad in (-1, 5):  # 8 ids: 3 held out, at most 4 more, one left to train on
        with pytest.raises(HashbenchError, match="--holdout-distractors"):
            holdout_splits(train, 3, seed=0, n_distractor_ids=bad)


@pytest.fixture(scope="module")
def validation_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "synthetic" / "validation"
    config = RunConfig(
        dataset_options={"n_train_ids": 24, "n_test_ids": 6},
        methods=["lsh"],
        bits=[32],
        holdout=8,
        device="cpu",
        progress=False,
        out=out,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    return config, run(config)


def test_validation_run_uses_training_ids_only(validation_run):
    config, rows = validation_run
    ref, lsh = rows
    assert ref.method == "ide-float" and lsh.method == "lsh"
    assert {r.dataset for r in rows} == {"synthetic-holdout8"}
    # 24 training ids: 16 to train on, 8 held out; the 6 test ids are never read
    from hashbench.registry import Registry

    dataset = Registry.load().dataset("synthetic")(None, **config.dataset_options)
    train = dataset.splits()["train"]
    assert lsh.n_train + lsh.n_query + lsh.n_gallery == len(train)
    assert 0 <= lsh.map <= 100 and lsh.rank1 > 0
    # its rows never pass for the dataset's own: another dataset name, and a hash covering the hold-out
    assert ResultStore(config.out).finished("synthetic", "lsh", 32, lsh.config_hash) is None
    assert ResultStore(config.out).finished("synthetic-holdout8", "lsh", 32, lsh.config_hash) is not None


def test_leaderboard_ignores_validation_runs(tmp_path, validation_run):
    config, _ = validation_run
    root = config.out.parent.parent  # .../results
    with pytest.raises(HashbenchError, match="no results.csv"):
        leaderboard.collect(root)  # only a validation CSV there: no result to rank
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    with pytest.raises(HashbenchError, match="no results.csv"):
        leaderboard.collect(root)


def test_cli_holdout_errors(capsys):
    assert main(["run", "--holdout", "-1"]) == 2
    assert "--holdout -1" in capsys.readouterr().err
    assert main(["run", "--holdout-distractors", "5"]) == 2  # without --holdout
    assert "--holdout-distractors 5" in capsys.readouterr().err


def test_validation_run_with_distractor_ids(tmp_path):
    config = RunConfig(
        dataset_options={"n_train_ids": 24, "n_test_ids": 6},
        methods=["lsh"],
        bits=[32],
        holdout=8,
        holdout_distractors=4,
        device="cpu",
        progress=False,
        reference=False,
        out=tmp_path / "validation",
        cache_dir=tmp_path / "cache",
    )
    (lsh,) = run(config)
    assert lsh.dataset == "synthetic-holdout8+d4"
    from hashbench.registry import Registry

    train = Registry.load().dataset("synthetic")(None, **config.dataset_options).splits()["train"]
    assert lsh.n_train + lsh.n_query + lsh.n_gallery == len(train)
    # the recorded configuration rebuilds the same validation run
    from hashbench.configs import read_configs
    from hashbench.pipeline import run_config_of

    record = read_configs(config.out)[lsh.config_hash]
    assert record["config"]["holdout"] == {"ids": 8, "seed": 0, "distractor_ids": 4}
    again = run_config_of(record)
    assert (again.holdout, again.holdout_distractors) == (8, 4)
