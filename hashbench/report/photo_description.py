"""Photo + description: what a description adds to a photo query (``photo_description.csv``), with the
weight ``alpha`` of the description chosen on held-out identities.

The runner scores every cell at each ``alpha`` of :data:`hashbench.semantic.ALPHAS` (``alpha = 0``:
the photo alone). Choosing ``alpha`` on those rows would tune on the test split, so the choice is made
on a validation run (``hashbench run --holdout N``, rows under ``results/<dataset>/validation``) by
:func:`pick_alpha` (``hashbench pick-alpha VALIDATION_DIR``), which records it in
``VALIDATION_DIR/photo_description_alpha.csv``: per (method, bits, decoder, description) the alpha of the
best validation mAP (ties: the smaller alpha), with that mAP, the photo-only one and the validation
cell's config hash. The report of the test run then shows, for each (method, decoder), the photo alone
and the photo with each description at the recorded alpha; a row without a recorded choice shows no
figure for the description (never one picked on the test rows).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..configs import hash_prefix
from ..durable import atomic_write_bytes
from ..errors import HashbenchError
from ..results import PD_NAME, latest_positions, now, read_store_frame
from .attribute_queries import row_order
from .selection import dataset_title, select_latest
from .tables import DASH, fmt_number, markdown_escape

ALPHA_NAME = "photo_description_alpha.csv"  # the validation choice of alpha, in the validation folder
ALPHA_COLUMNS = (
    "method", "bits", "decoder", "description", "alpha", "map", "photo_map", "dataset", "config_hash", "date",
)  # fmt: skip
PD_NOTE = (
    "Photo + description: each standard query (its photo's code) also gives its identity's description "
    "(full: every annotated attribute; partial3: 3 of them, seeded per query), and the whole gallery "
    "(Market-1501 protocol) is ranked by hamming / bits + alpha x the decoder's cost of the description "
    "(naive-bayes: the share of its evidence a code contradicts; logistic and a method's own: mean "
    "negative log-likelihood per attribute). alpha was chosen on held-out training identities "
    "(`hashbench pick-alpha` on a `--holdout` run), never on these rows; – : no validation choice "
    "recorded. Ties broken by gallery order."
)


def load_photo_description(
    results_dir: str | Path, df: pd.DataFrame | None = None, dataset: str | None = None
) -> pd.DataFrame | None:
    """The photo + description rows of the cells the report shows (latest per setting), or ``None``."""
    path = Path(results_dir) / PD_NAME
    pdf = read_store_frame(
        path,
        "photo + description file",
        dtype={"dataset": str, "method": str, "config_hash": str, "decoder": str},
    )
    if pdf is None:
        return None
    need = ("dataset", "method", "bits", "decoder", "description", "alpha", "map", "rank1")
    missing = [c for c in need if c not in pdf.columns]
    if missing:
        raise HashbenchError(f"{path}: missing required column(s) {', '.join(missing)}")
    pdf = pdf.assign(bits=pd.to_numeric(pdf["bits"], errors="coerce")).dropna(subset=["bits"])
    pdf = pdf.astype({"bits": int, "alpha": float})
    if df is not None and "config_hash" in pdf.columns and "config_hash" in df.columns:
        cells = select_latest(df, dataset).dropna(subset=["bits"])
        keys = {(str(r.dataset), str(r.method), int(r.bits), str(r.config_hash)) for r in cells.itertuples()}
        mask = [
            (str(r.dataset), str(r.method), int(r.bits), str(r.config_hash)) in keys for r in pdf.itertuples()
        ]
        pdf = pdf[np.asarray(mask, dtype=bool)]
    pdf = pdf.iloc[latest_positions(pdf, ("dataset", "method", "bits", "decoder", "description", "alpha"))]
    return pdf.reset_index(drop=True)


def pick_alpha(
    validation_dir: str | Path, out: str | Path | None = None, configs: list[str] | None = None
) -> Path:
    """Choose alpha on a validation run's photo + description rows and record it (module docstring).

    ``configs`` (config-hash prefixes, 4+ hex digits each) restricts the choice to those cells: a
    validation folder that holds several configurations of a method (a tuning sweep) would otherwise
    give the latest row per (method, bits), which need not be the configuration the test run uses.
    """
    from .selection import load_results

    validation_dir = Path(validation_dir)
    df = load_results(validation_dir)
    if configs:
        df = rows_of_configs(df, configs, validation_dir)
    pdf = load_photo_description(validation_dir, df)
    if pdf is None or pdf.empty:
        raise HashbenchError(
            f"{validation_dir / PD_NAME}: no photo + description rows; run `hashbench run --holdout N` "
            f"with attribute queries on (its default out: results/<dataset>/validation) first"
        )
    rows = []
    date = now()
    for (method, bits, decoder), part in pdf.groupby(["method", "bits", "decoder"], sort=False):
        photo = part[part["description"] == "none"]["map"]
        for kind, grid in part[part["description"] != "none"].groupby("description", sort=False):
            grid = grid.sort_values("alpha", kind="stable")
            best = grid.iloc[int(np.argmax(grid["map"].to_numpy()))]  # first of the maxima: smaller alpha
            rows.append(
                dict(
                    method=method, bits=int(bits), decoder=decoder, description=kind, alpha=float(best["alpha"]),
                    map=f"{best['map']:.4f}", photo_map=f"{photo.iloc[0]:.4f}" if len(photo) else "",
                    dataset=best["dataset"], config_hash=best.get("config_hash", ""), date=date,
                )
            )  # fmt: skip
    path = Path(out) if out else validation_dir / ALPHA_NAME
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ALPHA_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


def rows_of_configs(df: pd.DataFrame, prefixes: list[str], where: Path) -> pd.DataFrame:
    """The rows of ``df`` whose config hash starts with one of ``prefixes``; a one-line error for a
    malformed prefix or one that matches no row (``--config``)."""
    hashes = df["config_hash"].astype(str) if "config_hash" in df.columns else pd.Series([""] * len(df))
    keep = np.zeros(len(df), dtype=bool)
    for prefix in prefixes:
        prefix = hash_prefix(prefix, "--config")
        hit = hashes.str.startswith(prefix).to_numpy()
        if not hit.any():
            raise HashbenchError(
                f"--config {prefix!r}: no row of {where / 'results.csv'} has that config hash"
            )
        keep |= hit
    return df[keep]


def read_alpha_choice(path: str | Path) -> dict[tuple[str, int, str, str], float]:
    """(method, bits, decoder, description) -> alpha, from a :func:`pick_alpha` file (empty if absent)."""
    path = Path(path)
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype={"method": str, "decoder": str, "description": str})
    return {
        (str(r.method), int(r.bits), str(r.decoder), str(r.description)): float(r.alpha)
        for r in frame.itertuples()
    }


def photo_description_table(
    pdf: pd.DataFrame, choice: dict, bits: int | None = None
) -> tuple[pd.DataFrame, int]:
    """(method, decoder) rows: photo mAP / rank-1, and each description's at the validation alpha."""
    have = sorted(int(b) for b in pdf["bits"].unique())
    if not have:
        raise HashbenchError("no photo + description rows for the cells of the results")
    bits = have[-1] if bits is None else int(bits)
    if bits not in have:
        raise HashbenchError(f"--aq-bits {bits}: no photo + description rows at {bits} bits (have: {have})")
    at = pdf[pdf["bits"] == bits]
    kinds = [k for k in dict.fromkeys(at["description"]) if k != "none"]
    records = []
    for method, decoder in row_order(zip(at["method"], at["decoder"], strict=True)):
        part = at[(at["method"] == method) & (at["decoder"] == decoder)]
        photo = part[part["description"] == "none"]
        rec = {"method": method, "decoder": decoder}
        rec["photo map"] = float(photo["map"].iloc[0]) if len(photo) else np.nan
        rec["photo rank1"] = float(photo["rank1"].iloc[0]) if len(photo) else np.nan
        for kind in kinds:
            alpha = choice.get((method, bits, decoder, kind))
            hit = part[
                (part["description"] == kind) & np.isclose(part["alpha"], alpha if alpha is not None else -1)
            ]
            rec[f"{kind} alpha"] = alpha if alpha is not None else np.nan
            rec[f"{kind} map"] = float(hit["map"].iloc[0]) if len(hit) else np.nan
            rec[f"{kind} rank1"] = float(hit["rank1"].iloc[0]) if len(hit) else np.nan
        records.append(rec)
    table = pd.DataFrame(records)
    table.attrs = {"dataset": str(at["dataset"].iloc[0]), "bits": bits, "kinds": kinds}
    return table, bits


