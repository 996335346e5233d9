"""What each method costs, from the latest row of each cell: fitting, wall time, encoding, querying, storage."""

from __future__ import annotations

from collections import Counter

import pandas as pd
from tabulate import tabulate

from .selection import method_order, select_latest


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


def cost_devices(df: pd.DataFrame, dataset: str | None = None) -> Counter[str]:
    """How many of the latest cells each device (``device`` column: threads and processor) measured."""
    latest = select_latest(df, dataset)
    if "device" not in latest:
        return Counter()
    return Counter(str(d) for d in latest["device"].dropna())


def render_costs(table: pd.DataFrame, devices: Counter[str] | None = None) -> str:
    """The :func:`cost_table` as Markdown, with what each column measures and, given ``devices``
    (:func:`cost_devices`), the machine the times were measured on: one, or each with its cell count
    when the cells come from several (their times then compare only within one machine)."""
    body = tabulate(
        table.values.tolist(), headers=list(table.columns), tablefmt="github", disable_numparse=True
    )
    where = ""
    if devices:
        if len(devices) == 1:
            where = f"Measured on {next(iter(devices))}.\n\n"
        else:
            each = "; ".join(f"{d}: {n} cells" for d, n in devices.most_common())
            where = (
                f"Measured on {len(devices)} machines ({each}); times compare only between cells of one"
                " machine (each row's `device` column).\n\n"
            )
    return (
        "Costs per method (shortest – longest code; latest row of each cell)\n\n"
        + where
        + body
        + "\n\n*train s / cell*: fitting one cell (for the float reference: the IDE stage, shared by every"
        " shallow method's features); *wall min*: all the method's cells end to end (fitting, encoding"
        " query and gallery and the training split, evaluation, search by description, saving), features"
        " already cached; *encode ms / image*: query and gallery; *query ms*: one query against the whole"
        " gallery (distances and ranking); *bytes / code*: storage of one gallery item.\n"
    )
