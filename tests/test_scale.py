"""``hashbench scale``: distractors of the cell's own method, the exact mAP of the grown gallery, the
scale.csv rows and plots, determinism, one-line errors."""

import csv
import logging
import shutil

import numpy as np
import pytest

from hashbench import scale
from hashbench.cells import load_cell
from hashbench.errors import HashbenchError
from hashbench.metrics import evaluate_rankings
from hashbench.runner import run
from hashbench.scale import (
    CHUNK,
    SCALE_COLUMNS,
    DistractorCodes,
    Target,
    below_counts,
    distractor_histograms,
    distractor_maps,
    encode_distractors,
    evaluate_with_distractors,
    parse_distractors,
)
from hashbench.search import hamming_rank

from .tiny import cli, tiny_run_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny synthetic run: LSH (adapted features) and DBH (trunk maps) at 32 bits."""
    tmp = tmp_path_factory.mktemp("scale")
    config = tiny_run_config(
        tmp,
        methods=["lsh", "dbh"],
        bits=[32],
        method_params={"dbh": {"epochs": 1}},
        reference=False,
        attribute_queries=False,
    )
    run(config)
    return tmp


def scale_rows(folder):
    with open(folder / "scale.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------- the evaluation


@pytest.mark.parametrize("bits", [8, 16])
def test_distractor_evaluation_equals_the_full_ranking_of_the_grown_gallery(bits):
    """Few distinct codes (ties everywhere), junk (pid -1 and same camera), the dataset's own distractors
    (pid 0): the histogram evaluation equals evaluate_rankings on gallery + appended distractors."""
    rng = np.random.default_rng(bits)
    width = bits // 8
    base = rng.integers(0, 256, (12, width), dtype=np.uint8)
    nq, ng, nd = 30, 120, 700
    q = base[rng.integers(0, 12, nq)]
    g = base[rng.integers(0, 12, ng)]
    d = rng.integers(0, 256, (nd, width), dtype=np.uint8)
    d[::3] = base[rng.integers(0, 12, len(d[::3]))]  # distractors tied with gallery codes
    q_pids = rng.integers(1, 8, nq)
    q_cams = rng.integers(1, 4, nq)
    g_pids = rng.integers(-1, 8, ng)
    g_cams = rng.integers(1, 4, ng)
    sizes = [0, 1, 50, 333, nd]
    below = below_counts(distractor_histograms(q, d, sizes, bits, block=128))
    got = evaluate_with_distractors(q, g, below, q_pids, q_cams, g_pids, g_cams, chunk=7)
    for size, evaluation in zip(sizes, got, strict=True):
        grown = np.concatenate([g, d[:size]])
        ranking = hamming_rank(q, grown, backend="numpy")
        want = evaluate_rankings(
            ranking,
            q_pids,
            q_cams,
            np.concatenate([g_pids, np.zeros(size, dtype=np.int64)]),
            np.concatenate([g_cams, np.ones(size, dtype=np.int64)]),
        )
        assert evaluation.n_valid == want.n_valid
        assert evaluation.mAP == pytest.approx(want.mAP, abs=1e-12)
        np.testing.assert_allclose(evaluation.ap, want.ap, atol=1e-12)
        np.testing.assert_allclose(evaluation.cmc, want.cmc, atol=1e-12)


def test_distractor_maps_follow_the_recipe_and_are_prefix_stable():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((10, 3, 4, 2)).astype(np.float16)
    pids = np.array([1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    std = np.ones(3, dtype=np.float32)
    out = distractor_maps(maps, pids, 0, 40, seed=7, channel_std=std)
    np.testing.assert_array_equal(out[:10], maps)  # the training maps as they are
    np.testing.assert_array_equal(out[10:20], maps[..., ::-1])  # then flipped
    assert np.isfinite(out[20:].astype(np.float32)).all() and not np.array_equal(out[20:30], out[30:40])
    # the same seed: the same maps, whatever the range asked; another seed: other mixups
    np.testing.assert_array_equal(distractor_maps(maps, pids, 25, 40, 7, std), out[25:40])
    assert not np.array_equal(distractor_maps(maps, pids, 20, 40, 8, std), out[20:40])
    assert CHUNK >= 40  # one chunk above: its draw depends on (seed, chunk) only


def test_parse_distractors():
    assert parse_distractors("0,100k,300k,1M") == [0, 100_000, 300_000, 1_000_000]
    assert parse_distractors("5, 1,5,1.5k") == [1, 5, 1500]
    for bad in ("-1", "abc", "1.5", "10,,20", "1e6"):
        with pytest.raises(HashbenchError, match="--distractors"):
            parse_distractors(bad)


class SignOf:
    """A stand-in method: the signs of ``bits`` fixed projections of its input; counts its encodes and,
    after ``fail_after`` calls, dies (a killed run)."""

    name = "sign"

    def __init__(self, consumes, bits, fail_after=None):
        self.consumes, self.bits, self.fail_after, self.calls, self.rows = consumes, bits, fail_after, 0, 0

    def encode(self, view):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        x = getattr(view, self.consumes[0]).astype(np.float32).reshape(len(view), -1)
        self.rows += len(x)
        w = np.random.default_rng(self.bits).standard_normal((x.shape[1], self.bits)).astype(np.float32)
        return (x @ w > 0).astype(np.uint8)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of two chunks, so that a few thousand distractors span several cache files."""
    monkeypatch.setattr(scale, "BLOCK", 2 * CHUNK)
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((40, 3, 4, 2)).astype(np.float16)
    return maps, np.repeat(np.arange(20), 2)


