"""One training epoch of each deep method on a fixed synthetic batch of Market-1501-shaped trunk maps.

256 random float16 block-13 maps of shape (96, 16, 8) (a 256 x 128 input), 64 identities x 4 images,
CPU: 4 SGD steps of 64 images (DBH: shuffled batches; PDH, DeepSSH: 16 ids x 4 images; DeepSSH also gets
random identity-level attribute codes of a Market-shaped schema: 9 binary groups, one of 4 values, two
colour groups of 8 and 9). The Market-1501 epoch
(12,936 training maps) costs about 50.5 x the time of one round. Run with
``pytest tests/benchmarks --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest

from hashbench.backbones.mobilenetv2 import MobileNetV2
from hashbench.data import AttributeGroup, AttributeSchema
from hashbench.deep import PHASES
from hashbench.method import Context, View
from hashbench_methods.dbh import DBH
from hashbench_methods.deepssh import DeepSSH
from hashbench_methods.pdh import PDH

N_IDS, PER_ID, SHAPE, BITS = 64, 4, (96, 16, 8), 2048
MARKET_TRAIN = 12936
GROUPS = {**{f"binary{i}": 2 for i in range(9)}, "age": 4, "upper_color": 8, "lower_color": 9}
SCHEMA = AttributeSchema(
    tuple(AttributeGroup(n, tuple(f"v{i}" for i in range(k)), (n,)) for n, k in GROUPS.items())
)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(N_IDS), PER_ID)
    maps = (np.abs(rng.standard_normal((len(pids), *SHAPE))) * 0.5).astype(np.float16)
    per_id = np.stack([rng.integers(-1 if k == 2 else 0, k, N_IDS) for k in GROUPS.values()], 1)
    attributes = per_id[pids].astype(np.int16)  # identity-level; binary groups a third unknown (-1)
    view = View("train", pids, np.ones_like(pids), maps=maps, attributes=attributes)
    context = Context(device="cpu", schema=SCHEMA, backbone=MobileNetV2(weights="none"), cut="block13")
    return view, context


METHODS = {
    "dbh": lambda: DBH(bits=BITS, epochs=1),
    "pdh": lambda: PDH(bits=BITS, epochs=1),  # pool mode
    "pdh-crop": lambda: PDH(bits=BITS, epochs=1, part_mode="crop"),
    "deepssh": lambda: DeepSSH(bits=BITS, epochs=1),
    "deepssh-128": lambda: DeepSSH(bits=128, epochs=1),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_one_training_epoch(benchmark, batch, name):
    view, context = batch
    benchmark.group = f"deep hashing: one epoch, {len(view)} maps {SHAPE}, {BITS} bits, CPU"
    benchmark.extra_info.update(
        n_images=len(view), map_shape=SHAPE, bits=BITS, market_epoch_factor=MARKET_TRAIN / len(view)
    )
    method = benchmark.pedantic(
        lambda: METHODS[name]().fit(view, context), rounds=3, iterations=1, warmup_rounds=1
    )
    assert len(method.history_) == 1 and np.isfinite(method.history_[0]["loss"])
    epoch = method.history_[0]  # the last round's split of its epoch: data, forward, backward, step
    benchmark.extra_info.update({k: round(epoch[k], 3) for k in PHASES})
    assert sum(epoch[k] for k in PHASES) <= epoch["seconds"]
