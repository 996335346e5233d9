"""The explainability report: what the bits of a code say about a person's attributes.

For each finished cell (method, bits) of a results directory, read back from its artifact:

* **Attribute prediction** per attribute group, by the calibrated decoder
  (:class:`~hashbench.decoders.LogisticDecoder`, per group an L2 logistic regression on the bits) fitted
  on the training codes and identity attributes, measured on the gallery images of test identities
  (pid > 0) whose value is known:

  - ``accuracy``: of the most probable value, next to the majority-class baseline (always answer the
    most frequent training value, scored on the same images) and chance (1 / number of values);
  - ``balanced_accuracy``: the mean over the values present of each value's recall, of the
    prior-corrected decision (``argmax P(v | code) / P(v)``, the Bayes decision for it). Always-majority
    scores ``1 / k`` here (``majority_balanced``, k the values present): on an imbalanced group (hat:
    97 % "no" on Market-1501) accuracy rewards saying "no", balanced accuracy does not;
  - ``carried``: the group counts as carried by the codes only when its balanced accuracy beats
    majority's by more than two standard errors, ``SE = sqrt(sum_v r_v (1 - r_v) / m_v) / k`` with
    ``r_v`` the value's recall and ``m_v`` the number of test *identities* with it (attributes are
    identity-level, so an identity's images are not independent evidence);
  - ``nb_accuracy``: the accuracy of the naive-Bayes decoder (:class:`~hashbench.semantic.AttributeDecoder`)
    that search by description used before, for comparison (it is not calibrated on imbalanced groups
    and can fall below majority).
* **Which bits carry which group**: the mutual information, in bits, between each bit and each group on
  the training codes (images with a known value). A bit that copies a binary attribute has MI equal to
  the attribute's entropy; a bit independent of it, 0.

Outputs (beside ``results.csv`` unless ``out_dir``): ``explain.csv`` (one row per cell and group),
``explain.md`` (methods × groups accuracy tables, one per code length) and ``explain_<method>_<bits>.png``
(the bits × groups MI heatmap in bit order, with a method's reserved segments drawn when the run
recorded a code layout for it; the top bits of each group; accuracy against the baselines).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cells import Cell, hash_rows, load_cell, read_rows
from .configs import recorded_layout
from .errors import HashbenchError

log = logging.getLogger(__name__)

NEEDED = ("train_codes", "gallery_codes", "train_attributes", "gallery_attributes", "gallery_pids", "schema")
TOP_K = 8  # top bits per group in the CSV and the figure
MAX_COLUMNS = 1024  # heatmap columns; longer codes are max-pooled over runs of consecutive bits
CSV_COLUMNS = (
    "dataset",
    "method",
    "bits",
    "group",
    "n_values",
    "n_test",
    "decoder",
    "accuracy",
    "balanced_accuracy",
    "chance",
    "majority",
    "majority_balanced",
    "carried",
    "nb_accuracy",
    "entropy",
    "mi_max",
    "mi_sum",
    "segment",
    "mi_segment_share",
    "mi_top_bits",
)


# ------------------------------------------------------------------------------------------ measures


def entropy(labels: np.ndarray, n_values: int | None = None) -> float:
    """Shannon entropy (bits) of the known (>= 0) ``labels``."""
    y = np.asarray(labels)
    y = y[y >= 0]
    if len(y) == 0:
        return 0.0
    p = np.bincount(y, minlength=n_values or 0) / len(y)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def mutual_information(codes: np.ndarray, labels: np.ndarray, n_values: int | None = None) -> np.ndarray:
    """MI (bits) between each bit of ``codes`` (N, bits) 0/1 and ``labels`` (N,) (rows with -1 dropped).

    Plug-in estimate from the joint counts; returns (bits,) float64, each in [0, H(labels)].
    """
    codes = np.asarray(codes)
    y = np.asarray(labels, dtype=np.int64)
    known = y >= 0
    c, y = codes[known].astype(np.float32), y[known]
    n = len(y)
    if n == 0:
        return np.zeros(codes.shape[1])
    k = max(int(y.max()) + 1, n_values or 0)
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    n_y = onehot.sum(0).astype(np.float64)  # (k,)
    n1 = (onehot.T @ c).astype(np.float64)  # (k, bits): bit = 1 and label = v
    joint = np.stack([n_y[:, None] - n1, n1]) / n  # (2, k, bits)
    p_bit = joint.sum(1, keepdims=True)  # (2, 1, bits)
    p_y = (n_y / n)[None, :, None]  # (1, k, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log2(joint / (p_bit * p_y)), 0.0)
    return np.clip(terms.sum((0, 1)), 0.0, None)


def mi_matrix(codes: np.ndarray, attributes: np.ndarray, n_values: Sequence[int]) -> np.ndarray:
    """(bits, groups) MI of every bit with every attribute group."""
    return np.stack(
        [mutual_information(codes, attributes[:, g], n_values[g]) for g in range(len(n_values))], axis=1
    )


def majority_value(labels: np.ndarray, n_values: int) -> int:
    """The most frequent known value (ties: the smaller code); 0 when nothing is known."""
    y = np.asarray(labels)
    y = y[y >= 0]
    return int(np.bincount(y, minlength=n_values).argmax()) if len(y) else 0


# ------------------------------------------------------------------------------------------ one cell


@dataclass
class Explanation:
    """The numbers of one cell: per group accuracy and baselines, and the bits × groups MI."""

    dataset: str
    method: str
    bits: int
    groups: list[str]
    n_values: list[int]
    accuracy: np.ndarray  # (G,) NaN where no test image has a known value
    chance: np.ndarray
    majority: np.ndarray
    n_test: np.ndarray
    entropy: np.ndarray  # (G,) of the training labels
    mi: np.ndarray  # (bits, G)
    segments: dict[str, tuple[int, int]] | None
    balanced: np.ndarray | None = None  # (G,) balanced accuracy of the prior-corrected decision
    majority_balanced: np.ndarray | None = None  # (G,) always-majority's: 1 / values present
    carried: np.ndarray | None = None  # (G,) bool: balanced beats majority by > 2 SE
    nb_accuracy: np.ndarray | None = None  # (G,) the naive-Bayes decoder's accuracy
    decoder: str = "logistic"

    def segment_share(self, g: int) -> float:
        """Share of group ``g``'s total MI (over all bits) that lies in its own reserved segment."""
        start, stop = (self.segments or {})[self.groups[g]]
        total = self.mi[:, g].sum()
        return float(self.mi[start:stop, g].sum() / total) if total > 0 else float("nan")

    def rows(self) -> list[dict]:
        out = []
        for g, name in enumerate(self.groups):
            top = np.argsort(-self.mi[:, g], kind="stable")[:TOP_K]
            seg = (self.segments or {}).get(name)
            out.append(
                {
                    "dataset": self.dataset,
                    "method": self.method,
                    "bits": self.bits,
                    "group": name,
                    "n_values": self.n_values[g],
                    "n_test": int(self.n_test[g]),
                    "decoder": self.decoder,
                    "accuracy": _num(self.accuracy[g]),
                    "balanced_accuracy": _num(_at(self.balanced, g)),
                    "chance": _num(self.chance[g]),
                    "majority": _num(self.majority[g]),
                    "majority_balanced": _num(_at(self.majority_balanced, g)),
                    "carried": "" if self.carried is None else ("yes" if self.carried[g] else "no"),
                    "nb_accuracy": _num(_at(self.nb_accuracy, g)),
                    "entropy": _num(self.entropy[g]),
                    "mi_max": _num(self.mi[:, g].max()),
                    "mi_sum": _num(self.mi[:, g].sum()),
                    "segment": f"{seg[0]}-{seg[1]}" if seg else "",
                    "mi_segment_share": _num(self.segment_share(g)) if seg else "",
                    "mi_top_bits": " ".join(f"{b}:{self.mi[b, g]:.4f}" for b in top),
                }
            )
        return out


