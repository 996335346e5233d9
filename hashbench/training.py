"""Generic training helpers shared by the IDE stage (:mod:`hashbench.ide`) and the deep methods
(:mod:`hashbench.deep`): identity labels, the learning-rate schedule, shuffled batches, map batches.

Public: a third-party method may use them too. Each keeps its exact sequence of random draws, so a
training run that uses them is reproducible for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch


def label_index(pids: np.ndarray) -> np.ndarray:
    """Map person ids to 0..n_ids-1 (sorted order)."""
    _, inverse = np.unique(pids, return_inverse=True)
    return inverse.astype(np.int64)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up then cosine decay to zero."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def iterate_batches(
    n: int, batch_size: int, rng: np.random.Generator, drop_last: bool = True
) -> Iterator[np.ndarray]:
    """One epoch of uniformly shuffled batches of ``range(n)`` (one ``rng.permutation``); with
    ``drop_last`` the last incomplete batch is dropped (unless ``n < batch_size``)."""
    order = rng.permutation(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield np.sort(order[i : i + batch_size])  # sorted: faster reads from memory-mapped maps


def maps_to_tensor(
    maps: np.ndarray, index: np.ndarray, device, flip: np.ndarray | None = None
) -> torch.Tensor:
    """Rows ``index`` of ``maps`` (e.g. float16, memory-mapped) as a float32 tensor on ``device``; the
    rows where ``flip`` is true are flipped horizontally (last axis)."""
    x = torch.from_numpy(np.ascontiguousarray(maps[index])).to(device=device, dtype=torch.float32)
    if flip is not None and flip.any():
        f = torch.from_numpy(flip).to(device)
        x[f] = x[f].flip(-1)
    return x
