"""KSH-CNN: codes, determinism, the greedy per-bit objective, the vectorised solver, and that it beats LSH."""

import numpy as np
import pytest
from scipy import linalg

from hashbench.errors import HashbenchError
from hashbench_methods.ksh import KSH, ksh_greedy
from hashbench_methods.lsh import LSH

from .feature_checks import (
    check_codes_separate_identities,
    check_codes_shape_values_determinism,
    feature_view,
    six_blobs,
)

SMALL = {"n_anchors": 40, "n_labeled": 150, "max_iter": 20}


@pytest.fixture(scope="module")
def blobs():
    return six_blobs()


@pytest.fixture(scope="module")
def ksh64(synthetic_bench):
    return KSH(bits=64, seed=0).fit(synthetic_bench.view("train"))


@pytest.mark.parametrize("bits", [8, 24])
def test_codes_shape_values_determinism(bits, blobs):
    check_codes_shape_values_determinism(KSH, bits, SMALL, blobs)


def test_codes_separate_identities(blobs):
    check_codes_separate_identities(KSH, SMALL, blobs)


def _naive_spectral_greedy(kl, labels, r):
    """The release's loop without the descent: explicit R, full generalised eigenproblem."""
    n_lab = len(kl)
    s = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    big_r = r * s
    rm = kl.T @ kl
    rm[np.diag_indices(len(rm))] += 1e-10 * np.trace(rm) / len(rm) + 1e-12
    out, objective = [], [np.sum(big_r**2)]
    for _ in range(r):
        a = linalg.eigh(kl.T @ big_r @ kl, rm)[1][:, -1]
        a *= np.sqrt(n_lab / (a @ rm @ a))
        b = np.where(kl @ a > 0, 1.0, -1.0)
        big_r = big_r - np.outer(b, b)
        out.append(a)
        objective.append(np.sum(big_r**2))
    return np.array(out).T, objective


def test_vectorised_greedy_matches_the_release_loop(blobs):
    x, pids = blobs
    rng = np.random.default_rng(1)
    kl = np.exp(-((x[:120, None, :] - x[None, rng.choice(240, 30), :]) ** 2).sum(-1) / 60.0)
    kl -= kl.mean(0)
    labels = pids[:120]
    proj, stats = ksh_greedy(kl, labels, 6, max_iter=0)
    ref, ref_objective = _naive_spectral_greedy(kl, labels, 6)
    for k in range(6):  # the same projections up to sign (an eigenvector's sign is arbitrary)
        sign = np.sign(proj[:, k] @ ref[:, k])
        np.testing.assert_allclose(proj[:, k] * sign, ref[:, k], rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(stats["objective"], ref_objective, rtol=1e-9)


def test_per_bit_objective_decreases(ksh64):
    m = ksh64
    assert len(m.objective_) == 65 and len(m.bit_objective_) == 64
    # the descent lowers the smoothed per-bit objective from the spectral start ...
    assert all(end <= start for start, end in m.smoothed_)
    # ... the bit kept is never worse than the spectral start, and for some bits better
    kept_vs_start = np.array([(kept, start) for start, kept in m.bit_objective_])
    assert (kept_vs_start[:, 0] <= kept_vs_start[:, 1]).all()
    assert (kept_vs_start[:, 0] < kept_vs_start[:, 1]).sum() >= 8
    # ... and every greedy bit lowers ||H H^T - r S||^2 on the synthetic set
    assert np.all(np.diff(m.objective_) < 0)


def test_beats_lsh_on_synthetic_at_64_bits(synthetic_bench, ksh64):
    train = synthetic_bench.view("train")
    lsh = synthetic_bench.score(LSH(bits=64, seed=0).fit(train))
    ksh = synthetic_bench.score(ksh64)
    assert ksh > lsh + 1, (ksh, lsh)


def test_hyperparameters_and_bad_values(blobs):
    params = KSH(bits=8).get_params()
    assert params == {
        "bits": 8,
        "seed": 0,
        "n_anchors": 500,
        "n_labeled": 3000,
        "sigma": "mean",
        "sigma_scale": 1.0,
        "anchors": "random",
        "normalize": True,
        "max_iter": 100,
        "tol": 1e-2,
    }
    x, pids = blobs
    with pytest.raises(HashbenchError, match="sigma"):
        KSH(bits=8, sigma="widest", **SMALL).fit(feature_view(x, pids))
    with pytest.raises(HashbenchError, match="anchors"):
        KSH(bits=8, anchors="grid", **SMALL).fit(feature_view(x, pids))
