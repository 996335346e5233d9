"""Results as the paper's tables: methods x code lengths, rendered as Markdown or LaTeX.

* Rows with an empty ``bits`` are real-valued references (``ide-float``: cosine distance on the
  float features). Tables repeat their value in every code-length column, below the hash methods, in
  italics and never in bold: they show what hashing costs, they do not compete.
* The best value of each column among hash methods is bold (compared at the 2 displayed decimals).
* Published numbers (:func:`load_paper`) are shown beside ours: ``ours (ours - published)``.
* Every table carries the evaluation protocol (:data:`PROTOCOL`) on the line below it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from ..errors import HashbenchError
from ..results import METRICS
from .selection import canonical_name, check_metric, dataset_title, method_order, select_latest

PROTOCOL = (
    "Market-1501 protocol: junk = same id and camera, or id -1; distractors kept; "
    "Hamming ties broken by gallery order."
)
REFERENCE_NOTE = (
    "Reference rows in italics: real-valued features (ide-float: cosine distance), shown under every code length, "
    "not ranked."
)
PAPER_NOTE = "Cells: ours (ours - published); '(paper)' rows: published values."
FORMATS = {"markdown": "github", "latex": "latex_booktabs"}
DASH = {"markdown": "–", "latex": "--"}  # a missing cell
# Placeholders that survive tabulate's LaTeX escaping (letters only), swapped for markup afterwards.
_BF, _IT, _END = "HBXBFOPEN", "HBXITOPEN", "HBXCLOSE"


def markdown_escape(text: str) -> str:
    """``text`` with the characters Markdown tables treat specially (``|*_`\\``) backslash-escaped."""
    return re.sub(r"([|*_`\\])", r"\\\1", text)


