"""Coarse-to-fine search (``hashbench.search.coarse_to_fine_rank``, ``hashbench cascade``): the packed
search equals the full ranking inside its top-k, prefixes of any length, the cascade rows of finished
cells (the full row is the cell's own mAP), reruns replace rows, one-line errors."""

import csv

import numpy as np
import pytest

from hashbench.cascade import CASCADE_COLUMNS
from hashbench.cells import load_cell
from hashbench.errors import HashbenchError
from hashbench.runner import run
from hashbench.search import (
    coarse_to_fine_cost,
    coarse_to_fine_rank,
    hamming_rank,
    pack_codes,
    prefix_codes,
)
from hashbench_methods.ctf import coarse_to_fine_search

from .tiny import cli, tiny_run_config


def _clustered(rng, n, bits, centres):
    flip = (rng.random((n, bits)) < 0.15).astype(np.uint8)
    return centres[rng.integers(0, len(centres), n)] ^ flip


@pytest.mark.parametrize("length", [1, 5, 8, 13, 24, 40])
def test_prefix_codes_are_the_first_bits(length):
    rng = np.random.default_rng(length)
    codes = rng.integers(0, 2, (7, 40), dtype=np.uint8)
    want = np.packbits(codes[:, :length], axis=1)
    assert np.array_equal(prefix_codes(pack_codes(codes), 40, length), want)
    with pytest.raises(HashbenchError, match="expected 1..40"):
        prefix_codes(pack_codes(codes), 40, 41)


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_packed_cascade_is_the_full_ranking_in_its_top_k_and_the_prefix_ranking_beyond(backend):
    pytest.importorskip("faiss") if backend == "faiss" else None
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2, (25, 96), dtype=np.uint8)
    g, q = _clustered(rng, 500, 96, centres), _clustered(rng, 30, 96, centres)
    qp, gp = pack_codes(q), pack_codes(g)
    k = 40
    order = coarse_to_fine_rank(qp, gp, 96, (24, 96), k, backend=backend, chunk=7)
    assert order.shape == (30, 500) and all(sorted(r) == list(range(500)) for r in order)
    short = hamming_rank(qp[:, :3], gp[:, :3], backend="numpy")  # the 24-bit prefix
    assert np.array_equal(np.sort(order[:, :k], 1), np.sort(short[:, :k], 1))  # the prefix's top k ...
    assert np.array_equal(order[:, k:], short[:, k:])  # ... the rest in the prefix's order
    d = np.bitwise_count(qp[:, None, :] ^ gp[None]).sum(-1)
    for row, dist in zip(order, d, strict=True):  # inside the top k: full distance, then gallery index
        top = row[:k]
        assert list(top) == sorted(top, key=lambda j, dist=dist: (dist[j], j))
    # the unpacked function of the CtF module is this search; top_k = the gallery is the full ranking
    assert np.array_equal(coarse_to_fine_search(q, g, (24, 96), k), order)
    assert np.array_equal(
        coarse_to_fine_rank(qp, gp, 96, (24, 96), 500), hamming_rank(qp, gp, backend="numpy")
    )
    three = coarse_to_fine_rank(qp, gp, 96, (8, 48, 96), (200, k))  # 8 bits, 48 on 200, 96 on 40
    for row, dist in zip(three, d, strict=True):
        assert list(row[:k]) == sorted(row[:k], key=lambda j, dist=dist: (dist[j], j))
    assert not np.array_equal(three, order)  # other candidates than the two-stage search's
    assert coarse_to_fine_cost(500, (24, 96), k) == 500 * 24 + k * 96
    assert coarse_to_fine_cost(500, (8, 48, 96), (200, k)) == 500 * 8 + 200 * 48 + k * 96
    assert coarse_to_fine_cost(500, (24, 96), 10_000) == 500 * 24 + 500 * 96  # top_k clipped


