"""Search by description: the attribute-query scores of each cell (``attribute_queries.csv``) as a
table ((method, decoder) x number of queried attributes, the oracle last) and a figure.

A file written before the ``decoder`` column existed reads as naive-Bayes rows (the only decoder then);
the oracle rows (``method`` and ``decoder`` ``oracle``, no ``bits``: they depend on the dataset only)
are shown with every code length."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..errors import HashbenchError
from ..results import AQ_DEFAULT_DECODER, AQ_NAME, latest_positions, read_store_frame
from ..semantic import ORACLE
from .figures import method_styles, new_figure, save_figure
from .selection import dataset_title, method_order, select_latest
from .tables import DASH, fmt_number, markdown_escape

AQ_METRICS = {"rank1": "Rank-1", "rank5": "Rank-5", "precision10": "P@10"}
AQ_NOTE = (
    "Search by description: an attribute decoder fitted on each method's training codes (naive-bayes: "
    "naive Bayes over bits; logistic: per group an L2 logistic regression on the bits, ranking by the "
    "description's joint log-likelihood; a method's own, e.g. deepssh-readout) ranks the gallery's test "
    "identities for n of an identity's attributes (seeded random subsets, the same for every method). "
    "*oracle*: the true attributes of every identity, ties broken at random (seeded): the ceiling of "
    "any ranking by description in expectation (one draw of the ties: at small n, where thousands of "
    "images tie, a method can pass it by chance). Rank-k: an image of that identity in the first k; P@10: share of the "
    "first 10 whose identity has all the queried values. Ties broken by gallery order; bold: the best "
    "method of each column (the oracle aside)."
)
DECODER_ORDER = ("naive-bayes", "logistic")  # then a method's own decoders, by name; the oracle last
LINESTYLES = {"naive-bayes": "-", "logistic": "--"}  # a method's own decoder: dotted


def load_attribute_queries(
    results_dir: str | Path, df: pd.DataFrame | None = None, dataset: str | None = None
) -> pd.DataFrame | None:
    """The attribute-query rows of the cells shown by the report (and the oracle's), or ``None`` without
    the file.

    With ``df`` (the results), only rows whose (dataset, method, bits, config_hash) is a cell that
    :func:`select_latest` keeps are used (a cell killed before its results row is not shown), plus the
    oracle rows of the dataset shown; several rows for one (method, bits, decoder, n) keep the latest by
    ``date`` (the rule of :func:`hashbench.results.latest_positions`). A file without a ``decoder``
    column (an older hashbench) holds naive-Bayes rows. ``bits`` is a nullable integer (empty for the
    oracle).
    """
    path = Path(results_dir) / AQ_NAME
    aq = read_store_frame(
        path,
        "attribute-query file",
        dtype={"dataset": str, "method": str, "config_hash": str, "decoder": str},
    )
    if aq is None:
        return None
    missing = [c for c in ("dataset", "method", "bits", "n_attributes", *AQ_METRICS) if c not in aq.columns]
    if missing:
        raise HashbenchError(f"{path}: missing required column(s) {', '.join(missing)}")
    if "decoder" not in aq.columns:
        aq["decoder"] = AQ_DEFAULT_DECODER
    aq["decoder"] = aq["decoder"].fillna("").astype(str).str.strip().replace("", AQ_DEFAULT_DECODER)
    oracle = aq["method"] == ORACLE
    aq = aq.assign(bits=pd.to_numeric(aq["bits"], errors="coerce"))
    aq = aq[oracle | aq["bits"].notna()].astype({"bits": "Int64", "n_attributes": int})
    oracle = aq["method"] == ORACLE
    cells_aq, oracle_aq = aq[~oracle], aq[oracle]
    if df is not None and "config_hash" in cells_aq.columns and "config_hash" in df.columns:
        cells = select_latest(df, dataset).dropna(subset=["bits"])
        keys = {(str(r.dataset), str(r.method), int(r.bits), str(r.config_hash)) for r in cells.itertuples()}
        mask = [
            (str(r.dataset), str(r.method), int(r.bits), str(r.config_hash)) in keys
            for r in cells_aq.itertuples()
        ]
        cells_aq = cells_aq[np.asarray(mask, dtype=bool)]
        shown = {str(d) for d in cells["dataset"]} if dataset is None else {dataset}
        oracle_aq = oracle_aq[oracle_aq["dataset"].isin(shown)]
    elif df is not None or dataset is not None:
        name = dataset or str(select_latest(df)["dataset"].iloc[0])
        cells_aq = cells_aq[cells_aq["dataset"] == name]
        oracle_aq = oracle_aq[oracle_aq["dataset"] == name]
    aq = pd.concat([cells_aq, oracle_aq])
    aq = aq.iloc[latest_positions(aq, ("dataset", "method", "bits", "decoder", "n_attributes"))]
    return aq.reset_index(drop=True)


def _aq_at(aq: pd.DataFrame, bits: int | None) -> tuple[pd.DataFrame, int]:
    cells = aq[aq["method"] != ORACLE]
    have = sorted(int(b) for b in cells["bits"].dropna().unique())
    if not have:
        raise HashbenchError("no attribute-query rows for the cells of the results")
    if bits is None:
        bits = have[-1]
    if int(bits) not in have:
        raise HashbenchError(f"--aq-bits {bits}: no attribute-query rows at {bits} bits (have: {have})")
    at = cells[cells["bits"] == int(bits)]
    return pd.concat([at, aq[aq["method"] == ORACLE]]), int(bits)


def row_order(pairs) -> list[tuple[str, str]]:
    """(method, decoder) rows: methods in :func:`method_order`, each method's decoders in
    :data:`DECODER_ORDER` then by name; the oracle last."""
    pairs = list(dict.fromkeys(pairs))
    methods = method_order([m for m, _ in pairs if m != ORACLE])
    rank = {d: i for i, d in enumerate(DECODER_ORDER)}

    def key(pair):
        m, d = pair
        if m == ORACLE:
            return (len(methods), 0, d)
        return (methods.index(m), rank.get(d, len(rank)), d)

    return sorted(pairs, key=key)


def attribute_query_tables(aq: pd.DataFrame, bits: int | None = None) -> dict[str, pd.DataFrame]:
    """(method, decoder) x number of queried attributes, one table per metric (``rank1``, ``rank5``,
    ``precision10``, in %), at ``bits`` (default: the longest code with rows), the oracle last."""
    at, bits = _aq_at(aq, bits)
    if "decoder" not in at.columns:
        at = at.assign(decoder=AQ_DEFAULT_DECODER)
    out = {}
    for metric in AQ_METRICS:
        table = at.pivot(index=["method", "decoder"], columns="n_attributes", values=metric)
        order = pd.MultiIndex.from_tuples(row_order(table.index), names=["method", "decoder"])
        table = table.reindex(index=order, columns=sorted(table.columns)).astype(float)
        table.columns.name = "n"
        table.attrs = {"dataset": str(at["dataset"].iloc[0]), "bits": bits, "metric": metric}
        out[metric] = table
    return out


def render_attribute_queries(tables: dict[str, pd.DataFrame]) -> str:
    """The :func:`attribute_query_tables` as Markdown: one table per metric, the best method of each
    column bold (the oracle, a ceiling, aside)."""
    first = next(iter(tables.values()))
    name, bits = dataset_title(first.attrs["dataset"]), first.attrs["bits"]
    parts = [f"**{name}: search by description, {bits}-bit codes (%), by number n of queried attributes**"]
    for metric, table in tables.items():
        methods = [i for i in table.index if i[0] != ORACLE]
        best = table.loc[methods].round(2).max(axis=0, skipna=True) if methods else None
        rows = []
        for method, decoder in table.index:
            oracle = method == ORACLE
            label = f"*{method}*" if oracle else markdown_escape(method)
            cells = [label, "*true attributes*" if oracle else markdown_escape(decoder)]
            for n in table.columns:
                v = table.at[(method, decoder), n]
                text = DASH["markdown"] if pd.isna(v) else fmt_number(v)
                if oracle and not pd.isna(v):
                    text = f"*{text}*"
                elif best is not None and not pd.isna(v) and round(v, 2) == best[n]:
                    text = f"**{text}**"
                cells.append(text)
            rows.append(cells)
        headers = [AQ_METRICS[metric], "Decoder"] + [f"n={n}" for n in table.columns]
        colalign = ("left", "left") + ("right",) * len(table.columns)
        parts.append(
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True, colalign=colalign)
        )
    parts.append(AQ_NOTE)
    return "\n\n".join(parts) + "\n"


def plot_attribute_queries(aq: pd.DataFrame, path: str | Path, bits: int | None = None) -> Path:
    """PNG of identity Rank-1 and Rank-5 (%) against the number of queried attributes, one line per
    (method, decoder): the method's colour and marker of the other figures, the decoder's line style
    (naive-bayes solid, logistic dashed, a method's own dotted); the oracle a thick black line. At
    ``bits`` (default: the longest)."""
    tables = attribute_query_tables(aq, bits)
    styles = method_styles([m for m in aq["method"].unique() if m != ORACLE])
    fig = new_figure((9.5, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, ("rank1", "rank5"), strict=True):
        table = tables[metric]
        ns = [int(n) for n in table.columns]
        for method, decoder in table.index:
            values = table.loc[(method, decoder)].values
            if method == ORACLE:
                ax.plot(ns, values, color="black", linewidth=2.6, label="oracle (true attributes)")
                continue
            color, marker = styles[method]
            ax.plot(ns, values, color=color, marker=marker, markersize=4, linewidth=1.5,
                    linestyle=LINESTYLES.get(decoder, ":"), label=f"{method} · {decoder}")  # fmt: skip
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
                   bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize=8)  # fmt: skip
    return save_figure(fig, path)
