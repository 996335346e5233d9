"""The Market-1501 evaluation protocol: ranking by distance, mAP and CMC.

Rankings are (n_query, n_gallery) arrays of gallery indices, nearest first. Ties are always broken by
gallery order (the lower gallery index ranks first), so that every search backend yields the same
ranking and therefore the same scores.

For each query, gallery images of the same person seen by the same camera are *junk* (they are removed
from that query's ranking, as are all gallery images with pid -1); distractors (pid 0) stay in the
ranking as negatives. Queries without any valid match in the gallery are left out of mAP and CMC.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

JUNK_PID = -1
REPORTED_RANKS = (1, 5, 10, 20)


@dataclass
class Evaluation:
    """Scores of one ranking of a query set against a gallery.

    Attributes
    ----------
    mAP : float
        Mean average precision over the valid queries, in 0..1 (NaN when no query is valid).
    cmc : np.ndarray
        (max_rank,) float, ``cmc[k]`` is the fraction of valid queries whose first valid match is at
        rank ``<= k + 1`` (all NaN when no query is valid).
    ap : np.ndarray
        (n_query,) float, the average precision of each query; NaN for queries without a valid match.
    n_valid : int
        Number of queries with at least one valid match (those that mAP and CMC average over).
    """

    mAP: float
    cmc: np.ndarray
    ap: np.ndarray
    n_valid: int

    def rank(self, k: int) -> float:
        """Rank-``k`` accuracy (CMC at ``k``, 1-based), in 0..1."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank {k} is outside the evaluated ranks 1..{len(self.cmc)}")
        return float(self.cmc[k - 1])

    def to_dict(self) -> dict[str, float]:
        """``map``, ``rank1``, ``rank5``, ``rank10`` and ``rank20`` as percentages (NaN past max_rank)."""
        out = {"map": 100.0 * float(self.mAP)}
        for k in REPORTED_RANKS:
            out[f"rank{k}"] = 100.0 * float(self.cmc[k - 1]) if k <= len(self.cmc) else float("nan")
        return out


