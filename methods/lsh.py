"""LSH: random-hyperplane locality-sensitive hashing (Charikar, STOC 2002).

References
----------
M. S. Charikar, "Similarity estimation techniques from rounding algorithms", STOC 2002.

Choices: features are centred on the training mean (hyperplanes through the data's centre, otherwise
most bits are constant); hyperplane normals are i.i.d. standard Gaussian; bit = 1 where the projection
is positive. Unsupervised and data-independent apart from the mean.
"""

from __future__ import annotations

import numpy as np

from hashbench.method import HashMethod, View, sign_to_bits


class LSH(HashMethod):
    name = "lsh"
    description = "random-hyperplane LSH (Charikar 2002) on centred adapted features; unsupervised baseline"
    consumes = frozenset({"features"})

    def __init__(self, bits: int, seed: int = 0) -> None:
        super().__init__(bits, seed)

    def fit(self, train: View, context=None) -> LSH:
        x = train.require("features").astype(np.float64)
        rng = np.random.default_rng(self.seed)
        self.mean_ = x.mean(axis=0)
        self.planes_ = rng.standard_normal((x.shape[1], self.bits))
        return self

    def encode(self, view: View) -> np.ndarray:
        x = view.require("features").astype(np.float64) - self.mean_
        return sign_to_bits(x @ self.planes_)
