"""Full Hamming ranking at Market-1501 size: 3,368 queries x 19,732 gallery codes, numpy vs faiss.

Run with ``pytest tests/benchmarks --benchmark-only`` (the default addopts skip benchmarks).
"""

from __future__ import annotations

import numpy as np
import pytest

from hashbench import search
from hashbench.search import hamming_rank

N_QUERY, N_GALLERY = 3368, 19732

needs_faiss = pytest.mark.skipif(search._faiss() is None, reason="faiss is not installed")


@pytest.fixture(scope="module", params=[128, 2048], ids=lambda bits: f"{bits}bits")
def codes(request):
    bits = request.param
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 256, (N_QUERY, bits // 8), dtype=np.uint8)
    g = rng.integers(0, 256, (N_GALLERY, bits // 8), dtype=np.uint8)
    return bits, q, g


@pytest.mark.parametrize("backend", ["numpy", pytest.param("faiss", marks=needs_faiss)])
def test_hamming_rank_full_gallery(benchmark, codes, backend):
    bits, q, g = codes
    benchmark.group = f"hamming_rank {bits} bits"
    benchmark.extra_info.update(bits=bits, n_query=N_QUERY, n_gallery=N_GALLERY)
    ranks = benchmark.pedantic(
        hamming_rank, args=(q, g), kwargs={"backend": backend}, rounds=3, iterations=1, warmup_rounds=1
    )
    assert ranks.shape == (N_QUERY, N_GALLERY) and ranks.dtype == np.int32
