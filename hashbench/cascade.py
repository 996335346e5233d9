"""Coarse-to-fine search of finished cells (``hashbench cascade``): what a short prefix of the code costs
and loses, against the full code, on a cell's own test queries and gallery.

For each cell (method, bits) of a results folder, every test query is searched three ways over the test
gallery, each returning the whole ranking so that mAP and rank-1 are those of the Market-1501 protocol
(:func:`hashbench.metrics.evaluate_rankings`, as every results row):

* ``full``: the full code's Hamming ranking (the cell's own row: the same mAP);
* ``prefix``: the first ``bits / ratio`` bits alone rank the gallery (a shorter code for free);
* ``coarse-to-fine``: that prefix ranks the gallery and the full code re-ranks its first ``top_k``
  (:func:`hashbench.search.coarse_to_fine_rank`; one row per ``--top-k``), the search of CtF (Wang et
  al., ECCV 2020). Within the top-k the order is the full code's; beyond it, the prefix's.

CtF trains its codes so that every prefix ``bits / 2^j`` is itself a code (nested codes); for any other
method the prefix is just its first bits, which is what CtF's training is measured against.

**Timing.** ``query_ms``: wall time of one search of every query, divided by the queries, the best of
``repeats`` passes; every search of a cell runs on the same Hamming backend (first stage) and the same
threads, in one process, so the rows of a cell compare. ``bits_compared``: bits XOR-ed per query
(``n_gallery x bits`` for ``full``). Both searches sort the whole gallery for every query (evaluation
needs the whole ranking), so the cascade saves distance work, not the sort: at short codes the sort
dominates and the saving is small. ``speedup``: the full search's ``query_ms`` over the row's.

Rows go to ``cascade.csv`` (one per cell, search, lengths, top-k and backend; a rerun replaces its rows,
written atomically under the folder lock) with the provenance of the cell (``config_hash``, ``seed``)
and of the measurement (``device``, ``version``, ``commit``, ``date``), then ``table_cascade.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import __version__
from .cells import Cell, load_cell, read_rows
from .errors import HashbenchError
from .metrics import default_threads, evaluate_rankings
from .results import (
    device_name,
    git_commit,
    latest_positions,
    now,
    read_store_frame,
    replace_keyed_rows,
)
from .search import BACKENDS, _backend, coarse_to_fine_cost, coarse_to_fine_rank, hamming_rank, prefix_codes

log = logging.getLogger(__name__)

CASCADE_NAME = "cascade.csv"
TABLE_NAME = "table_cascade.md"
CASCADE_COLUMNS = (
    "dataset", "method", "bits", "search", "lengths", "top_k", "map", "rank1", "query_ms", "speedup",
    "bits_compared", "backend", "threads", "repeats", "n_query", "n_gallery", "config_hash", "seed",
    "device", "version", "commit", "date",
)  # fmt: skip
CASCADE_KEY = ("dataset", "method", "bits", "config_hash", "search", "lengths", "top_k", "backend")
DEFAULT_RATIO = 8  # CtF's shortest code: bits / 8 (levels=4)


@dataclass(frozen=True)
class CascadeConfig:
    results: Path
    methods: Sequence[str]
    bits: Sequence[int]
    top_ks: Sequence[int] = (100, 1000)
    ratio: int = DEFAULT_RATIO
    backend: str = "auto"
    repeats: int = 3
    out: Path | None = None


def parse_top_ks(text: str) -> list[int]:
    """``--top-k 100,1000`` -> [100, 1000] (positive, repeats dropped, sorted)."""
    try:
        ks = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise HashbenchError(f"--top-k {text!r}: expected positive integers, e.g. 100,1000") from None
    if not ks or ks[0] < 1:
        raise HashbenchError(f"--top-k {text!r}: expected positive integers, e.g. 100,1000")
    return ks


def check_config(config: CascadeConfig) -> None:
    """One-line errors for options no cell can satisfy (before any cell is read)."""
    if config.ratio < 2:
        raise HashbenchError(f"--ratio {config.ratio}: expected at least 2 (the prefix is bits / ratio bits)")
    for b in config.bits:
        if b % config.ratio:
            raise HashbenchError(
                f"--ratio {config.ratio}: {b} bits do not split into a {b}/{config.ratio}-bit prefix"
            )
    if config.repeats < 1:
        raise HashbenchError(f"--repeats {config.repeats}: expected at least 1")
    if config.backend not in BACKENDS:
        raise HashbenchError(f"--backend {config.backend!r}: expected one of {', '.join(BACKENDS)}")
    _backend(config.backend)  # faiss asked for and missing: one line


def _best_ms(search, n_query: int, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = search()
        best = min(best, time.perf_counter() - t0)
    return result, 1000 * best / max(1, n_query)


def cascade_cell(cell: Cell, config: CascadeConfig) -> list[dict]:
    """The rows of one cell: full, prefix alone, and coarse to fine at every top-k."""
    (q, g), bits = cell.packed_codes(), cell.bits
    backend, threads = _backend(config.backend), default_threads()
    short = bits // config.ratio
    nq, ng = len(q), len(g)
    a = cell.arrays

    def score(order):
        e = evaluate_rankings(
            order, a["query_pids"], a["query_camids"], a["gallery_pids"], a["gallery_camids"]
        )
        return 100 * e.mAP, 100 * e.rank(1)

    searches = [("full", str(bits), "", lambda: hamming_rank(q, g, backend=backend), ng * bits)]
    qs, gs = prefix_codes(q, bits, short), prefix_codes(g, bits, short)
    searches.append(("prefix", str(short), "", lambda: hamming_rank(qs, gs, backend=backend), ng * short))
    for k in config.top_ks:
        searches.append(
            (
                "coarse-to-fine",
                f"{short}>{bits}",
                str(min(k, ng)),
                lambda k=k: coarse_to_fine_rank(q, g, bits, (short, bits), k, backend=backend),
                coarse_to_fine_cost(ng, (short, bits), k),
            )
        )
    commit, date, dev = git_commit(), now(), device_name("cpu")
    rows, full_ms = [], None
    for search, lengths, top_k, run, compared in searches:
        order, ms = _best_ms(run, nq, config.repeats)
        m, r1 = score(order)
        full_ms = ms if full_ms is None else full_ms
        rows.append(
            {
                "dataset": cell.dataset,
                "method": cell.method,
                "bits": bits,
                "search": search,
                "lengths": lengths,
                "top_k": top_k,
                "map": m,
                "rank1": r1,
                "query_ms": ms,
                "speedup": full_ms / ms,
                "bits_compared": compared,
                "backend": backend,
                "threads": threads,
                "repeats": config.repeats,
                "n_query": nq,
                "n_gallery": ng,
                "config_hash": cell.row.get("config_hash", ""),
                "seed": cell.row.get("seed", ""),
                "device": dev,
                "version": __version__,
                "commit": commit,
                "date": date,
            }
        )
        log.info(
            "%s @ %d bits, %s %s%s: mAP %.2f rank-1 %.2f, %.3f ms/query",
            cell.method, bits, search, lengths, f" top {top_k}" if top_k else "", m, r1, ms,
        )  # fmt: skip
    return rows


def run_cascade(config: CascadeConfig) -> pd.DataFrame:
    """Search every (method, bits) cell of ``config.results`` coarse to fine; store and tabulate the rows.
    Every cell is loaded (and its errors raised) before anything is measured or written."""
    check_config(config)
    results = Path(config.results)
    stored = read_rows(results)
    cells = [load_cell(results, m, b, stored) for m in config.methods for b in config.bits]
    out = Path(config.out) if config.out else results
    rows = []
    for cell in cells:
        rows += cascade_cell(cell, config)
    replace_keyed_rows(out / CASCADE_NAME, CASCADE_COLUMNS, CASCADE_KEY, rows, "cascade file")
    frame = read_cascade(out)
    (out / TABLE_NAME).write_text(table_cascade(frame), encoding="utf-8")
    return frame


def read_cascade(folder: Path) -> pd.DataFrame | None:
    """The latest row of each (cell, search, lengths, top-k, backend) of ``folder/cascade.csv``."""
    frame = read_store_frame(
        Path(folder) / CASCADE_NAME, "cascade file", dtype={"config_hash": str, "lengths": str, "top_k": str}
    )
    if frame is None or frame.empty:
        return None
    keep = latest_positions(frame, CASCADE_KEY)
    return frame.iloc[sorted(keep)].reset_index(drop=True)


def table_cascade(frame: pd.DataFrame | None) -> str:
    """Markdown: one row per search of each cell, with how it was measured."""
    from tabulate import tabulate

    if frame is None or frame.empty:
        return "No cascade rows.\n"
    body = []
    for _, r in frame.iterrows():
        search = r["search"] if r["search"] == "full" else f"{r['search']} ({r['lengths']} bits)"
        if str(r["top_k"]).strip() not in ("", "nan"):
            search += f", top {int(float(r['top_k']))}"
        body.append(
            [
                r["method"],
                int(r["bits"]),
                search,
                f"{r['map']:.2f}",
                f"{r['rank1']:.2f}",
                f"{r['query_ms']:.3f}",
                f"{r['speedup']:.2f}x",
                f"{int(r['bits_compared']) / 1e6:.2f}",
            ]
        )
    head = ["method", "bits", "search", "mAP", "rank-1", "ms / query", "vs full", "Mbit compared / query"]
    how = sorted(
        {f"{r['device']}, {r['backend']} backend, best of {r['repeats']}" for _, r in frame.iterrows()}
    )
    commits = ", ".join(sorted({str(c) for c in frame["commit"]}))
    return (
        "# Coarse-to-fine search of the cells\n\n"
        + tabulate(body, headers=head, tablefmt="github", disable_numparse=True)
        + "\n\nEvery query against the whole test gallery; mAP and rank-1 over the whole ranking (Market-1501 "
        "protocol, Hamming ties by gallery order). *prefix*: the first bits alone; *coarse-to-fine*: the "
        "prefix ranks the gallery, the full code re-ranks its top k. Measured on "
        + "; ".join(how)
        + f" (commit {commits}; `hashbench cascade`, `cascade.csv`).\n"
    )
