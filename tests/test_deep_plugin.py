"""A third-party deep method (tests/deep_plugin_fixture.py), built on the public hashbench.deep only, runs
through the CLI (`hashbench run`, then `hashbench explain`) like a built-in."""

import ast
import csv

from hashbench.cells import load_cell
from hashbench.cli import main
from hashbench.configs import read_configs
from hashbench.explain import explain_cell
from hashbench.registry import Registry

from .deep_plugin_fixture import MODULE, PLUGIN_SOURCE, install_tinydeep_plugin
from .tiny import OPTIONS, csv_rows


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
    args = ["run", "--dataset", "synthetic", *OPTIONS, "--input-size", "64x32", "--methods", "tinydeep"]
    args += ["--bits", "32", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    args += ["--no-progress", "--no-reference", "--ide", "epochs=1", "--param", "tinydeep.epochs=1"]
    assert main(args) == 0
    rows = csv_rows(out)
    assert [(r["method"], r["bits"]) for r in rows] == [("tinydeep", "32")]
    assert 0 < float(rows[0]["map"]) <= 100

    assert main(["explain", str(out)]) == 0
    with open(out / "explain.csv", newline="") as f:
        explained = [r for r in csv.DictReader(f) if r["method"] == "tinydeep"]
    assert explained and {r["bits"] for r in explained} == {"32"}
    assert (out / "explain.md").is_file() and (out / "explain_tinydeep_32.png").is_file()
    # the layout the plugin declares is recorded with the cell, and explain reads it from there
    record = read_configs(out)[rows[0]["config_hash"]]
    assert record["code_layout"] == {"first": [0, 16], "second": [16, 32]}
    assert record["method_class"] == f"{MODULE}:TinyDeep" and record["consumes"] == ["maps"]
    assert explain_cell(load_cell(out, "tinydeep", 32)).segments == {"first": (0, 16), "second": (16, 32)}
