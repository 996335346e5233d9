"""Top-k Hamming search indexes over packed codes: exact linear scans, exact multi-index hashing, and
faiss's approximate HNSW and IVF indexes.

Every index has the same three calls::

    index = make_index("mih", bits=128).build(gallery_packed)   # (N, bits // 8) uint8, pack_codes
    distances, ids = index.search(query_packed, k=100)          # (nq, k) int32, (nq, k) int64
    index.memory_bytes()

An **exact** index (``exact = True``) returns, for every query, exactly the first ``k`` entries of the full
ranking :func:`hashbench.search.hamming_rank` gives (ties broken by gallery order: the lower gallery
index first) and their distances; ``tests/test_index.py`` checks every exact index against that ranking
on codes with many ties. An approximate index (``exact = False``) returns neighbours sorted by distance
that may miss true ones; :func:`recall_at_k` measures how many it finds.

Backends (:data:`INDEXES`; ``hashbench scale --backend``):

``flat``        linear scan. With faiss it is ``faiss.knn_hamming(..., variant="hc")``: one heap per query,
                the gallery scanned in order in blocks of 65,536 codes with all queries in parallel. Its
                heap keeps (distance, id) pairs with a strict ``<`` on the distance, and the gallery is
                scanned in index order, so among equal distances the lower ids stay: the stable ranking's
                prefix (measured identical to ``hamming_rank`` on 8/16/64-bit codes with thousands of
                ties per distance, galleries over several scan blocks; faiss 1.15). It is the same kernel
                as ``IndexBinaryFlat.search`` without that index's query batches of 32, and measured
                0.73-0.98x its time at 128 bits and 0.73x at 2048 on a quiet machine (README, "Large
                galleries"). ``IndexBinaryFlat``'s counting variant (``use_heap = False``) returns the
                same and was measured 1.55-1.80x (128 bits) and 0.83x (2048) of its heap, ``knn_hamming(..., "mc")``
                1.5x slower than the heap; the counter also needs ``bits x k x 8`` bytes per query. Without faiss:
                numpy XOR + popcount distances (:mod:`hashbench.search`) and a stable radix argsort.
``faiss-flat``  ``faiss.IndexBinaryFlat.search`` as it comes (heap), the reference the others are
                measured against (``use_heap=False``: its counting variant).
``mih``         multi-index hashing (Norouzi, Punjani, Fleet, "Fast exact search in Hamming space with
                multi-index hashing", TPAMI 2014), numpy only: the code is cut into ``m`` disjoint
                substrings covering all its bits (``m = ceil(bits / substring_bits)``, lengths differing
                by at most one bit; by default ``substring_bits`` = log2(N) rounded, within 8..20, as the
                paper advises: 7 tables of 18-19 bits at 128 bits over a million codes); each substring indexes a table (gallery ids sorted by substring value, with
                the start of every value's bucket). A query probes, at round ``r = 0, 1, ...``, every
                bucket at substring distance exactly ``r`` in every table, and computes the full distance
                of each new candidate. By the pigeonhole principle a code at distance ``<= m (r + 1) - 1``
                from the query has a substring within ``r`` of the query's, so after round ``r`` every
                such code is a candidate: once the query has ``k`` candidates within that bound, its top
                ``k`` by (distance, id) among the candidates is the exact one. A query whose candidates
                pass ``fallback_fraction`` of the gallery, or whose next round would probe more buckets
                than ``max_probes`` (default: the gallery size), or past ``max_radius``, is answered by
                the linear scan instead. Sub-linear where the ``k``-th neighbour is near (clustered codes,
                short codes); on uniformly random codes it falls back to the scan.
``hnsw``        ``faiss.IndexBinaryHNSW`` (``M``, ``ef_construction``, ``ef_search``): approximate.
``ivf``         ``faiss.IndexBinaryIVF`` over an ``IndexBinaryFlat`` quantiser (``nlist`` lists trained on
                a seeded sample of ``40 x nlist`` codes, ``nprobe`` probed): approximate.

Bad input (codes of another length than the index, ``k`` outside ``1..N``, an unknown backend or
parameter) is a one-line :class:`~hashbench.errors.HashbenchError`.
"""

