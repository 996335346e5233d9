"""A third-party deep method (tests/deep_plugin_fixture.py), built on the public hashbench.deep only, runs
through the CLI (`hashbench run`, then `hashbench explain`) like a built-in."""

import ast
import csv

from hashbench.cli import main
from hashbench.registry import Registry

from .deep_plugin_fixture import MODULE, PLUGIN_SOURCE, install_tinydeep_plugin

TINY = {"n_train_ids": 16, "n_test_ids": 16}


def test_the_plugin_imports_only_public_hashbench_modules():
    tree = ast.parse(PLUGIN_SOURCE)
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = {m for m in modules if m.split(".")[0].startswith("hashbench")}
    assert ours == {"hashbench.deep", "hashbench.hookspecs"}


def test_a_third_party_deep_method_runs_and_is_explained(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install_tinydeep_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    klass = Registry.load().method("tinydeep")
    assert klass.__module__ == MODULE and klass.sampler == "pk" and klass.run_options == {"finetune"}
    assert klass(bits=32).code_layout() == {"first": (0, 16), "second": (16, 32)}

    out = tmp_path / "res"
    options = [a for k, v in TINY.items() for a in ("--dataset-option", f"{k}={v}")]
    args = ["run", "--dataset", "synthetic", *options, "--input-size", "64x32", "--methods", "tinydeep"]
    args += ["--bits", "32", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    args += ["--no-progress", "--no-reference", "--ide", "epochs=1", "--param", "tinydeep.epochs=1"]
    assert main(args) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["bits"]) for r in rows] == [("tinydeep", "32")]
    assert 0 < float(rows[0]["map"]) <= 100

    assert main(["explain", str(out)]) == 0
    with open(out / "explain.csv", newline="") as f:
        explained = [r for r in csv.DictReader(f) if r["method"] == "tinydeep"]
    assert explained and {r["bits"] for r in explained} == {"32"}
    assert (out / "explain.md").is_file() and (out / "explain_tinydeep_32.png").is_file()
