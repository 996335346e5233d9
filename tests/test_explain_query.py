"""``hashbench explain`` and ``hashbench query`` on a tiny synthetic run, and the MI measure by hand."""

import csv
import json

import numpy as np
import pytest

from hashbench.explain import entropy, majority_value, mutual_information, write_explain
from hashbench.query import run_query
from hashbench.registry import Registry
from hashbench.runner import run
from hashbench.search import pack_codes

from .tiny import OPTIONS, TINY, cli, tiny_run_config

GROUPS = 12  # attribute groups of the synthetic schema


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny synthetic run: LSH and ITQ at 16 and 64 bits, artifacts with codes and attributes."""
    tmp = tmp_path_factory.mktemp("explain")
    config = tiny_run_config(tmp, bits=[16, 64], method_params={"itq": {"n_iter": 5}}, reference=False)
    run(config)
    return tmp


# ------------------------------------------------------------------------------------------ measures


def test_a_bit_equal_to_a_binary_attribute_carries_its_entropy():
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.25).astype(np.int64)
    h = entropy(y, 2)
    p = y.mean()
    assert h == pytest.approx(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
    codes = np.stack([y, 1 - y, rng.integers(0, 2, len(y)), np.ones_like(y)], axis=1).astype(np.uint8)
    mi = mutual_information(codes, y, 2)
    assert mi[0] == pytest.approx(h) and mi[1] == pytest.approx(h)  # a copy, or its negation
    assert mi[2] < 0.005 and mi[3] == 0.0  # an independent bit, a constant bit
    # unknown labels (-1) do not count, whatever their bits
    y_unknown = np.concatenate([y, -np.ones(500, dtype=np.int64)])
    noisy = np.concatenate([codes, rng.integers(0, 2, (500, 4)).astype(np.uint8)])
    assert np.allclose(mutual_information(noisy, y_unknown, 2), mi)
    # a many-valued group: a bit that is a function of the value has MI = H(bit)
    colour = rng.integers(0, 4, 4000)
    is_red = (colour == 2).astype(np.uint8)[:, None]
    assert mutual_information(is_red, colour, 4)[0] == pytest.approx(entropy(is_red[:, 0], 2))


def test_baselines_on_a_hand_made_cell(tmp_path):
    """Chance and majority on a cell small enough to check by hand."""
    schema = [{"name": "gender", "values": ["male", "female"]}, {"name": "color", "values": ["r", "g", "b"]}]
    rng = np.random.default_rng(1)
    bits = 8
    train_attr = np.array([[0, 2], [0, 2], [0, 1], [1, -1], [0, 1], [1, 2]], dtype=np.int16)
    # gallery: 4 test images (pid > 0), a distractor and a junk image (not scored)
    gallery_pids = np.array([1, 1, 2, 3, 0, -1])
    gallery_attr = np.array([[0, 2], [0, 2], [1, -1], [1, 0], [-1, -1], [-1, -1]], dtype=np.int16)

    def packed(n):
        return pack_codes(rng.integers(0, 2, (n, bits)).astype(np.uint8))

    out = tmp_path / "res"
    (out / "cells").mkdir(parents=True)
    np.savez(
        out / "cells" / "toy-8-abc.npz",
        train_codes=packed(6),
        gallery_codes=packed(6),
        query_codes=packed(1),
        train_attributes=train_attr,
        gallery_attributes=gallery_attr,
        train_pids=np.arange(1, 7),
        gallery_pids=gallery_pids,
        gallery_camids=np.ones(6, dtype=np.int64),
        schema=np.array(json.dumps(schema)),
    )
    (out / "results.csv").write_text(
        "dataset,method,bits,config_hash,artifact\ntoy,toy,8,abc,cells/toy-8-abc.npz\n"
    )
    [ex], written = write_explain(out)
    assert majority_value(train_attr[:, 0], 2) == 0 and majority_value(train_attr[:, 1], 3) == 2
    assert ex.chance.tolist() == pytest.approx([1 / 2, 1 / 3])
    # gender: majority "male", 2 of the 4 test images; color: majority "b", 2 of the 3 known
    assert ex.majority.tolist() == pytest.approx([2 / 4, 2 / 3])
    assert ex.n_test.tolist() == [4, 3]
    assert all(0.0 <= a <= 1.0 for a in ex.accuracy)
    rows = list(csv.DictReader(open(written["csv"])))
    assert [r["group"] for r in rows] == ["gender", "color"]
    assert float(rows[1]["majority"]) == pytest.approx(2 / 3, abs=1e-4)


# ------------------------------------------------------------------------------------------ explain


def test_explain_writes_csv_markdown_and_a_figure_per_cell(finished, capsys):
    res = finished / "res"
    code, out, _ = cli(capsys, "explain", res)
    assert code == 0 and "| lsh" in out and "| itq" in out and "*majority*" in out
    rows = list(csv.DictReader(open(res / "explain.csv")))
    assert len(rows) == 4 * GROUPS  # (lsh, itq) x (16, 64) cells, one row per group
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and 0.0 <= float(r["majority"]) <= 1.0
        assert float(r["chance"]) == pytest.approx(1 / int(r["n_values"]), abs=1e-4)
        assert 0.0 <= float(r["mi_max"]) <= float(r["entropy"]) + 1e-6
        assert len(r["mi_top_bits"].split()) == 8
    for method in ("lsh", "itq"):
        for bits in (16, 64):
            png = res / f"explain_{method}_{bits}.png"
            assert png.is_file() and png.stat().st_size > 10_000
    md = (res / "explain.md").read_text()
    assert "16-bit codes" in md and "64-bit codes" in md
    # re-explaining one method in place keeps the other method's rows (and its lines in the tables)
    code, _, _ = cli(capsys, "explain", res, "--methods", "itq")
    again = list(csv.DictReader(open(res / "explain.csv")))
    assert code == 0 and again == rows
    assert (res / "explain.md").read_text() == md
    # one cell, elsewhere
    code, _, _ = cli(capsys, "explain", res, "--methods", "itq", "--bits", "64", "--out", finished / "ex")
    assert code == 0 and len(list(csv.DictReader(open(finished / "ex" / "explain.csv")))) == GROUPS
    code, _, err = cli(capsys, "explain", res, "--methods", "nope")
    assert code == 2 and "nope" in err and "lsh" in err


# ------------------------------------------------------------------------------------------ query


def test_query_by_description_prints_hits_and_writes_a_contact_sheet(finished, capsys):
    png = finished / "q.png"
    code, out, _ = cli(
        capsys,
        "query",
        *OPTIONS,
        "--method",
        "itq",
        "--bits",
        "64",
        "--results",
        finished / "res",
        "--attributes",
        "gender=female,upper_color=red",
        "--top",
        "5",
        "--out",
        png,
    )
    assert code == 0, out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    hits = lines[header + 2 : header + 7]
    assert [h.split()[0] for h in hits] == ["1", "2", "3", "4", "5"]
    assert all("gender=" in h for h in hits if " 0 " not in h)  # identities show their attributes
    assert png.is_file() and png.stat().st_size > 5_000


def test_bad_query_input_is_one_line_and_exit_2(finished, capsys):
    base = ["query", *OPTIONS, "--method", "itq", "--bits", "64", "--results", finished / "res"]
    code, _, err = cli(capsys, *base, "--attributes", "colour=red")
    assert code == 2 and "unknown attribute 'colour'" in err and "upper_color" in err
    code, _, err = cli(capsys, *base, "--attributes", "gender=robot")
    assert code == 2 and "'robot'" in err and "male, female" in err
    code, _, err = cli(
        capsys, *base[:-4], "--bits", "128", "--results", finished / "res", "--attributes", "hat=yes"
    )
    assert code == 2 and "results.csv" in err and "hashbench run" in err and "128" in err
    code, _, err = cli(capsys, *base[:-2], "--results", finished / "nowhere", "--attributes", "hat=yes")
    assert code == 2 and "nowhere" in err and "hashbench run" in err
    code, _, err = cli(capsys, *base)
    assert code == 2 and "--attributes" in err and "--image" in err
    # other dataset options than the run's: other data, refused (by default the recorded ones are used)
    other = ["--dataset-option", "n_test_ids=9", "--method", "itq", "--bits", "64", "--attributes", "hat=yes"]
    code, _, err = cli(capsys, "query", *other, "--results", finished / "res")
    assert code == 2 and "--dataset-option" in err and "digest" in err and len(err.strip().splitlines()) == 1


def test_query_rebuilds_the_run_from_its_recorded_configuration(finished, capsys):
    """No --dataset-option, --input-size or --cache-dir: what the run recorded in configs.jsonl is used."""
    query = ["query", *"--method itq --bits 64 --attributes hat=yes".split(), "--results", finished / "res"]
    code, out, err = cli(capsys, *query)
    assert code == 0 and "itq @ 64 bits" in out, err
    # a results folder without recorded configurations says how to record them
    (finished / "res" / "configs.jsonl").rename(finished / "configs.bak")
    try:
        code, _, err = cli(capsys, *query)
        assert code == 2 and "configs.jsonl" in err and "hashbench run" in err
    finally:
        (finished / "configs.bak").rename(finished / "res" / "configs.jsonl")


def test_query_by_photo_encodes_it_like_the_run_and_finds_its_identity(finished, capsys):
    from hashbench.cells import load_cell

    res = finished / "res"
    cell = load_cell(res, "itq", 64)
    best = int(np.argmax(cell.arrays["ap"]))  # the query the benchmark itself answers best
    dataset = Registry.load().dataset("synthetic")(None, **TINY)
    record = dataset.splits()["query"][best]
    photo = finished / "photo.png"
    next(dataset.open_images([record])).save(photo)
    result = run_query(
        "synthetic",
        "itq",
        64,
        image=photo,
        results_dir=res,
        out=finished / "photo_hits.png",
        dataset_options=TINY,
        cache_dir=finished / "cache",
    )
    # the photo's code is the one the run gave that image (the same pipeline, float16 maps included)
    assert np.array_equal(result.query_code, cell.codes("query")[best])
    assert record.pid in [h.pid for h in result.hits[:5]]
    assert (finished / "photo_hits.png").is_file()
    # photo + description through the CLI
    code, out, _ = cli(
        capsys,
        "query",
        *OPTIONS,
        "--method",
        "lsh",
        "--bits",
        "64",
        "--results",
        res,
        "--cache-dir",
        finished / "cache",
        "--image",
        photo,
        "--attributes",
        "backpack=yes",
        "--alpha",
        "0.3",
    )
    assert code == 0 and "hamming" in out and "combined" in out
    # no cached IDE model where it is looked for: one line saying which run to do
    code, _, err = cli(
        capsys, "query", *OPTIONS, "--method", "lsh", "--bits", "64", "--results", res,
        "--cache-dir", finished / "empty-cache", "--image", photo,
    )  # fmt: skip
    assert code == 2 and "IDE model" in err and "hashbench run" in err


def test_query_decoders_rank_by_their_cost_and_alpha_comes_from_the_held_out_choice(finished, capsys):
    from hashbench.cells import load_cell
    from hashbench.decoders import make_decoders
    from hashbench.report.photo_description import ALPHA_COLUMNS, ALPHA_NAME

    res = finished / "res"
    cell = load_cell(res, "itq", 64)
    common = dict(
        results_dir=res, out=finished / "dq.png", dataset_options=TINY, cache_dir=finished / "cache"
    )
    for name in ("naive-bayes", "logistic"):
        result = run_query("synthetic", "itq", 64, attributes="gender=female,hat=yes", decoder=name,
                           top=8, **common)  # fmt: skip
        (fitted,) = make_decoders([name], cell.schema)
        fitted.fit(cell.codes("train"), cell.attributes("train"))
        picks = np.zeros((1, fitted.offsets_[-1]))
        picks[0, fitted.query_rows("gender=female,hat=yes")] = 1.0
        cost = fitted.description_cost(picks, cell.codes("gallery"))[0]
        want = np.argsort(cost, kind="stable")[:8]
        assert [h.index for h in result.hits] == list(want), name  # the decoder's own ranking
        assert any(f"decoder {name}" in n for n in result.notes)
    code, _, err = cli(capsys, "query", *OPTIONS, "--method", "itq", "--bits", "64", "--results", res,
                       "--attributes", "hat=yes", "--decoder", "oracle")  # fmt: skip
    assert code == 2 and "--decoder oracle" in err and "logistic" in err and "naive-bayes" in err

    # photo + description: alpha 1 said to be unchosen, then the held-out choice once one is recorded
    dataset = Registry.load().dataset("synthetic")(None, **TINY)
    photo = finished / "photo_a.png"
    next(dataset.open_images([dataset.splits()["query"][0]])).save(photo)
    both = dict(attributes="hat=yes", image=photo, decoder="logistic", **common)
    result = run_query("synthetic", "itq", 64, **both)
    assert any("alpha 1 (no held-out choice" in n for n in result.notes)
    (res / "validation").mkdir(exist_ok=True)
    row = {c: "" for c in ALPHA_COLUMNS} | {"method": "itq", "bits": 64, "decoder": "logistic",
                                            "description": "full", "alpha": 0.25}  # fmt: skip
    import pandas as pd

    pd.DataFrame([row], columns=ALPHA_COLUMNS).to_csv(res / "validation" / ALPHA_NAME, index=False)
    try:
        result = run_query("synthetic", "itq", 64, **both)
        assert any("alpha 0.25 (chosen on held-out identities" in n for n in result.notes)
        hamming = np.array([h.hamming for h in result.hits]) / 64
        desc = np.array([h.description for h in result.hits])
        assert np.allclose([h.distance for h in result.hits], hamming + 0.25 * desc)
        assert run_query("synthetic", "itq", 64, alpha=2.0, **both).notes == [
            n for n in result.notes if n.startswith("decoder")
        ]  # an --alpha given is used as given
    finally:
        (res / "validation" / ALPHA_NAME).unlink()