from __future__ import annotations

import inspect
import math
import time
from abc import ABC, abstractmethod
from itertools import combinations
from typing import ClassVar

import numpy as np

from .errors import HashbenchError
from .metrics import argsort_block
from .search import _distance_block, _faiss, _packed, bytes_per_code

QUERY_BATCH = 1024  # queries per faiss call (bounds the heaps' memory)


def _require_faiss(what: str):
    faiss = _faiss()
    if faiss is None:
        raise HashbenchError(
            f"index backend {what!r} needs the faiss-cpu package (pip install 'hashbench[search]')"
        )
    return faiss


class HammingIndex(ABC):
    """Base class of the indexes: ``build(codes)`` then ``search(queries, k) -> (distances, ids)``."""

    name: ClassVar[str]
    description: ClassVar[str]
    exact: ClassVar[bool] = True
    needs_faiss: ClassVar[bool] = False

    def __init__(self, bits: int) -> None:
        self.bits = int(bits)
        self.code_bytes = bytes_per_code(self.bits)
        self.n_ = 0
        self.build_s_ = 0.0

    # -- the contract -------------------------------------------------------------------------------
    def build(self, codes: np.ndarray) -> HammingIndex:
        """Index the (N, bits // 8) uint8 packed gallery codes; returns ``self``. ``build_s_``: seconds."""
        codes = self._check_codes("gallery codes", codes)
        if len(codes) == 0:
            raise HashbenchError("cannot build an index over an empty gallery")
        t0 = time.perf_counter()
        self.n_ = len(codes)
        self._build(np.ascontiguousarray(codes))
        self.build_s_ = time.perf_counter() - t0
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery codes of each query: (nq, k) int32 distances and (nq, k) int64 ids,
        nearest first (exact indexes: ties by lower gallery index)."""
        if not self.n_:
            raise HashbenchError(f"index {self.name!r}: search before build")
        q = np.ascontiguousarray(self._check_codes("query codes", queries))
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_:
            raise HashbenchError(f"k={k}: expected 1..{self.n_} (the indexed gallery has {self.n_} codes)")
        if len(q) == 0:
            return np.empty((0, k), np.int32), np.empty((0, k), np.int64)
        d, i = self._search(q, int(k))
        return np.ascontiguousarray(d, dtype=np.int32), np.ascontiguousarray(i, dtype=np.int64)

    def memory_bytes(self) -> int:
        """Bytes the built index holds (its copy of the codes included)."""
        return int(self._memory())

    # -- for subclasses -------------------------------------------------------------------------------
    @abstractmethod
    def _build(self, codes: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _memory(self) -> int: ...

    def _check_codes(self, what: str, codes: np.ndarray) -> np.ndarray:
        try:
            codes = _packed(what, codes)
        except ValueError as exc:
            raise HashbenchError(str(exc)) from None
        if codes.shape[1] != self.code_bytes:
            raise HashbenchError(
                f"{what} have {8 * codes.shape[1]} bits but the index holds {self.bits}-bit codes"
            )
        return codes


# ------------------------------------------------------------------------------------------- linear


def scan_top_k(q: np.ndarray, g: np.ndarray, k: int, engine: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` of packed queries ``q`` in packed gallery ``g`` by linear scan (see the module
    docstring, ``flat``): faiss's heap k-NN when ``engine`` is ``auto`` (faiss present) or ``faiss``,
    else numpy distances and a stable radix argsort."""
    faiss = _faiss() if engine in ("auto", "faiss") else None
    if engine == "faiss" and faiss is None:
        _require_faiss("flat (engine faiss)")
    nq = len(q)
    dist = np.empty((nq, k), np.int32)
    ids = np.empty((nq, k), np.int64)
    if faiss is not None:
        for s in range(0, nq, QUERY_BATCH):
            e = min(s + QUERY_BATCH, nq)
            dist[s:e], ids[s:e] = faiss.knn_hamming(q[s:e], g, k, "hc")
        return dist, ids
    block = _distance_block("numpy", q, g)
    for s in range(0, nq, 64):
        e = min(s + 64, nq)
        d = block(s, e)
        order = argsort_block(d, k)
        ids[s:e] = order
        dist[s:e] = np.take_along_axis(d, order, axis=1)
    return dist, ids


