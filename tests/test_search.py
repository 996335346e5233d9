"""Packing, Hamming distances and rankings: numpy and faiss backends must agree exactly."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from hashbench import search
from hashbench.errors import HashbenchError
from hashbench.search import (
    bytes_per_code,
    float_rank,
    hamming_distances,
    hamming_rank,
    pack_codes,
    unpack_codes,
)

HAVE_FAISS = search._faiss() is not None
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed")
BACKENDS = ["numpy", pytest.param("faiss", marks=needs_faiss)]


def random_codes(rng, n, bits):
    return rng.integers(0, 2, (n, bits), dtype=np.uint8)


def naive_hamming(a, b):
    """Bit-by-bit count on unpacked 0/1 codes."""
    return (a[:, None, :] != b[None, :, :]).sum(axis=2)


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", [8, 16, 24, 64, 72, 128, 2048])
def test_pack_unpack_round_trip(bits):
    codes = random_codes(np.random.default_rng(bits), 33, bits)
    packed = pack_codes(codes)
    assert packed.shape == (33, bits // 8) == (33, bytes_per_code(bits))
    assert packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed, bits), codes)
    np.testing.assert_array_equal(pack_codes(codes.astype(bool)), packed)


def test_pack_known_bytes():
    codes = np.array([[1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(pack_codes(codes), [[0x81, 0xFF]])


@pytest.mark.parametrize("bits", [12, 7, 1, 130])
def test_bits_not_multiple_of_8(bits):
    with pytest.raises(HashbenchError, match=f"{bits} bits"):
        pack_codes(np.zeros((2, bits), dtype=np.uint8))
    with pytest.raises(HashbenchError, match=f"{bits} bits"):
        bytes_per_code(bits)


def test_bytes_per_code():
    assert bytes_per_code(128) == 16
    assert bytes_per_code(2048) == 256
    for bad in (0, -8, 8.0, True):
        with pytest.raises(HashbenchError):
            bytes_per_code(bad)


def test_pack_rejects_non_binary_and_bad_shapes():
    with pytest.raises(ValueError, match="0 and 1"):
        pack_codes(np.full((2, 8), 2, dtype=np.uint8))
    with pytest.raises(ValueError, match="0/1"):
        pack_codes(np.zeros((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        pack_codes(np.zeros(8, dtype=np.uint8))
    with pytest.raises(ValueError, match="bytes"):
        unpack_codes(np.zeros((2, 2), dtype=np.uint8), 24)


# ---------------------------------------------------------------- distances


@pytest.mark.parametrize("bits", [8, 16, 56, 64, 128, 200, 512])
def test_hamming_distances_match_naive_count(bits):
    rng = np.random.default_rng(bits)
    q, g = random_codes(rng, 23, bits), random_codes(rng, 301, bits)
    expected = naive_hamming(q, g)
    got = hamming_distances(pack_codes(q), pack_codes(g), chunk=5, threads=2)
    assert got.dtype == np.uint16 and got.shape == (23, 301)
    np.testing.assert_array_equal(got, expected)
    if HAVE_FAISS:  # the faiss kernel, directly
        block = search._distance_block("faiss", pack_codes(q), pack_codes(g))
        np.testing.assert_array_equal(block(0, 23), expected)


def test_hamming_distances_extremes():
    q = np.zeros((1, 2048), dtype=np.uint8)
    g = np.stack([np.zeros(2048), np.ones(2048)]).astype(np.uint8)
    np.testing.assert_array_equal(hamming_distances(pack_codes(q), pack_codes(g)), [[0, 2048]])


def test_mismatched_code_lengths():
    with pytest.raises(ValueError, match="bytes"):
        hamming_distances(np.zeros((2, 2), np.uint8), np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        hamming_rank(np.zeros((2, 2), np.int32), np.zeros((3, 2), np.uint8))


# ---------------------------------------------------------------- rankings


@needs_faiss
@pytest.mark.parametrize("bits, nq, ng", [(16, 500, 3000), (8, 50, 1000), (24, 60, 700), (128, 70, 900)])
def test_numpy_and_faiss_rankings_identical_with_many_ties(bits, nq, ng):
    rng = np.random.default_rng(bits)
    q, g = random_codes(rng, nq, bits), random_codes(rng, ng, bits)
    if bits == 128:  # make exact ties at long codes too: duplicate gallery codes
        g[1::2] = g[0::2][: ng // 2]
    qp, gp = pack_codes(q), pack_codes(g)
    expected = np.argsort(naive_hamming(q, g), axis=1, kind="stable")  # ties in gallery order
    by_numpy = hamming_rank(qp, gp, backend="numpy", chunk=64)
    by_faiss = hamming_rank(qp, gp, backend="faiss", chunk=64)
    assert by_numpy.dtype == by_faiss.dtype == np.int32
    np.testing.assert_array_equal(by_numpy, expected)
    np.testing.assert_array_equal(by_faiss, expected)
    np.testing.assert_array_equal(hamming_rank(qp, gp, backend="auto", threads=1), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_truncation(backend):
    rng = np.random.default_rng(5)
    qp, gp = pack_codes(random_codes(rng, 30, 16)), pack_codes(random_codes(rng, 400, 16))
    full = hamming_rank(qp, gp, backend=backend)
    for k in (1, 10, 400):
        top = hamming_rank(qp, gp, backend=backend, k=k)
        assert top.shape == (30, k)
        np.testing.assert_array_equal(top, full[:, :k])
    for bad in (0, 401):
        with pytest.raises(ValueError, match="k must be"):
            hamming_rank(qp, gp, backend=backend, k=bad)


def test_unknown_backend():
    codes = np.zeros((2, 1), np.uint8)
    with pytest.raises(HashbenchError, match="unknown search backend 'gpu'"):
        hamming_rank(codes, codes, backend="gpu")


def test_works_without_faiss(monkeypatch):
    rng = np.random.default_rng(9)
    q, g = random_codes(rng, 20, 16), random_codes(rng, 200, 16)
    expected = np.argsort(naive_hamming(q, g), axis=1, kind="stable")
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    search._faiss.cache_clear()
    try:
        assert search._backend("auto") == "numpy"
        np.testing.assert_array_equal(hamming_rank(pack_codes(q), pack_codes(g), backend="auto"), expected)
        with pytest.raises(HashbenchError, match="faiss-cpu"):
            hamming_rank(pack_codes(q), pack_codes(g), backend="faiss")
    finally:
        search._faiss.cache_clear()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_query_set(backend):
    q, g = np.zeros((0, 2), np.uint8), np.zeros((5, 2), np.uint8)
    assert hamming_rank(q, g, backend=backend).shape == (0, 5)


# ---------------------------------------------------------------- real-valued reference


def test_float_rank_euclidean_exact_with_ties():
    rng = np.random.default_rng(3)
    q = rng.integers(-3, 4, (25, 16)).astype(np.float32)  # small integers: every distance is exact
    g = rng.integers(-3, 4, (300, 16)).astype(np.float32)
    g[100:200] = g[:100]  # duplicates tie exactly
    dist = ((q[:, None, :].astype(np.int64) - g[None].astype(np.int64)) ** 2).sum(axis=2)
    expected = np.argsort(dist, axis=1, kind="stable")
    got = float_rank(q, g, "euclidean", chunk=7, threads=2)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(float_rank(q, g, k=9), expected[:, :9])


def test_float_rank_cosine():
    rng = np.random.default_rng(4)
    q, g = rng.standard_normal((20, 32)), rng.standard_normal((200, 32))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    expected = np.argsort(-(qn @ gn.T), axis=1, kind="stable")
    np.testing.assert_array_equal(float_rank(q, g, "cosine"), expected)
    np.testing.assert_array_equal(float_rank(q * 3, g, "cosine")[:, :5], expected[:, :5])  # scale-free


def test_float_rank_bad_inputs():
    with pytest.raises(HashbenchError, match="unknown metric 'l1'"):
        float_rank(np.zeros((2, 3)), np.zeros((4, 3)), metric="l1")
    with pytest.raises(ValueError, match="same width"):
        float_rank(np.zeros((2, 3)), np.zeros((4, 5)))
