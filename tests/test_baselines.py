"""LSH and ITQ: shapes, determinism, ITQ's objective, and that learning helps."""

import numpy as np
import pytest

from hashbench.method import View
from hashbench_methods.itq import ITQ, itq_rotation
from hashbench_methods.lsh import LSH


def view(x, split="train"):
    n = len(x)
    return View(split, np.arange(n), np.ones(n, int), features=x)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    # anisotropic data: PCA matters
    return rng.standard_normal((400, 32)) * np.linspace(5, 0.1, 32)


@pytest.mark.parametrize("klass", [LSH, ITQ])
@pytest.mark.parametrize("bits", [8, 24, 64])
def test_codes_shape_values_determinism(klass, bits, data):
    a = klass(bits=bits, seed=3).fit(view(data)).encode(view(data, "query"))
    b = klass(bits=bits, seed=3).fit(view(data)).encode(view(data, "query"))
    c = klass(bits=bits, seed=4).fit(view(data)).encode(view(data, "query"))
    assert a.shape == (400, bits) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_itq_loss_decreases_and_rotation_is_orthogonal(data):
    v = data[:, :16] - data[:, :16].mean(0)
    r, losses = itq_rotation(v, 30, np.random.default_rng(0))
    assert np.allclose(r @ r.T, np.eye(16), atol=1e-8)
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < losses[0]


def test_itq_longer_than_dimension_concatenates_blocks(data):
    m = ITQ(bits=72, seed=0).fit(view(data))
    assert [r.shape[0] for _, r in m.blocks_] == [32, 32, 8]
    codes = m.encode(view(data))
    assert codes.shape == (400, 72)
    # blocks come from different random starts, so they are not copies of each other
    assert not np.array_equal(codes[:, :32], codes[:, 32:64])


def test_itq_quantises_better_than_random_rotations(data):
    # the learned rotation's loss ||B - VR||² is below that of the best of 20 random rotations
    v = data - data.mean(0)
    _, losses = itq_rotation(v, 50, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    random_losses = []
    for _ in range(20):
        r, _ = np.linalg.qr(rng.standard_normal((32, 32)))
        z = v @ r
        random_losses.append(((np.where(z >= 0, 1.0, -1.0) - z) ** 2).sum())
    assert losses[-1] < min(random_losses)


def test_get_params_lists_hyperparameters():
    assert ITQ(bits=16, seed=1, n_iter=7).get_params() == {
        "bits": 16,
        "seed": 1,
        "n_iter": 7,
        "max_train": 20000,
    }
    assert LSH(bits=8).get_params() == {"bits": 8, "seed": 0}
