"""SDH-CNN: codes, determinism, the monotone objective, DCC against the plain bit loop, and that it beats LSH."""

import numpy as np
import pytest

from hashbench.errors import HashbenchError
from hashbench_methods.lsh import LSH
from hashbench_methods.sdh import SDH, dcc

from .feature_checks import (
    check_codes_separate_identities,
    check_codes_shape_values_determinism,
    feature_view,
    six_blobs,
)

SMALL = {"n_anchors": 60}


@pytest.fixture(scope="module")
def blobs():
    return six_blobs()


@pytest.fixture(scope="module")
def sdh64(synthetic_bench):
    return SDH(bits=64, seed=0).fit(synthetic_bench.view("train"))


@pytest.mark.parametrize("bits", [8, 24])
def test_codes_shape_values_determinism(bits, blobs):
    check_codes_shape_values_determinism(SDH, bits, SMALL, blobs)


def test_codes_separate_identities(blobs):
    check_codes_separate_identities(SDH, SMALL, blobs)


def _naive_dcc(b, q, w, sweeps):
    """The paper's bit loop: b_l = sgn(q_l - B' W' w_l), bits in order, until nothing changes."""
    b = b.copy()
    for _ in range(sweeps):
        before = b.copy()
        for k in range(b.shape[1]):
            u = q[:, k] - np.delete(b, k, 1) @ np.delete(w, k, 0) @ w[k]
            b[:, k] = np.where(u > 0, 1.0, np.where(u < 0, -1.0, b[:, k]))
        if np.array_equal(before, b):
            break
    return b


@pytest.mark.parametrize("block", [1, 5, 128])
def test_blocked_dcc_is_the_sequential_bit_loop(block):
    rng = np.random.default_rng(0)
    n, nbits, c = 200, 23, 7
    w, q = rng.standard_normal((nbits, c)), rng.standard_normal((n, nbits))
    b0 = np.where(rng.standard_normal((n, nbits)) > 0, 1.0, -1.0)
    bt, sweeps, flips = dcc(b0.T.copy(), q.T.copy(), w, 10, block=block)
    b = bt.T
    assert np.array_equal(b, _naive_dcc(b0, q, w, 10))
    assert flips > 0 and sweeps >= 2

    def loss(b):
        return np.sum((b @ w) ** 2) - 2 * np.sum(b * q)

    assert loss(b) < loss(b0)


def test_objective_does_not_increase(sdh64, blobs):
    obj = np.array(sdh64.objective_)
    assert len(obj) == 1 + sdh64.n_iter
    assert np.all(np.diff(obj) <= 1e-9 * np.abs(obj[:-1]))
    assert obj[-1] < 0.5 * obj[0]
    x, pids = blobs
    small = np.array(SDH(bits=24, seed=1, nu=1e-2, **SMALL).fit(feature_view(x, pids)).objective_)
    assert np.all(np.diff(small) <= 1e-9 * np.abs(small[:-1]))


def test_beats_lsh_on_synthetic_at_64_bits(synthetic_bench, sdh64):
    train = synthetic_bench.view("train")
    lsh = synthetic_bench.score(LSH(bits=64, seed=0).fit(train))
    sdh = synthetic_bench.score(sdh64)
    assert sdh > lsh + 1, (sdh, lsh)


def test_hyperparameters_and_bad_values(blobs):
    assert SDH(bits=8).get_params() == {
        "bits": 8,
        "seed": 0,
        "n_anchors": 1000,
        "sigma": "mean",
        "sigma_scale": 1.0,
        "anchors": "random",
        "normalize": True,
        "lam": 1.0,
        "nu": 1e-5,
        "delta": 1e-3,
        "n_iter": 5,
        "dcc_sweeps": 10,
        "max_train": None,
    }
    x, pids = blobs
    with pytest.raises(HashbenchError, match="nu"):
        SDH(bits=8, nu=-1, **SMALL).fit(feature_view(x, pids))
    with pytest.raises(HashbenchError, match="sigma"):
        SDH(bits=8, sigma=0, **SMALL).fit(feature_view(x, pids))
