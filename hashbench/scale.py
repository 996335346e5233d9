"""Large galleries (``hashbench scale``): a finished cell's test gallery grown with up to millions of
distractor codes, scored by mAP / rank-1 over the full ranking, searched top-``k`` through the indexes
of :mod:`hashbench.index`.

**The distractors** are codes the cell's own fitted method produces for inputs of people who are not
test identities: the training split's trunk maps (the run's cached ones; in a ``--holdout`` run, the
remaining training identities) and augmentations of them in that input space. Distractor ``i`` of a
training split of ``n`` images is (numbering fixed, so that a smaller set is a prefix of a larger one
and the gallery only grows):

* ``i < n``: training image ``i`` as it is;
* ``n <= i < 2n``: training image ``i - n`` flipped horizontally (the maps' width axis reversed, as the
  IDE stage's flip augmentation does);
* ``i >= 2n``: a mixup ``lam * a + (1 - lam) * b`` of two training images ``a`` and ``b`` of different
  identities (``b`` redrawn until its identity differs), ``lam`` uniform in [0.3, 0.7], each of ``a``
  and ``b`` flipped with probability 1/2, plus Gaussian noise of 0.1 times each channel's standard
  deviation over the training maps; rounded to float16 like the cached maps. The pairs, ``lam`` and
  flips are drawn with NumPy's ``default_rng([seed, chunk])`` for each chunk of :data:`CHUNK`
  distractors, the noise of distractor ``i`` with ``default_rng([seed, chunk, row])``: the same seed
  gives the same distractors, whatever range is asked for.

A method that consumes ``features`` sees these maps through the run's cached IDE model
(:func:`hashbench.ide.embed_maps`), exactly as a test image goes; one that consumes ``maps`` gets them
as they are; ``attributes`` are unknown (-1), as for a new photo. The maps are generated and encoded a
chunk at a time (a million Market-1501 maps would be 24 GB in float16): only the packed codes are kept.
Every row records the recipe in its ``distractor_source`` column.

**mAP over the full ranking, affordably.** The distractors are appended after the test gallery, so in
the stable ranking (ties: lower gallery index first) a distractor ranks before a true match exactly
when its distance to the query is strictly smaller. Distractors are never matches and never junk. So a
match at rank ``r`` of the test gallery's ranking (after junk removal) moves to ``r + below(d)``, where
``d`` is its distance and ``below(d)`` the number of distractors at distance ``< d`` from that query:
one histogram of the query's distances to the distractors (``bits + 1`` counts per query, computed in
blocks with the Hamming kernels of :mod:`hashbench.search`, for every prefix size in one pass) gives
the exact mAP and CMC of the whole grown ranking without ever sorting it.
(:func:`evaluate_with_distractors`; ``tests/test_scale.py`` checks it against
:func:`hashbench.metrics.evaluate_rankings` on the explicitly concatenated gallery.)

**Search cost**: for each size and backend, an index over gallery + distractors is built (``build_s``)
and every test query (or ``search_queries`` of them, evenly spaced; ``n_query``) searched for its ``k``
nearest (``query_ms`` per query, ``memory_bytes`` of the index); ``recall`` is the tie-aware recall
against the first exact backend (1 for exact ones).

**Several cells, one pass, codes kept.** The cells of one run (one trunk and IDE stage) share one pass
over the distractors: each chunk of maps is generated once, and embedded once by the IDE model (with
its BatchNorm folded, channels-last, as the deep methods encode; how many code bits that moves on the
test gallery is measured and written in every row). Each cell's codes are cached in blocks
(:class:`DistractorCodes`), so a killed run resumes at its last finished block.

Rows go to ``scale.csv`` beside ``results.csv`` (one per cell, size and backend; a rerun replaces its
rows), written atomically under the folder lock, then ``scale_map.png`` and ``scale_query_ms.png``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .cells import Cell, load_cell
from .durable import atomic_write_bytes
from .errors import HashbenchError
from .index import INDEXES, make_index, recall_at_k
from .method import SPLIT_INPUTS, View, check_codes
from .metrics import JUNK_PID, Evaluation, argsort_block
from .results import (
    device_name,
    git_commit,
    latest_positions,
    now,
    read_store_frame,
    replace_keyed_rows,
)
from .search import _distance_block, _faiss

log = logging.getLogger(__name__)

SCALE_NAME = "scale.csv"
MAP_PNG = "scale_map.png"
QUERY_PNG = "scale_query_ms.png"
CHUNK = 2048  # distractors generated, encoded and drawn per chunk (the seed's unit)
BLOCK = 32 * CHUNK  # distractor codes cached per file (a killed run resumes at a block)
RECIPE = 1  # version of the distractor recipe, part of the cache key: bump it when distractor_maps changes
MIX_RANGE = (0.3, 0.7)
NOISE = 0.1  # Gaussian noise, in units of each channel's standard deviation over the training maps
SCALE_COLUMNS = (
    "dataset", "method", "bits", "distractors", "gallery_size", "map", "rank1", "backend", "exact", "k",
    "build_s", "query_ms", "recall", "identical", "memory_bytes", "n_query", "encode_s", "distractor_source",
    "config_hash", "seed", "device", "version", "commit", "date",
)  # fmt: skip
SCALE_KEY = ("dataset", "method", "bits", "config_hash", "distractors", "backend", "seed")
DEFAULT_DISTRACTORS = "0,100k,300k,1M"


def distractor_source(n_train: int, seed: int) -> str:
    """The recipe of the distractors, as every row records it."""
    return (
        f"training split ({n_train} images) as is, then flipped, then mixup of two training images of "
        f"different ids (lambda U[{MIX_RANGE[0]}, {MIX_RANGE[1]}], each flipped w.p. 0.5, + N(0, "
        f"({NOISE} * channel std)^2)), seed {seed}; encoded by the cell's method"
    )


def parse_distractors(text: str) -> list[int]:
    """``0,100k,300k,1M`` -> sorted distinct counts (``k`` = 1,000, ``M`` = 1,000,000)."""
    out = []
    for item in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", item)
        if not m:
            raise HashbenchError(
                f"--distractors {text!r}: {item.strip()!r} is not a count; expected e.g. 0,100k,300k,1M"
            )
        value = float(m[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[m[2].lower()]
        if value % 1:
            raise HashbenchError(f"--distractors {text!r}: {item.strip()!r} is not a whole number")
        out.append(int(value))
    return sorted(set(out))


def parse_backends(text: str, bits: int) -> list[str]:
    """``flat,mih`` -> names, each checked (unknown, or faiss missing: one line); ``auto``: ``flat``,
    plus ``mih`` up to 256 bits (its tables are for short codes)."""
    if text == "auto":
        return ["flat", "mih"] if bits <= 256 else ["flat"]
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise HashbenchError(f"--backend {text!r}: expected names like flat,mih; valid: {', '.join(INDEXES)}")
    for name in names:
        if name not in INDEXES:
            raise HashbenchError(f"--backend {name!r}: unknown; valid: {', '.join(INDEXES)}")
        try:
            make_index(name, bits)
        except HashbenchError as exc:
            raise HashbenchError(f"--backend {name}: {exc}") from None
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------- distractors


def flip(maps: np.ndarray) -> np.ndarray:
    """Horizontal flip of (N, C, H, W) maps."""
    return maps[..., ::-1]


def _mixup_draws(n: int, train_pids: np.ndarray, chunk: int, seed: int):
    """The mixup parameters of every mixed distractor of chunk ``chunk`` (its indices ``>= 2n``), drawn
    from ``default_rng([seed, chunk])`` for the whole chunk: (first index, a, b, lam, flip a, flip b)."""
    lo, hi = max(chunk * CHUNK, 2 * n), (chunk + 1) * CHUNK
    m = max(0, hi - lo)
    rng = np.random.default_rng([seed, chunk])
    a = rng.integers(0, n, m)
    b = rng.integers(0, n, m)
    same = train_pids[a] == train_pids[b]
    while same.any():  # redraw b where it is a's identity (deterministic for the seed)
        b[same] = rng.integers(0, n, int(same.sum()))
        same = train_pids[a] == train_pids[b]
    lam = rng.uniform(*MIX_RANGE, m).astype(np.float32)
    fa, fb = rng.random(m) < 0.5, rng.random(m) < 0.5
    return lo, a, b, lam, fa, fb


def distractor_maps(
    train_maps: np.ndarray, train_pids: np.ndarray, start: int, stop: int, seed: int, channel_std: np.ndarray
) -> np.ndarray:
    """Maps of distractors ``start .. stop - 1`` by the recipe of the module docstring, float16 like the
    cached maps. Distractor ``i`` depends only on (training split, ``seed``, ``i``)."""
    n = len(train_maps)
    train_pids = np.asarray(train_pids)
    index = np.arange(start, stop)
    out = np.empty((len(index), *train_maps.shape[1:]), dtype=np.float16)
    plain = index < n
    out[plain] = train_maps[index[plain]]
    flipped = (index >= n) & (index < 2 * n)
    out[flipped] = flip(train_maps[index[flipped] - n])
    if stop > 2 * n and len(np.unique(train_pids)) < 2:
        raise HashbenchError("the training split has one identity: no mixup of two identities possible")
    for chunk in range(max(start, 2 * n) // CHUNK, -(-stop // CHUNK)):
        lo, a, b, lam, fa, fb = _mixup_draws(n, train_pids, chunk, seed)
        want = np.arange(max(lo, start), min((chunk + 1) * CHUNK, stop))
        if not len(want):
            continue
        j = want - lo  # rows of this chunk's draws
        xa = train_maps[a[j]].astype(np.float32)
        xb = train_maps[b[j]].astype(np.float32)
        xa[fa[j]] = flip(xa[fa[j]])
        xb[fb[j]] = flip(xb[fb[j]])
        x = lam[j, None, None, None] * xa + (1 - lam[j, None, None, None]) * xb
        # the noise of each distractor from its own stream: (seed, chunk, row), so any range gives it
        for r, row in enumerate(j):
            noise = np.random.default_rng([seed, chunk, int(row)]).standard_normal(
                x.shape[1:], dtype=np.float32
            )
            x[r] += noise * (NOISE * channel_std)[:, None, None]
        out[want - start] = x.astype(np.float16)
    return out


def channel_std(maps: np.ndarray, sample: int = 4096) -> np.ndarray:
    """Per-channel standard deviation of (N, C, H, W) maps (over an evenly spaced sample of images)."""
    rows = np.linspace(0, len(maps) - 1, min(sample, len(maps))).astype(int)
    return maps[rows].astype(np.float32).std(axis=(0, 2, 3))


class DistractorCodes:
    """The distractor codes of one fitted cell, cached under ``<cache>/distractors/<key>/`` in blocks of
    :data:`BLOCK` distractors: ``block-<b>.npy`` (packed codes; the last block may be short) beside
    ``block-<b>.json`` (its row count and the seconds they cost), each written atomically. ``key`` digests
    everything the codes depend on (the artifact's bytes, the trunk and IDE model, the recipe, the seed),
    so a killed ``hashbench scale`` resumes at its last finished block, and a rerun with other sizes or
    backends encodes nothing it has. Codes of dataset images are cache, never results: the folder is
    under the cache directory."""

    def __init__(self, root: Path, key: str, width: int):
        self.folder = Path(root) / "distractors" / key
        self.width = width

    def _open(self, b: int) -> tuple[dict, np.ndarray] | None:
        """Block ``b``'s record and (memory-mapped) codes, checked against each other; ``None`` when it
        is absent, or damaged (reported)."""
        path = self.folder / f"block-{b}.json"
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
            codes = np.load(self.folder / f"block-{b}.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            log.warning(
                "distractor codes %s block %d cannot be read (%s): encoding it again", self.folder, b, exc
            )
            return None
        if codes.shape != (int(meta.get("rows", -1)), self.width) or codes.dtype != np.uint8:
            log.warning(
                "distractor codes %s block %d do not match their record: encoding it again", self.folder, b
            )
            return None
        return meta, codes

    def rows(self, b: int) -> int:
        opened = self._open(b)
        return int(opened[0]["rows"]) if opened else 0

    def read(self, b: int, rows: int) -> tuple[np.ndarray, float]:
        """At most the first ``rows`` codes of block ``b`` (none when it is absent or damaged) and their
        share of its recorded seconds."""
        opened = self._open(b)
        if opened is None:
            return np.empty((0, self.width), dtype=np.uint8), 0.0
        meta, codes = opened
        have = min(rows, len(codes))
        return np.array(codes[:have]), float(meta["seconds"]) * have / max(1, len(codes))

    def write(self, b: int, codes: np.ndarray, seconds: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(codes, dtype=np.uint8))
        atomic_write_bytes(self.folder / f"block-{b}.npy", buf.getvalue())
        meta = {"rows": len(codes), "seconds": seconds, "recipe": RECIPE}
        atomic_write_bytes(self.folder / f"block-{b}.json", json.dumps(meta).encode())


@dataclass
class Target:
    """One cell whose distractor codes are wanted: its fitted method, and where they are cached (or
    ``None``: not cached)."""

    method: object
    store: DistractorCodes | None = None


def encode_distractors(
    targets: Sequence[Target],
    train_maps: np.ndarray,
    train_pids: np.ndarray,
    count: int,
    seed: int,
    embed: Callable[[np.ndarray], np.ndarray] | None,
    n_groups: int = 0,
    progress: Callable[[int, int, bool], None] | None = None,
) -> list[tuple[np.ndarray, float]]:
    """For each target, the (count, bits // 8) packed codes of the first ``count`` distractors through
    its method's ``encode``, and the seconds they cost (``progress(done, count, cached)`` after each
    chunk made or block read). The maps of each chunk are generated once, and embedded once (``embed``:
    maps -> adapted features) for every target that consumes ``features``,
    whatever the number of targets; each target's seconds count the generation and embedding in full
    (what the cell would cost alone), plus its own encoding; codes read from a target's cache count the
    seconds recorded when they were made."""
    for t in targets:
        consumes = set(t.method.consumes) & set(SPLIT_INPUTS)  # what encoding reads (not the IDE top)
        unsupported = consumes - {"maps", "features", "attributes"}
        if unsupported:
            raise HashbenchError(
                f"method {t.method.name!r} consumes {', '.join(sorted(unsupported))}: distractors are trunk "
                "maps (a method trained from pixels, --finetune full, is not supported)"
            )
        if "features" in consumes and embed is None:
            raise HashbenchError(f"method {t.method.name!r} consumes features: the IDE model is needed")
    outs = [np.empty((count, t.method.bits // 8), dtype=np.uint8) for t in targets]
    seconds = [0.0] * len(targets)
    std = None
    for b in range(-(-count // BLOCK)):
        lo, hi = b * BLOCK, min((b + 1) * BLOCK, count)
        starts, spent, before = [], [0.0] * len(targets), [0.0] * len(targets)
        for i, t in enumerate(targets):
            have = 0
            if t.store is not None:  # what the cache holds of this block: its codes and their seconds
                codes, before[i] = t.store.read(b, hi - lo)
                have = len(codes)
                outs[i][lo : lo + have] = codes
                seconds[i] += before[i]
            starts.append(lo + have)
        need = [i for i in range(len(targets)) if starts[i] < hi]
        if not need:
            if progress is not None:
                progress(hi, count, True)
            continue
        std = channel_std(train_maps) if std is None else std
        for s in range(min(starts[i] for i in need), hi, CHUNK):
            e = min(s + CHUNK, hi)
            here = [i for i in need if starts[i] < e]
            t0 = time.perf_counter()
            maps = distractor_maps(train_maps, train_pids, s, e, seed, std)
            shared = time.perf_counter() - t0
            features = None
            if any("features" in targets[i].method.consumes for i in here):
                t0 = time.perf_counter()
                features = embed(maps)
                embed_s = time.perf_counter() - t0
            for i in here:
                method = targets[i].method
                r0 = max(starts[i], s) - s
                extra: dict = {}
                if "maps" in method.consumes:
                    extra["maps"] = maps[r0:]
                if "features" in method.consumes:
                    extra["features"] = features[r0:]
                if "attributes" in method.consumes:
                    extra["attributes"] = np.full((e - s - r0, n_groups), -1, dtype=np.int16)
                n = e - s - r0
                view = View("distractors", np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), **extra)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    codes = check_codes(method.encode(view), n, method.bits, method.name)
                outs[i][s + r0 : e] = np.packbits(codes, axis=1)
                spent[i] += (
                    time.perf_counter() - t0 + shared + (embed_s if "features" in method.consumes else 0.0)
                )
            if progress is not None:
                progress(e, count, False)
        for i in need:
            seconds[i] += spent[i]
            store = targets[i].store
            if store is not None:  # the whole block so far: what was read plus what was added
                store.write(b, outs[i][lo:hi], before[i] + spent[i])
    return list(zip(outs, seconds, strict=True))


# --------------------------------------------------------------------------------------- evaluation


def distractor_histograms(
    q: np.ndarray, d: np.ndarray, sizes: Sequence[int], bits: int, backend: str = "auto", block: int = 65536
) -> np.ndarray:
    """(len(sizes), nq, bits + 1) int64: for each prefix size, how many of the first ``size``
    distractors lie at each distance from each query."""
    backend = "faiss" if backend in ("auto", "faiss") and _faiss() is not None else "numpy"
    nq = len(q)
    width = bits + 1
    hist = np.zeros((len(sizes), nq, width), dtype=np.int64)
    offsets = (np.arange(64, dtype=np.int64) * width)[:, None]
    edges = [0, *sizes]
    running = np.zeros((nq, width), dtype=np.int64)
    for j in range(len(sizes)):
        for c0 in range(edges[j], edges[j + 1], block):
            c1 = min(c0 + block, edges[j + 1])
            dist = _distance_block(backend, q, d[c0:c1])
            for s in range(0, nq, 64):
                e = min(s + 64, nq)
                values = dist(s, e).astype(np.int64) + offsets[: e - s]
                running[s:e] += np.bincount(values.ravel(), minlength=(e - s) * width).reshape(e - s, width)
        hist[j] = running
    return hist


def evaluate_with_distractors(
    q: np.ndarray,
    g: np.ndarray,
    below: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    chunk: int = 64,
    backend: str = "auto",
) -> list[Evaluation]:
    """The Market-1501 scores of the test gallery ``g`` grown by distractors, one per row of
    ``below``: (n_sizes, nq, bits + 1) counts of distractors at distance ``< d`` from each query
    (:func:`below_counts` of :func:`distractor_histograms`). Exact: the same figures as :func:`hashbench.metrics.evaluate_rankings` on
    the full ranking of gallery + distractors (the distractors appended after it, pid 0)."""
    backend = "faiss" if backend in ("auto", "faiss") and _faiss() is not None else "numpy"
    nq, n_sizes = len(q), len(below)
    q_pids, q_camids = np.asarray(q_pids, np.int64), np.asarray(q_camids, np.int64)
    g_pids, g_camids = np.asarray(g_pids, np.int64), np.asarray(g_camids, np.int64)
    ap = np.full((n_sizes, nq), np.nan)
    first = np.zeros((n_sizes, nq), dtype=np.int64)
    block = _distance_block(backend, q, g)
    g_junk = g_pids == JUNK_PID
    for s in range(0, nq, chunk):
        e = min(s + chunk, nq)
        dist = block(s, e).astype(np.uint16, copy=False)
        order = argsort_block(dist)
        same_pid = g_pids[None, :] == q_pids[s:e, None]
        junk = (same_pid & (g_camids[None, :] == q_camids[s:e, None])) | g_junk[None, :]
        label = same_pid.view(np.int8).copy()
        label[junk] = -1
        ranked = np.take_along_axis(label, order, axis=1)
        ranked_dist = np.take_along_axis(dist, order, axis=1)
        rank_after_junk = np.cumsum(ranked >= 0, axis=1, dtype=np.int64)
        rows, cols = np.nonzero(ranked == 1)
        n_pos = np.bincount(rows, minlength=e - s)
        start = np.cumsum(n_pos) - n_pos
        nth_hit = np.arange(len(rows)) - start[rows] + 1
        valid = n_pos > 0
        for j in range(n_sizes):
            hit_rank = rank_after_junk[rows, cols] + below[j, s + rows, ranked_dist[rows, cols]]
            precision = nth_hit / hit_rank
            ap[j, s:e][valid] = np.bincount(rows, weights=precision, minlength=e - s)[valid] / n_pos[valid]
            first[j, s:e][valid] = hit_rank[start[valid]]
    out = []
    for j in range(n_sizes):
        ok = first[j] > 0
        n_valid = int(ok.sum())
        if n_valid == 0:
            out.append(Evaluation(float("nan"), np.full(max_rank, np.nan), ap[j], 0))
            continue
        hist = np.bincount(np.minimum(first[j][ok], max_rank + 1), minlength=max_rank + 2)
        cmc = np.cumsum(hist[1 : max_rank + 1]) / n_valid
        out.append(Evaluation(float(ap[j][ok].mean()), cmc.astype(np.float64), ap[j], n_valid))
    return out


def below_counts(hist: np.ndarray) -> np.ndarray:
    """Histograms (:func:`distractor_histograms`) -> counts at distance strictly below each value."""
    below = np.zeros_like(hist)
    below[..., 1:] = np.cumsum(hist, axis=-1)[..., :-1]
    return below


# ------------------------------------------------------------------------------------------ the run


@dataclass
class ScaleConfig:
    results: Path
    methods: Sequence[str]
    bits: Sequence[int]
    distractors: Sequence[int]
    backends: Sequence[str] | None = None  # None: auto, per code length
    seed: int | None = None  # None: the cells' seed
    k: int = 100
    out: Path | None = None
    data_root: str | None = None
    dataset_options: dict | None = None
    weights: str | None = None
    cache_dir: Path | None = None
    device: str = "cpu"
    progress: bool = True
    cache_codes: bool = True  # keep the distractor codes under the cache (resume, reuse)
    search_queries: int | None = None  # queries of the timed top-k search (evenly spaced); None: all
    engine: str = "torch"  # what runs the networks on the distractors: torch, or onnxruntime (CPU)


def check_sizes(sizes: Sequence[int], n_gallery: int, k: int) -> None:
    if any(s < 0 for s in sizes):
        raise HashbenchError(f"--distractors: counts must be >= 0, got {min(sizes)}")
    if not sizes:
        raise HashbenchError("--distractors: expected at least one count, e.g. 0,100k")
    if k < 1:
        raise HashbenchError(f"--k {k}: expected a positive number of neighbours")
    if k > n_gallery + min(sizes):
        raise HashbenchError(
            f"--k {k} is larger than the smallest gallery ({n_gallery} test images + {min(sizes)} distractors)"
        )


def folded_embedding(ide, device) -> Callable[[np.ndarray], np.ndarray]:
    """maps -> adapted features through the IDE model with its top's BatchNorm folded and channels-last
    (:func:`hashbench.deep.fused_for_inference`, as the deep methods encode): about twice as fast as
    the cached features' path, the same function up to float rounding (:func:`run_scale` measures on the
    test gallery how many code bits that moves, and every row says it)."""
    import copy

    from .deep import fused_for_inference
    from .ide import embed_maps

    fast = copy.copy(ide)
    fast._modules = dict(ide._modules, top=fused_for_inference(ide.top))
    return lambda maps: embed_maps(fast, maps, device)


def _agreement(how: str, cell: Cell, method, view: View) -> str:
    """The note of a cell whose distractor codes are made otherwise than its test codes were: how many
    code bits that changes on the test gallery (logged, and written in every row)."""
    with torch.inference_mode():
        mine = check_codes(method.encode(view), len(view), cell.bits, cell.method)
    differ = mine != cell.codes("gallery")
    note = (
        f"; {how}: on the test gallery {int(differ.sum())} of {differ.size} code bits "
        f"({100 * differ.mean():.4f} %) differ from the cell's"
    )
    log.info("%s @ %d bits%s", cell.method, cell.bits, note)
    return note


class _Embed(torch.nn.Module):
    def __init__(self, ide) -> None:
        super().__init__()
        self.ide = ide

    def forward(self, x):
        return self.ide.embed(x)


class _Pre(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["pre"]


def engine_embedding(ide, map_shape, engine: str, batch: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """maps -> adapted features through the IDE model exported to ``engine`` (ONNX Runtime)."""
    from .engines import batch_runner

    return batch_runner(engine, _Embed(ide), torch.zeros(batch, *map_shape))


class EngineEncoder:
    """A deep method (the public base, its own ``encode`` and ``codes``: pre-activation > 0 on trunk
    maps) whose network runs on an engine: the same codes up to float rounding (measured per run)."""

    def __init__(self, method, run) -> None:
        self.method, self.run = method, run
        self.name, self.bits, self.consumes = method.name, method.bits, method.consumes

    def encode(self, view: View) -> np.ndarray:
        return (self.run(view.maps) > 0).astype(np.uint8)


def engine_encoder(method, map_shape, engine: str, batch: int = 256) -> EngineEncoder | None:
    """An :class:`EngineEncoder` of ``method`` when it encodes as the deep base does, else ``None``
    (the method is then run as it is, by torch)."""
    from .deep import DeepHashing, HashNet
    from .engines import batch_runner

    model = getattr(method, "model_", None)
    if not (
        isinstance(method, DeepHashing)
        and type(method).encode is DeepHashing.encode
        and isinstance(model, HashNet)
        and type(model).codes is HashNet.codes
        and getattr(method, "finetune", "top") != "full"
    ):
        return None
    return EngineEncoder(method, batch_runner(engine, _Pre(model), torch.zeros(batch, *map_shape)))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def codes_key(cell: Cell, pipe, seed: int, ide_digest: str | None, engine: str = "torch") -> str:
    """What a cell's distractor codes depend on: its fitted method (the artifact's bytes), the trunk
    maps they start from, the IDE model that embeds them (for a method that consumes features), the
    recipe and the seed."""
    from .keys import digest_of

    return digest_of(
        {
            "artifact": _file_digest(cell.path),
            "trunk": pipe.keys.trunk.spec(),
            "ide": ide_digest,
            "recipe": RECIPE,
            "engine": engine,
            "chunk": CHUNK,
            "seed": seed,
            "n_train": len(pipe.inputs["maps"]["train"]),
        }
    )


def _cells(config: ScaleConfig, sizes: Sequence[int]) -> list[tuple[Cell, np.ndarray, np.ndarray, list[str]]]:
    """Every (method, bits) cell asked for, its checked codes and backends; all checks before any work."""
    out = []
    for method in dict.fromkeys(config.methods):
        for bits in dict.fromkeys(int(b) for b in config.bits):
            cell = load_cell(Path(config.results), method, bits)
            q, g = cell.packed_codes()
            check_sizes(sizes, len(g), config.k)
            backends = parse_backends("auto" if config.backends is None else ",".join(config.backends), bits)
            out.append((cell, q, g, backends))
    seeds = {int(c.row.get("seed") or 0) for c, *_ in out}
    if config.seed is None and len(seeds) > 1:
        raise HashbenchError(
            f"the cells were trained with seeds {sorted(seeds)}: pass --seed for one set of distractors, "
            "or scale them apart"
        )
    return out


def run_scale(config: ScaleConfig) -> pd.DataFrame:
    """Grow the gallery of every (method, bits) cell asked for, score and search it at every size;
    append to ``scale.csv``, draw the plots; returns this run's rows. The cells share one pass over the
    distractors (each chunk of maps generated, and embedded by the IDE model, once for all of them)."""
    from .configs import read_configs
    from .query import prepare_pipeline

    sizes = sorted(set(int(s) for s in config.distractors))
    results = Path(config.results)
    cells = _cells(config, sizes)
    out = Path(config.out) if config.out else results
    seed = int(cells[0][0].row.get("seed") or 0) if config.seed is None else int(config.seed)
    configs = read_configs(results)

    notes = [""] * len(cells)  # how the distractor codes were made, beyond the recipe
    encoded: list[tuple[np.ndarray, float]] = [(np.empty((0, c.bits // 8), np.uint8), 0.0) for c, *_ in cells]
    n_train = int(cells[0][0].row.get("n_train") or 0)
    if sizes[-1] > 0:
        pipes: dict = {}
        pipe = None
        for cell, *_ in cells:  # one pipeline for all: the same trunk maps and IDE model
            record = configs.get(cell.row.get("config_hash", ""))
            dataset = record["config"]["dataset"]["name"] if record else cell.dataset
            h = cell.row.get("config_hash", "")
            if h not in pipes:
                pipes[h] = prepare_pipeline(
                    cell, dataset, config.data_root, config.dataset_options, config.weights,
                    config.cache_dir, config.device,
                )  # fmt: skip
            if pipe is None:
                pipe = pipes[h]
            elif (pipes[h].keys.trunk, pipes[h].keys.ide) != (pipe.keys.trunk, pipe.keys.ide):
                raise HashbenchError(
                    f"{cell.method} at {cell.bits} bits comes from another pipeline (trunk or IDE stage) than "
                    f"{cells[0][0].method} at {cells[0][0].bits} bits: scale them apart"
                )
        pipe.load({"maps"})
        train_maps = pipe.inputs["maps"]["train"]
        train_pids = pipe.splits.arrays["train"].pids
        n_train = len(train_maps)
        methods = [c.fitted_method(pipe.context(), required=True, registry=pipe.registry) for c, *_ in cells]
        embed = ide_digest = None
        gallery = pipe.splits.arrays["gallery"]
        if any("features" in m.consumes for m in methods):
            from .ide import MODEL, ide_entry

            ide = pipe.ide_model()
            if config.engine == "torch":
                embed, how = (
                    folded_embedding(ide, pipe.device),
                    "the IDE model with BatchNorm folded, channels-last",
                )
            else:
                embed, how = (
                    engine_embedding(ide, train_maps.shape[1:], config.engine),
                    f"the IDE model on {config.engine}",
                )
            ide_digest = _file_digest(ide_entry(pipe.cache_root, pipe.keys.ide).path(MODEL))
            gallery_features = embed(pipe.inputs["maps"]["gallery"])
            for k, ((cell, *_), method) in enumerate(zip(cells, methods, strict=True)):
                if "features" in method.consumes:
                    view = View("gallery", gallery.pids, gallery.camids, features=gallery_features)
                    notes[k] = _agreement(f"features by {how}", cell, method, view)
        if config.engine != "torch":
            for k, ((cell, *_), method) in enumerate(zip(cells, methods, strict=True)):
                runner = engine_encoder(method, train_maps.shape[1:], config.engine)
                if runner is not None:
                    methods[k] = runner
                    view = View("gallery", gallery.pids, gallery.camids, maps=pipe.inputs["maps"]["gallery"])
                    notes[k] = _agreement(
                        f"codes by the method's network on {config.engine}", cell, runner, view
                    )
        targets = []
        for (cell, *_), method in zip(cells, methods, strict=True):
            store = None
            if config.cache_codes:
                key = codes_key(
                    cell, pipe, seed, ide_digest if "features" in method.consumes else None, config.engine
                )
                store = DistractorCodes(pipe.cache_root, key, cell.bits // 8)
                log.info("%s @ %d bits: distractor codes kept in %s", cell.method, cell.bits, store.folder)
            targets.append(Target(method, store))
        n_groups = len(cells[0][0].schema) if cells[0][0].schema is not None else 0
        t0 = time.perf_counter()
        last, base = [t0], [0, t0]  # the rate counts only what this run made, not what it read

        def progress(done: int, total: int, cached: bool) -> None:
            now = time.perf_counter()
            if cached:
                base[:] = [done, now]
            if config.progress and (now - last[0] > 30 or done == total):
                last[0] = now
                rate = (done - base[0]) / max(1e-9, now - base[1])
                how = "read from the cache" if cached else f"{rate:.0f} per s"
                if not cached and done < total:
                    how += f", {(total - done) / rate:.0f} s left"
                log.info("distractors %d / %d for %d cell(s) (%s)", done, total, len(cells), how)

        encoded = encode_distractors(
            targets, train_maps, train_pids, sizes[-1], seed, embed, n_groups, progress
        )
        for (cell, *_), (_, seconds) in zip(cells, encoded, strict=True):
            log.info(
                "%s @ %d bits: %d distractor codes, %.0f s of encoding (%.2f ms each)",
                cell.method, cell.bits, sizes[-1], seconds, 1000 * seconds / sizes[-1],
            )  # fmt: skip

    frames = []
    for (cell, q, g, backends), (d, encode_s), note in zip(cells, encoded, notes, strict=True):
        rows = _scale_cell(config, cell, q, g, backends, d, encode_s, sizes, seed, n_train, note)
        store_rows(out, rows)
        frames.append(pd.DataFrame(rows, columns=list(SCALE_COLUMNS)))
    plot_scale(out)
    return pd.concat(frames, ignore_index=True)


def _scale_cell(config, cell, q, g, backends, d, encode_s, sizes, seed, n_train, note="") -> list[dict]:
    """The rows of one cell: exact mAP / rank-1 of the grown gallery at every size, and a timed top-k
    search per backend."""
    t0 = time.perf_counter()
    below = below_counts(distractor_histograms(q, d, sizes, cell.bits))
    evaluations = evaluate_with_distractors(
        q,
        g,
        below,
        cell.arrays["query_pids"],
        cell.arrays["query_camids"],
        cell.arrays["gallery_pids"],
        cell.arrays["gallery_camids"],
    )
    log.info(
        "%s @ %d bits: mAP over the full rankings at %d sizes in %.0f s",
        cell.method, cell.bits, len(sizes), time.perf_counter() - t0,
    )  # fmt: skip
    commit, date, dev = git_commit(), now(), device_name(config.device)
    source = distractor_source(n_train, seed) + note
    n = len(q) if config.search_queries is None else min(len(q), config.search_queries)
    timed = q[np.unique(np.linspace(0, len(q) - 1, n).round().astype(int))]  # mAP: every query
    rows = []
    for size, evaluation in zip(sizes, evaluations, strict=True):
        gallery = np.concatenate([g, d[:size]]) if size else g
        k = min(config.k, len(gallery))
        reference = None
        for name in backends:
            index = make_index(name, cell.bits).build(gallery)
            t1 = time.perf_counter()
            dist, ids = index.search(timed, k)
            query_ms = 1000 * (time.perf_counter() - t1) / max(1, len(timed))
            if reference is None and index.exact:
                reference = dist, ids
            if reference is None:  # an approximate backend first: an exact reference for its recall
                reference = make_index("flat", cell.bits).build(gallery).search(timed, k)
            recall = recall_at_k(dist, reference[0])
            identical = bool(np.array_equal(dist, reference[0]) and np.array_equal(ids, reference[1]))
            if index.exact and not identical:  # cannot happen: exact backends agree (tests/test_index.py)
                log.warning(
                    "backend %s at %d codes: neighbours differ from %s", name, len(gallery), backends[0]
                )
            rows.append(
                {
                    "dataset": cell.dataset,
                    "method": cell.method,
                    "bits": cell.bits,
                    "distractors": size,
                    "gallery_size": len(gallery),
                    "map": 100 * evaluation.mAP,
                    "rank1": 100 * evaluation.rank(1),
                    "backend": name,
                    "exact": index.exact,
                    "k": k,
                    "build_s": index.build_s_,
                    "query_ms": query_ms,
                    "recall": recall,
                    "identical": identical,
                    "memory_bytes": index.memory_bytes(),
                    "n_query": len(timed),
                    "encode_s": encode_s,
                    "distractor_source": source,
                    "config_hash": cell.row.get("config_hash", ""),
                    "seed": seed,
                    "device": dev,
                    "version": __version__,
                    "commit": commit,
                    "date": date,
                }
            )
            log.info(
                "%s @ %d bits, %d distractors: mAP %.2f rank-1 %.2f | %s: build %.1f s, %.3f ms/query, recall %.3f",
                cell.method, cell.bits, size, 100 * evaluation.mAP, 100 * evaluation.rank(1), name,
                index.build_s_, query_ms, recall,
            )  # fmt: skip
    return rows


# -------------------------------------------------------------------------------------- store, plots


def store_rows(out: Path, rows: list[dict]) -> Path:
    """Add ``rows`` to ``out/scale.csv`` (:func:`hashbench.results.replace_keyed_rows`): earlier rows of
    the same (cell, size, backend, seed) are replaced, every other row kept as written."""
    return replace_keyed_rows(Path(out) / SCALE_NAME, SCALE_COLUMNS, SCALE_KEY, rows, "scale file")


def read_scale(folder: Path) -> pd.DataFrame | None:
    """The latest row of each (cell, size, backend, seed) of ``folder/scale.csv``, or ``None``."""
    frame = read_store_frame(Path(folder) / SCALE_NAME, "scale file", dtype={"config_hash": str})
    if frame is None or frame.empty:
        return None
    keep = latest_positions(frame, SCALE_KEY)
    return frame.iloc[sorted(keep)].reset_index(drop=True)


def plot_scale(folder: Path) -> tuple[Path, Path] | None:
    """``scale_map.png`` (mAP against gallery size, one line per cell) and ``scale_query_ms.png``
    (ms per query of a top-k search against gallery size, one line per backend and cell), log x."""
    from matplotlib.ticker import NullFormatter

    from .report import new_figure, save_figure
    from .report.figures import COLORS, MARKERS, legend

    frame = read_scale(folder)
    if frame is None:
        return None
    folder = Path(folder)
    cells = list(dict.fromkeys(zip(frame["method"], frame["bits"], frame["seed"], strict=True)))
    label = {
        c: f"{c[0]} @ {c[1]} bits" + (f" (seed {c[2]})" if len({x[2] for x in cells}) > 1 else "")
        for c in cells
    }

    fig = new_figure((6.5, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, c in enumerate(cells):
        part = frame[(frame["method"] == c[0]) & (frame["bits"] == c[1]) & (frame["seed"] == c[2])]
        part = part.drop_duplicates("distractors").sort_values("gallery_size")
        ax.plot(
            part["gallery_size"],
            part["map"],
            marker=MARKERS[i % len(MARKERS)],
            color=COLORS[i % len(COLORS)],
            label=label[c],
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("gallery size (test gallery + distractors)")
    ax.set_ylabel("mAP (%)")
    ax.set_title(f"{frame['dataset'].iloc[0]}: mAP as the gallery grows", fontsize=10)
    ax.grid(alpha=0.3)
    legend(ax)
    map_png = save_figure(fig, folder / MAP_PNG)

    fig = new_figure((6.5, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    series = list(
        dict.fromkeys(zip(frame["backend"], frame["method"], frame["bits"], frame["seed"], strict=True))
    )
    backends = list(dict.fromkeys(frame["backend"]))
    styles = ("-", "--", ":", "-.")
    for backend, *c in series:  # colour and marker: the cell; line style: the backend
        c = tuple(c)
        i, j = cells.index(c), backends.index(backend)
        part = frame[
            (frame["backend"] == backend)
            & (frame["method"] == c[0])
            & (frame["bits"] == c[1])
            & (frame["seed"] == c[2])
        ]
        part = part.sort_values("gallery_size")
        approx = " (approx.)" if str(part["exact"].iloc[0]).lower() == "false" else ""
        ax.plot(
            part["gallery_size"], part["query_ms"], marker=MARKERS[i % len(MARKERS)], color=COLORS[i % len(COLORS)],
            linestyle=styles[j % len(styles)], label=f"{backend}{approx}, {label[c]}",
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    k = int(frame["k"].max())
    ax.set_xlabel("gallery size (test gallery + distractors)")
    ax.set_ylabel(f"ms per query (top-{k})")
    ax.set_title(f"{frame['dataset'].iloc[0]}: top-{k} search time", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    legend(ax)
    query_png = save_figure(fig, folder / QUERY_PNG)
    return map_png, query_png


__all__ = [
    "ScaleConfig",
    "distractor_histograms",
    "distractor_maps",
    "evaluate_with_distractors",
    "parse_distractors",
    "run_scale",
]
