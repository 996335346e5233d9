"""Figures of a results store: mAP against code length, CMC curves, and the helpers every figure uses.

Figures are drawn on a bare matplotlib Figure (:func:`new_figure`, :func:`save_figure`; no pyplot
state), so ``hashbench explain`` and ``hashbench query`` draw theirs the same way. A method keeps one
colour and marker in every figure of a store (:func:`method_styles`); real-valued references are
drawn dashed in grey (:data:`REF_COLORS`); legends sit outside the axes (:func:`legend`).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import HashbenchError
from ..results import CMC_NAME, artifact_file, read_store_frame
from .selection import dataset_title, method_order, select_latest
from .tables import paper_tables

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")  # 10 vs 9 colours: no repeated pair
REF_COLORS = ("0.25", "0.55", "0.4")


def method_styles(methods: Iterable[str]) -> dict[str, tuple[str, str]]:
    """A fixed (colour, marker) per hash method, shared by every figure of one results store."""
    ordered = method_order(methods)
    return {m: (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(ordered)}


def new_figure(size: tuple[float, float]):
    """A matplotlib Figure of ``size`` inches (150 dpi, constrained layout) on its own Agg canvas."""
    # Figure + Agg canvas directly: no pyplot state, no display needed, safe alongside other code.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (its folder created); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def legend(ax, order: Sequence[int] | None = None) -> None:
    """Legend outside the axes on the right, entries in ``order`` (default: plotting order)."""
    handles, labels = ax.get_legend_handles_labels()
    order = range(len(handles)) if order is None else order
    width, height = ax.figure.get_size_inches()  # widen for long labels rather than squeeze the axes
    ax.figure.set_size_inches(max(width, 5.4 + 0.075 * max(map(len, labels), default=0)), height)
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        frameon=False,
        fontsize=9,
    )


def plot_map_vs_bits(df: pd.DataFrame, path: str | Path, dataset: str | None = None) -> Path:
    """PNG of mAP (%) against code length: one line per hash method, references dashed. Returns ``path``."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    table = paper_tables(df, "map", dataset)
    refs = table.attrs["reference"]
    styles = method_styles(m for m in table.index if m not in refs)
    bits = [int(b) for b in table.columns]

    fig = new_figure((7.5, 4.2))
    ax = fig.add_subplot()
    for method, (color, marker) in styles.items():
        row = table.loc[method]
        ax.plot(bits, row.values, color=color, marker=marker, markersize=6, linewidth=1.8, label=method)
    for i, name in enumerate(refs):
        value = table.loc[name].iloc[0]
        ax.axhline(
            value,
            color=REF_COLORS[i % len(REF_COLORS)],
            linestyle="--",
            linewidth=1.4,
            label=f"{name} ({value:.2f})",
        )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(bits))
    ax.xaxis.set_major_formatter(FixedFormatter([str(b) for b in bits]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(bits[0] / 2**0.3, bits[-1] * 2**0.3)
    ax.set_xlabel("Code length (bits)")
    ax.set_ylabel("mAP (%)")
    ax.set_title(f"{dataset_title(table.attrs['dataset'])}: mAP vs code length")
    ax.grid(True, alpha=0.3)
    # legend entries top to bottom in the order of the lines at the longest code
    last = [
        table.loc[m].dropna().iloc[-1] if table.loc[m].notna().any() else -math.inf
        for m in list(styles) + list(refs)
    ]
    legend(ax, sorted(range(len(last)), key=lambda i: -last[i]))
    return save_figure(fig, path)


def _read_cmc_table(results_dir: Path) -> dict[tuple[str, str, str, str], np.ndarray]:
    """CMC curves from ``cmc.csv`` (the committed copy), keyed by (dataset, method, bits, config_hash)."""
    path = results_dir / CMC_NAME
    table = read_store_frame(path, "CMC file", dtype={"bits": str, "config_hash": str}, keep_default_na=False)
    if table is None:
        return {}
    ranks = [c for c in table.columns if c.startswith("r") and c[1:].isdigit()]
    return {
        (str(r["dataset"]), str(r["method"]), str(r["bits"]), str(r["config_hash"])): r[ranks].to_numpy(float)
        for _, r in table.iterrows()
    }


def _cmc_key(row: pd.Series) -> tuple[str, str, str, str]:
    bits = "" if pd.isna(row["bits"]) else str(int(row["bits"]))
    return str(row["dataset"]), str(row["method"]), bits, str(row.get("config_hash", ""))


def _load_cmc(results_dir: Path, row: pd.Series, max_rank: int, table: dict | None = None) -> np.ndarray:
    """A row's CMC (%, ranks 1..max_rank): from ``cmc.csv`` when it has the cell, else from the artifact."""
    who = f"{row['method']} at {'float' if pd.isna(row['bits']) else str(row['bits']) + ' bits'}"
    cmc = (table or {}).get(_cmc_key(row))
    if cmc is not None:
        if len(cmc) < max_rank:
            raise HashbenchError(
                f"{results_dir / CMC_NAME}: {who} has {len(cmc)} ranks, fewer than {max_rank}"
            )
        return cmc[:max_rank] * 100.0
    artifact = row["artifact"]
    if pd.isna(artifact) or not str(artifact).strip():
        raise HashbenchError(f"results row {who}: empty artifact column, no CMC to plot")
    file = artifact_file(results_dir, str(artifact))
    if not file.is_file():
        raise HashbenchError(f"artifact {file} ({who}) not found")
    try:
        npz = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise HashbenchError(f"artifact {file} is not a readable .npz: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise HashbenchError(f"artifact {file} is not an .npz archive")
    with npz:
        if "cmc" not in npz.files:
            have = ", ".join(npz.files) or "nothing"
            raise HashbenchError(f"artifact {file}: no 'cmc' array (has: {have})")
        try:
            cmc = np.asarray(npz["cmc"], dtype=float).ravel()
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise HashbenchError(f"artifact {file}: cmc unreadable: {exc}") from None
    if len(cmc) < max_rank:
        raise HashbenchError(f"artifact {file}: cmc has {len(cmc)} ranks, fewer than max_rank={max_rank}")
    if np.nanmin(cmc) < 0 or np.nanmax(cmc) > 1:
        raise HashbenchError(f"artifact {file}: cmc values outside 0-1 (expected fractions)")
    return cmc[:max_rank] * 100.0


def cmc_curves(
    df: pd.DataFrame, results_dir: str | Path, bits: int, max_rank: int = 20, dataset: str | None = None
) -> pd.DataFrame:
    """Matching rate (%) at ranks 1..``max_rank`` (rows) of every method at ``bits`` and of the references.

    Columns: hash methods in :func:`method_order`, then references; read from ``cmc.csv`` beside the
    results (committed), else from each row's ``.npz`` artifact (``cmc``, fractions, path relative to
    ``results_dir``). ``attrs["reference"]`` lists the
    reference columns.
    """
    if max_rank < 1:
        raise HashbenchError(f"max_rank must be >= 1, got {max_rank}")
    results_dir = Path(results_dir)
    df = select_latest(df, dataset)
    hashed = df[df["bits"].notna()]
    at = hashed[hashed["bits"] == int(bits)]
    if at.empty:
        have = ", ".join(str(b) for b in sorted(hashed["bits"].unique()))
        raise HashbenchError(f"no results at {bits} bits (have: {have or 'none'})")
    refs = df[df["bits"].isna()]
    curves = {}
    table = _read_cmc_table(results_dir)
    for part in (at, refs):
        for _, row in part.set_index("method", drop=False).loc[method_order(part["method"])].iterrows():
            curves[row["method"]] = _load_cmc(results_dir, row, max_rank, table)
    out = pd.DataFrame(curves, index=pd.RangeIndex(1, max_rank + 1, name="rank"))
    out.attrs = {"dataset": str(df["dataset"].iloc[0]), "bits": int(bits), "reference": list(refs["method"])}
    return out


def plot_cmc(
    df: pd.DataFrame,
    results_dir: str | Path,
    bits: int,
    path: str | Path,
    max_rank: int = 20,
    dataset: str | None = None,
) -> Path:
    """PNG of the CMC curves (rank 1..``max_rank``) of every method at ``bits``, references dashed.

    Curves come from :func:`cmc_curves`; legend labels carry rank-1 and are sorted by it. Returns ``path``.
    """
    curves = cmc_curves(df, results_dir, bits, max_rank, dataset)
    refs = curves.attrs["reference"]
    styles = method_styles(select_latest(df, dataset).dropna(subset=["bits"])["method"])
    ranks = curves.index.to_numpy()
    order = sorted(curves.columns, key=lambda m: -curves[m].iloc[0])  # legend top to bottom by rank-1

    fig = new_figure((7.5, 4.2))
    ax = fig.add_subplot()
    ticks = [r for r in (1, 5, 10, 15, 20, 30, 40, 50) if r <= max_rank]
    for method in order:
        cmc = curves[method].to_numpy()
        label = f"{method} (R1 {cmc[0]:.2f}%)"
        if method in refs:
            color = REF_COLORS[refs.index(method) % len(REF_COLORS)]
            ax.plot(ranks, cmc, color=color, linestyle="--", linewidth=1.4, label=label)
        else:
            color, marker = styles[method]
            ax.plot(
                ranks,
                cmc,
                color=color,
                marker=marker,
                markevery=[t - 1 for t in ticks],
                markersize=5,
                linewidth=1.8,
                label=label,
            )
    ax.set_xlim(0.5, max_rank + 0.5)
    ax.set_xticks(ticks)
    top = ax.get_ylim()[1]
    ax.set_ylim(top=min(top, 100.0))
    ax.set_xlabel("Rank")
    ax.set_ylabel("Matching rate (%)")
    ax.set_title(f"{dataset_title(curves.attrs['dataset'])}: CMC at {int(bits)} bits")
    ax.grid(True, alpha=0.3)
    legend(ax)
    return save_figure(fig, path)