def _num(x: float) -> str:
    return "" if not np.isfinite(x) else f"{x:.4f}"


def _at(a: np.ndarray | None, g: int) -> float:
    return float("nan") if a is None else float(a[g])


def balanced_accuracy(
    predicted: np.ndarray, truth: np.ndarray, ids: np.ndarray | None = None
) -> tuple[float, float, int]:
    """(balanced accuracy, its standard error, values present) of ``predicted`` against ``truth``.

    Balanced accuracy: the mean over the values present in ``truth`` of each value's recall. Standard
    error ``sqrt(sum_v r_v (1 - r_v) / m_v) / k``, ``m_v`` the number of distinct ``ids`` with value ``v``
    (its images when ``ids`` is None): identities, not images, are the independent draws."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    values = np.unique(truth)
    if len(values) == 0:
        return float("nan"), float("nan"), 0
    recalls, var = [], 0.0
    for v in values:
        mine = truth == v
        r = float((predicted[mine] == v).mean())
        m = len(np.unique(ids[mine])) if ids is not None else int(mine.sum())
        recalls.append(r)
        var += r * (1 - r) / max(m, 1)
    return float(np.mean(recalls)), float(np.sqrt(var) / len(values)), len(values)


def segments_of(cell: Cell) -> dict[str, tuple[int, int]] | None:
    """The cell's code layout (name -> (start, stop)) as the runner recorded it in ``configs.jsonl``
    (:meth:`hashbench.method.HashMethod.code_layout`), or ``None`` when the method declares none."""
    return recorded_layout(cell.results_dir, cell.row.get("config_hash", ""))


def explain_cell(cell: Cell, **decoder_params) -> Explanation:
    """Attribute prediction (calibrated decoder, accuracy and balanced accuracy; naive Bayes beside it)
    and bit/group MI of one cell. ``decoder_params``: hyperparameters of the logistic decoder."""
    from .decoders import LogisticDecoder
    from .semantic import AttributeDecoder

    cell.require(*NEEDED)
    schema = cell.schema
    if schema is None or len(schema) == 0:
        raise HashbenchError(f"artifact {cell.path}: the dataset has no attribute schema; nothing to explain")
    n_values = [len(g.values) for g in schema.groups]
    train_codes, gallery_codes = cell.codes("train"), cell.codes("gallery")
    train_attr, gallery_attr = cell.attributes("train"), cell.attributes("gallery")
    decoder = LogisticDecoder(schema, **decoder_params).fit(train_codes, train_attr)
    plain = np.asarray(decoder.predict(gallery_codes))
    corrected = np.asarray(decoder.predict(gallery_codes, balanced=True))
    nb = np.asarray(AttributeDecoder(schema).fit(train_codes, train_attr).predict(gallery_codes))
    pids = np.asarray(cell.arrays["gallery_pids"])
    test = pids > 0
    G = len(schema)
    nan = lambda: np.full(G, np.nan)  # noqa: E731
    accuracy, majority, nb_accuracy, balanced, majority_bal = nan(), nan(), nan(), nan(), nan()
    carried = np.zeros(G, dtype=bool)
    n_test = np.zeros(G, dtype=int)
    for g in range(G):
        mask = test & (gallery_attr[:, g] >= 0)
        n_test[g] = mask.sum()
        if n_test[g]:
            truth = gallery_attr[mask, g]
            major = majority_value(train_attr[:, g], n_values[g])
            accuracy[g] = float((plain[mask, g] == truth).mean())
            nb_accuracy[g] = float((nb[mask, g] == truth).mean())
            majority[g] = float((truth == major).mean())
            balanced[g], se, k = balanced_accuracy(corrected[mask, g], truth, pids[mask])
            majority_bal[g] = (1.0 / k) if major in set(truth.tolist()) else 0.0
            carried[g] = bool(balanced[g] - majority_bal[g] > 2 * se)
    return Explanation(
        dataset=cell.dataset,
        method=cell.method,
        bits=cell.bits,
        groups=list(schema.names),
        n_values=n_values,
        accuracy=accuracy,
        chance=1.0 / np.asarray(n_values, dtype=float),
        majority=majority,
        n_test=n_test,
        entropy=np.array([entropy(train_attr[:, g], n_values[g]) for g in range(G)]),
        mi=mi_matrix(train_codes, train_attr, n_values),
        segments=segments_of(cell),
        balanced=balanced,
        majority_balanced=majority_bal,
        carried=carried,
        nb_accuracy=nb_accuracy,
        decoder=decoder.name,
    )


# ------------------------------------------------------------------------------------------ outputs


def _pool(mi: np.ndarray, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """(G, columns) heatmap data, max-pooled over runs of ``factor`` consecutive bits when too long."""
    bits = mi.shape[0]
    factor = int(np.ceil(bits / max_columns))
    if factor <= 1:
        return mi.T, 1
    padded = np.pad(mi, ((0, (-bits) % factor), (0, 0)))
    return padded.reshape(-1, factor, mi.shape[1]).max(1).T, factor


def plot_explanation(ex: Explanation, path: Path) -> Path:
    """The cell's figure: MI heatmap (all bits, in order), top bits per group, accuracy vs baselines."""
    from matplotlib.patches import Rectangle

    from .report import new_figure, save_figure

    G = len(ex.groups)
    data, factor = _pool(ex.mi)
    width = float(np.clip(6 + data.shape[1] / 110, 10, 16))
    fig = new_figure((width, 2.2 + 0.34 * G * 2 + 0.8))
    grid = fig.add_gridspec(2, 2, height_ratios=(1.1, 1.0), width_ratios=(1.5, 1.0))
    ax = fig.add_subplot(grid[0, :])
    vmax = max(float(ex.mi.max()), 1e-6)
    im = ax.imshow(
        data,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0,
        vmax=vmax,
        extent=(-0.5 * factor, data.shape[1] * factor - 0.5 * factor, G - 0.5, -0.5),
    )
    ax.set_yticks(range(G), ex.groups, fontsize=8)
    ax.set_xlabel("bit" + (f" (each column: max over {factor} consecutive bits)" if factor > 1 else ""))
    ax.set_xlim(-0.5 * factor, ex.bits - 0.5)
    title = f"{ex.method} @ {ex.bits} bits: mutual information between each bit and each attribute group"
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="MI (bits)", pad=0.01, fraction=0.03)
    if ex.segments:
        for name, (start, stop) in ex.segments.items():
            for edge in (start, stop):
                ax.axvline(edge - 0.5, color="white", linewidth=0.6, alpha=0.8)
            if name in ex.groups:  # the group's reserved segment on its own row
                g = ex.groups.index(name)
                ax.add_patch(
                    Rectangle(
                        (start - 0.5, g - 0.5), stop - start, 1, fill=False, edgecolor="red", linewidth=1.2
                    )
                )
            else:  # e.g. the identity segment: labelled inside the axes, at its top
                ax.text(
                    (start + stop) / 2 - 0.5,
                    -0.45,
                    f"{name} segment",
                    ha="center",
                    va="top",
                    fontsize=7,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.4, "linewidth": 0, "pad": 1.5},
                )

    # top bits per group: rank columns, MI as colour, the bit index written in each cell
    k = min(TOP_K, ex.bits)
    order = np.argsort(-ex.mi, axis=0, kind="stable")[:k].T  # (G, k)
    values = np.take_along_axis(ex.mi.T, order, axis=1)
    ax2 = fig.add_subplot(grid[1, 0])
    ax2.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=vmax)
    for g in range(G):
        for r in range(k):
            light = values[g, r] < 0.6 * vmax
            bit = int(order[g, r])
            seg = (ex.segments or {}).get(ex.groups[g])
            own = "*" if seg and seg[0] <= bit < seg[1] else ""
            ax2.text(r, g, f"{bit}{own}", ha="center", va="center", fontsize=7, color="w" if light else "k")
    ax2.set_yticks(range(G), ex.groups, fontsize=8)
    ax2.set_xticks(range(k), [str(r + 1) for r in range(k)], fontsize=8)
    own = ", * in the group's segment" if ex.segments else ""
    ax2.set_xlabel(f"rank (cell text: bit index{own})")
    ax2.set_title(f"top {k} bits per group by MI", fontsize=10)

    ax3 = fig.add_subplot(grid[1, 1])
    y = np.arange(G)
    h = 0.38
    ax3.barh(y - h / 2, ex.accuracy * 100, height=h, color="#1f77b4", label="accuracy")
    if ex.balanced is not None:
        colors = ["#2ca02c" if c else "#98df8a" for c in ex.carried]
        ax3.barh(y + h / 2, ex.balanced * 100, height=h, color=colors, label="balanced accuracy")
        ax3.scatter(ex.majority_balanced * 100, y + h / 2, marker="|", s=60, color="#ff7f0e",
                    label="majority, balanced (1/k)", zorder=3)  # fmt: skip
    ax3.scatter(ex.majority * 100, y - h / 2, marker="|", s=60, color="#d62728", label="majority", zorder=3)
    ax3.scatter(ex.chance * 100, y, marker="|", s=120, color="0.3", label="chance", zorder=3)
    names = [f"{n} ✓" if ex.carried is not None and ex.carried[g] else n for g, n in enumerate(ex.groups)]
    ax3.set_yticks(y, names, fontsize=8)
    ax3.invert_yaxis()
    ax3.set_xlim(0, 100)
    ax3.set_xlabel("%, gallery of test ids (✓ carried: balanced > majority + 2 SE)", fontsize=8)
    ax3.set_title(f"attribute prediction from codes ({ex.decoder} decoder)", fontsize=10)
    ax3.grid(True, axis="x", alpha=0.3)
    ax3.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    return save_figure(fig, path)


