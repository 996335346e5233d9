"""Presentation of a results store: the paper's tables (Markdown, LaTeX), figures, costs and search by
description.

Everything here only *reads* what the runner wrote: ``results.csv`` (one row per (method, bits) cell,
read by :func:`hashbench.results.read_results`), ``cmc.csv``, ``attribute_queries.csv`` and the ``.npz``
artifacts the ``artifact`` column points to. Nothing is recomputed; a number shown is a number stored.

* :mod:`.selection`: which rows are shown (the latest of each cell) and in which order.
* :mod:`.tables`: methods x code lengths, beside the published numbers, as Markdown or LaTeX.
* :mod:`.figures`: mAP against code length, CMC curves, and the figure helpers others use.
* :mod:`.costs`: what each method costs.
* :mod:`.attribute_queries`: search by description, table and figure.
* :mod:`.photo_description`: photo + description, with alpha chosen on held-out identities.

:func:`write_report` writes them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..results import METRICS, REQUIRED_COLUMNS
from .attribute_queries import (
    AQ_METRICS,
    AQ_NOTE,
    attribute_query_tables,
    load_attribute_queries,
    plot_attribute_queries,
    render_attribute_queries,
)
from .costs import cost_devices, cost_table, render_costs
from .figures import (
    COLORS,
    MARKERS,
    REF_COLORS,
    cmc_curves,
    legend,
    method_styles,
    new_figure,
    plot_cmc,
    plot_map_vs_bits,
    save_figure,
)
from .photo_description import (
    ALPHA_NAME,
    load_photo_description,
    photo_description_table,
    pick_alpha,
    read_alpha_choice,
    render_photo_description,
)
from .selection import (
    DATASET_NAMES,
    MODERN_ORDER,
    PAPER_ALIASES,
    PAPER_ORDER,
    RESULTS_FILE,
    canonical_name,
    dataset_title,
    load_results,
    method_order,
    select_latest,
)
from .tables import (
    FORMATS,
    PAPER_NOTE,
    PROTOCOL,
    REFERENCE_NOTE,
    default_caption,
    load_paper,
    paper_tables,
    render,
)


class Report(dict):
    """What :func:`write_report` wrote: file name -> path, plus ``markdown`` (the tables, to print)."""

    markdown: str = ""


def write_report(
    results_path: str | Path,
    out_dir: str | Path | None = None,
    cmc_bits: Sequence[int] = (2048, 128),
    paper: str | Path | None = None,
    dataset: str | None = None,
    aq_bits: int | None = None,
    alpha_from: str | Path | None = None,
) -> Report:
    """Write the tables and figures of a results store; returns the written paths (and the markdown).

    Files, in ``out_dir`` (default: the results directory): ``table_map.md``, ``table_rank1.md``,
    ``table_map.tex``, ``table_rank1.tex``, ``table_cost.md`` (:func:`cost_table`), ``map_vs_bits.png``
    and ``cmc_<bits>.png`` for each length of ``cmc_bits`` present in the results (absent ones are
    skipped). ``paper`` is a CSV of published
    values (``method, bits, map``, optionally ``rank1``): the Markdown tables then compare with it.
    With ``attribute_queries.csv`` beside the results: ``table_attribute_queries.md`` and
    ``attribute_queries.png`` at ``aq_bits`` (default: the longest code with attribute-query rows).
    With ``photo_description.csv``: ``table_photo_description.md`` at the same length, each
    description at the alpha recorded by ``hashbench pick-alpha`` in ``alpha_from`` (default:
    ``<results>/validation/photo_description_alpha.csv``).
    """
    results_path = Path(results_path)
    results_dir = results_path if results_path.is_dir() else results_path.parent
    df = load_results(results_path)
    out = Path(out_dir) if out_dir is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    texts = []
    shared_note = shared_top_note(df, results_dir, dataset)
    for metric in ("map", "rank1"):
        table = paper_tables(df, metric, dataset)
        published = load_paper(paper, metric) if paper is not None else None
        md = render(table, "markdown", paper=published)
        md = _with_note(md, shared_note)
        texts.append(md)
        for name, text in ((f"table_{metric}.md", md), (f"table_{metric}.tex", render(table, "latex"))):
            (out / name).write_text(text, encoding="utf-8")
            report[name] = out / name
    md = render_costs(cost_table(df, dataset), cost_devices(df, dataset))
    md = _with_note(md, shared_note)
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
    pdf = load_photo_description(results_dir, df, dataset)
    if pdf is not None and not pdf.empty:
        choice_path = Path(alpha_from) if alpha_from else results_dir / "validation" / ALPHA_NAME
        if choice_path.is_dir():
            choice_path = choice_path / ALPHA_NAME
        table, _ = photo_description_table(pdf, read_alpha_choice(choice_path), aq_bits)
        md = render_photo_description(table)
        texts.append(md)
        (out / "table_photo_description.md").write_text(md, encoding="utf-8")
        report["table_photo_description.md"] = out / "table_photo_description.md"
    report.markdown = "\n".join(texts)
    return report


def _with_note(md: str, note: str) -> str:
    """A Markdown table's text with ``note`` as its last paragraph (unchanged when ``note`` is empty)."""
    return md.rstrip("\n") + "\n\n" + note + "\n" if note else md


def shared_top_note(df, results_dir: Path, dataset: str | None = None) -> str:
    """The line the mAP, rank-1 and cost tables carry when one of their rows was trained with a shared
    top (``shared_top`` in its recorded configuration, :data:`hashbench.deep.SHARED_TOP`); else ``""``."""
    from ..configs import read_configs

    records = read_configs(results_dir)
    shared: dict[str, str] = {}
    for _, row in select_latest(df, dataset).iterrows():
        record = records.get(str(row.get("config_hash", "")), {})
        lengths = (record.get("config") or {}).get("params", {}).get("shared_top")
        if lengths:
            shared.setdefault(str(row["method"]), str(lengths))
    if not shared:
        return ""
    which = "; ".join(f"{m} ({lengths} bits)" for m, lengths in shared.items())
    return (
        f"*Shared top*: {which}: one top trained once for all these lengths, a hash head per length "
        "(`shared_top`: DeepSSH's default, `hashbench run --shared-top` for every deep method); its first "
        "cell's train s carries the training. "
        "The other rows train each length alone."
    )


__all__ = [
    "ALPHA_NAME",
    "AQ_METRICS",
    "AQ_NOTE",
    "COLORS",
    "DATASET_NAMES",
    "FORMATS",
    "MARKERS",
    "METRICS",
    "MODERN_ORDER",
    "PAPER_ALIASES",
    "PAPER_NOTE",
    "PAPER_ORDER",
    "PROTOCOL",
    "REFERENCE_NOTE",
    "REF_COLORS",
    "REQUIRED_COLUMNS",
    "RESULTS_FILE",
    "Report",
    "attribute_query_tables",
    "canonical_name",
    "cmc_curves",
    "cost_devices",
    "cost_table",
    "dataset_title",
    "default_caption",
    "legend",
    "load_attribute_queries",
    "load_paper",
    "load_photo_description",
    "photo_description_table",
    "pick_alpha",
    "read_alpha_choice",
    "render_photo_description",
    "load_results",
    "method_order",
    "method_styles",
    "new_figure",
    "paper_tables",
    "plot_attribute_queries",
    "plot_cmc",
    "plot_map_vs_bits",
    "render",
    "render_attribute_queries",
    "render_costs",
    "save_figure",
    "select_latest",
    "shared_top_note",
    "write_report",
]
