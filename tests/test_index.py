"""Top-k indexes: every exact backend returns the full stable ranking's first k (ties by gallery order),
approximate ones report their recall, bad input is one line."""

import sys

import numpy as np
import pytest

from hashbench import index as hindex
from hashbench import search
from hashbench.errors import HashbenchError
from hashbench.index import INDEXES, make_index, recall_at_k, substring_lengths
from hashbench.search import hamming_distances, hamming_rank

HAVE_FAISS = search._faiss() is not None
EXACT = [n for n, k in INDEXES.items() if k.exact]
APPROX = [n for n, k in INDEXES.items() if not k.exact]
# MIH in its three regimes: the radius rule alone (no fallback), a low fallback threshold (most queries
# scanned), no radius beyond 0 (every query past round 0 scanned); short substrings, many tables
MIH_PARAMS = [
    {},
    {"fallback_fraction": 1.0, "max_probes": 10**9},
    {"fallback_fraction": 0.01},
    {"max_radius": 0},
    {"substring_bits": 3, "fallback_fraction": 1.0, "max_probes": 10**9},
]


def tie_heavy(bits, n, nq, distinct, seed):
    """Codes drawn from few distinct values: thousands of exact duplicates and ties at every distance."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (distinct, bits // 8), dtype=np.uint8)
    return base[rng.integers(0, distinct, nq)], base[rng.integers(0, distinct, n)]


def expected(q, g, k):
    order = hamming_rank(q, g, backend="numpy")[:, :k]
    return np.take_along_axis(hamming_distances(q, g), order, axis=1).astype(np.int32), order


def params_of(name):
    if name == "mih":
        return MIH_PARAMS
    if name == "flat":
        return [{"engine": "numpy"}] + ([{"engine": "faiss"}] if HAVE_FAISS else [])
    if name == "faiss-flat":
        return [{}, {"use_heap": False}]
    return [{}]


@pytest.mark.parametrize(
    ("bits", "n", "distinct"),
    [(16, 3000, 40), (16, 70000, 300), (24, 2000, 2000), (64, 5000, 25), (8, 900, 256)],
    ids=["16b-dups", "16b-two-faiss-blocks", "24b", "64b-dups", "8b-all-values"],
)
@pytest.mark.parametrize("name", EXACT)
def test_exact_backends_equal_the_full_stable_ranking(name, bits, n, distinct):
    if INDEXES[name].needs_faiss and not HAVE_FAISS:
        pytest.skip("faiss is not installed")
    q, g = tie_heavy(bits, n, 23, distinct, seed=bits + n)
    for k in sorted({1, 10, 100, n}):
        want_d, want_i = expected(q, g, k)
        for params in params_of(name):
            index = make_index(name, bits, **params).build(g)
            d, i = index.search(q, k)
            assert d.dtype == np.int32 and i.dtype == np.int64 and d.shape == i.shape == (len(q), k)
            np.testing.assert_array_equal(i, want_i, err_msg=f"{name} {params} k={k}")
            np.testing.assert_array_equal(d, want_d, err_msg=f"{name} {params} k={k}")


def test_mih_radius_rule_alone_is_exact_and_stops_at_the_pigeonhole_bound():
    """Without fallback, MIH answers every query by its radius rounds; a query whose k-th neighbour is
    at distance D stops at the first round r with m (r + 1) - 1 >= D."""
    bits, k = 32, 10
    q, g = tie_heavy(bits, 4000, 50, 600, seed=3)
    index = make_index("mih", bits, substring_bits=8, fallback_fraction=1.0, max_probes=10**9).build(g)
    d, i = index.search(q, k)
    want_d, want_i = expected(q, g, k)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(d, want_d)
    assert index.stats_["fallback"] == 0
    m = len(index.lengths)
    assert m == 4
    # the round each query stopped at is the first whose bound covers its k-th distance
    first_round = np.maximum(0, -(-(want_d[:, -1] + 1) // m) - 1)
    counts = {int(r): int((first_round == r).sum()) for r in np.unique(first_round)}
    assert index.stats_["radius_counts"] == counts


def test_mih_by_hand_one_table_per_byte():
    """16-bit codes, two 8-bit substrings: gallery ids 0..3 at distances 0, 1, 9, 2 from the query."""
    q = np.array([[0b00000000, 0b00000000]], dtype=np.uint8)
    g = np.array([[0, 0], [0, 1], [0b11111111, 0b1], [0b11, 0]], dtype=np.uint8)
    index = make_index("mih", 16, substring_bits=8, fallback_fraction=1.0, max_probes=10**9).build(g)
    assert index.lengths == [8, 8]
    d, i = index.search(q, 3)
    assert d.tolist() == [[0, 1, 2]] and i.tolist() == [[0, 1, 3]]
    assert index.stats_["radius_counts"] == {1: 1}  # round 0 bound 1 covers only 2 codes; round 1 bound 3
    d, i = index.search(q, 4)
    assert d.tolist() == [[0, 1, 2, 9]] and i.tolist() == [[0, 1, 3, 2]]


def test_substrings_cover_every_bit():
    for bits in (8, 16, 24, 128, 136, 2048):
        for sb in (3, 8, 16, 20):
            lengths = substring_lengths(bits, sb)
            assert sum(lengths) == bits and max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize("name", APPROX)
def test_approximate_backends_report_recall(name):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    g = rng.integers(0, 256, (5000, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (40, 8), dtype=np.uint8)
    want_d, _ = expected(q, g, 10)
    index = make_index(name, 64).build(g)
    assert not index.exact
    d, i = index.search(q, 10)
    recall = recall_at_k(d, want_d)
    assert 0.0 < recall <= 1.0
    assert index.memory_bytes() > 0
    assert recall_at_k(want_d, want_d) == 1.0  # an exact answer has recall 1


def test_recall_counts_ties_as_found():
    truth = np.array([[1, 2, 2]])
    assert recall_at_k(np.array([[1, 2, 2]]), truth) == 1.0  # other ids at the same distances
    assert recall_at_k(np.array([[1, 2, 3]]), truth) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[1, 2, -1]]), truth) == pytest.approx(2 / 3)  # one missing


@pytest.mark.parametrize("name", EXACT + APPROX)
def test_bad_input_is_one_line(name):
    if INDEXES[name].needs_faiss and not HAVE_FAISS:
        pytest.skip("faiss is not installed")
    g = np.zeros((20, 4), dtype=np.uint8)
    index = make_index(name, 32).build(g)
    with pytest.raises(HashbenchError, match=r"k=21: expected 1\.\.20") as e:
        index.search(g[:2], 21)
    assert "\n" not in str(e.value)
    with pytest.raises(HashbenchError, match="k=0"):
        index.search(g[:2], 0)
    with pytest.raises(HashbenchError, match="query codes have 64 bits but the index holds 32-bit codes"):
        index.search(np.zeros((2, 8), dtype=np.uint8), 5)
    with pytest.raises(HashbenchError, match="gallery codes have 16 bits"):
        make_index(name, 32).build(np.zeros((5, 2), dtype=np.uint8))


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(HashbenchError, match="unknown index backend 'lsh'; valid: flat, faiss-flat, mih"):
        make_index("lsh", 64)
    with pytest.raises(HashbenchError, match="unknown parameter 'radius'; valid: substring_bits"):
        make_index("mih", 64, radius=2)
    with pytest.raises(HashbenchError, match="multiple of 8"):
        make_index("flat", 12)


def test_flat_and_mih_work_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    search._faiss.cache_clear()
    try:
        q, g = tie_heavy(16, 2000, 10, 30, seed=9)
        want_d, want_i = expected(q, g, 50)
        for name, params in (("flat", {}), ("mih", {"fallback_fraction": 0.01})):
            d, i = make_index(name, 16, **params).build(g).search(q, 50)
            np.testing.assert_array_equal(i, want_i)
            np.testing.assert_array_equal(d, want_d)
        for name in ("faiss-flat", "hnsw", "ivf"):
            with pytest.raises(HashbenchError, match="needs the faiss-cpu package"):
                make_index(name, 16)
        assert hindex.index_names(available_only=True) == ["flat", "mih"]
    finally:
        search._faiss.cache_clear()
