"""``hashbench serve``: the time of one search by description (the request's work, images excluded) on a
real fitted cell, per decoder, and of one search by a query image (its stored code: a photo's search
less the photo's encoding). Each round is three queries.

Run with ``HASHBENCH_SERVE_RESULTS=DIR pytest tests/benchmarks/test_bench_serve.py --benchmark-only``,
``DIR`` a results folder holding a finished Market-1501 cell (``HASHBENCH_SERVE_CELL=method:bits``,
default ``deepssh:2048``); skipped without one. The target: under 50 ms per description query at 2048
bits on Market-1501's 19,732-image gallery, 2 CPU cores.
"""

from __future__ import annotations

import os

import pytest

DESCRIPTIONS = (
    "gender=female",
    "gender=male,upper_color=black,backpack=yes",
    "gender=female,age=young,hair=long,sleeve=short,lower_length=long,lower_type=dress,upper_color=white",
)


@pytest.fixture(scope="module")
def service():
    pytest.importorskip("starlette")
    root = os.environ.get("HASHBENCH_SERVE_RESULTS")
    if not root:
        pytest.skip("set HASHBENCH_SERVE_RESULTS to a results folder with a finished Market-1501 cell")
    from hashbench.serve import SearchService

    method, bits = os.environ.get("HASHBENCH_SERVE_CELL", "deepssh:2048").split(":")
    return SearchService("market1501", method, int(bits), results_dir=root)


@pytest.mark.parametrize("decoder", ["logistic", "naive-bayes", "deepssh-readout"])
def test_description_query(benchmark, service, decoder):
    if decoder not in service.decoders:
        pytest.skip(f"{service.cell.method} has no {decoder} decoder")
    benchmark.extra_info.update(
        gallery=len(service.gallery), bits=service.cell.bits, method=service.cell.method
    )

    def three():
        for text in DESCRIPTIONS:
            service.search(attributes=text, decoder=decoder, top=10)

    benchmark.pedantic(three, rounds=20, warmup_rounds=1)


def test_query_image_search(benchmark, service):
    """A photo's search without its encoding: a stored query code against the gallery (Hamming)."""
    if service.query_codes is None:
        pytest.skip("the cell stored no query codes")
    benchmark.extra_info.update(
        gallery=len(service.gallery), bits=service.cell.bits, method=service.cell.method
    )

    def three():
        for q in (0, 1000, 2000):
            service.search(query=q, top=10)

    benchmark.pedantic(three, rounds=20, warmup_rounds=1)