class FlatIndex(HammingIndex):
    """Exact linear scan: faiss's heap k-NN in one pass over the gallery (numpy without faiss)."""

    name = "flat"
    description = "exact linear scan (faiss knn_hamming heap, numpy without faiss)"

    def __init__(self, bits: int, engine: str = "auto") -> None:
        super().__init__(bits)
        if engine not in ("auto", "faiss", "numpy"):
            raise HashbenchError(f"index flat: engine {engine!r}; valid: auto, faiss, numpy")
        if engine == "faiss":
            _require_faiss("flat (engine faiss)")
        self.engine = engine

    def _build(self, codes: np.ndarray) -> None:
        self.codes_ = codes

    def _search(self, q, k):
        return scan_top_k(q, self.codes_, k, self.engine)

    def _memory(self) -> int:
        return self.codes_.nbytes


class FaissFlatIndex(HammingIndex):
    """``faiss.IndexBinaryFlat`` as it comes: the reference of the benchmarks."""

    name = "faiss-flat"
    description = "faiss IndexBinaryFlat.search (heap; use_heap=False: counting), the reference scan"
    needs_faiss = True

    def __init__(self, bits: int, use_heap: bool = True) -> None:
        super().__init__(bits)
        self.use_heap = bool(use_heap)

    def _build(self, codes):
        faiss = _require_faiss(self.name)
        self.index_ = faiss.IndexBinaryFlat(self.bits)
        self.index_.use_heap = self.use_heap
        self.index_.add(codes)

    def _search(self, q, k):
        return self.index_.search(q, k)

    def _memory(self) -> int:
        return self.n_ * self.code_bytes


# ------------------------------------------------------------------------------- multi-index hashing


