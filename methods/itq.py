"""ITQ: iterative quantization (Gong & Lazebnik, CVPR 2011; Gong et al., TPAMI 2013).

References
----------
Y. Gong, S. Lazebnik, A. Gordo, F. Perronnin, "Iterative Quantization: A Procrustean Approach to
Learning Binary Codes for Large-Scale Image Retrieval", TPAMI 35(12), 2013.

Algorithm: centre, project on the top-``c`` principal directions (V = X W), then alternate
B = sign(V R) and the orthogonal Procrustes update R = argmin ||B - V R||_F (from the SVD of VᵀB),
``n_iter`` = 50 as in the paper, R initialised as a random orthogonal matrix.

Choice the paper leaves open: ITQ needs c <= d (bits at most the feature dimension). For longer
codes (2048 bits on 1280-d features) the code is a concatenation of blocks: block k learns its own
rotation, from its own random start, on the top min(d, remaining bits) principal directions. ITQ's
objective has many local optima, so the blocks differ; the first block is exactly ITQ.
"""

from __future__ import annotations

import numpy as np

from hashbench.method import HashMethod, View, sign_to_bits


def itq_rotation(v: np.ndarray, n_iter: int, rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Learn the rotation of PCA-projected data ``v`` (N, c); returns R and the quantisation loss per step."""
    c = v.shape[1]
    r, _ = np.linalg.qr(rng.standard_normal((c, c)))
    losses = []
    for _ in range(n_iter):
        z = v @ r
        b = np.where(z >= 0, 1.0, -1.0)
        losses.append(float(((b - z) ** 2).sum()))
        u, _, vt = np.linalg.svd(v.T @ b)  # R = argmin ||B - V R|| over orthogonal R
        r = u @ vt
    return r, losses


class ITQ(HashMethod):
    name = "itq"
    description = "iterative quantization (Gong & Lazebnik 2011): PCA + learned rotation; unsupervised"
    consumes = frozenset({"features"})

    def __init__(self, bits: int, seed: int = 0, n_iter: int = 50, max_train: int = 20000) -> None:
        super().__init__(bits, seed)
        self.n_iter = n_iter
        self.max_train = max_train

    def fit(self, train: View, context=None) -> ITQ:
        x = train.require("features").astype(np.float64)
        rng = np.random.default_rng(self.seed)
        if len(x) > self.max_train:
            x = x[np.sort(rng.choice(len(x), self.max_train, replace=False))]
        self.mean_ = x.mean(axis=0)
        x = x - self.mean_
        # principal directions, by decreasing variance
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        d = vt.shape[0]
        self.blocks_: list[tuple[np.ndarray, np.ndarray]] = []  # (projection W, rotation R)
        self.loss_: list[list[float]] = []
        remaining = self.bits
        while remaining > 0:
            c = min(d, remaining)
            w = vt[:c].T
            r, losses = itq_rotation(x @ w, self.n_iter, rng)
            self.blocks_.append((w, r))
            self.loss_.append(losses)
            remaining -= c
        return self

    def encode(self, view: View) -> np.ndarray:
        x = view.require("features").astype(np.float64) - self.mean_
        return np.concatenate([sign_to_bits(x @ w @ r) for w, r in self.blocks_], axis=1)