def load_paper(path: str | Path, metric: str = "map") -> pd.DataFrame | None:
    """Published numbers (a CSV with ``method, bits, map`` and optionally other metrics) as methods x bits.

    Returns ``None`` when the file has no column for ``metric`` (``map`` itself is required).
    """
    path = Path(path)
    if not path.is_file():
        raise HashbenchError(f"paper file {path} not found")
    try:
        paper = pd.read_csv(path, dtype={"method": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        raise HashbenchError(f"paper file {path} is not a readable CSV (columns method, bits, map)") from None
    missing = [c for c in ("method", "bits", "map") if c not in paper.columns]
    if missing:
        raise HashbenchError(f"paper file {path}: missing required column(s) {', '.join(missing)}")
    if metric not in paper.columns:
        return None
    bits = pd.to_numeric(paper["bits"], errors="coerce")
    if bits.isna().any() or (bits % 1 != 0).any():
        raise HashbenchError(f"paper file {path}: column bits must hold an integer on every row")
    values = pd.to_numeric(paper[metric], errors="coerce")
    if (values.isna() & paper[metric].notna()).any():
        raise HashbenchError(f"paper file {path}: column {metric} holds a non-numeric value")
    names = paper["method"].astype(str).str.strip()
    # one row per method whatever its spelling: the first spelling met names it
    spelling = dict(zip(names.str.lower()[::-1], names[::-1], strict=True))
    paper = pd.DataFrame({"method": names.str.lower().map(spelling), "bits": bits.astype(int), "v": values})
    dup = paper.duplicated(["method", "bits"])
    if dup.any():
        row = paper[dup].iloc[0]
        raise HashbenchError(f"paper file {path}: duplicate row for {row['method']} at {row['bits']} bits")
    table = paper.dropna(subset=["v"]).pivot(index="method", columns="bits", values="v")
    table = table.reindex(columns=sorted(table.columns))
    table.index.name, table.columns.name = "method", "bits"
    return table


def paper_tables(df: pd.DataFrame, metric: str = "map", dataset: str | None = None) -> pd.DataFrame:
    """Methods x code lengths of ``metric`` (%), the latest run per cell, as in the paper's tables.

    Rows: hash methods in :func:`method_order`, then reference rows (empty ``bits``) with their value
    repeated in every column. Columns: the code lengths, sorted numerically. Missing cells are NaN.
    ``attrs`` carries ``dataset``, ``metric`` and ``reference`` (the names of the reference rows).
    """
    check_metric(metric)
    df = select_latest(df, dataset)
    if metric not in df.columns:
        raise HashbenchError(f"results have no column {metric!r}")
    hashed, ref = df[df["bits"].notna()], df[df["bits"].isna()]
    if hashed.empty:
        raise HashbenchError("results hold no hash-method rows (every bits cell is empty)")
    bits = sorted(int(b) for b in hashed["bits"].unique())
    hashed = hashed.assign(bits=hashed["bits"].astype(int))
    table = hashed.pivot(index="method", columns="bits", values=metric)
    table = table.reindex(index=method_order(table.index), columns=bits).astype(float)
    ref_names = method_order(ref["method"])
    for name in ref_names:
        table.loc[name] = float(ref.loc[ref["method"] == name, metric].iloc[0])
    table.index.name, table.columns.name = "method", "bits"
    table.attrs = {"dataset": str(df["dataset"].iloc[0]), "metric": metric, "reference": ref_names}
    return table


def _latex_escape(text: str) -> str:
    rules = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(rules.get(c, c) for c in text)


def fmt_number(value: float) -> str:
    """A table cell's number: 2 decimals."""
    return f"{value:.2f}"


def _diff(ours: float, theirs: float) -> str:
    d = round(round(ours, 2) - round(theirs, 2), 2)
    return f"{0.0 if d == 0 else d:+.2f}"


def default_caption(table: pd.DataFrame) -> str:
    """``Market-1501: mAP (%) of hash codes by code length``, from the table's ``attrs``."""
    metric = METRICS.get(table.attrs.get("metric", ""), table.attrs.get("metric", "score"))
    name = dataset_title(table.attrs.get("dataset", "")) or "Results"
    return f"{name}: {metric} (%) by code length"


def render(
    table: pd.DataFrame,
    fmt: str = "markdown",
    caption: str | None = None,
    paper: pd.DataFrame | None = None,
) -> str:
    """A :func:`paper_tables` table as Markdown (``github``) or LaTeX (``latex_booktabs``) text.

    Numbers have 2 decimals; the best value of each column among hash methods is bold; reference rows
    are italic. The caption goes above, the protocol line (:data:`PROTOCOL`) below. With ``paper``
    (methods x bits of published values, see :func:`load_paper`), each of our cells reads
    ``ours (ours - published)`` and a ``<method> (paper)`` row follows each method with published values;
    methods are matched case-insensitively.
    """
    if fmt not in FORMATS:
        raise HashbenchError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")
    latex = fmt == "latex"
    bf_open, it_open, close = (_BF, _IT, _END) if latex else ("**", "*", None)
    ref_names = set(table.attrs.get("reference", ()))
    paper_by_name = {} if paper is None else {canonical_name(str(m)): m for m in paper.index}
    bits = list(table.columns)
    if paper is not None:
        bits = sorted(set(bits) | {int(b) for b in paper.columns})

    def wrap(text: str, opener: str) -> str:
        return f"{opener}{text}{close or opener}"

    def name(text: str) -> str:  # tabulate escapes LaTeX itself; Markdown needs its specials escaped
        return text if latex else markdown_escape(text)

    # best per column among hash methods, compared at the displayed precision (ties are all bold)
    ranked = table.loc[[m for m in table.index if m not in ref_names]].reindex(columns=bits)
    best = ranked.round(2).max(axis=0, skipna=True)

    rows: list[list[str]] = []
    seen_paper: set[str] = set()
    methods = [m for m in table.index if m not in ref_names]
    for method in methods:
        theirs = None
        if paper is not None and canonical_name(method) in paper_by_name:
            theirs = paper.loc[paper_by_name[canonical_name(method)]]
            seen_paper.add(canonical_name(method))
        cells = [name(method)]
        for b in bits:
            v = table.at[method, b] if b in table.columns else math.nan
            if pd.isna(v):
                cells.append(DASH[fmt])
                continue
            text = fmt_number(v)
            if not pd.isna(best[b]) and round(v, 2) == best[b]:
                text = wrap(text, bf_open)
            if theirs is not None and b in theirs.index and not pd.isna(theirs[b]):
                text += f" ({_diff(v, theirs[b])})"
            cells.append(text)
        rows.append(cells)
        if theirs is not None:
            label = paper_by_name[canonical_name(method)]  # the paper's own spelling (KSH-CNN)
            rows.append(_paper_row(name(f"{label} (paper)"), theirs, bits, fmt))
    if paper is not None:  # published methods we have no row for
        for low in method_order(paper_by_name):
            if low not in seen_paper:
                label = paper_by_name[low]
                rows.append(_paper_row(name(f"{label} (paper)"), paper.loc[label], bits, fmt))
    n_ranked = len(rows)
    for method in table.index:
        if method in ref_names:
            value = table.loc[method].dropna()
            text = wrap(fmt_number(value.iloc[0]), it_open) if len(value) else DASH[fmt]
            rows.append([wrap(name(method), it_open)] + [text] * len(bits))

    headers = ["Method"] + [f"{b} bits" for b in bits]
    body = tabulate(
        rows,
        headers=headers,
        tablefmt=FORMATS[fmt],
        disable_numparse=True,
        colalign=("left",) + ("right",) * len(bits),
    )
    caption = default_caption(table) if caption is None else caption
    notes = [PROTOCOL]
    if ref_names:
        notes.append(REFERENCE_NOTE)
    if paper is not None:
        notes.append(PAPER_NOTE)
    if not latex:
        return "\n\n".join([f"**{caption}**", body, *notes]) + "\n"

    body = body.replace(_BF, r"\textbf{").replace(_IT, r"\textit{").replace(_END, "}")
    if n_ranked < len(rows):  # a rule between the hash methods and the references
        lines = body.splitlines()
        lines.insert(lines.index(r"\midrule") + 1 + n_ranked, r"\midrule")
        body = "\n".join(lines)
    label = f"tab:{table.attrs.get('dataset', 'results')}-{table.attrs.get('metric', 'metric')}"
    return (
        "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                rf"\caption{{{_latex_escape(caption)}}}",
                rf"\label{{{_latex_escape(label)}}}",
                body,
                r"\par\smallskip",
                r"{\footnotesize " + r" \\ ".join(_latex_escape(n) for n in notes) + "}",
                r"\end{table}",
            ]
        )
        + "\n"
    )


def _paper_row(label: str, values: pd.Series, bits: Sequence[int], fmt: str) -> list[str]:
    known = values.dropna()
    return [label] + [fmt_number(known[b]) if b in known.index else DASH[fmt] for b in bits]
