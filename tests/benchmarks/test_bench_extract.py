"""Trunk extraction, images per second: each engine beside the extraction as it was before engines.

``before``: eager torch with JPEG decoding in the same thread as the trunk (hashbench up to 0ddec74);
the others go through :meth:`FeatureCache.trunk_maps` (decoding overlapped in a worker thread, maps
written to a fresh cache and checksummed), so they include every cost of a real first run. Images:
the first 2,048 Market-1501 gallery crops at 256 x 128 when Market is found (``$HASHBENCH_MARKET_ROOT``
or ``../shared``), else synthetic pedestrians at the same size. Run with
``pytest tests/benchmarks/test_bench_extract.py --benchmark-only``; ``extra_info`` holds images/s.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hashbench.backbones import to_tensor
from hashbench.backbones.mobilenetv2 import MobileNetV2
from hashbench.engines import make_engine
from hashbench.features import FeatureCache, batched, trunk_key
from tests.conftest import MARKET_DEFAULT, MARKET_ENV

N_IMAGES, INPUT_SIZE, BATCH = 2048, (256, 128), 64


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.fixture(scope="module")
def images():
    """(dataset, {"train": records}) for the benchmark's images."""
    root = Path(os.environ.get(MARKET_ENV) or MARKET_DEFAULT)
    if root.exists():
        from hashbench_datasets.market1501 import Market1501

        data = Market1501(root)
    else:
        from hashbench_datasets.synthetic import SyntheticPedestrians

        data = SyntheticPedestrians(n_test_ids=120)
    return data, {"train": data.splits()["gallery"][:N_IMAGES]}


@pytest.fixture(scope="module")
def mobilenet():
    return MobileNetV2().load_weights().eval()


def before(data, splits, mobilenet) -> None:
    """The extraction loop of hashbench before engines: decode, then the trunk, in one thread."""
    recs = splits["train"]
    trunk = mobilenet.trunk("block13").to(memory_format=torch.channels_last)
    arr = np.empty((len(recs), *mobilenet.trunk_shape("block13", INPUT_SIZE)), np.float16)
    row = 0
    with torch.inference_mode():
        for batch in batched(iter(data.open_images(recs)), BATCH):
            x = to_tensor(batch, INPUT_SIZE).to(memory_format=torch.channels_last)
            arr[row : row + len(batch)] = trunk(x).to(torch.float16).numpy()
            row += len(batch)


ENGINES = [
    "before",
    "torch",
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not _installed("onnxruntime", "onnx"), reason="")),
    pytest.param("openvino", marks=pytest.mark.skipif(not _installed("openvino"), reason="")),
]


@pytest.mark.parametrize("engine", ENGINES)
def test_extract(benchmark, images, mobilenet, engine):
    data, splits = images
    counter = itertools.count()
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-extract-"))

    def once():
        if engine == "before":
            return before(data, splits, mobilenet)
        cache = FeatureCache(tmp / str(next(counter)))  # a fresh cache: every round extracts
        key = trunk_key(data, mobilenet, "block13", INPUT_SIZE, engine)
        t0 = time.perf_counter()
        cache.trunk_maps(data, splits, mobilenet, "block13", INPUT_SIZE, "cpu", BATCH, False, key)
        return time.perf_counter() - t0

    benchmark.group = f"trunk extraction, {N_IMAGES} {data.name} images at {INPUT_SIZE[0]}x{INPUT_SIZE[1]}"
    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.min
    setup = 0.0
    if engine != "before":  # exporting / compiling the trunk: once per extraction, in the time above
        t0 = time.perf_counter()
        make_engine(engine, mobilenet.trunk("block13"), INPUT_SIZE, "cpu")
        setup = time.perf_counter() - t0
    benchmark.extra_info.update(
        engine=engine,
        images=N_IMAGES,
        images_per_s=round(N_IMAGES / seconds, 1),
        setup_s=round(setup, 2),
        threads=torch.get_num_threads(),
    )