def default_threads() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_chunks(n: int, chunk: int, work: Callable[[int, int], None], threads: int | None = None) -> None:
    """Call ``work(start, stop)`` on consecutive row ranges of ``0..n``, on a pool of threads.

    ``work`` must write its results in place (numpy releases the GIL in the heavy kernels, so the
    threads run in parallel). With one thread or one chunk, everything runs in the calling thread.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    threads = default_threads() if threads is None else threads
    if threads <= 1 or len(bounds) <= 1:
        for s, e in bounds:
            work(s, e)
        return
    with ThreadPoolExecutor(min(threads, len(bounds))) as pool:
        for f in [pool.submit(work, s, e) for s, e in bounds]:
            f.result()


def argsort_block(dist: np.ndarray, k: int | None = None) -> np.ndarray:
    """Stable per-row argsort of a 2-D block, first ``k`` columns, as int32 (single-threaded).

    Integer distances that fit in 16 bits are sorted as uint16 (numpy's stable sort is then a radix
    sort); other integers use numpy's stable sort. Floats use the faster unstable sort, after which the
    indices within each run of equal values (NaNs count as equal) are put back in ascending order.
    """
    k = dist.shape[1] if k is None else k
    if dist.dtype == bool:
        dist = dist.view(np.uint8)
    if np.issubdtype(dist.dtype, np.integer):
        if (
            dist.dtype.itemsize > 2
            and dist.size
            and dist.min() >= 0
            and dist.max() <= np.iinfo(np.uint16).max
        ):
            dist = dist.astype(np.uint16)
        order = np.argsort(dist, axis=1, kind="stable")
    else:
        order = np.argsort(dist, axis=1)
        _restore_gallery_order(dist, order)
    return order[:, :k].astype(np.int32)


def _restore_gallery_order(dist: np.ndarray, order: np.ndarray) -> None:
    """Make an unstable per-row argsort stable, in place: sort indices within each run of equal values."""
    if dist.shape[1] < 2:
        return
    v = np.take_along_axis(dist, order, axis=1)
    a, b = v[:, 1:], v[:, :-1]
    eq = (a == b) | (np.isnan(a) & np.isnan(b))  # eq[r, j]: sorted items j and j + 1 of row r tie
    if not eq.any():
        return
    in_run = np.zeros(v.shape, dtype=bool)
    in_run[:, 1:] = eq
    in_run[:, :-1] |= eq
    rows, cols = np.nonzero(in_run)  # row-major, so each run's positions are consecutive
    run_start = np.ones(len(rows), dtype=bool)
    inner = cols > 0
    run_start[inner] = ~eq[rows[inner], cols[inner] - 1]
    run = np.cumsum(run_start)
    idx = order[rows, cols]
    order[rows, cols] = idx[np.lexsort((idx, run))]


def rank_by_distance(
    dist: np.ndarray, k: int | None = None, chunk: int = 256, threads: int | None = None
) -> np.ndarray:
    """Rank the gallery for each query by increasing distance, ties by ascending gallery index.

    Parameters
    ----------
    dist : np.ndarray
        (n_query, n_gallery) distances, integer or float. Hamming distances should be integers:
        they are sorted as uint16, which is much faster.
    k : int, optional
        Keep only the ``k`` nearest (default: the whole gallery).
    chunk : int
        Rows sorted per task.
    threads : int, optional
        Worker threads (default: all available cores).

    Returns
    -------
    np.ndarray
        (n_query, k or n_gallery) int32 gallery indices, nearest first.
    """
    dist = np.asarray(dist)
    if dist.ndim != 2:
        raise ValueError(f"distances must be a 2-D (n_query, n_gallery) array, got shape {dist.shape}")
    k = _check_k(k, dist.shape[1])
    out = np.empty((dist.shape[0], k), dtype=np.int32)

    def work(s: int, e: int) -> None:
        out[s:e] = argsort_block(dist[s:e], k)

    run_chunks(dist.shape[0], chunk, work, threads)
    return out


def _check_k(k: int | None, n_gallery: int) -> int:
    if k is None:
        return n_gallery
    if not 1 <= k <= n_gallery:
        raise ValueError(f"k must be in 1..{n_gallery} (the gallery size), got {k}")
    return int(k)


def _labels(name: str, a: np.ndarray, n: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} entries, expected {n}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def evaluate_rankings(
    indices: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    chunk: int = 64,
) -> Evaluation:
    """Score full-gallery rankings with the Market-1501 protocol (mAP and CMC).

    Parameters
    ----------
    indices : np.ndarray
        (n_query, n_gallery) integer gallery indices, each row the whole gallery, nearest first
        (as returned by :func:`rank_by_distance` or :func:`hashbench.search.hamming_rank`).
    q_pids, q_camids : np.ndarray
        (n_query,) person and camera ids of the queries.
    g_pids, g_camids : np.ndarray
        (n_gallery,) person and camera ids of the gallery; pid -1 is junk, pid 0 a distractor.
    max_rank : int
        Length of the CMC curve.
    chunk : int
        Queries processed at once (bounds memory to a few ``chunk x n_gallery`` arrays).

    Returns
    -------
    Evaluation
        AP = mean over a query's positives of the precision at each positive's rank, ranks counted
        after junk removal; ``cmc[k] = 1`` for a query whose first valid match is at rank ``<= k + 1``.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"indices must be a 2-D (n_query, n_gallery) array, got shape {indices.shape}")
    nq, ng = indices.shape
    q_pids = _labels("q_pids", q_pids, nq)
    q_camids = _labels("q_camids", q_camids, nq)
    g_pids = _labels("g_pids", g_pids)
    g_camids = _labels("g_camids", g_camids, len(g_pids))
    if ng != len(g_pids):
        raise ValueError(
            f"indices rank {ng} gallery items per query but the gallery has {len(g_pids)}: "
            "evaluation needs the full gallery ranking"
        )
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= ng):
        raise ValueError(f"indices must lie in 0..{ng - 1}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)

    ap = np.full(nq, np.nan)
    first = np.zeros(nq, dtype=np.int64)  # rank (1-based, after junk removal) of the first match; 0 = none
    g_junk = g_pids == JUNK_PID
    for s in range(0, nq, chunk):
        e = min(s + chunk, nq)
        same_pid = g_pids[None, :] == q_pids[s:e, None]
        junk = (same_pid & (g_camids[None, :] == q_camids[s:e, None])) | g_junk[None, :]
        # label of each gallery item for each query, in gallery order: 1 match, 0 negative, -1 junk
        label = same_pid.view(np.int8)
        label[junk] = -1
        ranked = np.take_along_axis(label, indices[s:e], axis=1)
        rank_after_junk = np.cumsum(ranked >= 0, axis=1, dtype=np.int32)
        rows, cols = np.nonzero(ranked == 1)  # row-major: each row's positives in ranked order
        n_pos = np.bincount(rows, minlength=e - s)
        start = np.cumsum(n_pos) - n_pos
        hit_rank = rank_after_junk[rows, cols]
        nth_hit = np.arange(len(rows)) - start[rows] + 1
        precision = nth_hit / hit_rank
        valid = n_pos > 0
        ap[s:e][valid] = np.bincount(rows, weights=precision, minlength=e - s)[valid] / n_pos[valid]
        first[s:e][valid] = hit_rank[start[valid]]

    valid = first > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        return Evaluation(mAP=float("nan"), cmc=np.full(max_rank, np.nan), ap=ap, n_valid=0)
    hist = np.bincount(np.minimum(first[valid], max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hist[1 : max_rank + 1]) / n_valid
    return Evaluation(mAP=float(ap[valid].mean()), cmc=cmc.astype(np.float64), ap=ap, n_valid=n_valid)