def render_photo_description(table: pd.DataFrame) -> str:
    """Markdown: per (method, decoder), mAP and rank-1 of the photo alone and with each description."""
    kinds = table.attrs["kinds"]
    headers = ["Method", "Decoder", "photo mAP"]
    for kind in kinds:
        headers += [f"+{kind} mAP", f"{kind} α"]
    headers.append("photo R1")
    headers += [f"+{kind} R1" for kind in kinds]

    def num(v) -> str:
        return DASH["markdown"] if pd.isna(v) else fmt_number(v)

    rows = []
    for r in table.to_dict("records"):
        row = [markdown_escape(r["method"]), markdown_escape(r["decoder"]), num(r["photo map"])]
        for kind in kinds:
            a = r[f"{kind} alpha"]
            row += [num(r[f"{kind} map"]), DASH["markdown"] if pd.isna(a) else f"{a:g}"]
        row.append(num(r["photo rank1"]))
        row += [num(r[f"{kind} rank1"]) for kind in kinds]
        rows.append(row)
    title = (
        f"**{dataset_title(table.attrs['dataset'])}: photo + description, {table.attrs['bits']}-bit codes "
        "(mAP and rank-1, %)**"
    )
    body = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    return f"{title}\n\n{body}\n\n{PD_NOTE}\n"