def substring_lengths(bits: int, substring_bits: int) -> list[int]:
    """``m = ceil(bits / substring_bits)`` lengths (each at most ``substring_bits``) summing to ``bits``,
    differing by at most one."""
    m = -(-bits // substring_bits)
    base, extra = divmod(bits, m)
    return [base + 1] * extra + [base] * (m - extra)


def _masks(length: int, r: int) -> np.ndarray:
    """Every ``length``-bit mask with exactly ``r`` bits set, as int64."""
    return np.array([sum(1 << i for i in c) for c in combinations(range(length), r)], dtype=np.int64)


def _substring_keys(codes: np.ndarray, lengths: list[int], chunk: int = 65536) -> np.ndarray:
    """(N, m) int64: the value of each substring (big-endian within it, as ``np.packbits`` orders bits)."""
    n, m = len(codes), len(lengths)
    keys = np.empty((n, m), dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        bits = np.unpackbits(codes[s:e], axis=1)
        for t in range(m):
            part = bits[:, bounds[t] : bounds[t + 1]].astype(np.int64)
            weights = np.left_shift(1, np.arange(lengths[t] - 1, -1, -1, dtype=np.int64))
            keys[s:e, t] = part @ weights
    return keys


def _words(packed: np.ndarray) -> np.ndarray:
    pad = -packed.shape[1] % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


class MultiIndexHashing(HammingIndex):
    """Exact k-NN by multi-index hashing (Norouzi et al., TPAMI 2014); see the module docstring."""

    name = "mih"
    description = (
        "exact multi-index hashing (Norouzi et al. 2014): substring tables, radius grown until exact"
    )

    def __init__(
        self,
        bits: int,
        substring_bits: int | None = None,
        max_radius: int | None = None,
        fallback_fraction: float = 0.01,
        max_probes: int | None = None,
        query_batch: int = 64,
    ) -> None:
        super().__init__(bits)
        if substring_bits is not None and not 1 <= int(substring_bits) <= 20:  # 2 ** bits bucket starts
            raise HashbenchError(f"index mih: substring_bits={substring_bits}; expected 1..20")
        if not 0 < float(fallback_fraction) <= 1:
            raise HashbenchError(f"index mih: fallback_fraction={fallback_fraction}; expected in (0, 1]")
        self.substring_bits = substring_bits
        self.max_radius = max_radius
        self.fallback_fraction = float(fallback_fraction)
        self.max_probes = max_probes
        self.query_batch = int(query_batch)
        self.lengths = substring_lengths(self.bits, substring_bits) if substring_bits else []
        self.stats_: dict = {}

    def _build(self, codes):
        if not self.substring_bits:  # Norouzi et al.: substrings of about log2(N) bits
            sb = int(min(20, max(8, round(math.log2(len(codes))))))
            self.lengths = substring_lengths(self.bits, sb)
        self.codes_ = codes
        self.word_columns_ = [np.ascontiguousarray(c) for c in _words(codes).T]  # one array per word
        keys = _substring_keys(codes, self.lengths)
        self.order_, self.offsets_ = [], []
        for t, length in enumerate(self.lengths):
            order = np.argsort(keys[:, t], kind="stable").astype(np.int32)  # ids ascending in a bucket
            counts = np.bincount(keys[:, t], minlength=1 << length)
            self.order_.append(order)
            self.offsets_.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        self._mask_cache: dict[tuple[int, int], np.ndarray] = {}

    def _memory(self) -> int:
        return (
            self.codes_.nbytes
            + sum(c.nbytes for c in self.word_columns_)
            + sum(o.nbytes for o in self.order_)
            + sum(o.nbytes for o in self.offsets_)
        )

    def _mask(self, length: int, r: int) -> np.ndarray:
        key = (length, r)
        if key not in self._mask_cache:
            self._mask_cache[key] = _masks(length, r)
        return self._mask_cache[key]

    def _search(self, q, k):
        nq = len(q)
        dist = np.empty((nq, k), np.int32)
        ids = np.empty((nq, k), np.int64)
        qkeys = _substring_keys(q, self.lengths)
        qwords = _words(q)
        fallback: list[int] = []
        radii = np.full(nq, -1)
        candidates = np.zeros(nq, dtype=np.int64)
        for s in range(0, nq, self.query_batch):
            e = min(s + self.query_batch, nq)
            left = self._search_batch(
                qkeys[s:e], qwords[s:e], k, dist[s:e], ids[s:e], radii[s:e], candidates[s:e]
            )
            fallback.extend(s + i for i in left)
        if fallback:
            rows = np.array(fallback)
            dist[rows], ids[rows] = scan_top_k(q[rows], self.codes_, k)
        self.stats_ = {
            "queries": nq,
            "fallback": len(fallback),
            "mean_candidates": float(candidates.mean()) if nq else 0.0,
            "radius_counts": {int(r): int((radii == r).sum()) for r in np.unique(radii)},
        }
        return dist, ids

    def _search_batch(self, qkeys, qwords, k, dist_out, ids_out, radii_out, cand_out) -> list[int]:
        """Answer a batch of queries in place (radius rounds); returns the rows left to the linear scan."""
        n, m = self.n_, len(self.lengths)
        nb = len(qkeys)
        seen = np.empty(0, np.int64)  # sorted (query row * n + id) of every candidate so far
        rows_all = np.empty(0, np.int64)
        ids_all = np.empty(0, np.int64)
        dist_all = np.empty(0, np.int32)
        n_found = np.zeros(nb, dtype=np.int64)
        active = np.arange(nb)
        top = max(self.lengths)
        max_radius = top if self.max_radius is None else min(int(self.max_radius), top)
        limit = self.fallback_fraction * n
        max_probes = n if self.max_probes is None else int(self.max_probes)
        left: list[int] = []
        r = 0
        while len(active):
            new_rows, new_ids = [], []
            for t, length in enumerate(self.lengths):
                if r > length:
                    continue
                masks = self._mask(length, r)
                values = (qkeys[active, t, None] ^ masks[None, :]).ravel()
                lo = self.offsets_[t][values]
                cnt = self.offsets_[t][values + 1] - lo
                total = int(cnt.sum())
                if not total:
                    continue
                rows = np.repeat(np.repeat(active, len(masks)), cnt)
                pos = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)
                new_rows.append(rows)
                new_ids.append(self.order_[t][pos].astype(np.int64))
            if new_rows:
                key = np.concatenate(new_rows) * n + np.concatenate(new_ids)
                key.sort()
                key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # one per (query, id)
                if len(seen):
                    at = np.minimum(np.searchsorted(seen, key), len(seen) - 1)
                    key = key[seen[at] != key]  # not found in an earlier round
                    seen = np.sort(np.concatenate([seen, key]))
                else:
                    seen = key
                rows, cand = key // n, key % n
                d = np.zeros(len(cand), dtype=np.int32)
                for w, column in enumerate(self.word_columns_):
                    d += np.bitwise_count(column[cand] ^ qwords[rows, w])
                rows_all = np.concatenate([rows_all, rows])
                ids_all = np.concatenate([ids_all, cand])
                dist_all = np.concatenate([dist_all, d])
                n_found += np.bincount(rows, minlength=nb)
            bound = m * (r + 1) - 1  # every code within it is a candidate now (pigeonhole)
            within = np.bincount(rows_all[dist_all <= bound], minlength=nb)
            done = active[within[active] >= k]
            if len(done):
                mask = np.isin(rows_all, done)
                # by query, then distance, then gallery id: one int64 key (rows < nb, d <= bits, id < n)
                order = np.sort((rows_all[mask] * (self.bits + 1) + dist_all[mask]) * n + ids_all[mask])
                rd, ii = np.divmod(order, n)
                rr, dd = np.divmod(rd, self.bits + 1)
                take = (np.searchsorted(rr, done)[:, None] + np.arange(k)[None, :]).ravel()
                dist_out[done] = dd[take].reshape(len(done), k)
                ids_out[done] = ii[take].reshape(len(done), k)
                radii_out[done] = r
                cand_out[done] = n_found[done]
                rows_all, ids_all, dist_all = rows_all[~mask], ids_all[~mask], dist_all[~mask]
            active = active[within[active] < k]
            r += 1
            probes = sum(math.comb(length, r) for length in self.lengths if r <= length)
            over = (n_found[active] > limit) | (r > max_radius) | (probes > max_probes)
            if over.any():  # too many candidates or probes, or no radius left: the scan answers these
                gone = active[over]
                cand_out[gone] = n_found[gone]
                left.extend(int(i) for i in gone)
                mask = np.isin(rows_all, gone)
                rows_all, ids_all, dist_all = rows_all[~mask], ids_all[~mask], dist_all[~mask]
                active = active[~over]
        return left


# ------------------------------------------------------------------------------------- approximate


class HNSWIndex(HammingIndex):
    """``faiss.IndexBinaryHNSW``: approximate (graph search); recall below 1."""

    name = "hnsw"
    description = "approximate: faiss IndexBinaryHNSW (M, ef_construction, ef_search)"
    exact = False
    needs_faiss = True

    def __init__(self, bits: int, M: int = 16, ef_construction: int = 64, ef_search: int = 128) -> None:
        super().__init__(bits)
        self.M, self.ef_construction, self.ef_search = int(M), int(ef_construction), int(ef_search)

    def _build(self, codes):
        faiss = _require_faiss(self.name)
        self.index_ = faiss.IndexBinaryHNSW(self.bits, self.M)
        self.index_.hnsw.efConstruction = self.ef_construction
        self.index_.add(codes)

    def _search(self, q, k):
        self.index_.hnsw.efSearch = max(self.ef_search, k)
        return self.index_.search(q, k)

    def _memory(self) -> int:
        return _serialized_bytes(self.index_)


class IVFIndex(HammingIndex):
    """``faiss.IndexBinaryIVF``: approximate (inverted lists of a binary k-means); recall below 1."""

    name = "ivf"
    description = "approximate: faiss IndexBinaryIVF (nlist lists, nprobe probed)"
    exact = False
    needs_faiss = True

    def __init__(self, bits: int, nlist: int | None = None, nprobe: int = 16, seed: int = 0) -> None:
        super().__init__(bits)
        self.nlist, self.nprobe, self.seed = nlist, int(nprobe), int(seed)

    def _build(self, codes):
        faiss = _require_faiss(self.name)
        n = len(codes)
        nlist = self.nlist or max(1, min(4096, int(4 * math.sqrt(n))))
        nlist = max(1, min(nlist, n // 39))  # faiss's k-means wants 39 training codes per list
        self.quantizer_ = faiss.IndexBinaryFlat(self.bits)
        self.index_ = faiss.IndexBinaryIVF(self.quantizer_, self.bits, nlist)
        self.index_.cp.seed = self.seed
        sample = min(n, 40 * nlist)
        rng = np.random.default_rng(self.seed)
        train = codes[np.sort(rng.choice(n, sample, replace=False))] if sample < n else codes
        self.index_.train(train)
        self.index_.add(codes)
        self.index_.nprobe = min(self.nprobe, nlist)

    def _search(self, q, k):
        return self.index_.search(q, k)

    def _memory(self) -> int:
        return _serialized_bytes(self.index_)


def _serialized_bytes(index) -> int:
    faiss = _require_faiss("size")
    return int(faiss.serialize_index_binary(index).nbytes)


# ---------------------------------------------------------------------------------------- registry

INDEXES: dict[str, type[HammingIndex]] = {
    klass.name: klass for klass in (FlatIndex, FaissFlatIndex, MultiIndexHashing, HNSWIndex, IVFIndex)
}


def index_names(available_only: bool = False) -> list[str]:
    """The registered backends (those usable here, with ``available_only``: faiss ones need faiss)."""
    return [n for n, k in INDEXES.items() if not (available_only and k.needs_faiss and _faiss() is None)]


def make_index(name: str, bits: int, **params) -> HammingIndex:
    """An unbuilt index of backend ``name`` for ``bits``-bit codes; errors name every valid choice."""
    klass = INDEXES.get(name)
    if klass is None:
        raise HashbenchError(f"unknown index backend {name!r}; valid: {', '.join(INDEXES)}")
    if klass.needs_faiss:
        _require_faiss(name)
    accepted = [p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "bits")]
    bad = [p for p in params if p not in accepted]
    if bad:
        raise HashbenchError(
            f"index {name}: unknown parameter {bad[0]!r}; valid: {', '.join(accepted) or 'none'}"
        )
    return klass(bits, **params)


def recall_at_k(found: np.ndarray, true_distances: np.ndarray) -> float:
    """Recall of an approximate search, tie-aware: per query, the share of its ``k`` returned
    neighbours (``found``: (nq, k) distances, from ``search``; a missing neighbour counts as wrong) at a
    distance no greater than the exact ``k``-th neighbour's (``true_distances``: (nq, k), from an exact
    index), averaged over queries. Counting ids would penalise a neighbour tied with the exact one."""
    found, truth = np.asarray(found), np.asarray(true_distances)
    if truth.size == 0:
        return float("nan")
    kth = truth[:, -1:]
    return float(((found <= kth) & (found >= 0)).sum() / truth.size)