def markdown(rows: Sequence[dict]) -> str:
    """One table per code length: methods x groups, each cell ``accuracy / balanced accuracy`` (%) of the
    calibrated decoder, the balanced one bold where the group is carried; then always-majority and
    chance, and the naive-Bayes accuracy for comparison.

    ``rows`` are ``explain.csv`` rows (:meth:`Explanation.rows`, or read back from the file)."""
    from tabulate import tabulate

    def pct(value: str | None) -> str:
        return "–" if value in ("", None) else f"{100 * float(value):.1f}"

    parts = []
    for bits in sorted({int(r["bits"]) for r in rows}):
        at = [r for r in rows if int(r["bits"]) == bits]
        methods = list(dict.fromkeys(r["method"] for r in at))
        groups = list(dict.fromkeys(r["group"] for r in at))
        cell = {(r["method"], r["group"]): r for r in at}

        def both(r: dict) -> str:
            bal = pct(r.get("balanced_accuracy"))
            return f"{pct(r['accuracy'])} / " + (f"**{bal}**" if r.get("carried") == "yes" else bal)

        table = [[m, *(both(cell[m, g]) if (m, g) in cell else "–" for g in groups)] for m in methods]
        base = {g: next(r for r in at if r["group"] == g) for g in groups}
        table.append(
            [
                "*majority*",
                *(f"*{pct(base[g]['majority'])} / {pct(base[g].get('majority_balanced'))}*" for g in groups),
            ]
        )
        table.append(["*chance*", *(f"*{pct(base[g]['chance'])}*" for g in groups)])
        nb = [[f"{m} (naive Bayes)", *(pct(cell[m, g].get("nb_accuracy")) if (m, g) in cell else "–" for g in groups)]
              for m in methods]  # fmt: skip
        carried = {
            m: sum(cell[m, g].get("carried") == "yes" for g in groups if (m, g) in cell) for m in methods
        }
        decoder = at[0].get("decoder") or "logistic"
        parts.append(
            f"### Attribute prediction from {bits}-bit codes ({at[0]['dataset']})\n\n"
            + tabulate(table, headers=["Method", *groups], tablefmt="github", disable_numparse=True)
            + f"\n\nAccuracy / balanced accuracy (%) of predicting each attribute group from the code with "
            f"the calibrated `{decoder}` decoder (per group an L2 logistic regression on the bits, fitted on "
            "the training codes), on the gallery images of test identities with a known value. Accuracy: "
            "the most probable value; balanced accuracy: the mean recall over the values present, of the "
            "prior-corrected decision. *majority*: always the most frequent training value (its balanced "
            "accuracy is 1 / values present); *chance*: 1 / number of values. **A group counts as carried "
            "by the codes only when its balanced accuracy beats majority's by more than two standard "
            "errors** (identities as the unit; bold). Groups carried: "
            + ", ".join(f"{m} {carried[m]}/{len(groups)}" for m in methods)
            + ".\n\nThe naive-Bayes decoder (the one search by description used alone before), accuracy (%):\n\n"
            + tabulate(nb, headers=["Method", *groups], tablefmt="github", disable_numparse=True)
            + "\n"
        )
    return "\n".join(parts)


