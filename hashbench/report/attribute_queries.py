"""Search by description: the attribute-query scores of each cell (``attribute_queries.csv``) as a
table (methods x number of queried attributes) and a figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..errors import HashbenchError
from ..results import AQ_NAME, latest_positions, read_store_frame
from .figures import method_styles, new_figure, save_figure
from .selection import dataset_title, method_order, select_latest
from .tables import DASH, fmt_number, markdown_escape

AQ_METRICS = {"rank1": "Rank-1", "rank5": "Rank-5", "precision10": "P@10"}
AQ_NOTE = (
    "Search by description: a naive-Bayes attribute decoder fitted on each method's training codes ranks "
    "the gallery's test identities for n of an identity's attributes (seeded random subsets, the same "
    "for every method). Rank-k: an image of that identity in the first k; P@10: share of the first 10 "
    "whose identity has all the queried values. Ties broken by gallery order."
)


def load_attribute_queries(
    results_dir: str | Path, df: pd.DataFrame | None = None, dataset: str | None = None
) -> pd.DataFrame | None:
    """The attribute-query rows of the cells shown by the report, or ``None`` without the file.

    With ``df`` (the results), only rows whose (dataset, method, bits, config_hash) is a cell that
    :func:`select_latest` keeps are used (a cell killed before its results row is not shown); several
    rows for one (method, bits, n) keep the latest by ``date`` (the rule of
    :func:`hashbench.results.latest_positions`).
    """
    path = Path(results_dir) / AQ_NAME
    aq = read_store_frame(
        path, "attribute-query file", dtype={"dataset": str, "method": str, "config_hash": str}
    )
    if aq is None:
        return None
    missing = [c for c in ("dataset", "method", "bits", "n_attributes", *AQ_METRICS) if c not in aq.columns]
    if missing:
        raise HashbenchError(f"{path}: missing required column(s) {', '.join(missing)}")
    aq = aq.assign(bits=pd.to_numeric(aq["bits"], errors="coerce"))
    aq = aq.dropna(subset=["bits"]).astype({"bits": int, "n_attributes": int})
    if df is not None and "config_hash" in aq.columns and "config_hash" in df.columns:
        cells = select_latest(df, dataset).dropna(subset=["bits"])
        keys = {(str(r.dataset), str(r.method), int(r.bits), str(r.config_hash)) for r in cells.itertuples()}
        mask = [
            (str(r.dataset), str(r.method), int(r.bits), str(r.config_hash)) in keys for r in aq.itertuples()
        ]
        aq = aq[np.asarray(mask, dtype=bool)]
    elif df is not None or dataset is not None:
        aq = aq[aq["dataset"] == (dataset or str(select_latest(df)["dataset"].iloc[0]))]
    aq = aq.iloc[latest_positions(aq, ("dataset", "method", "bits", "n_attributes"))]
    return aq.reset_index(drop=True)


def _aq_at(aq: pd.DataFrame, bits: int | None) -> tuple[pd.DataFrame, int]:
    have = sorted(int(b) for b in aq["bits"].unique())
    if not have:
        raise HashbenchError("no attribute-query rows for the cells of the results")
    if bits is None:
        bits = have[-1]
    if int(bits) not in have:
        raise HashbenchError(f"--aq-bits {bits}: no attribute-query rows at {bits} bits (have: {have})")
    return aq[aq["bits"] == int(bits)], int(bits)


def attribute_query_tables(aq: pd.DataFrame, bits: int | None = None) -> dict[str, pd.DataFrame]:
    """Methods x number of queried attributes, one table per metric (``rank1``, ``rank5``,
    ``precision10``, in %), at ``bits`` (default: the longest code with rows)."""
    at, bits = _aq_at(aq, bits)
    out = {}
    for metric in AQ_METRICS:
        table = at.pivot(index="method", columns="n_attributes", values=metric)
        table = table.reindex(index=method_order(table.index), columns=sorted(table.columns)).astype(float)
        table.index.name, table.columns.name = "method", "n"
        table.attrs = {"dataset": str(at["dataset"].iloc[0]), "bits": bits, "metric": metric}
        out[metric] = table
    return out


def render_attribute_queries(tables: dict[str, pd.DataFrame]) -> str:
    """The :func:`attribute_query_tables` as Markdown: one table per metric, best of each column bold."""
    first = next(iter(tables.values()))
    name, bits = dataset_title(first.attrs["dataset"]), first.attrs["bits"]
    parts = [f"**{name}: search by description, {bits}-bit codes (%), by number n of queried attributes**"]
    for metric, table in tables.items():
        best = table.round(2).max(axis=0, skipna=True)
        rows = []
        for method in table.index:
            cells = [markdown_escape(method)]
            for n in table.columns:
                v = table.at[method, n]
                text = DASH["markdown"] if pd.isna(v) else fmt_number(v)
                if not pd.isna(v) and round(v, 2) == best[n]:
                    text = f"**{text}**"
                cells.append(text)
            rows.append(cells)
        headers = [AQ_METRICS[metric]] + [f"n={n}" for n in table.columns]
        colalign = ("left",) + ("right",) * len(table.columns)
        parts.append(
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True, colalign=colalign)
        )
    parts.append(AQ_NOTE)
    return "\n\n".join(parts) + "\n"


def plot_attribute_queries(aq: pd.DataFrame, path: str | Path, bits: int | None = None) -> Path:
    """PNG of identity Rank-1 and Rank-5 (%) against the number of queried attributes, one line per
    method (the colours and markers of the other figures), at ``bits`` (default: the longest)."""
    tables = attribute_query_tables(aq, bits)
    styles = method_styles(aq["method"].unique())
    fig = new_figure((9.0, 3.9))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, ("rank1", "rank5"), strict=True):
        table = tables[metric]
        ns = [int(n) for n in table.columns]
        for method in table.index:
            color, marker = styles[method]
            ax.plot(ns, table.loc[method].values, color=color, marker=marker, markersize=5, linewidth=1.8,
                    label=method)  # fmt: skip
        ax.set_xticks(ns)
        ax.set_xlabel("Attributes in the description (n)")
        ax.set_title(f"Identity {AQ_METRICS[metric]}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("Matching rate (%)")
    axes[0].set_ylim(bottom=0, top=min(100.0, axes[0].get_ylim()[1]) + 2)
    first = tables["rank1"]
    fig.suptitle(
        f"{dataset_title(first.attrs['dataset'])}: search by description, {first.attrs['bits']}-bit codes"
    )
    last = tables["rank5"].iloc[:, -1].fillna(-math.inf)  # legend top to bottom by the last point
    order = sorted(range(len(last)), key=lambda i: -last.iloc[i])
    handles, labels = axes[1].get_legend_handles_labels()
    axes[1].legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
                   bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize=9)  # fmt: skip
    return save_figure(fig, path)
