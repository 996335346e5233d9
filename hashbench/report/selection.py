"""Which rows a report shows, and in which order: the latest row of each cell, methods in the paper's order.

* Rows come from :func:`hashbench.results.read_results` (:func:`load_results` is its DataFrame view).
* Several rows for one (dataset, method, bits) cell come from different configs; the latest by
  ``date`` is shown (ties and unparseable dates: the later row in the file wins), the one rule of
  :func:`hashbench.results.latest_positions`, which ``hashbench explain`` and ``query`` follow too.
* Methods are listed in the paper's order (KSH-CNN, SDH-CNN, DBH, PDH, DeepSSH), then the modern deep
  baselines by year (DPSH, DSH, HashNet, GreedyHash, CSQ, CtF), then any other method alphabetically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..errors import HashbenchError
from ..results import CSV_NAME, METRICS, REQUIRED_COLUMNS, check_frame, latest_positions, read_results

RESULTS_FILE = CSV_NAME
# the paper's order; plugin names (ksh, sdh) and the paper's spellings (KSH-CNN, SDH-CNN) share a place
PAPER_ORDER = ("ksh", "sdh", "dbh", "pdh", "deepssh")
PAPER_ALIASES = {"ksh-cnn": "ksh", "sdh-cnn": "sdh"}
# the modern deep baselines, after the paper's methods, by year (2016 to 2020)
MODERN_ORDER = ("dpsh", "dsh", "hashnet", "greedyhash", "csq", "ctf")
METHOD_ORDER = PAPER_ORDER + MODERN_ORDER
DATASET_NAMES = {"market1501": "Market-1501", "market-1501": "Market-1501"}


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a results store: a CSV file, or a directory holding ``results.csv``.

    ``bits`` comes back as a nullable integer column (``<NA>`` for reference rows); the metrics as floats.
    The DataFrame view of :func:`hashbench.results.read_results`, with its errors.
    """
    return read_results(path, required=REQUIRED_COLUMNS).frame


def select_latest(
    df: pd.DataFrame, dataset: str | None = None, config_hash: str | None = None
) -> pd.DataFrame:
    """One row per (dataset, method, bits): the latest by ``date``, for one dataset.

    ``dataset`` is required only when the results hold several. ``config_hash`` (a prefix) restricts the
    hash-method rows to that config; reference rows (empty ``bits``) are kept regardless. Rows come
    back in (date, file) order (:func:`hashbench.results.latest_positions`).
    """
    df = check_frame(df)
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
    return df.iloc[latest_positions(df)].reset_index(drop=True)


def canonical_name(name: str) -> str:
    """Lower-case name with the paper's spellings mapped to plugin names (``KSH-CNN`` -> ``ksh``)."""
    return PAPER_ALIASES.get(name.lower(), name.lower())


def method_order(methods: Iterable[str]) -> list[str]:
    """The paper's order (KSH-CNN, SDH-CNN, DBH, PDH, DeepSSH), then the modern deep baselines
    (:data:`MODERN_ORDER`), then other methods alphabetically."""

    def key(name: str) -> tuple[int, str]:
        low = canonical_name(name)
        return (METHOD_ORDER.index(low) if low in METHOD_ORDER else len(METHOD_ORDER), name.lower())

    return sorted(dict.fromkeys(methods), key=key)


def dataset_title(name: str) -> str:
    """Display name of a dataset id (``market1501`` -> ``Market-1501``)."""
    return DATASET_NAMES.get(name.lower(), name)


def check_metric(metric: str) -> None:
    """An error naming every valid metric unless ``metric`` is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise HashbenchError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
