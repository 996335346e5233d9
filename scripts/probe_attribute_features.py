#!/usr/bin/env python
"""How well float features of the backbone predict the attributes of unseen identities, pooled over
the whole image or over horizontal stripes (issue 14's probe; results/market1501/validation/README.md,
"What limits search by description").

    python scripts/probe_attribute_features.py RESULTS HELDOUT --trunk ~/.cache/hashbench/trunk/<key> \
        --ide ~/.cache/hashbench/ide/<key> [--stripes 4]

Only training images are read, never the test split's:

* RESULTS: a finished run's folder with a cell artifact (``cells/``) whose training split is the one
  the trunk cache holds (its ``train_pids`` and ``train_attributes``, in the cache's image order);
* HELDOUT: a validation run (``--holdout``) of that dataset: the ids it trained on are the ids fitted
  here, the other training ids (its held-out and distractor ids) are scored;
* ``--trunk``: the trunk cache folder of RESULTS' run (``train.npy``, the cut's maps);
* ``--ide``: the IDE stage's cache folder of HELDOUT's run (``model.pt``: a top trained on the fitted
  ids only, identity loss).

For each feature (the trunk maps and the IDE top's output maps, each averaged over the whole map and
over ``--stripes`` horizontal stripes, concatenated), per attribute group an L2 logistic regression
on the standardised features of the fitted ids' images (``C`` as printed) predicts the scored ids'
images. Prints a markdown table of accuracy % per group and the mean over the groups.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("heldout", type=Path)
    ap.add_argument("--trunk", type=Path, required=True)
    ap.add_argument("--ide", type=Path, required=True)
    ap.add_argument("--stripes", type=int, default=4)
    ap.add_argument("--cut", default="block13")
    args = ap.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression

    from hashbench.backbones.mobilenetv2 import MobileNetV2
    from hashbench.cells import load_cell, read_rows
    from hashbench.ide import load_ide_model

    def first_cell(folder: Path):  # the first hashing cell (a reference row has no codes)
        rows = read_rows(folder)
        row = next(r for r in rows if r.bits is not None)
        return load_cell(folder, row.method, row.bits, rows)

    cell, heldout = first_cell(args.results), first_cell(args.heldout)
    pids, attributes = cell.arrays["train_pids"], cell.attributes("train")
    fitted = np.isin(pids, np.unique(heldout.arrays["train_pids"]))
    maps = np.load(args.trunk / "train.npy", mmap_mode="r")
    if len(maps) != len(pids):
        raise SystemExit(f"{args.trunk}: {len(maps)} training maps, the cell has {len(pids)} training images")
    print(
        f"fitted: {len(np.unique(pids[fitted]))} ids ({fitted.sum()} images); scored: "
        f"{len(np.unique(pids[~fitted]))} ids ({(~fitted).sum()} images)\n"
    )

    ide = args.ide.expanduser().resolve()  # <cache root>/ide/<key>: loaded (and verified) as a run does
    loaded = load_ide_model(ide.parent.parent, ide.name, MobileNetV2(), args.cut, "cpu")
    if loaded is None:
        raise SystemExit(f"{args.ide}: no verified IDE model (model.pt) there")
    model = loaded[0]

    def pooled(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        h = x.shape[2]
        parts = [x[:, :, i * h // args.stripes : (i + 1) * h // args.stripes] for i in range(args.stripes)]
        return x.mean((2, 3)).numpy(), torch.cat([p.mean((2, 3)) for p in parts], 1).numpy()

    feats: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for s in range(0, len(maps), 256):
            x = torch.from_numpy(np.asarray(maps[s : s + 256], dtype=np.float32))
            for source, y in (("trunk maps", x), ("IDE top", model.top(x))):
                whole, stripes = pooled(y)
                feats.setdefault(f"{source}, whole ({whole.shape[1]}-d)", []).append(whole)
                feats.setdefault(f"{source}, {args.stripes} stripes ({stripes.shape[1]}-d)", []).append(
                    stripes
                )

    names = [g.name for g in cell.schema.groups]
    print("| features | C | " + " | ".join(names) + " | mean |")
    print("|---|---:|" + "---:|" * (len(names) + 1))
    for label, parts in feats.items():
        x = np.concatenate(parts)
        x = (x - x[fitted].mean(0)) / (x[fitted].std(0) + 1e-6)
        C = 0.01 if x.shape[1] <= 384 else 0.001
        accs = []
        for g in range(len(names)):
            known = attributes[:, g] >= 0
            clf = LogisticRegression(C=C, max_iter=300).fit(x[fitted & known], attributes[fitted & known, g])
            scored = ~fitted & known
            accs.append(100.0 * float(np.mean(clf.predict(x[scored]) == attributes[scored, g])))
        print(f"| {label} | {C:g} | " + " | ".join(f"{a:.1f}" for a in accs) + f" | {np.mean(accs):.1f} |")


if __name__ == "__main__":
    main()
