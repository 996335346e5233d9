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

What limits it (the rows below the rules):

* ``identity mean``: each image's ``L`` replaced by the mean over the gallery images of its *true*
  identity, a perfect clustering that no searcher has: what pooling over the gallery (``knn``) aims
  at, though not a strict bound on it (never a method);
* ``ranking decoder``: per-value scores ``s(code)`` (linear, or a one-hidden-layer MLP) trained on the
  training codes for the joint description itself: for each training image a description (its own
  values, all groups half the time, else a random subset), a softmax over the images of the batch whose
  positives are those that have every described value (``RANK_EPOCHS`` epochs, AdamW, seeded);
* ``--float-features DIR``: the ``logistic`` regression fitted on float features of the cell's images
  instead of its codes (``DIR/train.npy`` and ``DIR/gallery.npy`` in the cell's image order, e.g. the
  IDE stage's cache folder ``~/.cache/hashbench/ide/<key>``): what the backbone's float features carry;
* ``training gallery``: the decoder fitted on the training codes ranks the *training* images for
  descriptions of the training identities (in-sample): how rank-1 follows decoding accuracy when the
  accuracy is high.

Prints a markdown table of rank-1 / rank-5 % per variant and number of attributes, with the mean
over the groups of the accuracy of the most probable value on the searched images, for the rows whose
scores are per-group log-posteriors.
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
    ap.add_argument("--float-features", type=Path, help="a folder with train.npy, gallery.npy (see above)")
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

    train_codes, train_attributes = cell.codes("train"), cell.attributes("train")
    decoder = LogisticDecoder(schema).fit(train_codes, train_attributes)
    L = decoder.value_scores(gallery[searched])

    def evaluate(scores: np.ndarray | None, codes=gallery, ids=pids) -> list[tuple[float, float]]:
        if scores is not None:  # the searched images' scores in gallery order
            decoder.value_scores = lambda codes, s=scores: s
        df = evaluate_attribute_queries(decoder, codes, ids, table, n_values=ns, seed=args.seed)
        vars(decoder).pop("value_scores", None)  # the class's own again
        return list(zip(df["rank1"], df["rank5"], strict=True))

    truth = cell.attributes("gallery")[searched]

    def accuracy(scores: np.ndarray, truth: np.ndarray = truth) -> float:
        """Mean over groups of the accuracy of the most probable value (images with a known value)."""
        accs = []
        for g in range(len(schema)):
            known = truth[:, g] >= 0
            block = scores[known, decoder.offsets_[g] : decoder.offsets_[g + 1]]
            accs.append(np.mean(block.argmax(1) == truth[known, g]))
        return 100.0 * float(np.mean(accs))

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
    accs = {variants[1][0]: accuracy(L)}  # the `logistic` rows' own

    pooled = np.empty_like(L)
    for p in np.unique(pids[searched]):
        mine = pids[searched] == p
        pooled[mine] = L[mine].mean(0)
    variants.append(("identity mean (true gallery identities)", evaluate(pooled)))
    accs[variants[-1][0]] = accuracy(pooled)
    for hidden in (0, 512):
        scores = ranking_decoder(
            train_codes, train_attributes, gallery[searched], decoder.offsets_, hidden, args.seed
        )
        name = f"ranking decoder, {'linear' if not hidden else f'MLP {hidden}'}, {RANK_EPOCHS} epochs"
        variants.append((name, evaluate(scores)))  # no accuracy: its scores rank descriptions, not values
    if args.float_features is not None:
        scores = float_logistic(args.float_features, train_attributes, searched, decoder, len(gallery))
        name = f"logistic on float features ({args.float_features.name})"
        variants.append((name, evaluate(scores)))
        accs[name] = accuracy(scores)
    # in-sample: the training images searched for descriptions of the training identities
    name = "training gallery, in-sample (`logistic`)"
    variants.append((name, evaluate(None, train_codes, cell.arrays["train_pids"])))
    accs[name] = accuracy(decoder.value_scores(train_codes), train_attributes)
    in_sample_oracle = evaluate_oracle(schema, cell.arrays["train_pids"], table, n_values=ns, seed=args.seed)
    variants.append(
        (
            "training gallery, oracle",
            list(zip(in_sample_oracle["rank1"], in_sample_oracle["rank5"], strict=True)),
        )
    )

    print(f"{args.method} @ {args.bits} bits, {args.results}: rank-1 / rank-5 % by attributes queried\n")
    print("| ranking | " + " | ".join(f"{n} attributes" for n in ns) + " | mean accuracy % |")
    print("|---|" + "---|" * (len(ns) + 1))
    for name, got in variants:
        acc = f"{accs[name]:.1f}" if name in accs else ""
        print(f"| {name} | " + " | ".join(f"{r1:.1f} / {r5:.1f}" for r1, r5 in got) + f" | {acc} |")


RANK_EPOCHS = 10  # the ranking decoder's epochs (batch 512, AdamW lr 1e-3, weight decay 0.01)


def ranking_decoder(
    codes: np.ndarray,
    attributes: np.ndarray,
    gallery: np.ndarray,
    offsets: np.ndarray,
    hidden: int,
    seed: int,
) -> np.ndarray:
    """Per-value scores (gallery x V) of a scorer trained for whole descriptions (see the docstring)."""
    import torch

    torch.manual_seed(seed)
    n_groups, n_values = attributes.shape[1], int(offsets[-1])
    x = torch.tensor(codes * 2.0 - 1.0, dtype=torch.float32)
    a = torch.tensor(attributes, dtype=torch.int64)
    off = torch.tensor(offsets[:-1], dtype=torch.int64)
    if hidden:
        layers = [torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Dropout(0.3)]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(hidden, n_values))
    else:
        net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], n_values))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    batch = 512
    for _ in range(RANK_EPOCHS):
        order = torch.randperm(len(x))
        for s in range(0, len(x) - batch + 1, batch):
            idx = order[s : s + batch]
            ai = a[idx]
            share = torch.where(torch.rand(batch, 1) < 0.5, torch.ones(batch, 1), torch.rand(batch, 1))
            described = (torch.rand(batch, n_groups) < share) & (ai >= 0)
            picks = torch.zeros(batch, n_values)
            i, g = described.nonzero(as_tuple=True)
            picks[i, off[g] + ai[i, g]] = 1.0
            logp = (picks @ net(x[idx]).T).log_softmax(1)  # each description over the batch's images
            fits = ((ai[None, :, :] == ai[:, None, :]) | ~described[:, None, :]).all(-1)
            loss = -torch.logsumexp(logp.masked_fill(~fits, -1e9), 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return net(torch.tensor(gallery * 2.0 - 1.0, dtype=torch.float32)).double().numpy()


def float_logistic(folder: Path, attributes: np.ndarray, searched: np.ndarray, decoder, n_gallery: int):
    """Log-posteriors (gallery x V) of per-group L2 logistic regressions (``C=0.001``) on standardised
    float features: the ``logistic`` decoder's model on features instead of bits."""
    from sklearn.linear_model import LogisticRegression

    train, gallery = np.load(folder / "train.npy"), np.load(folder / "gallery.npy")
    if len(train) != len(attributes) or len(gallery) != n_gallery:
        raise SystemExit(
            f"{folder}: {len(train)} / {len(gallery)} feature rows, the cell has "
            f"{len(attributes)} / {n_gallery} training / gallery images"
        )
    mu, sd = train.mean(0), train.std(0) + 1e-6
    train, gallery = (train - mu) / sd, ((gallery - mu) / sd)[searched]
    out = np.full((len(gallery), int(decoder.offsets_[-1])), -30.0)
    for g in range(attributes.shape[1]):
        known = attributes[:, g] >= 0
        clf = LogisticRegression(C=0.001, max_iter=500).fit(train[known], attributes[known, g])
        out[:, decoder.offsets_[g] + clf.classes_] = clf.predict_log_proba(gallery)
    return out


if __name__ == "__main__":
    main()