def select_cells(
    results_dir: Path, methods: Sequence[str] | None = None, bits: int | None = None
) -> list[tuple[str, int]]:
    """The (method, bits) cells to explain; errors name what is missing and the run that makes it."""
    cells = hash_rows(read_rows(results_dir))
    if not cells:
        raise HashbenchError(f"{results_dir / 'results.csv'}: no hash-method cells to explain")
    chosen = [c for c in cells if (methods is None or c[0] in methods) and (bits is None or c[1] == bits)]
    for m in methods or ():
        if not any(c[0] == m for c in chosen):
            have = ", ".join(sorted({c[0] for c in cells}))
            at = f" at {bits} bits" if bits else ""
            raise HashbenchError(
                f"--methods {m}: no cell{at} in {results_dir / 'results.csv'} (have: {have})"
            )
    if not chosen:
        have = ", ".join(str(b) for b in sorted({c[1] for c in cells}))
        raise HashbenchError(
            f"--bits {bits}: no cell at that length in {results_dir / 'results.csv'} (have: {have})"
        )
    order = {m: i for i, m in enumerate(dict.fromkeys(c[0] for c in cells))}
    return sorted(chosen, key=lambda c: (order[c[0]], c[1]))


def _read_explain(path: Path) -> list[dict]:
    """Rows of an existing ``explain.csv`` (none when absent or of another column layout)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            return []
        return list(reader)


def write_explain(
    results_dir: str | Path,
    methods: Sequence[str] | None = None,
    bits: int | None = None,
    out_dir: str | Path | None = None,
) -> tuple[list[Explanation], dict[str, Path]]:
    """Explain the chosen cells; returns the explanations and the files written."""
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir else results_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(results_dir)
    explanations, written = [], {}
    chosen = select_cells(results_dir, methods, bits)
    skipped: list[str] = []
    for method, b in chosen:
        try:
            cell = load_cell(results_dir, method, b, rows)
            ex = explain_cell(cell)
        except HashbenchError as exc:
            if methods is not None or len(skipped) + 1 == len(chosen):
                raise  # asked for by name, or nothing left to explain
            log.warning("%s @ %d bits skipped: %s", method, b, exc)
            skipped.append(f"{method}@{b}")
            continue
        explanations.append(ex)
        written[f"png:{method}:{b}"] = plot_explanation(ex, out / f"explain_{method}_{b}.png")
        log.info("explained %s @ %d bits", method, b)
    # rows of other cells already in explain.csv are kept (re-explaining one method keeps the others),
    # except cells that are no longer in results.csv
    new_rows = [row for ex in explanations for row in ex.rows()]
    done = {(ex.method, ex.bits) for ex in explanations}
    known = hash_rows(rows)  # (method, bits) -> row, in results.csv order
    kept = [
        r
        for r in _read_explain(out / "explain.csv")
        if (key := (r["method"], int(r["bits"]))) not in done and key in known
    ]
    order = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in known))}  # select_cells' order
    merged = sorted(kept + new_rows, key=lambda r: (order.get(r["method"], len(order)), int(r["bits"])))
    with open(out / "explain.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(merged)
    written["csv"] = out / "explain.csv"
    (out / "explain.md").write_text(markdown(merged))
    written["md"] = out / "explain.md"
    return explanations, written
