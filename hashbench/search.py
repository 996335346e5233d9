"""Binary codes: packing, Hamming distances and Hamming ranking; and the real-valued reference ranking.

Methods return codes as (N, bits) uint8 0/1 arrays; they are packed 8 bits a byte (``np.packbits``)
for storage and search. Every ranking here breaks ties by gallery order (lower gallery index first),
so the numpy and faiss backends return identical rankings, and so do repeated runs.

Both Hamming backends compute the full (query chunk x gallery) distance block and rank it with the same
stable uint16 radix argsort, on a pool of threads; they differ only in the distance kernel, so their
rankings are identical by construction. The faiss kernel is ``faiss.hammings`` (codes zero-padded to
whole 64-bit words). ``faiss.IndexBinaryFlat.search`` with ``k`` = the gallery size was measured 2 to
25 times slower, with its heap or its counting variant (whose memory, bits x gallery x 8 bytes per
query, also rules it out for long codes), and no faster even for ``k`` = 100; nor is its order of
equal distances part of faiss's contract.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType

import numpy as np

from .errors import HashbenchError
from .metrics import _check_k, argsort_block, run_chunks

BACKENDS = ("auto", "faiss", "numpy")
METRICS = ("euclidean", "cosine")

# numpy kernel: tiles of (query rows x gallery columns) small enough for the XOR temporaries to stay in cache
_TILE_ROWS = 16
_TILE_COLS = 8192
_MAX_BITS = int(np.iinfo(np.uint16).max)
# the longest code length there is: distances are counted in uint16 (at most 65535 differing bits) and
# codes are packed in whole bytes, so 65528 bits (8189 bytes); the CLI and the runner refuse longer ones
MAX_BITS = _MAX_BITS - _MAX_BITS % 8


def bytes_per_code(bits: int) -> int:
    """Bytes of one packed code of ``bits`` bits (``bits`` must be a positive multiple of 8)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
        raise HashbenchError(
            f"code length {bits} bits is not a positive multiple of 8; codes are packed in bytes"
        )
    if bits > MAX_BITS:
        raise HashbenchError(f"code length {bits} bits is over the supported {MAX_BITS}")
    return int(bits) // 8


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Pack (N, bits) 0/1 codes into (N, bits // 8) uint8 (``np.packbits``, big-endian bit order).

    Raises
    ------
    HashbenchError
        If ``bits`` is not a multiple of 8.
    ValueError
        If ``codes`` is not a 2-D array of 0/1 (or bool) values.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D (N, bits) array, got shape {codes.shape}")
    bytes_per_code(codes.shape[1])
    if codes.dtype != bool:
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be 0/1 integers or bool, got dtype {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() > 1):
            raise ValueError("codes must hold only 0 and 1")
    return np.packbits(codes, axis=1)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: (N, bits // 8) uint8 to (N, bits) uint8 0/1."""
    packed = _packed("packed", packed)
    if packed.shape[1] != bytes_per_code(bits):
        raise ValueError(f"packed codes have {packed.shape[1]} bytes, {bits} bits need {bits // 8}")
    return np.unpackbits(packed, axis=1, count=bits)


def _packed(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype != np.uint8:
        raise ValueError(f"{name} must be a 2-D uint8 array of packed codes, got {a.dtype} {a.shape}")
    return a


def _check_pair(q_packed: np.ndarray, g_packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = _packed("query codes", q_packed)
    g = _packed("gallery codes", g_packed)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query codes have {q.shape[1]} bytes but gallery codes {g.shape[1]}")
    bytes_per_code(8 * q.shape[1])
    return q, g


def _words(packed: np.ndarray) -> np.ndarray:
    """Codes zero-padded to whole 64-bit words (padding adds nothing to a Hamming distance), (N, W) uint64."""
    pad = -packed.shape[1] % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _numpy_kernel(qw: np.ndarray, gw_t: np.ndarray, out: np.ndarray) -> None:
    """Hamming distances of query words (n, W) to gallery words (W, ng), into out (n, ng) uint16."""
    n, ng = out.shape
    if n == 0 or ng == 0:
        return
    rows, cols = min(_TILE_ROWS, n), min(_TILE_COLS, ng)
    x = np.empty((rows, cols), dtype=np.uint64)
    c = np.empty((rows, cols), dtype=np.uint8)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        for c0 in range(0, ng, cols):
            c1 = min(c0 + cols, ng)
            xx, cc, acc = x[: r1 - r0, : c1 - c0], c[: r1 - r0, : c1 - c0], out[r0:r1, c0:c1]
            acc[...] = 0
            for w in range(qw.shape[1]):
                np.bitwise_xor(qw[r0:r1, w, None], gw_t[w, None, c0:c1], out=xx)
                np.bitwise_count(xx, out=cc)
                np.add(acc, cc, out=acc)


@functools.cache
def _faiss() -> ModuleType | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _backend(name: str) -> str:
    if name not in BACKENDS:
        raise HashbenchError(f"unknown search backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name == "auto":
        return "faiss" if _faiss() is not None else "numpy"
    if name == "faiss" and _faiss() is None:
        raise HashbenchError("search backend 'faiss' needs the faiss-cpu package; use backend 'numpy'")
    return name


def _distance_block(backend: str, q: np.ndarray, g: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """A function ``block(s, e) -> (e - s, ng)`` distances of queries ``s:e`` (uint16 or int32)."""
    qw, gw = _words(q), _words(g)
    ng = len(g)
    if backend == "faiss":
        faiss = _faiss()
        qb, gb = qw.view(np.uint8), gw.view(np.uint8)
        nbytes = qb.shape[1]

        def block(s: int, e: int) -> np.ndarray:
            out = np.empty((e - s, ng), dtype=np.int32)
            if e > s and ng:
                faiss.hammings(
                    faiss.swig_ptr(qb[s:e]), faiss.swig_ptr(gb), e - s, ng, nbytes, faiss.swig_ptr(out)
                )
            return out

        return block
    gw_t = np.ascontiguousarray(gw.T)

    def block(s: int, e: int) -> np.ndarray:
        out = np.empty((e - s, ng), dtype=np.uint16)
        _numpy_kernel(qw[s:e], gw_t, out)
        return out

    return block


def hamming_distances(
    q_packed: np.ndarray, g_packed: np.ndarray, chunk: int = 128, threads: int | None = None
) -> np.ndarray:
    """Hamming distances between packed codes, computed in numpy (XOR + ``np.bitwise_count``).

    Parameters
    ----------
    q_packed, g_packed : np.ndarray
        (nq, B) and (ng, B) uint8 packed codes (:func:`pack_codes`).
    chunk : int
        Query rows per task.
    threads : int, optional
        Worker threads (default: all available cores).

    Returns
    -------
    np.ndarray
        (nq, ng) uint16 distances.
    """
    q, g = _check_pair(q_packed, g_packed)
    out = np.empty((len(q), len(g)), dtype=np.uint16)
    block = _distance_block("numpy", q, g)

    def work(s: int, e: int) -> None:
        out[s:e] = block(s, e)

    run_chunks(len(q), chunk, work, threads)
    return out


def hamming_rank(
    q_packed: np.ndarray,
    g_packed: np.ndarray,
    backend: str = "auto",
    k: int | None = None,
    chunk: int = 128,
    threads: int | None = None,
) -> np.ndarray:
    """Rank the gallery for each query by Hamming distance, ties by ascending gallery index.

    Parameters
    ----------
    q_packed, g_packed : np.ndarray
        (nq, B) and (ng, B) uint8 packed codes (:func:`pack_codes`).
    backend : str
        ``"faiss"``, ``"numpy"`` or ``"auto"`` (faiss when it can be imported). Both give identical
        rankings; faiss is faster, most of all for long codes.
    k : int, optional
        Keep the ``k`` nearest only (default: the whole gallery, as evaluation needs).
    chunk : int
        Query rows per task (memory is a few ``chunk x ng`` arrays per thread).
    threads : int, optional
        Worker threads (default: all available cores).

    Returns
    -------
    np.ndarray
        (nq, k or ng) int32 gallery indices, nearest first.
    """
    q, g = _check_pair(q_packed, g_packed)
    block = _distance_block(_backend(backend), q, g)
    k = _check_k(k, len(g))
    out = np.empty((len(q), k), dtype=np.int32)

    def work(s: int, e: int) -> None:
        out[s:e] = argsort_block(block(s, e).astype(np.uint16, copy=False), k)

    run_chunks(len(q), chunk, work, threads)
    return out


def float_rank(
    q_feats: np.ndarray,
    g_feats: np.ndarray,
    metric: str = "euclidean",
    k: int | None = None,
    chunk: int = 512,
    threads: int | None = None,
) -> np.ndarray:
    """Rank the gallery by real-valued feature distance (the unhashed reference), ties by gallery index.

    Parameters
    ----------
    q_feats, g_feats : np.ndarray
        (nq, D) and (ng, D) features; computed in float32.
    metric : str
        ``"euclidean"`` (squared L2) or ``"cosine"`` (by decreasing cosine similarity; a zero vector
        has similarity 0 to everything).
    k : int, optional
        Keep the ``k`` nearest only (default: the whole gallery).
    chunk : int
        Query rows per matrix product (BLAS uses all cores there).
    threads : int, optional
        Worker threads for the sorting (default: all available cores).

    Returns
    -------
    np.ndarray
        (nq, k or ng) int32 gallery indices, nearest first. Ties are exact float equality of the
        computed distances. The query norm is left out of the squared L2 distance and cosine ranks by
        ``-similarity`` (both leave the order unchanged), so that no rounding merges distinct values.
    """
    if metric not in METRICS:
        raise HashbenchError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    q = np.asarray(q_feats, dtype=np.float32)
    g = np.asarray(g_feats, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be 2-D with the same width, got {q.shape} and {g.shape}")
    k = _check_k(k, len(g))
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    else:
        g_sq = np.einsum("ij,ij->i", g, g)
    g_t = np.ascontiguousarray(g.T)
    out = np.empty((len(q), k), dtype=np.int32)
    for s in range(0, len(q), chunk):
        e = min(s + chunk, len(q))
        sim = q[s:e] @ g_t
        if metric == "cosine":
            dist = np.negative(sim, out=sim)
        else:
            sim *= -2.0
            dist = np.add(sim, g_sq[None, :], out=sim)

        def work(a: int, b: int, dist: np.ndarray = dist, s: int = s) -> None:
            out[s + a : s + b] = argsort_block(dist[a:b], k)

        run_chunks(e - s, max(1, -(-(e - s) // 8)), work, threads)
    return out


# -- coarse to fine: a short prefix ranks the gallery, longer prefixes re-rank its top ---------------------


def prefix_codes(packed: np.ndarray, bits: int, length: int) -> np.ndarray:
    """The packed codes of the first ``length`` bits of ``bits``-bit packed codes (for a multiple of 8,
    the first ``length / 8`` bytes, no copy)."""
    if not 1 <= length <= bits:
        raise HashbenchError(f"prefix of {length} bits of {bits}-bit codes: expected 1..{bits}")
    if length % 8 == 0:
        return packed[:, : length // 8]
    return np.packbits(np.unpackbits(packed, axis=1, count=bits)[:, :length], axis=1)


def cascade_lengths(lengths, bits: int) -> list[int]:
    """``lengths`` as ints, checked to rise strictly within 1..``bits``."""
    lengths = [int(n) for n in lengths]
    if (
        not lengths
        or lengths[0] < 1
        or lengths[-1] > bits
        or any(b <= a for a, b in zip(lengths, lengths[1:], strict=False))
    ):
        raise HashbenchError(f"coarse-to-fine search: lengths {lengths} must rise strictly within 1..{bits}")
    return lengths


def cascade_top_ks(lengths, top_k) -> list[int]:
    """One candidate count per re-ranking stage (``top_k`` one value for all, or one per stage),
    checked to be positive and non-increasing."""
    n_stages = len(lengths) - 1
    ks = [int(top_k)] * n_stages if np.isscalar(top_k) else [int(k) for k in top_k]
    if len(ks) != n_stages:
        raise HashbenchError(
            f"coarse-to-fine search: {len(ks)} top_k values for {n_stages} re-ranking stages"
        )
    if any(k < 1 for k in ks) or any(b > a for a, b in zip(ks, ks[1:], strict=False)):
        raise HashbenchError(f"coarse-to-fine search: top_k {ks} must be positive and non-increasing")
    return ks


def coarse_to_fine_rank(
    q_packed: np.ndarray,
    g_packed: np.ndarray,
    bits: int,
    lengths,
    top_k,
    backend: str = "auto",
    chunk: int = 256,
    threads: int | None = None,
) -> np.ndarray:
    """Rank the gallery for each query coarse to fine over nested code prefixes.

    The first length's prefix ranks the whole gallery (:func:`hamming_rank`, on ``backend``); each later
    stage re-ranks the first ``top_k`` of the ranking so far by a longer prefix (ties by gallery index),
    the rest keeps its order. Within the last stage's top-k the order is exactly the longest prefix's
    Hamming ranking of those candidates, at ``n_gallery x lengths[0] + sum(top_k x length)`` bits
    compared per query (:func:`coarse_to_fine_cost`) instead of ``n_gallery x bits``.

    Parameters
    ----------
    q_packed, g_packed : np.ndarray
        (nq, B) and (ng, B) packed ``bits``-bit codes whose first ``L`` bits are the code of length ``L``.
    lengths : sequence of int
        Prefix lengths, strictly rising within 1..``bits``.
    top_k : int or sequence of int
        Candidates re-ranked at each stage after the first (non-increasing); clipped to the gallery.
    backend, threads : str, int
        Of the first stage (:func:`hamming_rank`); the re-ranking runs in numpy on the same threads.
    chunk : int
        Query rows per re-ranking block (memory: ``chunk x top_k x bytes``).

    Returns
    -------
    np.ndarray
        (nq, ng) int32 gallery indices, nearest first.
    """
    q, g = _check_pair(q_packed, g_packed)
    if 8 * q.shape[1] < bits:
        raise ValueError(f"codes of {8 * q.shape[1]} packed bits cannot hold {bits}-bit codes")
    lengths = cascade_lengths(lengths, bits)
    ks = cascade_top_ks(lengths, top_k)
    ng = len(g)
    order = hamming_rank(
        prefix_codes(q, bits, lengths[0]), prefix_codes(g, bits, lengths[0]), backend=backend, threads=threads
    )
    for length, k in zip(lengths[1:], ks, strict=True):
        k = min(k, ng)
        qp, gp = prefix_codes(q, bits, length), prefix_codes(g, bits, length)

        def work(s: int, e: int, qp: np.ndarray = qp, gp: np.ndarray = gp, k: int = k) -> None:
            cand = order[s:e, :k]  # (c, k) gallery indices
            d = np.bitwise_count(qp[s:e, None, :] ^ gp[cand]).sum(-1, dtype=np.int64)
            key = d * ng + cand  # distance, then gallery index
            order[s:e, :k] = np.take_along_axis(cand, np.argsort(key, axis=1), axis=1)

        run_chunks(len(q), chunk, work, threads)
    return order


def coarse_to_fine_cost(n_gallery: int, lengths, top_k) -> int:
    """Bits compared per query by :func:`coarse_to_fine_rank` (``n_gallery x bits`` for a full search)."""
    lengths = [int(n) for n in lengths]
    ks = cascade_top_ks(lengths, top_k)
    return n_gallery * lengths[0] + sum(min(k, n_gallery) * n for n, k in zip(lengths[1:], ks, strict=True))
