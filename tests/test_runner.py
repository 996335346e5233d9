"""End to end: the runner on a tiny synthetic set, resume, determinism, a plugin, CLI errors."""

import csv
import zipfile

import numpy as np
import pytest

from hashbench.cli import main
from hashbench.errors import HashbenchError
from hashbench.hookspecs import hookimpl
from hashbench.method import HashMethod
from hashbench.registry import Registry
from hashbench.results import ResultRow
from hashbench.runner import run

from .plugin_fixture import install_throwaway_plugin
from .tiny import csv_rows, tiny_run_config

tiny_config = tiny_run_config


read_rows = csv_rows


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    rows = run(tiny_config(tmp))
    return tmp, rows


def test_grid_writes_one_row_per_cell_with_provenance(finished):
    tmp, rows = finished
    assert [(r.method, r.bits) for r in rows] == [
        ("ide-float", None),
        ("lsh", 16),
        ("lsh", 32),
        ("itq", 16),
        ("itq", 32),
    ]
    stored = read_rows(tmp / "res")
    assert list(stored[0]) == ResultRow.columns()
    assert len(stored) == 5
    for row in stored:
        assert 0 < float(row["map"]) <= 100 and 0 <= float(row["rank1"]) <= 100
        assert float(row["rank1"]) <= float(row["rank5"]) <= float(row["rank10"]) <= float(row["rank20"])
        assert row["commit"] and row["config_hash"] and row["date"] and row["device"].startswith("cpu")
        art = np.load(tmp / "res" / row["artifact"])
        assert art["cmc"].shape == (50,) and np.all(np.diff(art["cmc"]) >= 0)
    for row, computed in zip(stored, rows, strict=True):
        assert float(row["cell_s"]) == pytest.approx(computed.cell_s, abs=1e-4) and computed.cell_s > 0
        if row["bits"]:  # a cell's wall time covers its fit and encoding (the reference's train_s: IDE stage)
            assert float(row["cell_s"]) >= float(row["train_s"]) + float(row["encode_s"]) > 0
    lsh16 = next(r for r in stored if r["method"] == "lsh" and r["bits"] == "16")
    assert lsh16["bytes_per_code"] == "2"
    codes = np.load(tmp / "res" / lsh16["artifact"])["gallery_codes"]
    assert codes.shape == (int(lsh16["n_gallery"]), 2) and codes.dtype == np.uint8


def test_wall_summary_says_where_the_time_went(finished):
    from hashbench.runner import wall_summary

    _, rows = finished
    text = wall_summary(rows, 600.0)
    cells = sum(r.cell_s for r in rows)
    assert text.startswith("wall time 10.0 min: 5 cells")
    assert f"itq {sum(r.cell_s for r in rows if r.method == 'itq') / 60:.1f} min (2)" in text
    assert f"setup and features {(600 - cells) / 60:.1f} min" in text


def test_rows_of_an_older_version_are_kept_under_the_new_header(finished, tmp_path):
    """A results.csv written before a column existed: the next row rewrites it under the new header, its
    rows intact (the new column empty); a column this version does not write is refused, file untouched."""
    tmp, _ = finished
    rows = read_rows(tmp / "res")
    old_cols = [c for c in ResultRow.columns() if c != "cell_s"]
    out = tmp_path / "old"
    out.mkdir()
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows[:3])
    config = tiny_config(tmp, out=out)
    redone = run(config)  # the three stored cells are finished; the other two run
    assert [(r.method, r.bits) for r in redone] == [("itq", 16), ("itq", 32)]
    stored = read_rows(out)
    assert list(stored[0]) == ResultRow.columns() and len(stored) == 5
    assert [r["cell_s"] for r in stored[:3]] == ["", "", ""]
    assert [{k: r[k] for k in old_cols} for r in stored[:3]] == [
        {k: r[k] for k in old_cols} for r in rows[:3]
    ]
    assert all(float(r["cell_s"]) > 0 for r in stored[3:])

    alien = tmp_path / "alien"
    alien.mkdir()
    text = "dataset,method,bits,colour\nsynthetic,x,16,red\n"
    (alien / "results.csv").write_text(text)
    with pytest.raises(HashbenchError, match=r"results.csv: column\(s\) colour not written by hashbench"):
        run(tiny_config(tmp, out=alien, methods=["lsh"], bits=[16]))
    assert (alien / "results.csv").read_text() == text