def test_cascade_refuses_bad_stages():
    q = pack_codes(np.zeros((3, 64), dtype=np.uint8))
    with pytest.raises(HashbenchError, match="rise strictly"):
        coarse_to_fine_rank(q, q, 64, (64, 8), 10)
    with pytest.raises(HashbenchError, match="rise strictly"):
        coarse_to_fine_rank(q, q, 64, (8, 72), 10)
    with pytest.raises(HashbenchError, match="non-increasing"):
        coarse_to_fine_rank(q, q, 64, (8, 32, 64), (10, 20))
    with pytest.raises(HashbenchError, match="2 top_k values for 1"):
        coarse_to_fine_rank(q, q, 64, (8, 64), (10, 5))


# ---------------------------------------------------------------------------- hashbench cascade


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny synthetic run: LSH at 32 and 64 bits."""
    tmp = tmp_path_factory.mktemp("cascade")
    run(tiny_run_config(tmp, methods=["lsh"], bits=[32, 64], reference=False, attribute_queries=False))
    return tmp / "res"


def cascade_rows(folder):
    with open(folder / "cascade.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cascade_rows_of_finished_cells(finished, capsys):
    for _ in range(2):  # a rerun replaces its rows
        code, out, err = cli(
            capsys, "cascade", finished, "--method", "lsh", "--bits", "32,64", "--top-k", "5,100000",
            "--ratio", "4", "--backend", "numpy", "--repeats", "1",
        )  # fmt: skip
        assert code == 0, err
    rows = cascade_rows(finished)
    assert list(rows[0]) == list(CASCADE_COLUMNS)
    ng = len(load_cell(finished, "lsh", 32).arrays["gallery_pids"])
    assert [(r["bits"], r["search"], r["lengths"], r["top_k"]) for r in rows] == [
        (str(b), s, lengths, k)
        for b in (32, 64)
        for s, lengths, k in [
            ("full", str(b), ""),
            ("prefix", str(b // 4), ""),
            ("coarse-to-fine", f"{b // 4}>{b}", "5"),
            ("coarse-to-fine", f"{b // 4}>{b}", str(ng)),  # 100000 clipped to the gallery
        ]
    ]
    for b in (32, 64):
        cell = load_cell(finished, "lsh", b)
        ng = len(cell.arrays["gallery_pids"])
        mine = {(r["search"], r["top_k"]): r for r in rows if r["bits"] == str(b)}
        assert len(mine) == 4
        full = mine[("full", "")]
        assert float(full["map"]) == pytest.approx(float(cell.row["map"]), abs=1e-4)  # the cell's own mAP
        assert float(full["rank1"]) == pytest.approx(float(cell.row["rank1"]), abs=1e-4)
        assert float(full["speedup"]) == 1.0 and int(full["bits_compared"]) == ng * b
        whole = mine[("coarse-to-fine", str(ng))]  # top k clipped to the gallery: the full ranking
        assert whole["map"] == full["map"] and whole["rank1"] == full["rank1"]
        few = mine[("coarse-to-fine", "5")]
        assert int(few["bits_compared"]) == ng * (b // 4) + 5 * b < ng * b
        assert few["config_hash"] == cell.row["config_hash"] and few["commit"] and few["device"]
        assert int(few["n_query"]) == len(cell.arrays["query_pids"]) and int(few["n_gallery"]) == ng
    table = (finished / "table_cascade.md").read_text()
    assert "coarse-to-fine (8>32 bits), top 5" in table and "numpy backend" in table


def test_cascade_errors_are_one_line(finished, capsys):
    code, _, err = cli(capsys, "cascade", finished, "--method", "lsh", "--bits", "32", "--top-k", "0")
    assert code != 0 and "--top-k '0'" in err
    code, _, err = cli(capsys, "cascade", finished, "--method", "lsh", "--bits", "32", "--ratio", "3")
    assert code != 0 and "--ratio 3: 32 bits" in err
    code, _, err = cli(capsys, "cascade", finished, "--method", "itq", "--bits", "32")
    assert code != 0 and "no cell itq at 32 bits" in err and "results.csv" in err
    code, _, err = cli(capsys, "cascade", finished, "--method", "lsh", "--bits", "32", "--backend", "gpu")
    assert code != 0 and "--backend 'gpu'" in err
