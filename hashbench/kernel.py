"""RBF anchor map of the kernel hashing methods (KSH and SDH use it; a plugin may too).

``phi(x) = [exp(-||x - a_1||^2 / (2 sigma^2)), ..., exp(-||x - a_m||^2 / (2 sigma^2))]`` against ``m``
anchors ``a_j`` taken from the training features.

Choices (the same for both methods, each documented in the method's own docstring too):

- **anchors**: ``"random"`` -- ``m`` distinct training samples drawn uniformly (what both papers'
  released code does); ``"kmeans"`` -- the ``m`` centres of a seeded k-means (scikit-learn, one
  initialisation, at most 20,000 training samples).
- **width**: ``sigma`` is a number (used as is; SDH's release uses 0.4 on unit-normalised data) or a
  rule computed on the training split: ``"mean"`` -- sigma^2 = mean squared distance from the training
  samples to the anchors (KSH's released code: ``exp(-d^2 / (2 mean(d^2)))``); ``"nearest"`` -- sigma =
  mean distance from a training sample to its nearest anchor, an anchor not counting as its own
  neighbour (the rule left in SDH's release as an alternative). ``sigma_scale`` multiplies the resulting sigma (1 = the rule itself).
- **normalize**: L2-normalise features before the kernel (the adapted features are compared by cosine
  in the ``ide-float`` reference; SDH's release assumes normalised data). The same for anchors and
  for encoded images.
"""

from __future__ import annotations

import numpy as np

from hashbench.errors import HashbenchError

SIGMA_RULES = ("mean", "nearest")
ANCHOR_RULES = ("random", "kmeans")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def sq_distances(x: np.ndarray, anchors: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Squared Euclidean distances (N, m), float64, clipped at zero; computed in row chunks."""
    a_sq = (anchors**2).sum(1)
    out = np.empty((len(x), len(anchors)), dtype=np.float64)
    for s in range(0, len(x), chunk):
        xs = x[s : s + chunk]
        d = (xs**2).sum(1)[:, None] + a_sq[None, :] - 2.0 * (xs @ anchors.T)
        np.maximum(d, 0.0, out=out[s : s + chunk])
    return out


def check_kernel_params(n_anchors, sigma, sigma_scale, anchors) -> None:
    if int(n_anchors) < 1:
        raise HashbenchError(f"n_anchors must be >= 1, got {n_anchors!r}")
    if isinstance(sigma, str):
        if sigma not in SIGMA_RULES:
            raise HashbenchError(f"sigma must be a positive number or one of {SIGMA_RULES}, got {sigma!r}")
    elif not float(sigma) > 0:
        raise HashbenchError(f"sigma must be positive, got {sigma!r}")
    if not float(sigma_scale) > 0:
        raise HashbenchError(f"sigma_scale must be positive, got {sigma_scale!r}")
    if anchors not in ANCHOR_RULES:
        raise HashbenchError(f"anchors must be one of {ANCHOR_RULES}, got {anchors!r}")


class RBFAnchorMap:
    """Fitted RBF anchor map; ``fit`` picks anchors and the width, ``transform`` maps features."""

    def __init__(
        self,
        n_anchors: int,
        sigma: float | str = "mean",
        sigma_scale: float = 1.0,
        anchors: str = "random",
        normalize: bool = True,
    ) -> None:
        check_kernel_params(n_anchors, sigma, sigma_scale, anchors)
        self.n_anchors = int(n_anchors)
        self.sigma = sigma
        self.sigma_scale = float(sigma_scale)
        self.anchors = anchors
        self.normalize = bool(normalize)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return l2_normalize(x) if self.normalize else x

    def fit_transform(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Choose anchors and width on ``x`` (the training features); return phi(x), (N, m) float64."""
        x = self._prepare(x)
        m = min(self.n_anchors, len(x))
        if self.anchors == "random":
            self.anchors_ = x[np.sort(rng.choice(len(x), m, replace=False))].copy()
        else:
            from sklearn.cluster import KMeans

            sub = x if len(x) <= 20000 else x[np.sort(rng.choice(len(x), 20000, replace=False))]
            km = KMeans(m, n_init=1, max_iter=50, random_state=int(rng.integers(2**31 - 1)))
            self.anchors_ = km.fit(sub).cluster_centers_.astype(np.float64)
        d2 = sq_distances(x, self.anchors_)
        if isinstance(self.sigma, str):
            if self.sigma == "mean":
                sigma = float(np.sqrt(d2.mean()))
            else:  # "nearest", not counting an anchor as its own neighbour
                sigma = float(np.sqrt(np.where(d2 > 0, d2, np.inf).min(axis=1)).mean())
        else:
            sigma = float(self.sigma)
        self.sigma_ = sigma * self.sigma_scale
        if not self.sigma_ > 0:
            raise HashbenchError("RBF width is zero: the training features are all identical")
        return self._kernel(d2)

    def _kernel(self, d2: np.ndarray) -> np.ndarray:
        d2 *= -1.0 / (2.0 * self.sigma_**2)
        return np.exp(d2, out=d2)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self._kernel(sq_distances(self._prepare(x), self.anchors_))
