#!/usr/bin/env python
"""Ways of ranking a gallery by a description from a finished cell's codes, beside the ``logistic``
decoder's own ranking (issue 14's probes; results/market1501/validation/README.md, "Ranking rules and
gallery smoothing").

    python scripts/probe_decoding.py RESULTS --method deepssh --bits 128 [--n 3,12] [--seed 0]

RESULTS is a finished run's folder with the cell's artifact (``cells/``); use a validation run
(``--holdout``), never the test split, for a choice. The ``logistic`` decoder is fitted on the cell's
training codes as the runner fits it; every variant below changes only how its per-value
log-posteriors ``L`` (gallery images x attribute values) become the scores that
:func:`hashbench.semantic.evaluate_attribute_queries` sums over a description's values (the same
queries, seed and ties as the committed rows):

* ``log-posterior``: ``L`` (what the runner's ``logistic`` rows are);
* ``probability``: ``exp(L)``, the expected number of matched values;
* ``log(p + eps)``: a floor on each value's evidence, so that one confident mistake costs less;
* ``temperature T``: ``L / T`` renormalised within each group;
* ``knn k``: each gallery image's ``L`` averaged with its ``k - 1`` nearest gallery codes (Hamming,
  itself included; faiss ``IndexBinaryFlat``): transductive smoothing over the searched gallery.

Prints a markdown table of rank-1 / rank-5 % per variant and number of attributes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--method", required=True)
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--n", default="3,12", help="attributes per description (default 3,12)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss

    from hashbench.cells import load_cell, read_rows
    from hashbench.decoders import LogisticDecoder, group_log_softmax
    from hashbench.describe import cell_table
    from hashbench.semantic import evaluate_attribute_queries, evaluate_oracle

    cell = load_cell(args.results, args.method, args.bits, read_rows(args.results))
    schema = cell.schema
    table = cell_table(cell)
    gallery, pids = cell.codes("gallery"), cell.arrays["gallery_pids"]
    ns = [int(n) for n in args.n.split(",")]
    searched = pids > 0  # what evaluate_attribute_queries searches (annotated test identities)

    decoder = LogisticDecoder(schema).fit(cell.codes("train"), cell.attributes("train"))
    L = decoder.value_scores(gallery[searched])

    def evaluate(scores: np.ndarray | None) -> list[tuple[float, float]]:
        if scores is not None:  # the searched images' scores in gallery order
            decoder.value_scores = lambda codes, s=scores: s
        df = evaluate_attribute_queries(decoder, gallery, pids, table, n_values=ns, seed=args.seed)
        return list(zip(df["rank1"], df["rank5"], strict=True))

    oracle = evaluate_oracle(schema, pids, table, n_values=ns, seed=args.seed)
    variants: list[tuple[str, list[tuple[float, float]]]] = [
        ("oracle (true attributes)", list(zip(oracle["rank1"], oracle["rank5"], strict=True))),
        ("log-posterior (the `logistic` rows)", evaluate(None)),
        ("probability", evaluate(np.exp(L))),
    ]
    for eps in (0.05, 0.2):
        variants.append((f"log(p + {eps})", evaluate(np.log(np.exp(L) + eps))))
    for t in (2.0, 4.0):
        variants.append((f"temperature {t:g}", evaluate(group_log_softmax(L / t, decoder.offsets_))))
    packed = np.ascontiguousarray(cell.packed_codes()[1][searched])
    index = faiss.IndexBinaryFlat(args.bits)
    index.add(packed)
    _, near = index.search(packed, 32)
    for k in (4, 8, 16, 32):
        variants.append((f"knn {k}", evaluate(L[near[:, :k]].mean(1))))

    print(f"{args.method} @ {args.bits} bits, {args.results}: rank-1 / rank-5 % by attributes queried\n")
    print("| ranking | " + " | ".join(f"{n} attributes" for n in ns) + " |")
    print("|---|" + "---|" * len(ns))
    for name, got in variants:
        print(f"| {name} | " + " | ".join(f"{r1:.1f} / {r5:.1f}" for r1, r5 in got) + " |")


if __name__ == "__main__":
    main()
