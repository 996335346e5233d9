"""Presentation of a results store: the paper's tables (Markdown, LaTeX) and figures (mAP vs bits, CMC).

Everything here only *reads* what the runner wrote: ``results.csv`` (one row per (method, bits) cell)
and the ``.npz`` artifacts its ``artifact`` column points to. Nothing is recomputed; a number shown is
a number stored.

Conventions:

* Rows with an empty ``bits`` are real-valued references (``ide-float``: cosine distance on the
  float features). Tables repeat their value in every code-length column, below the hash methods, in
  italics and never in bold: they show what hashing costs, they do not compete. Figures draw them dashed.
* Several rows for one (dataset, method, bits) cell come from different configs; the latest by
  ``date`` is shown (ties and unparseable dates: the later row in the file wins).
* Methods are listed in the paper's order (KSH-CNN, SDH-CNN, DBH, PDH, DeepSSH), then any other
  method alphabetically; a method keeps one colour and marker in every figure.
* Every table carries the evaluation protocol (:data:`PROTOCOL`) on the line below it.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from .errors import HashbenchError
from .results import AQ_NAME, CMC_NAME

RESULTS_FILE = "results.csv"
REQUIRED_COLUMNS = ("dataset", "method", "bits", "map", "rank1", "date", "artifact")
METRICS = {"map": "mAP", "rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10", "rank20": "Rank-20"}
# the paper's order; plugin names (ksh, sdh) and the paper's spellings (KSH-CNN, SDH-CNN) share a place
PAPER_ORDER = ("ksh", "sdh", "dbh", "pdh", "deepssh")
PAPER_ALIASES = {"ksh-cnn": "ksh", "sdh-cnn": "sdh"}
DATASET_NAMES = {"market1501": "Market-1501", "market-1501": "Market-1501"}
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

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")  # 10 vs 9 colours: no repeated pair
_REF_COLORS = ("0.25", "0.55", "0.4")
# Placeholders that survive tabulate's LaTeX escaping (letters only), swapped for markup afterwards.
_BF, _IT, _END = "HBXBFOPEN", "HBXITOPEN", "HBXCLOSE"
_DASH = {"markdown": "–", "latex": "--"}


# --------------------------------------------------------------------------------------------- loading


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a results store: a CSV file, or a directory holding ``results.csv``.

    ``bits`` comes back as a nullable integer column (``<NA>`` for reference rows); the metrics as floats.
    """
    path = Path(path)
    csv = path / RESULTS_FILE if path.is_dir() else path
    if not csv.is_file():
        raise HashbenchError(f"results file {csv} not found")
    try:
        df = pd.read_csv(csv, dtype={"dataset": str, "method": str, "artifact": str, "config_hash": str})
    except pd.errors.EmptyDataError:
        raise HashbenchError(f"results file {csv} is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HashbenchError(f"results file {csv} is not a readable CSV: {first}") from None
    return _prepare(df, str(csv))


def _prepare(df: pd.DataFrame, source: str = "results table") -> pd.DataFrame:
    """Check the columns the report needs and normalise their types (idempotent)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise HashbenchError(f"{source}: missing required column(s) {', '.join(missing)}")
    df = df.copy()
    df["method"] = df["method"].astype(str).str.strip()
    df["dataset"] = df["dataset"].astype(str).str.strip()
    bits = pd.to_numeric(df["bits"], errors="coerce")
    bad = df["bits"].notna() & (bits.isna() | (bits.fillna(0) % 1 != 0) | (bits.fillna(1) <= 0))
    if bad.any():
        value = df["bits"][bad].iloc[0]
        raise HashbenchError(f"{source}: column bits holds a non-positive-integer value ({value!r})")
    df["bits"] = bits.astype("Int64")
    for metric in METRICS:
        if metric in df.columns:
            values = pd.to_numeric(df[metric], errors="coerce")
            if (values.isna() & df[metric].notna()).any():
                raise HashbenchError(f"{source}: column {metric} holds a non-numeric value")
            df[metric] = values.astype(float)
    return df


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


# ------------------------------------------------------------------------------------------- selection


def select_latest(
    df: pd.DataFrame, dataset: str | None = None, config_hash: str | None = None
) -> pd.DataFrame:
    """One row per (dataset, method, bits): the latest by ``date``, for one dataset.

    ``dataset`` is required only when the results hold several. ``config_hash`` (a prefix) restricts the
    hash-method rows to that config; reference rows (empty ``bits``) are kept regardless.
    """
    df = _prepare(df)
    datasets = sorted(df["dataset"].unique())
    if dataset is None:
        if len(datasets) > 1:
            have = ", ".join(datasets)
            raise HashbenchError(f"results hold several datasets ({have}); choose one with dataset=")
    else:
        if dataset not in datasets:
            have = ", ".join(datasets) or "none"
            raise HashbenchError(f"dataset {dataset!r} not in results (have: {have})")
        df = df[df["dataset"] == dataset]
    if config_hash is not None:
        keep = df["bits"].isna() | df["config_hash"].astype(str).str.startswith(config_hash)
        if not (keep & df["bits"].notna()).any():
            raise HashbenchError(f"no hash-method rows with config_hash {config_hash!r}")
        df = df[keep]
    if df.empty:
        raise HashbenchError("results hold no rows")
    df = df.assign(
        _date=pd.to_datetime(df["date"], errors="coerce", utc=True, format="ISO8601"), _row=np.arange(len(df))
    )
    df = df.sort_values(["_date", "_row"], na_position="first", kind="stable")
    df = df.drop_duplicates(["dataset", "method", "bits"], keep="last")
    return df.drop(columns=["_date", "_row"]).reset_index(drop=True)


def _canonical(name: str) -> str:
    """Lower-case name with the paper's spellings mapped to plugin names (``KSH-CNN`` -> ``ksh``)."""
    return PAPER_ALIASES.get(name.lower(), name.lower())


def method_order(methods: Iterable[str]) -> list[str]:
    """The paper's order (KSH-CNN, SDH-CNN, DBH, PDH, DeepSSH), then other methods alphabetically."""

    def key(name: str) -> tuple[int, str]:
        low = _canonical(name)
        return (PAPER_ORDER.index(low) if low in PAPER_ORDER else len(PAPER_ORDER), name.lower())

    return sorted(dict.fromkeys(methods), key=key)


def dataset_title(name: str) -> str:
    """Display name of a dataset id (``market1501`` -> ``Market-1501``)."""
    return DATASET_NAMES.get(name.lower(), name)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise HashbenchError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")


# ---------------------------------------------------------------------------------------------- tables


def paper_tables(df: pd.DataFrame, metric: str = "map", dataset: str | None = None) -> pd.DataFrame:
    """Methods x code lengths of ``metric`` (%), the latest run per cell, as in the paper's tables.

    Rows: hash methods in :func:`method_order`, then reference rows (empty ``bits``) with their value
    repeated in every column. Columns: the code lengths, sorted numerically. Missing cells are NaN.
    ``attrs`` carries ``dataset``, ``metric`` and ``reference`` (the names of the reference rows).
    """
    _check_metric(metric)
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


def _fmt(value: float) -> str:
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
    paper_by_name = {} if paper is None else {_canonical(str(m)): m for m in paper.index}
    bits = list(table.columns)
    if paper is not None:
        bits = sorted(set(bits) | {int(b) for b in paper.columns})

    def wrap(text: str, opener: str) -> str:
        return f"{opener}{text}{close or opener}"

    def name(text: str) -> str:  # tabulate escapes LaTeX itself; Markdown needs its specials escaped
        return text if latex else re.sub(r"([|*_`\\])", r"\\\1", text)

    # best per column among hash methods, compared at the displayed precision (ties are all bold)
    ranked = table.loc[[m for m in table.index if m not in ref_names]].reindex(columns=bits)
    best = ranked.round(2).max(axis=0, skipna=True)

    rows: list[list[str]] = []
    seen_paper: set[str] = set()
    methods = [m for m in table.index if m not in ref_names]
    for method in methods:
        theirs = None
        if paper is not None and _canonical(method) in paper_by_name:
            theirs = paper.loc[paper_by_name[_canonical(method)]]
            seen_paper.add(_canonical(method))
        cells = [name(method)]
        for b in bits:
            v = table.at[method, b] if b in table.columns else math.nan
            if pd.isna(v):
                cells.append(_DASH[fmt])
                continue
            text = _fmt(v)
            if not pd.isna(best[b]) and round(v, 2) == best[b]:
                text = wrap(text, bf_open)
            if theirs is not None and b in theirs.index and not pd.isna(theirs[b]):
                text += f" ({_diff(v, theirs[b])})"
            cells.append(text)
        rows.append(cells)
        if theirs is not None:
            label = paper_by_name[_canonical(method)]  # the paper's own spelling (KSH-CNN)
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
            text = wrap(_fmt(value.iloc[0]), it_open) if len(value) else _DASH[fmt]
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
    return [label] + [_fmt(known[b]) if b in known.index else _DASH[fmt] for b in bits]


# --------------------------------------------------------------------------------------------- figures


def _styles(methods: Iterable[str]) -> dict[str, tuple[str, str]]:
    """A fixed (colour, marker) per hash method, shared by every figure of one results store."""
    ordered = method_order(methods)
    return {m: (_COLORS[i % len(_COLORS)], _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(ordered)}


def _new_figure(size: tuple[float, float]):
    # Figure + Agg canvas directly: no pyplot state, no display needed, safe alongside other code.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _legend(ax, order: Sequence[int] | None = None) -> None:
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
    styles = _styles(m for m in table.index if m not in refs)
    bits = [int(b) for b in table.columns]

    fig = _new_figure((7.5, 4.2))
    ax = fig.add_subplot()
    for method, (color, marker) in styles.items():
        row = table.loc[method]
        ax.plot(bits, row.values, color=color, marker=marker, markersize=6, linewidth=1.8, label=method)
    for i, name in enumerate(refs):
        value = table.loc[name].iloc[0]
        ax.axhline(
            value,
            color=_REF_COLORS[i % len(_REF_COLORS)],
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
    _legend(ax, sorted(range(len(last)), key=lambda i: -last[i]))
    return _save(fig, path)


def _read_cmc_table(results_dir: Path) -> dict[tuple[str, str, str, str], np.ndarray]:
    """CMC curves from ``cmc.csv`` (the committed copy), keyed by (dataset, method, bits, config_hash)."""
    path = results_dir / CMC_NAME
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype={"bits": str, "config_hash": str}, keep_default_na=False)
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
    file = results_dir / str(artifact).strip()
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
    styles = _styles(select_latest(df, dataset).dropna(subset=["bits"])["method"])
    ranks = curves.index.to_numpy()
    order = sorted(curves.columns, key=lambda m: -curves[m].iloc[0])  # legend top to bottom by rank-1

    fig = _new_figure((7.5, 4.2))
    ax = fig.add_subplot()
    ticks = [r for r in (1, 5, 10, 15, 20, 30, 40, 50) if r <= max_rank]
    for method in order:
        cmc = curves[method].to_numpy()
        label = f"{method} (R1 {cmc[0]:.2f}%)"
        if method in refs:
            color = _REF_COLORS[refs.index(method) % len(_REF_COLORS)]
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
    _legend(ax)
    return _save(fig, path)


# ----------------------------------------------------------------------------------- attribute queries

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
    rows for one (method, bits, n) keep the latest by ``date``.
    """
    path = Path(results_dir) / AQ_NAME
    if not path.is_file():
        return None
    try:
        aq = pd.read_csv(path, dtype={"dataset": str, "method": str, "config_hash": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        raise HashbenchError(f"{path} is not a readable CSV") from None
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
    if "date" in aq.columns:
        aq = aq.assign(_d=pd.to_datetime(aq["date"], errors="coerce", utc=True, format="ISO8601"))
        aq = aq.assign(_r=np.arange(len(aq))).sort_values(["_d", "_r"], na_position="first", kind="stable")
        aq = aq.drop(columns=["_d", "_r"])
    aq = aq.drop_duplicates(["dataset", "method", "bits", "n_attributes"], keep="last")
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
            cells = [re.sub(r"([|*_`\\])", r"\\\1", method)]
            for n in table.columns:
                v = table.at[method, n]
                text = _DASH["markdown"] if pd.isna(v) else _fmt(v)
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
    styles = _styles(aq["method"].unique())
    fig = _new_figure((9.0, 3.9))
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
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- report


class Report(dict):
    """What :func:`write_report` wrote: file name -> path, plus ``markdown`` (the tables, to print)."""

    markdown: str = ""


# ------------------------------------------------------------------------------------------------ costs
def cost_table(df: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """What each method costs, from the latest row of each cell: one row per method (float references
    last) with its cells, train seconds per cell, wall minutes of all its cells (``cell_s``: fit,
    encoding, evaluation, attribute queries), encode ms per image, query ms against the whole gallery
    and bytes per code, at the shortest and longest code. A last row sums the wall minutes."""
    latest = select_latest(df, dataset)
    methods = method_order(latest["method"].unique())
    refs = [m for m in methods if latest.loc[latest["method"] == m, "bits"].isna().all()]
    rows = []

    def span(values: pd.Series, fmt: str) -> str:
        values = pd.to_numeric(values, errors="coerce")
        if values.isna().all():
            return "–"
        lo, hi = values.iloc[0], values.iloc[-1]
        return (
            fmt.format(lo)
            if len(values) == 1 or fmt.format(lo) == fmt.format(hi)
            else (f"{fmt.format(lo)} – {fmt.format(hi)}")
        )

    total, all_known = 0.0, True
    for m in [m for m in methods if m not in refs] + refs:
        cells = latest[latest["method"] == m].sort_values("bits")
        wall = pd.to_numeric(cells.get("cell_s", pd.Series(dtype=float)), errors="coerce")
        known = wall.notna().all() and len(wall) > 0
        total += float(wall.sum()) if known else 0.0
        all_known &= bool(known)
        bits = cells["bits"].dropna()
        rows.append(
            {
                "method": f"*{m}*" if m in refs else m,
                "bits": "float" if bits.empty else span(bits.astype(float), "{:.0f}"),
                "train s / cell": span(cells["train_s"], "{:.1f}"),
                "wall min (all cells)": f"{wall.sum() / 60:.1f}" if known else "–",
                "encode ms / image": span(cells["encode_ms_per_image"], "{:.3f}"),
                "query ms": span(cells["query_ms"], "{:.3f}"),
                "bytes / code": span(cells["bytes_per_code"], "{:.0f}"),
            }
        )
    rows.append({"method": "**all**", "wall min (all cells)": f"**{total / 60:.1f}**" if all_known else "–"})
    return pd.DataFrame(rows).fillna("")


def render_costs(table: pd.DataFrame) -> str:
    """The :func:`cost_table` as Markdown, with what each column measures."""
    body = tabulate(
        table.values.tolist(), headers=list(table.columns), tablefmt="github", disable_numparse=True
    )
    return (
        "Costs per method (shortest – longest code; latest row of each cell)\n\n"
        + body
        + "\n\n*train s / cell*: fitting one cell (for the float reference: the IDE stage, shared by every"
        " shallow method's features); *wall min*: all the method's cells end to end (fitting, encoding"
        " query and gallery and the training split, evaluation, search by description, saving), features"
        " already cached; *encode ms / image*: query and gallery; *query ms*: one query against the whole"
        " gallery (distances and ranking); *bytes / code*: storage of one gallery item.\n"
    )


def write_report(
    results_path: str | Path,
    out_dir: str | Path | None = None,
    cmc_bits: Sequence[int] = (2048, 128),
    paper: str | Path | None = None,
    dataset: str | None = None,
    aq_bits: int | None = None,
) -> Report:
    """Write the tables and figures of a results store; returns the written paths (and the markdown).

    Files, in ``out_dir`` (default: the results directory): ``table_map.md``, ``table_rank1.md``,
    ``table_map.tex``, ``table_rank1.tex``, ``table_cost.md`` (:func:`cost_table`), ``map_vs_bits.png``
    and ``cmc_<bits>.png`` for each length of ``cmc_bits`` present in the results (absent ones are
    skipped). ``paper`` is a CSV of published
    values (``method, bits, map``, optionally ``rank1``): the Markdown tables then compare with it.
    With ``attribute_queries.csv`` beside the results: ``table_attribute_queries.md`` and
    ``attribute_queries.png`` at ``aq_bits`` (default: the longest code with attribute-query rows).
    """
    results_path = Path(results_path)
    results_dir = results_path if results_path.is_dir() else results_path.parent
    df = load_results(results_path)
    out = Path(out_dir) if out_dir is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    texts = []
    for metric in ("map", "rank1"):
        table = paper_tables(df, metric, dataset)
        published = load_paper(paper, metric) if paper is not None else None
        md = render(table, "markdown", paper=published)
        texts.append(md)
        for name, text in ((f"table_{metric}.md", md), (f"table_{metric}.tex", render(table, "latex"))):
            (out / name).write_text(text, encoding="utf-8")
            report[name] = out / name
    md = render_costs(cost_table(df, dataset))
    texts.append(md)
    (out / "table_cost.md").write_text(md, encoding="utf-8")
    report["table_cost.md"] = out / "table_cost.md"
    report["map_vs_bits.png"] = plot_map_vs_bits(df, out / "map_vs_bits.png", dataset)
    present = set(int(b) for b in select_latest(df, dataset)["bits"].dropna())
    for b in dict.fromkeys(int(b) for b in cmc_bits):
        if b in present:
            report[f"cmc_{b}.png"] = plot_cmc(df, results_dir, b, out / f"cmc_{b}.png", dataset=dataset)
    aq = load_attribute_queries(results_dir, df, dataset)
    if aq is not None and not aq.empty:
        md = render_attribute_queries(attribute_query_tables(aq, aq_bits))
        texts.append(md)
        (out / "table_attribute_queries.md").write_text(md, encoding="utf-8")
        report["table_attribute_queries.md"] = out / "table_attribute_queries.md"
        report["attribute_queries.png"] = plot_attribute_queries(aq, out / "attribute_queries.png", aq_bits)
    report.markdown = "\n".join(texts)
    return report