def test_hashing_is_above_chance_and_below_perfect(finished):
    _, rows = finished
    ref = rows[0]
    assert ref.method == "ide-float" and 5 < ref.map < 100
    itq32 = next(r for r in rows if r.method == "itq" and r.bits == 32)
    assert 5 < itq32.map < 100


def test_rerun_skips_finished_cells_and_resumes_a_lost_one(finished, monkeypatch):
    from hashbench.features import FeatureCache

    tmp, rows = finished
    config = tiny_config(tmp)
    with monkeypatch.context() as m:  # everything finished: nothing recomputed, not even features read
        m.setattr(
            FeatureCache, "trunk_maps", lambda *a, **k: pytest.fail("features loaded for a finished grid")
        )
        assert run(config) == []
    # a run killed during its last cell: the row never got written
    path = tmp / "res" / "results.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    redone = run(config)
    assert [(r.method, r.bits) for r in redone] == [("itq", 32)]
    assert redone[0].map == pytest.approx(rows[-1].map)  # same config, same seed: same number
    assert len(read_rows(tmp / "res")) == 5


def test_a_third_party_plugin_runs_through_the_runner(finished, tmp_path, monkeypatch):
    cache = finished[0] / "cache"  # reuse the features: only the plugin's cells are new work
    install_throwaway_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = run(
        tiny_config(tmp_path, methods=["throwaway"], bits=[16], cache_dir=cache, reference=False),
        registry=Registry.load(),
    )
    assert [(r.method, r.bits) for r in rows] == [("throwaway", 16)]
    assert read_rows(tmp_path / "res")[0]["method"] == "throwaway"


def test_changing_a_hyperparameter_is_a_new_cell(finished, tmp_path):
    cache = finished[0] / "cache"
    cfg = tiny_config(tmp_path, methods=["itq"], bits=[16], cache_dir=cache, reference=False)
    assert len(run(cfg)) == 1
    assert run(cfg) == []
    assert (
        len(
            run(
                tiny_config(
                    tmp_path,
                    methods=["itq"],
                    bits=[16],
                    cache_dir=cache,
                    reference=False,
                    method_params={"itq": {"n_iter": 5}},
                )
            )
        )
        == 1
    )


def cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_cli_errors_are_one_line_and_name_the_culprit(tmp_path, capsys):
    code, err = cli(capsys, "run", "--dataset", "market1501", "--data-root", str(tmp_path / "nowhere.zip"))
    assert code == 2 and "--data-root" in err and "nowhere.zip" in err
    bogus = tmp_path / "notmarket.zip"
    with zipfile.ZipFile(bogus, "w") as z:
        z.writestr("hello/readme.txt", "not a dataset")
    code, err = cli(
        capsys,
        "run",
        "--dataset",
        "market1501",
        "--data-root",
        str(bogus),
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert code == 2 and "notmarket.zip" in err
    code, err = cli(capsys, "run", "--bits", "100")
    assert (
        code == 2
        and err == "hashbench: error: --bits '100': code lengths must be positive multiples of 8 (got [100])"
    )
    code, err = cli(capsys, "run", "--methods", "lsh,nope")
    assert code == 2 and "unknown method 'nope'" in err and "itq" in err
    code, err = cli(capsys, "run", "--methods", "itq", "--param", "itq.bogus=1")
    assert code == 2 and "itq.bogus" in err and "n_iter" in err
    code, err = (
        cli(capsys, "run", "--device", "cuda", "--methods", "lsh") if not _has_cuda() else (2, "--device")
    )
    assert code == 2 and "--device" in err


def _has_cuda():
    import torch

    return torch.cuda.is_available()


def test_cli_list_shows_each_plugin(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("lsh", "itq", "synthetic", "market1501", "dukemtmc", "mobilenetv2", "resnet50"):
        assert f"  {name} " in out


def test_a_run_from_cache_reports_what_the_cached_stages_cost(finished, tmp_path):
    first = finished[1][0]
    assert first.method == "ide-float" and first.train_s > 0 and first.encode_s > 0
    rows = run(tiny_config(tmp_path, methods=["lsh"], bits=[16], cache_dir=finished[0] / "cache"))
    again = rows[0]
    assert again.method == "ide-float" and again.map == pytest.approx(first.map)
    assert again.train_s == pytest.approx(first.train_s) and again.encode_s == pytest.approx(first.encode_s)


def test_cmc_is_committed_beside_the_rows_and_the_report_needs_no_artifacts(finished, tmp_path):
    import shutil

    from hashbench.report import write_report

    tmp, rows = finished
    with open(tmp / "res" / "cmc.csv", newline="") as f:
        cmc = list(csv.DictReader(f))
    assert list(cmc[0])[:6] == ["dataset", "method", "bits", "config_hash", "r1", "r2"]
    keys = {(r["method"], r["bits"], r["config_hash"]) for r in cmc}
    # every results row has its curve (a cell killed after its curve was written appends it again)
    assert all((r["method"], r["bits"], r["config_hash"]) in keys for r in read_rows(tmp / "res"))
    # a fresh clone has results.csv and cmc.csv but not the (ignored) artifacts: the report still works
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("results.csv", "cmc.csv"):
        shutil.copy(tmp / "res" / name, clone / name)
    written = write_report(clone, cmc_bits=(32,))
    assert (clone / "cmc_32.png").is_file() and "cmc_32.png" in {p.name for p in written.values()}


class PixelMean(HashMethod):
    """A test method whose inputs depend on `finetune`: trunk maps when "top", pixels when "full"."""

    name = "pixelmean"
    description = "test method: thresholded samples of its input"
    run_options = frozenset({"finetune"})

    def __init__(self, bits, seed=0, finetune="top"):
        super().__init__(bits, seed)
        self.finetune = finetune
        self.consumes = frozenset({"images" if finetune == "full" else "maps"})

    def _stats(self, view):
        if self.finetune == "full":
            batches = [view.images.batch(range(i, min(i + 16, len(view)))) for i in range(0, len(view), 16)]
            x = np.concatenate([b.numpy() for b in batches])
            assert x.shape[1:] == (3, 64, 32)  # the run's input size, normalised pixels
        else:
            x = np.asarray(view.maps, dtype=np.float32)
        flat = x.reshape(len(x), -1)
        return flat[:, np.linspace(0, flat.shape[1] - 1, self.bits).astype(int)]

    def fit(self, train, context=None):
        self.median_ = np.median(self._stats(train), axis=0)
        return self

    def encode(self, view):
        return (self._stats(view) > self.median_).astype(np.uint8)


class PixelMeanPlugin:
    @hookimpl
    def hashbench_register_methods(self):
        return [PixelMean]


def test_finetune_full_hands_pixels_to_methods_that_ask(finished, tmp_path):
    cache = finished[0] / "cache"
    reg = Registry.load(extra_plugins=(PixelMeanPlugin(),))
    rows = run(
        tiny_config(
            tmp_path, methods=["pixelmean"], bits=[16], cache_dir=cache, reference=False, finetune="full"
        ),
        registry=reg,
    )
    assert [(r.method, r.bits) for r in rows] == [("pixelmean", 16)]
    top = run(
        tiny_config(tmp_path, methods=["pixelmean"], bits=[16], cache_dir=cache, reference=False),
        registry=reg,
    )
    assert len(top) == 1 and top[0].config_hash != rows[0].config_hash  # finetune is part of the cell config
