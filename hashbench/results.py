"""The results store: one CSV row per (method, bits) cell, with its provenance, plus artifacts.

``<out>/results.csv`` gets one row appended (and fsynced) per finished cell; the cell's codes, per-query
AP and CMC go to ``<out>/cells/<method>-<bits>-<config hash>.npz`` and its CMC curve (ranks 1-50) to
``<out>/cmc.csv`` *before* the row is written, so a row always points at complete artifacts and a
killed run loses at most the cell in progress. ``results.csv`` and ``cmc.csv`` are the citable,
committed part; the ``cells/`` artifacts hold codes and stay local (with the fitted method beside
each, ``<stem>.method.pt``). ``attribute_queries.csv`` holds each cell's search-by-description scores
(one row per number of queried attributes), written before the cell's row. A cell
is finished when a row with its (dataset, method, bits, config_hash) exists: re-runs skip it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import logging
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import __version__
from .errors import HashbenchError

log = logging.getLogger(__name__)

CSV_NAME = "results.csv"
CMC_NAME = "cmc.csv"
CMC_KEY = ("dataset", "method", "bits", "config_hash")
AQ_NAME = "attribute_queries.csv"  # search by description (hashbench.semantic), one row per (cell, n)
AQ_COLUMNS = (
    "dataset", "method", "bits", "n_attributes", "draws", "n_queries", "rank1", "rank5", "precision10",
    "config_hash", "commit", "seed", "date",
)  # fmt: skip


@dataclass
class ResultRow:
    dataset: str
    method: str
    bits: int | None  # None for real-valued reference rows
    map: float
    rank1: float
    rank5: float
    rank10: float
    rank20: float
    train_s: float
    encode_s: float
    encode_ms_per_image: float
    query_ms: float  # per query, against the whole gallery (distances + ranking)
    cell_s: float  # wall seconds of the whole cell: fit, encoding, evaluation, attribute queries, saving
    bytes_per_code: int
    n_train: int
    n_query: int
    n_gallery: int
    backbone: str
    input_size: str
    seed: int
    device: str
    version: str
    commit: str
    config_hash: str
    date: str
    artifact: str

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def git_commit(path: Path | None = None) -> str:
    """The commit of the hashbench source tree (``+dirty`` if it has uncommitted changes), or 'unknown'."""
    here = Path(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def device_name(device: str) -> str:
    """A readable device label: 'cpu (N threads, <cpu>)' or the CUDA device name."""
    if str(device).startswith("cuda"):
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    import torch

    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


class ResultStore:
    """A results directory: ``results.csv`` plus the ``cells/`` artifacts."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.csv = self.out / CSV_NAME
        self.cmc_csv = self.out / CMC_NAME

    def rows(self) -> list[dict]:
        if not self.csv.exists():
            return []
        with open(self.csv, newline="") as f:
            reader = csv.DictReader(f)
            _check_header(self.csv, list(reader.fieldnames or []), ResultRow.columns())
            return list(reader)

    def finished(self, dataset: str, method: str, bits: int | None, config_hash: str) -> dict | None:
        want = (dataset, method, "" if bits is None else str(bits), config_hash)
        for row in self.rows():
            if (row["dataset"], row["method"], row["bits"], row["config_hash"]) == want:
                return row
        return None

    def artifact_path(self, method: str, bits: int | None, config_hash: str) -> Path:
        return self.out / "cells" / f"{method}-{bits if bits is not None else 'float'}-{config_hash}.npz"

    def save_artifact(self, path: Path, **arrays: np.ndarray) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return str(path.relative_to(self.out))

    def method_path(self, artifact: Path) -> Path:
        """Where the fitted method of a cell goes: beside its artifact, ``<same stem>.method.pt``."""
        return artifact.with_name(artifact.name[: -len(".npz")] + ".method.pt")

    def save_method(self, artifact: Path, method) -> Path | None:
        """``torch.save`` the fitted method beside its artifact (atomic); ``None`` if it cannot be pickled."""
        import torch

        path = self.method_path(artifact)
        tmp = path.with_name(path.name + ".tmp")
        try:
            torch.save(method, tmp)
        except Exception as exc:  # a plugin holding something unpicklable must not lose the cell
            tmp.unlink(missing_ok=True)
            log.warning(
                "fitted method not saved to %s: %s", path, str(exc).splitlines()[0] if str(exc) else exc
            )
            return None
        os.replace(tmp, path)
        return path

    def save_attribute_queries(self, rows: list[dict]) -> None:
        """Write a cell's attribute-query rows to ``attribute_queries.csv``, replacing any earlier rows of
        the same (dataset, method, bits, config_hash) (a cell killed after this and re-run), atomically."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / AQ_NAME
        keys = {(str(r["dataset"]), str(r["method"]), str(r["bits"]), str(r["config_hash"])) for r in rows}
        kept = []
        if path.exists():
            with open(path, newline="") as f:
                kept = [
                    r
                    for r in csv.DictReader(f)
                    if (r.get("dataset"), r.get("method"), r.get("bits"), r.get("config_hash")) not in keys
                ]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(AQ_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
            writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def append(self, row: ResultRow, cmc: np.ndarray) -> None:
        """Append the cell's CMC curve to ``cmc.csv``, then its row to ``results.csv`` (the commit mark)."""
        self.out.mkdir(parents=True, exist_ok=True)
        bits = "" if row.bits is None else row.bits
        key = {"dataset": row.dataset, "method": row.method, "bits": bits, "config_hash": row.config_hash}
        ranks = [f"r{k}" for k in range(1, len(cmc) + 1)]
        _append_csv(
            self.cmc_csv,
            [*CMC_KEY, *ranks],
            {**key, **{r: f"{v:.6f}" for r, v in zip(ranks, cmc, strict=True)}},
        )
        values = {k: _fmt(v) for k, v in asdict(row).items()}
        _append_csv(self.csv, ResultRow.columns(), {**values, "bits": bits})


def _check_header(path: Path, header: list[str], columns: list[str]) -> None:
    """A stored CSV must hold the key columns and no column this version does not write (an older
    version's file, missing only later columns, is fine: :func:`_append_csv` extends it)."""
    unknown = [c for c in header if c not in columns]
    if unknown:
        raise HashbenchError(
            f"{path}: column(s) {', '.join(unknown)} not written by hashbench {__version__}; write to another --out"
        )
    missing = [c for c in ("dataset", "method", "bits", "config_hash") if c in columns and c not in header]
    if header and missing:
        raise HashbenchError(f"{path}: missing column(s) {', '.join(missing)}; write to another --out")


def _append_csv(path: Path, columns: list[str], row: dict) -> None:
    """Append ``row``; a file written by an older version (its header a subset of ``columns``) is first
    rewritten, atomically, under the new header (the new columns empty in its rows)."""
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            old_rows = None if header == columns else list(reader)
        if old_rows is not None:
            _check_header(path, header, columns)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(old_rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            log.info("%s: added column(s) %s", path, ", ".join(c for c in columns if c not in header))
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}"
    return v


__all__ = ["ResultRow", "ResultStore", "git_commit", "now", "device_name", "__version__"]
