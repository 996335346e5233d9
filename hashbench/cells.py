"""Reading one finished cell back: its ``results.csv`` row, its ``.npz`` artifact and its fitted method.

The runner writes, per (method, bits) cell, ``cells/<method>-<bits>-<config hash>.npz`` (packed codes of
every split, labels, identity attributes, the attribute schema as JSON) and the fitted method beside it
(``<same stem>.method.pt``, :meth:`ResultStore.method_path`; tensors and plain data, restored by
:meth:`Cell.fitted_method` without running code from the file). ``results.csv`` says which artifact belongs
to which cell; when several rows match a (method, bits), the latest wins, by the rule the report uses
(:func:`hashbench.results.latest_positions`: latest ``date``, ties to the later row). Presentation tools
(``hashbench explain``, ``hashbench query``) read cells through :func:`load_cell` and never recompute them.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import AttributeGroup, AttributeSchema
from .errors import HashbenchError
from .results import CSV_NAME, ResultStore, StoredRow, artifact_file, latest_rows, read_results

if TYPE_CHECKING:
    from .method import Context, HashMethod
    from .registry import Registry

SPLITS = ("train", "query", "gallery")
REQUIRED_COLUMNS = ("dataset", "method", "bits")  # what reading a cell back needs of results.csv


def run_hint(dataset: str, method: str, bits: int | str, results_dir: Path) -> str:
    """The command that produces a cell, for error messages."""
    default = Path("results") / dataset
    out = "" if Path(results_dir) == default else f" --out {results_dir}"
    return f"hashbench run --dataset {dataset} --methods {method} --bits {bits}{out}"


def read_rows(results_dir: Path) -> list[StoredRow]:
    """Rows of ``results_dir/results.csv``, in file order (:func:`hashbench.results.read_results`);
    an error naming the file and the run to do when it is missing."""
    results_dir = Path(results_dir)
    path = results_dir / CSV_NAME
    if not results_dir.is_dir():
        raise HashbenchError(
            f"results directory {results_dir} not found: run `hashbench run --out {results_dir}` first"
        )
    if not path.is_file():
        raise HashbenchError(f"{path} not found: run `hashbench run --out {results_dir}` first")
    return list(read_results(path, required=REQUIRED_COLUMNS).rows)


def hash_rows(rows: Sequence[StoredRow]) -> dict[tuple[str, int], StoredRow]:
    """(method, bits) -> the latest row of each hash cell (:func:`hashbench.results.latest_rows`),
    in the order the cells first appear in the file; reference rows (no bits) are left out."""
    hashed = [row for row in rows if row.bits is not None]
    # the rule keyed by (method, bits), what a cell is here (one dataset per results directory)
    latest = {(row.method, row.bits): row for row in latest_rows(hashed, key=("method", "bits"))}
    return {cell: latest[cell] for cell in dict.fromkeys((row.method, row.bits) for row in hashed)}


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
    """One finished cell: its row (column -> text, as written), artifact arrays (loaded eagerly) and
    attribute schema."""

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

    def packed_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """The packed query and gallery codes, checked to be of the cell's length (with the labels
        that score a ranking of them)."""
        self.require(
            "query_codes", "gallery_codes", "query_pids", "query_camids", "gallery_pids", "gallery_camids"
        )
        q, g = self.arrays["query_codes"], self.arrays["gallery_codes"]
        if q.ndim != 2 or g.ndim != 2 or q.dtype != np.uint8 or g.dtype != np.uint8:
            raise HashbenchError(f"artifact {self.path}: query/gallery codes are not packed uint8 codes")
        if q.shape[1] != g.shape[1] or q.shape[1] != self.bits // 8:
            raise HashbenchError(
                f"artifact {self.path}: query codes have {8 * q.shape[1]} bits, gallery codes "
                f"{8 * g.shape[1]}, the cell {self.bits}: mismatched code lengths"
            )
        return q, g

    def codes(self, split: str) -> np.ndarray:
        """(N, bits) uint8 0/1 codes of ``split``."""
        self.require(f"{split}_codes")
        return np.unpackbits(self.arrays[f"{split}_codes"], axis=1, count=self.bits)

    def attributes(self, split: str) -> np.ndarray:
        self.require(f"{split}_attributes")
        return self.arrays[f"{split}_attributes"].astype(np.int64)

    @property
    def method_path(self) -> Path:
        return ResultStore.method_path(self.path)

    def refit_hint(self) -> str:
        """How to fit the cell again (a finished cell is skipped while its row is there)."""
        return f"`{self.hint()}` after removing its row from {self.results_dir / CSV_NAME}"

    def fitted_method(
        self, context: Context | None = None, *, required: bool = False, registry: Registry | None = None
    ) -> HashMethod | None:
        """The fitted method saved beside the artifact (``None`` when absent and not required).

        The file holds tensors and plain data only and is read without running any code
        (:func:`hashbench.state.read_state`); the method is built again from its registered class
        (``registry``, default: the installed plugins) and restored in ``context``, which the caller
        builds: a deep method rebuilds its network on ``context.backbone`` at ``context.device``
        (:meth:`hashbench.pipeline.Pipeline.context` gives the run's). A file of another kind (a pickle
        payload, a method pickled whole by an older hashbench) is refused with one line."""
        if self._method is None:
            path = self.method_path
            if not path.is_file():
                if required:
                    raise HashbenchError(f"fitted method {path} not found: run `{self.hint()}` first")
                return None
            from .registry import Registry
            from .state import read_state, restore_method

            state = read_state(path, self.refit_hint())
            try:
                self._method = restore_method(state, registry or Registry.load(), context)
            except HashbenchError as exc:
                raise HashbenchError(f"fitted method {path} cannot be restored: {exc}") from None
            except Exception as exc:  # a plugin's hook that fails on this state
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise HashbenchError(
                    f"fitted method {path} cannot be restored: {type(exc).__name__}: {first}"
                ) from None
        return self._method


def load_cell(
    results_dir: str | Path, method: str, bits: int, rows: Sequence[StoredRow] | None = None
) -> Cell:
    """The latest cell (method, bits) of a results directory (:func:`hash_rows`); errors name the file
    and the run to do. ``rows``: those :func:`read_rows` gave, to read the file once for many cells."""
    results_dir = Path(results_dir)
    cells = hash_rows(read_rows(results_dir) if rows is None else rows)
    row = cells.get((method, int(bits)))
    if row is None:
        have = ", ".join(f"{m}@{b}" for m, b in sorted(cells)) or "none"
        dataset = next(iter(cells.values())).dataset if cells else "DATASET"
        raise HashbenchError(
            f"{results_dir / CSV_NAME}: no cell {method} at {bits} bits (have: {have}); "
            f"run `{run_hint(dataset, method, bits, results_dir)}` first"
        )
    artifact = row.artifact.strip()
    hint = run_hint(row.dataset, method, bits, results_dir)
    path = artifact_file(results_dir, artifact) if artifact else results_dir
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
    return Cell(results_dir, dict(row.values), path, arrays, schema)
