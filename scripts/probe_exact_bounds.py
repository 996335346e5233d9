#!/usr/bin/env python
"""How much of a grown gallery an exact, cluster-pruned search would still have to read (issue 15's
probe; README, "Large galleries").

    python scripts/probe_exact_bounds.py RESULTS --method deepssh --bits 128 \
        --distractor-codes <cache>/distractors/<key> [--distractors 1000000] [--clusters 1024,8192]

RESULTS: the finished run whose cell ``hashbench scale`` grew; ``--distractor-codes``: that cell's
distractor codes as ``hashbench scale`` keeps them (``block-<b>.npy``; the folder its log line
"distractor codes kept in ..." names, with blocks covering ``--distractors``). The gallery is the cell's test gallery followed by the first
``--distractors`` distractor codes, the queries 500 evenly spaced test queries, as in ``scale.csv``.

For each query the true distance ``d_k`` of its 100th neighbour is taken from faiss's exact scan (an
oracle: an index would have to find it). The gallery is then cut into ``C`` clusters (faiss k-means on
the bits, centres rounded to bits, each code assigned to its nearest centre), and two exact pruning
rules are counted with that oracle ``d_k``, the best case for either:

* **clusters touched**: a cluster can hold a neighbour only if ``d(q, c) - R_c <= d_k`` (``R_c``: the
  largest distance of a member to its centre);
* **triangle candidates**: a member ``x`` can be one only if ``|d(q, c) - d(x, c)| <= d_k``; the share of
  the gallery that passes is what a triangle-inequality index must verify, before any bookkeeping.

Prints, per ``C``, the median and 90th percentile over the queries.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--method", required=True)
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--distractor-codes", type=Path, required=True)
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--clusters", default="1024,8192")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--queries", type=int, default=500)
    args = ap.parse_args()

    import faiss

    from hashbench.cells import load_cell, read_rows
    from hashbench.scale import BLOCK, DistractorCodes

    cell = load_cell(args.results, args.method, args.bits, read_rows(args.results))
    query, gallery = cell.packed_codes()
    folder = args.distractor_codes.resolve()  # <cache>/distractors/<key>
    store = DistractorCodes(folder.parent.parent, folder.name, gallery.shape[1])
    blocks, have = [], 0
    for b in range(-(-args.distractors // BLOCK)):
        want = min(BLOCK, args.distractors - have)
        codes, _ = store.read(b, want)
        if len(codes) < want:
            raise SystemExit(
                f"{folder}: block {b} missing or damaged; the folder holds {have} distractor codes"
            )
        blocks.append(codes)
        have += len(codes)
    codes = np.ascontiguousarray(np.concatenate([gallery, *blocks]))
    q = np.ascontiguousarray(query[np.linspace(0, len(query) - 1, args.queries).astype(int)])
    n = len(codes)
    t0 = time.perf_counter()
    d, _ = faiss.knn_hamming(q, codes, args.k, "hc")
    scan_ms = (time.perf_counter() - t0) / len(q) * 1e3
    kth = d[:, -1].astype(np.int64)
    print(
        f"{args.method} @ {args.bits} bits, {n:,} codes, {len(q)} queries: exact scan {scan_ms:.3f} ms/query;"
    )
    print(
        f"distance of the {args.k}th neighbour: median {np.median(kth):.0f}, 10-90 % {np.percentile(kth, 10):.0f}-{np.percentile(kth, 90):.0f}\n"
    )
    print(
        "| clusters | median radius R_c | clusters touched (median / p90) | triangle candidates (median / p90) |"
    )
    print("|---:|---:|---:|---:|")
    unpacked = np.unpackbits(codes, axis=1).astype(np.float32)
    rng = np.random.default_rng(0)
    for c in (int(x) for x in args.clusters.split(",")):
        km = faiss.Kmeans(args.bits, c, niter=10, seed=0, verbose=False)
        km.train(unpacked[rng.choice(n, min(n, 60 * c), replace=False)])
        centres = np.ascontiguousarray(np.packbits((km.centroids > 0.5).astype(np.uint8), axis=1))
        _, own = faiss.knn_hamming(codes, centres, 1, "hc")
        own = own[:, 0]
        dxc = np.unpackbits(codes ^ centres[own], axis=1).sum(1).astype(np.int64)
        dqc = np.unpackbits(q[:, None, :] ^ centres[None], axis=2).sum(2).astype(np.int64)  # (nq, c)
        count = np.zeros((c, args.bits + 1), np.int64)
        np.add.at(count, (own, dxc), 1)
        below = np.concatenate([np.zeros((c, 1), np.int64), count.cumsum(1)], 1)  # members with d(x,c) < r
        lo = np.clip(dqc - kth[:, None], 0, args.bits + 1)
        hi = np.clip(dqc + kth[:, None] + 1, 0, args.bits + 1)
        rows = np.arange(c)[None, :]
        candidates = (below[rows, hi] - below[rows, lo]).sum(1) / n * 100
        radius = np.zeros(c, np.int64)
        np.maximum.at(radius, own, dxc)
        touched = (dqc - radius[None] <= kth[:, None]).sum(1) / c * 100
        print(
            f"| {c:,} | {np.median(radius):.0f} | {np.median(touched):.1f} % / {np.percentile(touched, 90):.1f} % "
            f"| {np.median(candidates):.1f} % / {np.percentile(candidates, 90):.1f} % |",
            flush=True,
        )


if __name__ == "__main__":
    main()