def test_one_pass_serves_every_cell_and_embeds_each_chunk_once(small_blocks):
    maps, pids = small_blocks
    embeds = []

    def embed(m):
        embeds.append(len(m))
        return m.reshape(len(m), -1)[:, :16].astype(np.float32) * 2.0

    count = 3 * CHUNK + 100
    a, b, c = SignOf(("maps",), 16), SignOf(("features",), 8), SignOf(("features",), 24)
    shared = encode_distractors([Target(a), Target(b), Target(c)], maps, pids, count, 5, embed)
    assert sum(embeds) == count  # the features of each chunk computed once for both feature cells
    for method, (codes, seconds) in zip((a, b, c), shared, strict=True):
        alone = encode_distractors(
            [Target(SignOf(method.consumes, method.bits))], maps, pids, count, 5, embed
        )
        np.testing.assert_array_equal(codes, alone[0][0])  # the same codes as a pass of its own
        assert codes.shape == (count, method.bits // 8) and seconds > 0


def test_distractor_codes_are_cached_and_a_killed_pass_resumes(small_blocks, tmp_path, caplog):
    maps, pids = small_blocks
    count = 5 * CHUNK + 7  # blocks of 2 chunks: 2 full blocks and a short one
    want = encode_distractors([Target(SignOf(("maps",), 16))], maps, pids, count, 3, None)[0][0]

    store = DistractorCodes(tmp_path, "k", 2)
    with pytest.raises(KeyboardInterrupt):  # killed in its third chunk: the first block is kept
        encode_distractors([Target(SignOf(("maps",), 16, fail_after=2), store)], maps, pids, count, 3, None)
    assert store.rows(0) == 2 * CHUNK and store.rows(1) == 0
    again, calls = SignOf(("maps",), 16), []
    ((codes, seconds),) = encode_distractors(
        [Target(again, store)], maps, pids, count, 3, None, progress=lambda *a: calls.append(a)
    )
    np.testing.assert_array_equal(codes, want)
    assert again.rows == count - 2 * CHUNK and seconds > 0  # resumed after the kept block
    # progress tells what was read from what was made (so that a resumed run's rate is its own)
    assert calls == [(2 * CHUNK, count, True), (3 * CHUNK, count, False), (4 * CHUNK, count, False),
                     (5 * CHUNK, count, False), (count, count, False)]  # fmt: skip

    # a smaller count reads a prefix; a larger one extends the short last block only
    idle = SignOf(("maps",), 16)
    ((codes, _),) = encode_distractors([Target(idle, store)], maps, pids, 3 * CHUNK, 3, None)
    np.testing.assert_array_equal(codes, want[: 3 * CHUNK])
    assert idle.rows == 0
    more = SignOf(("maps",), 16)
    ((codes, _),) = encode_distractors([Target(more, store)], maps, pids, 6 * CHUNK, 3, None)
    assert more.rows == 6 * CHUNK - count
    np.testing.assert_array_equal(codes[:count], want)

    # a damaged block is reported and encoded again
    (store.folder / "block-1.npy").write_bytes(b"not a numpy file")
    redo = SignOf(("maps",), 16)
    ((codes, _),) = encode_distractors([Target(redo, store)], maps, pids, count, 3, None)
    np.testing.assert_array_equal(codes, want)
    assert redo.rows == 2 * CHUNK and "cannot be read" in caplog.text


# ------------------------------------------------------------------------------------ end to end


def test_scale_end_to_end_writes_rows_and_plots(finished, capsys, caplog):
    caplog.set_level(logging.INFO, logger="hashbench")
    res = finished / "res"
    code, out, err = cli(
        capsys, "scale", res, "--method", "dbh", "--bits", "32", "--distractors", "300,0,2k",
        "--backend", "flat,mih", "--cache-dir", finished / "cache", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    # where the distractor codes are kept is said (scripts/probe_exact_bounds.py reads them there)
    assert f"dbh @ 32 bits: distractor codes kept in {finished / 'cache' / 'distractors'}" in caplog.text
    rows = scale_rows(res)
    assert list(rows[0]) == list(SCALE_COLUMNS)
    assert [(r["distractors"], r["backend"]) for r in rows] == [
        (s, b) for s in ("0", "300", "2000") for b in ("flat", "mih")
    ]
    cell = load_cell(res, "dbh", 32)
    n_gallery = len(cell.arrays["gallery_pids"])
    for r in rows:
        assert int(r["gallery_size"]) == n_gallery + int(r["distractors"])
        assert r["recall"] == "1.0000" and r["exact"] == "true" and r["k"] == "100"
        assert r["identical"] == "true"  # the same ids and distances as the first exact backend
        assert r["config_hash"] == cell.row["config_hash"] and r["commit"] and r["date"]
        assert "mixup" in r["distractor_source"] and int(r["memory_bytes"]) >= 4 * int(r["gallery_size"])
    maps = [float(r["map"]) for r in rows if r["backend"] == "flat"]
    assert maps[0] == pytest.approx(float(cell.row["map"]), abs=1e-4)  # no distractors: the cell's mAP
    assert maps[0] >= maps[1] >= maps[2]  # more distractors can only push matches down
    assert (res / "scale_map.png").stat().st_size > 0 and (res / "scale_query_ms.png").stat().st_size > 0

    # the features method (IDE stage): the same, beside the first cell's rows; a rerun replaces its rows
    for _ in range(2):
        code, _, err = cli(
            capsys, "scale", res, "--method", "lsh", "--bits", "32", "--distractors", "0,500",
            "--backend", "flat", "--cache-dir", finished / "cache", "--no-progress",
        )  # fmt: skip
        assert code == 0, err
    rows = scale_rows(res)
    assert len(rows) == 8 and [r["method"] for r in rows].count("lsh") == 2
    # the folded IDE embedding of the distractors: what it moves on the test gallery is in every row
    lsh = [r for r in rows if r["method"] == "lsh"]
    assert all(
        "BatchNorm folded" in r["distractor_source"] and " code bits (" in r["distractor_source"] for r in lsh
    )
    assert not any("BatchNorm" in r["distractor_source"] for r in rows if r["method"] == "dbh")


def test_scale_of_several_cells_in_one_pass_equals_their_own_runs(finished, capsys, tmp_path):
    res = finished / "res"

    def rows(out, *extra):
        code, printed, err = cli(
            capsys, "scale", res, "--distractors", "0,700", "--backend", "flat", "--out", out,
            "--cache-dir", finished / "cache", "--no-progress", *extra,
        )  # fmt: skip
        assert code == 0, err
        return {(r["method"], r["distractors"]): r for r in scale_rows(out)}, printed

    both, printed = rows(
        tmp_path / "both", "--method", "lsh,dbh", "--bits", "32", "--no-cache-codes", "--search-queries", "7"
    )
    assert "| lsh " in printed and "| dbh " in printed
    assert {r["n_query"] for r in both.values()} == {"7"}  # timed on 7 queries; mAP on all of them
    for method in ("lsh", "dbh"):
        alone, _ = rows(tmp_path / method, "--method", method, "--bits", "32")
        for size in ("0", "700"):
            assert alone[method, size]["map"] == both[method, size]["map"]
            assert alone[method, size]["rank1"] == both[method, size]["rank1"]
        # a rerun reads the cached codes: nothing encoded, the recorded seconds reported again
        again, _ = rows(tmp_path / f"{method}-again", "--method", method, "--bits", "32")
        assert again[method, "700"]["map"] == alone[method, "700"]["map"]
        assert again[method, "700"]["encode_s"] == alone[method, "700"]["encode_s"]
    assert list((finished / "cache" / "distractors").glob("*/block-0.npy"))


def test_scale_on_onnxruntime_counts_the_bits_it_moves(finished, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    res = finished / "res"
    code, _, err = cli(
        capsys, "scale", res, "--method", "lsh,dbh", "--bits", "32", "--distractors", "0,600", "--backend",
        "flat", "--engine", "onnxruntime", "--out", tmp_path, "--cache-dir", finished / "cache", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    rows = {(r["method"], r["distractors"]): r for r in scale_rows(tmp_path)}
    assert "the IDE model on onnxruntime" in rows["lsh", "600"]["distractor_source"]
    assert "the method's network on onnxruntime" in rows["dbh", "600"]["distractor_source"]
    for method in ("lsh", "dbh"):
        note = rows[method, "600"]["distractor_source"]
        moved, total = (
            int(x) for x in note.split("on the test gallery ")[1].split(" code bits")[0].split(" of ")
        )
        assert total > 0 and moved <= total // 1000  # float rounding moves (almost) no bit
    code, _, err = cli(
        capsys, "scale", res, "--method", "dbh", "--bits", "32", "--distractors", "0,600", "--backend", "flat",
        "--out", tmp_path / "torch", "--cache-dir", finished / "cache", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    torch_map = {r["distractors"]: float(r["map"]) for r in scale_rows(tmp_path / "torch")}
    assert float(rows["dbh", "600"]["map"]) == pytest.approx(torch_map["600"], abs=0.5)
    assert float(rows["dbh", "0"]["map"]) == torch_map["0"]  # no distractor: the cell's own codes
    code, _, err = cli(capsys, "scale", res, "--method", "lsh", "--bits", "32", "--engine", "openvino")
    assert code == 2 and "--engine" in err


def test_scale_is_deterministic_for_a_seed(finished, capsys, tmp_path):
    res = finished / "res"

    def maps(seed, out):
        code, _, err = cli(
            capsys, "scale", res, "--method", "lsh", "--bits", "32", "--distractors", "900",
            "--backend", "flat", "--seed", seed, "--out", out, "--cache-dir", finished / "cache",
        )  # fmt: skip
        assert code == 0, err
        return [float(r["map"]) for r in scale_rows(out)]

    first = maps(3, tmp_path / "a")
    assert maps(3, tmp_path / "b") == first
    assert maps(4, tmp_path / "c") != first  # other mixups, other codes, another mAP


def test_bad_scale_input_is_one_line(finished, capsys, tmp_path):
    res = finished / "res"
    base = ["scale", res, "--method", "lsh", "--bits", "32", "--cache-dir", finished / "cache"]
    for args, expected in (
        (["--distractors", "-5"], "--distractors"),
        (["--distractors", "ten"], "--distractors"),
        (["--distractors", "0", "--k", "100000"], "larger than the smallest gallery"),
        (["--k", "0"], "--k 0"),
        (["--backend", "annoy"], "--backend 'annoy': unknown; valid: flat"),
        (["--bits", "32,64"], "no cell lsh at 64 bits"),
        (["--method", ","], "--method ','"),
        (["--search-queries", "0"], "--search-queries 0"),
    ):
        code, _, err = cli(capsys, *base, *args)
        assert code == 2 and expected in err, (args, err)
        assert err.startswith("hashbench: error:")
    # query and gallery codes of different lengths in the artifact
    bad = tmp_path / "res"
    shutil.copytree(res, bad)
    cell = load_cell(bad, "lsh", 32)
    arrays = dict(cell.arrays)
    arrays["query_codes"] = arrays["query_codes"][:, :2]
    np.savez_compressed(cell.path, **arrays)
    code, _, err = cli(capsys, "scale", bad, "--method", "lsh", "--bits", "32", "--distractors", "0")
    assert code == 2 and "mismatched code lengths" in err
    code, _, err = cli(capsys, "scale", res, "--method", "itq", "--bits", "32")
    assert code == 2 and "no cell itq at 32 bits" in err
