"""Checks shared by the tests of the supervised shallow methods (KSH, SDH): data and assertions."""

from __future__ import annotations

import numpy as np

from hashbench.method import View


def feature_view(x, pids, split="train") -> View:
    return View(split, np.asarray(pids), np.ones(len(x), int), features=x)


def six_blobs() -> tuple[np.ndarray, np.ndarray]:
    """Six well-separated identities in 16-d, 40 images each (seeded)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16)) * 3
    pids = np.repeat(np.arange(6), 40)
    return centres[pids] + rng.standard_normal((len(pids), 16)), pids


def check_codes_shape_values_determinism(klass, bits: int, params: dict, blobs) -> None:
    """0/1 uint8 codes of the right shape, identical for one seed, different for another."""
    x, pids = blobs

    def codes(seed):
        return (
            klass(bits=bits, seed=seed, **params)
            .fit(feature_view(x, pids))
            .encode(feature_view(x, pids, "query"))
        )

    a, b, c = codes(3), codes(3), codes(4)
    assert a.shape == (len(x), bits) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def check_codes_separate_identities(klass, params: dict, blobs) -> None:
    """At 16 bits, same-identity codes are far closer than different-identity ones."""
    x, pids = blobs
    codes = (
        klass(bits=16, seed=0, **params).fit(feature_view(x, pids)).encode(feature_view(x, pids)).astype(int)
    )
    ham = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    same = pids[:, None] == pids[None, :]
    assert ham[same].mean() < 0.25 * ham[~same].mean()
