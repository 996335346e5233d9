"""Reading one finished cell back: its ``results.csv`` row, its ``.npz`` artifact and its fitted method.

The runner writes, per (method, bits) cell, ``cells/<method>-<bits>-<config hash>.npz`` (packed codes of
every split, labels, identity attributes, the attribute schema as JSON) and the fitted method beside it
(``<same stem>.method.pt``). ``results.csv`` says which artifact belongs to which cell; when several
rows match a (method, bits), the last one wins (the latest run). Presentation tools (``hashbench
explain``, ``hashbench query``) read cells through :func:`load_cell` and never recompute them.
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import AttributeGroup, AttributeSchema
from .errors import HashbenchError
from .results import CSV_NAME

SPLITS = ("train", "query", "gallery")


def run_hint(dataset: str, method: str, bits: int | str, results_dir: Path) -> str:
    """The command that produces a cell, for error messages."""
    default = Path("results") / dataset
    out = "" if Path(results_dir) == default else f" --out {results_dir}"
    return f"hashbench run --dataset {dataset} --methods {method} --bits {bits}{out}"


def read_rows(results_dir: Path) -> list[dict]:
    """Rows of ``results_dir/results.csv`` (an error naming the file when it is missing)."""
    results_dir = Path(results_dir)
    path = results_dir / CSV_NAME
    if not results_dir.is_dir():
        raise HashbenchError(
            f"results directory {results_dir} not found: run `hashbench run --out {results_dir}` first"
        )
    if not path.is_file():
        raise HashbenchError(f"{path} not found: run `hashbench run --out {results_dir}` first")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def hash_rows(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """(method, bits) -> the last row of each hash cell (reference rows, with empty bits, left out)."""
    out: dict[tuple[str, int], dict] = {}
    for row in rows:
        bits = (row.get("bits") or "").strip()
        if bits.isdigit():
            out[(row["method"], int(bits))] = row
    return out


def schema_from_json(text: str) -> AttributeSchema:
    """The :class:`AttributeSchema` of a cell's ``schema`` entry (a JSON list of groups: name, values)."""
    groups = json.loads(text)
    if isinstance(groups, dict):
        groups = groups.get("groups", [])
    return AttributeSchema(
        tuple(
            AttributeGroup(
                g["name"],
                tuple(g["values"]),
                tuple(g.get("fields", ())),
                g.get("description", ""),
            )
            for g in groups
        )
    )


@dataclass
class Cell:
    """One finished cell: its row, artifact arrays (loaded eagerly) and attribute schema."""

    results_dir: Path
    row: dict
    path: Path
    arrays: dict[str, np.ndarray]
    schema: AttributeSchema | None
    _method: object = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return self.row["method"]

    @property
    def bits(self) -> int:
        return int(self.row["bits"])

    @property
    def dataset(self) -> str:
        return self.row["dataset"]

    def hint(self) -> str:
        return run_hint(self.dataset, self.method, self.bits, self.results_dir)

    def require(self, *keys: str) -> None:
        missing = [k for k in keys if k not in self.arrays]
        if missing:
            raise HashbenchError(
                f"artifact {self.path} has no {', '.join(missing)} (written by an older hashbench): "
                f"re-run the cell with `{self.hint()}` after removing its row from {self.results_dir / CSV_NAME}"
            )

    def codes(self, split: str) -> np.ndarray:
        """(N, bits) uint8 0/1 codes of ``split``."""
        self.require(f"{split}_codes")
        return np.unpackbits(self.arrays[f"{split}_codes"], axis=1, count=self.bits)

    def attributes(self, split: str) -> np.ndarray:
        self.require(f"{split}_attributes")
        return self.arrays[f"{split}_attributes"].astype(np.int64)

    @property
    def method_path(self) -> Path:
        return self.path.with_name(self.path.name[: -len(".npz")] + ".method.pt")

    def fitted_method(self, required: bool = False):
        """The fitted method object saved beside the artifact (``None`` when absent and not required)."""
        if self._method is None:
            path = self.method_path
            if not path.is_file():
                if required:
                    raise HashbenchError(f"fitted method {path} not found: run `{self.hint()}` first")
                return None
            import torch

            try:
                self._method = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # pickled code that no longer imports, a truncated file
                raise HashbenchError(f"fitted method {path} cannot be loaded: {exc}") from None
        return self._method


def load_cell(results_dir: str | Path, method: str, bits: int, rows: list[dict] | None = None) -> Cell:
    """The latest cell (method, bits) of a results directory; errors name the file and the run to do."""
    results_dir = Path(results_dir)
    cells = hash_rows(read_rows(results_dir) if rows is None else rows)
    row = cells.get((method, int(bits)))
    if row is None:
        have = ", ".join(f"{m}@{b}" for m, b in sorted(cells)) or "none"
        dataset = next(iter(cells.values()))["dataset"] if cells else "DATASET"
        raise HashbenchError(
            f"{results_dir / CSV_NAME}: no cell {method} at {bits} bits (have: {have}); "
            f"run `{run_hint(dataset, method, bits, results_dir)}` first"
        )
    artifact = (row.get("artifact") or "").strip()
    path = results_dir / artifact
    hint = run_hint(row["dataset"], method, bits, results_dir)
    if not artifact or not path.is_file():
        raise HashbenchError(f"artifact {path} of {method} at {bits} bits not found: run `{hint}` first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise HashbenchError(f"artifact {path} is not a readable .npz: {exc}") from None
    schema = None
    if "schema" in arrays:
        try:
            schema = schema_from_json(str(arrays["schema"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise HashbenchError(f"artifact {path}: unreadable attribute schema ({exc})") from None
    return Cell(results_dir, row, path, arrays, schema)
