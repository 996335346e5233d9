"""Recorded configurations (configs.jsonl), `hashbench show`, the pipeline's keys and the validation default."""

from __future__ import annotations

import json

import pytest

from hashbench.cli import main
from hashbench.configs import CONFIGS_NAME, find_config, read_configs, record_config
from hashbench.errors import HashbenchError
from hashbench.keys import digest_of
from hashbench.pipeline import Pipeline, RunConfig, run_config_of
from hashbench.runner import run

from .tiny import csv_rows, tiny_run_config


def tiny_config(tmp_path, **kw) -> RunConfig:
    base = {"bits": [16], "method_params": {"itq": {"n_iter": 3}}, "attribute_queries": False}
    return tiny_run_config(tmp_path, **{**base, **kw})


rows_of = csv_rows


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("configs")
    run(tiny_config(tmp))
    return tmp


def test_every_row_has_a_record_that_digests_to_its_hash(finished):
    res = finished / "res"
    records = read_configs(res)
    rows = rows_of(res)
    assert {r["config_hash"] for r in rows} == set(records)  # ide-float, lsh and itq
    for row in rows:
        record = records[row["config_hash"]]
        assert digest_of(record["config"]) == row["config_hash"]
        assert record["method"] == row["method"] and record["dataset"] == row["dataset"]
    lsh = next(records[r["config_hash"]] for r in rows if r["method"] == "lsh")
    assert lsh["bits"] == 16 and lsh["consumes"] == ["features"] and lsh["code_layout"] is None
    assert lsh["config"]["params"] == {"bits": 16, "seed": 0}
    assert lsh["method_class"] == "hashbench_methods.lsh:LSH"
    # the recorded keys are the cache folders the cell was built from
    assert (finished / "cache" / "trunk" / lsh["keys"]["trunk"] / "train.npy").is_file()
    assert (finished / "cache" / "ide" / lsh["keys"]["ide"] / "model.pt").is_file()
    assert lsh["keys"]["trunk_spec"]["input_size"] == [64, 32]
    # the pipeline rebuilt from a record has the same keys and base configuration
    pipe = Pipeline.setup(run_config_of(lsh, cache_dir=finished / "cache", device="cpu"))
    assert pipe.keys.trunk.digest() == lsh["keys"]["trunk"] and pipe.keys.ide == lsh["keys"]["ide"]
    assert pipe.cell_config(pipe.method("lsh", 16)) == lsh["config"]


def test_a_finished_grid_records_its_configurations_without_recomputing(finished, tmp_path):
    res = finished / "res"
    before = (res / CONFIGS_NAME).read_text()
    (res / CONFIGS_NAME).unlink()
    try:
        assert run(tiny_config(finished)) == []  # nothing recomputed ...
        assert read_configs(res) == {
            json.loads(line)["config_hash"]: json.loads(line) for line in before.splitlines()
        }
        assert run(tiny_config(finished)) == [] and len((res / CONFIGS_NAME).read_text().splitlines()) == 3
    finally:
        (res / CONFIGS_NAME).write_text(before)


def test_record_config_refuses_a_record_that_does_not_describe_its_hash(tmp_path):
    good = {"config_hash": digest_of({"a": 1}), "config": {"a": 1}}
    assert record_config(tmp_path, good) and not record_config(tmp_path, good)  # once per hash
    with pytest.raises(ValueError, match="digests to"):
        record_config(tmp_path, {"config_hash": "0" * 16, "config": {"a": 2}})
    (tmp_path / CONFIGS_NAME).write_text(json.dumps(good) + "\nnot json\n")
    with pytest.raises(HashbenchError, match=r"configs.jsonl, line 2"):
        read_configs(tmp_path)


def test_show_prints_the_recorded_configuration_and_its_row(finished, capsys):
    res = finished / "res"
    itq = next(r for r in rows_of(res) if r["method"] == "itq")
    assert main(["show", itq["config_hash"][:8], "--results", str(finished)]) == 0
    out = capsys.readouterr().out
    assert itq["config_hash"] in out and '"n_iter": 3' in out and '"ide"' in out and '"trunk_spec"' in out
    assert "rows of" in out and f'"map": "{itq["map"]}"' in out
    for bad, message in (("zz", "4 hex digits"), ("ffffffff", "no configuration")):
        assert main(["show", bad, "--results", str(finished)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(HashbenchError, match="no such file"):
        find_config("abcd", finished / "nowhere")


def test_validation_runs_default_to_the_validation_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, out=None, holdout=4, methods=["lsh"], method_params={}, reference=False)
    assert config.results_dir().as_posix() == "results/synthetic/validation"
    rows = run(config)
    assert [r.dataset for r in rows] == ["synthetic-holdout4"]
    folder = tmp_path / "results" / "synthetic" / "validation"
    assert rows_of(folder)[0]["config_hash"] == rows[0].config_hash
    record = read_configs(folder)[rows[0].config_hash]
    assert (
        record["config"]["holdout"] == {"ids": 4, "seed": 0}
        and record["keys"]["ide_input"] != record["keys"]["trunk"]
    )
    assert not (tmp_path / "results" / "synthetic" / "results.csv").exists()
