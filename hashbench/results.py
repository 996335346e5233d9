"""The results store: one CSV row per (method, bits) cell, with its provenance, plus artifacts.

``<out>/results.csv`` gets one row appended (and fsynced) per finished cell; the cell's codes, per-query
AP and CMC go to ``<out>/cells/<method>-<bits>-<config hash>.npz`` and its CMC curve (ranks 1-50) to
``<out>/cmc.csv`` *before* the row is written, so a row always points at complete artifacts and a
killed run loses at most the cell in progress. ``results.csv`` and ``cmc.csv`` are the citable,
committed part; the ``cells/`` artifacts hold codes and stay local (with the fitted method beside
each, ``<stem>.method.pt``: tensors and plain data only, see :mod:`hashbench.state`).
``attribute_queries.csv`` holds each cell's search-by-description scores (one row per decoder and number
of queried attributes; a file written before the ``decoder`` column existed holds naive-Bayes rows), and
``photo_description.csv`` its photo + description scores, both written before the cell's row. A cell is finished when a row with its (dataset, method, bits, config_hash) exists: re-runs skip it.

Every reader of the store goes through :func:`read_results` (typed rows plus a pandas view), and every
"which row of a cell is current" question through :func:`latest_positions`: per (dataset, method, bits)
the row with the latest ``date`` (a missing or unparseable one counts as the earliest), ties going to the
later row in the file.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .durable import atomic_write_bytes, folder_lock, sweep_temps
from .errors import HashbenchError

log = logging.getLogger(__name__)

CSV_NAME = "results.csv"
CMC_NAME = "cmc.csv"
CMC_KEY = ("dataset", "method", "bits", "config_hash")
AQ_NAME = "attribute_queries.csv"  # search by description (hashbench.semantic), one row per (cell, n)
AQ_COLUMNS = (
    "dataset", "method", "bits", "decoder", "n_attributes", "draws", "n_queries", "rank1", "rank5",
    "precision10", "config_hash", "commit", "seed", "date",
)  # fmt: skip
AQ_DEFAULT_DECODER = "naive-bayes"  # what a row of a file without the ``decoder`` column used
PD_NAME = "photo_description.csv"  # photo + description queries (hashbench.semantic), one row per setting
PD_COLUMNS = (
    "dataset", "method", "bits", "decoder", "description", "alpha", "n_queries", "map", "rank1",
    "config_hash", "commit", "seed", "date",
)  # fmt: skip
CELL_KEY = ("dataset", "method", "bits")  # one cell of a table: its latest row is the one shown
# what the report needs of a results file; other readers ask for less (``read_results(required=...)``)
REQUIRED_COLUMNS = ("dataset", "method", "bits", "map", "rank1", "date", "artifact")
METRICS = {"map": "mAP", "rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10", "rank20": "Rank-20"}
_AQ_NUMBERS = ("n_attributes", "draws", "n_queries", "precision10", "alpha")  # side files
_TEXT_COLUMNS = {"dataset": str, "method": str, "artifact": str, "config_hash": str}


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


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class StoredRow:
    """One row of a ``results.csv`` as read back by :func:`read_results`.

    The key and the metrics are typed (``bits`` is ``None`` for real-valued reference rows, metrics are
    floats, NaN where the file has no value); ``values`` keeps every column's text as written (``''``
    where empty), for the provenance columns a reader passes on untouched.
    """

    position: int  # 0-based among the file's rows: ties of date go to the later one
    dataset: str
    method: str
    bits: int | None
    config_hash: str
    date: str
    artifact: str
    metrics: dict[str, float]
    values: dict[str, str]

    @property
    def key(self) -> tuple[str, str, int | None, str]:
        """(dataset, method, bits, config_hash): what makes a cell finished (:meth:`ResultStore.finished`)."""
        return (self.dataset, self.method, self.bits, self.config_hash)


@dataclass(frozen=True, eq=False)
class ResultTable:
    """A results file read once: its typed :attr:`rows` and :attr:`frame`, the same rows as a DataFrame
    (``bits`` a nullable ``Int64`` column, the metrics floats, other columns as pandas reads them)."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[StoredRow, ...]
    frame: pd.DataFrame = field(repr=False)
    damaged: tuple[DamagedLine, ...] = ()  # the lines left out (:func:`scan_csv`)

    def latest(self, key: Sequence[str] = CELL_KEY) -> list[StoredRow]:
        """The latest row of each cell (:func:`latest_positions`), in (date, file) order."""
        return [self.rows[i] for i in latest_positions(self.frame, key)]


def read_results(
    path: str | Path, required: Sequence[str] = REQUIRED_COLUMNS, warn: bool = True
) -> ResultTable:
    """Read a results store: a CSV file, or a directory holding ``results.csv``.

    Damaged lines (:func:`scan_csv`, :func:`check_result_row`) are left out of the table and listed in
    its :attr:`~ResultTable.damaged`, with one warning (unless ``warn`` is false). Errors are one line
    naming the file: missing, empty, not UTF-8 text or not CSV in its header, a ``required`` column
    missing.
    """
    path = Path(path)
    csv_path = path / CSV_NAME if path.is_dir() else path
    if not csv_path.is_file():
        raise HashbenchError(f"results file {csv_path} not found")
    scan = scan_csv(csv_path, check_result_row, what="results file")
    if not scan.header:
        raise HashbenchError(f"results file {csv_path} is empty (no header)")
    if warn and scan.damaged:
        log.warning("%s", damage_message(csv_path, scan.damaged))
    data = scan.good_bytes()
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=_TEXT_COLUMNS)
        # the same bytes, every field as its text: what a row's ``values`` keep
        text = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise HashbenchError(f"results file {csv_path} is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HashbenchError(f"results file {csv_path} is not a readable CSV: {first}") from None
    frame = check_frame(frame, str(csv_path), required)
    return ResultTable(csv_path, tuple(frame.columns), _typed_rows(frame, text), frame, scan.damaged)


def read_store_frame(path: Path, what: str, **read_csv) -> pd.DataFrame | None:
    """A side file of a results store (``cmc.csv``, ``attribute_queries.csv``) as a frame of its good
    lines, or ``None`` when it does not exist. Damaged lines (:func:`scan_csv`, :func:`check_result_row`)
    are left out with one warning, the rest kept; an unreadable file is a one-line error naming it.
    ``read_csv``: options for :func:`pandas.read_csv` (dtypes)."""
    path = Path(path)
    if not path.is_file():
        return None
    scan = scan_csv(path, check_result_row, what=what)
    if not scan.header:
        return None
    if scan.damaged:
        log.warning("%s", damage_message(path, scan.damaged))
    try:
        return pd.read_csv(io.BytesIO(scan.good_bytes()), **read_csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HashbenchError(f"{what} {path} is not a readable CSV: {first}") from None


# ------------------------------------------------------------------------------------ damaged lines


@dataclass(frozen=True)
class DamagedLine:
    """A line of a store's CSV that is left out: ``line`` its 1-based number, ``reason`` why."""

    line: int
    reason: str


@dataclass(frozen=True)
class ScannedCsv:
    """A CSV read line by line (:func:`scan_csv`): its header, its good lines and its damaged ones."""

    path: Path
    header: tuple[str, ...]  # empty for an empty file
    header_raw: bytes
    good: tuple[
        tuple[bytes, dict[str, str]], ...
    ]  # each good line as written (with its line end), its fields
    damaged: tuple[DamagedLine, ...]

    def good_bytes(self) -> bytes:
        return self.header_raw + b"".join(raw for raw, _ in self.good)


def scan_csv(
    path: Path, check_row: Callable[[dict[str, str]], str | None] | None = None, what: str = "file"
) -> ScannedCsv:
    """Read a CSV a store wrote, one line at a time, so that no line can damage another.

    A line after the header is **damaged** when it is (in this order): the last line and has no line end
    (half-written: a run killed mid-write, a full disk); not UTF-8 text; not one CSV record (an
    unterminated quote); a record of another number of fields than the header; or refused by
    ``check_row`` (its fields by column name -> a reason, or ``None``). Blank lines are skipped. The
    stores never write a field holding a line break, so a record is one line.

    A header that is not UTF-8 text or not CSV makes the whole file unreadable: a one-line
    :class:`HashbenchError` naming it (``what`` names the kind of file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HashbenchError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if not data.strip():
        return ScannedCsv(path, (), b"", (), ())
    pieces = data.split(b"\n")  # the last piece is what follows the last line end (b"" if none)
    first = pieces[0]
    try:
        header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r")], strict=True), [])
    except UnicodeDecodeError:
        raise HashbenchError(f"{what} {path} is not a readable CSV: not UTF-8 text") from None
    except csv.Error as exc:
        raise HashbenchError(f"{what} {path} is not a readable CSV: header: {exc}") from None
    if not header or any(not name.isprintable() for name in header):
        raise HashbenchError(f"{what} {path} is not a readable CSV: its first line is not a header")
    good: list[tuple[bytes, dict[str, str]]] = []
    damaged: list[DamagedLine] = []
    last = len(pieces) - 1
    for i, piece in enumerate(pieces[1:], 1):
        if not piece.strip():
            continue
        reason = None
        fields: list[str] = []
        if i == last:
            reason = "half-written (no line end)"
        else:
            try:
                fields = next(csv.reader([piece.decode("utf-8").rstrip("\r")], strict=True), [])
                if len(fields) != len(header):
                    reason = f"{len(fields)} fields, expected {len(header)}"
            except UnicodeDecodeError:
                reason = "not UTF-8 text"
            except csv.Error as exc:
                reason = f"not a CSV record ({exc})"
        values = dict(zip(header, fields, strict=False))
        if reason is None and check_row is not None:
            reason = check_row(values)
        if reason is None:
            good.append((piece + b"\n", values))
        else:
            damaged.append(DamagedLine(i + 1, reason))
    header_raw = first + b"\n"
    return ScannedCsv(path, tuple(header), header_raw, tuple(good), tuple(damaged))


def check_result_row(values: dict[str, str]) -> str | None:
    """Why a row of a store's CSV is damaged, or ``None``: an empty ``dataset`` or ``method``, a ``bits``
    neither empty (a real-valued reference) nor a positive integer, a metric neither empty nor a number.
    (Columns the file does not have are not checked.)"""
    for name in ("dataset", "method"):
        if name in values and not values[name].strip():
            return f"empty {name}"
    if "bits" in values and _bits_of(values["bits"]) == -1:
        return f"bits {values['bits']!r} is not a positive integer"
    numeric = (*METRICS, *_AQ_NUMBERS, *(c for c in values if c[:1] == "r" and c[1:].isdigit()))
    for name in numeric:
        text = values.get(name, "").strip()
        if text:
            try:
                float(text)
            except ValueError:
                return f"{name} {text!r} is not a number"
    return None


def _bits_of(text: str) -> int | None:
    """``bits`` as written: ``None`` when empty, -1 when not a positive integer."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return -1
    return int(value) if value > 0 and value % 1 == 0 else -1


def _key_of(values: dict[str, str]) -> tuple[str, str, int | None, str]:
    """(dataset, method, bits, config_hash) of a row as written."""
    return (
        values.get("dataset", "").strip(),
        values.get("method", "").strip(),
        _bits_of(values.get("bits", "")),
        values.get("config_hash", ""),
    )


def damage_message(path: Path, damaged: Sequence[DamagedLine], consequence: str = "left out") -> str:
    """One line for a file's damaged lines (the first five named)."""
    named = "; ".join(f"line {d.line} ({d.reason})" for d in damaged[:5])
    more = f"; and {len(damaged) - 5} more" if len(damaged) > 5 else ""
    return f"{path}: {len(damaged)} damaged line(s) {consequence}: {named}{more}"


def check_frame(
    df: pd.DataFrame, source: str = "results table", required: Sequence[str] = REQUIRED_COLUMNS
) -> pd.DataFrame:
    """Check the ``required`` columns and normalise the types of a results DataFrame (idempotent):
    ``dataset`` and ``method`` stripped text, ``bits`` nullable ``Int64``, the metrics floats."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise HashbenchError(f"{source}: missing required column(s) {', '.join(missing)}")
    df = df.copy()
    for name in ("method", "dataset"):
        if name in df.columns:
            df[name] = df[name].astype(str).str.strip()
    if "bits" in df.columns:
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


def _typed_rows(frame: pd.DataFrame, text: pd.DataFrame) -> tuple[StoredRow, ...]:
    if len(frame) != len(text):  # one parser, one file: cannot differ
        raise AssertionError("results parsed into different row counts")
    n = len(frame)

    def column(name: str) -> list:
        return frame[name].tolist() if name in frame.columns else [""] * n

    records = text.to_dict("records")
    metrics = [m for m in METRICS if m in frame.columns]
    values = {m: frame[m].tolist() for m in metrics}
    bits = frame["bits"].tolist() if "bits" in frame.columns else [None] * n
    return tuple(
        StoredRow(
            position=i,
            dataset=dataset,
            method=method,
            bits=None if pd.isna(b) else int(b),
            config_hash=raw.get("config_hash", ""),
            date=raw.get("date", ""),
            artifact=raw.get("artifact", ""),
            metrics={m: float(values[m][i]) for m in metrics},
            values={str(k): str(v) for k, v in raw.items()},
        )
        for i, (dataset, method, b, raw) in enumerate(
            zip(column("dataset"), column("method"), bits, records, strict=True)
        )
    )


def latest_positions(frame: pd.DataFrame, key: Sequence[str] = CELL_KEY) -> list[int]:
    """The one "latest row" rule: per ``key``, the row with the latest ``date`` (ISO 8601; a missing or
    unparseable date, or no ``date`` column, counts as the earliest); ties go to the later row.

    Returns the kept rows' positions (0-based, in ``frame`` order), ordered by (date, position).
    """
    key = list(key)
    dates = frame["date"] if "date" in frame.columns else pd.Series([None] * len(frame), dtype=object)
    order = frame[key].reset_index(drop=True)
    order["_date"] = pd.to_datetime(dates.reset_index(drop=True), errors="coerce", utc=True, format="ISO8601")
    order["_row"] = np.arange(len(order))
    order = order.sort_values(["_date", "_row"], na_position="first", kind="stable")
    return order.drop_duplicates(key, keep="last")["_row"].tolist()


def latest_rows(rows: Sequence[StoredRow], key: Sequence[str] = CELL_KEY) -> list[StoredRow]:
    """:func:`latest_positions` on typed rows (``key``: names of :class:`StoredRow` fields)."""
    rows = list(rows)
    frame = pd.DataFrame(
        {name: pd.Series([getattr(r, name) for r in rows], dtype=object) for name in key}
        | {"date": pd.Series([r.date or None for r in rows], dtype=object)}
    )
    return [rows[i] for i in latest_positions(frame, key)]


def artifact_file(results_dir: Path, artifact: str, csv_name: str = CSV_NAME) -> Path:
    """The file an ``artifact`` value of ``results_dir/results.csv`` names, which must lie inside
    ``results_dir`` (a relative path, no ``..`` out of it, no link leading out): a results folder
    from elsewhere cannot make hashbench read other files. One-line error else."""
    results_dir = Path(results_dir)
    rel = Path(artifact.strip())
    inside = results_dir.resolve()
    target = (results_dir / rel).resolve()
    if rel.is_absolute() or not target.is_relative_to(inside):
        raise HashbenchError(
            f"{results_dir / csv_name}: artifact {artifact.strip()!r} lies outside the results folder; refused"
        )
    return results_dir / rel


# what a run's numbers depend on: a change elsewhere (results/, docs, tests) does not make it dirty
CODE_PATHS = ("hashbench", "methods", "datasets", "pyproject.toml")


def git_commit(path: Path | None = None) -> str:
    """The commit of the hashbench source tree, or 'unknown'.

    ``+dirty`` when the code differs from that commit: tracked files under :data:`CODE_PATHS` with
    uncommitted changes. Results, notes and tests do not count, so a validation run that appends to a
    committed ``results.csv`` leaves the next run's commit clean.
    """
    here = Path(path or Path(__file__).resolve().parent)

    def git(*args: str, check: bool) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, check=check, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD", check=True)
        # ":/" roots each path at the top of the work tree, wherever ``here`` lies in it
        dirty = git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            *(f":/{p}" for p in CODE_PATHS),
            check=False,
        )
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor's name, e.g. 'Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz'; where the name
    alone does not tell the part (``AMD EPYC``), its x86 family and model are added
    ('AMD EPYC family 23 model 1'). Read from ``/proc/cpuinfo`` (or ``cpuinfo``, its text), else
    :func:`platform.processor`; '' when neither says.

    Two machines of one architecture and thread count can train 2.5x apart, so the cost columns of a
    row are read against this name.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the first processor's block is enough
                break
            continue
        fields.setdefault(key.strip(), " ".join(value.split()))
    name = fields.get("model name") or fields.get("Model") or platform.processor()
    if name and not any(c.isdigit() for c in name) and "cpu family" in fields:
        name += f" family {fields['cpu family']} model {fields.get('model', '?')}"
    return name


def device_name(device: str) -> str:
    """A readable device label: 'cpu (N threads, <processor>, <arch>)' or the CUDA device name."""
    if str(device).startswith("cuda"):
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    import torch

    model = cpu_model()
    return f"cpu ({torch.get_num_threads()} threads, {model + ', ' if model else ''}{platform.machine()})"


class ResultStore:
    """A results directory: ``results.csv`` plus ``cmc.csv``, ``attribute_queries.csv`` and the
    ``cells/`` artifacts.

    Every write is atomic (:func:`hashbench.durable.atomic_write`) and made under the folder lock
    (:func:`hashbench.durable.folder_lock`); adding rows reads the file, drops its damaged lines (reported
    once per store) and rewrites it whole, so a good row is never lost and a damaged one never kept.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.csv = self.out / CSV_NAME
        self.cmc_csv = self.out / CMC_NAME
        self._reported: set[tuple[Path, DamagedLine]] = set()

    def rows(self) -> list[StoredRow]:
        """The stored rows in file order (:func:`read_results`), its damaged lines left out (and
        reported once); none before the first cell."""
        if not self.csv.is_file() or self.csv.stat().st_size == 0:
            return []
        table = read_results(self.csv, required=(), warn=False)
        _check_header(self.csv, list(table.columns), ResultRow.columns())
        self._report(self.csv, table.damaged)
        return list(table.rows)

    def finished(self, dataset: str, method: str, bits: int | None, config_hash: str) -> StoredRow | None:
        """A row of the cell with exactly this key, or ``None``: the cell is finished when one exists."""
        want = (dataset, method, bits, config_hash)
        return next((row for row in self.rows() if row.key == want), None)

    def sweep(self) -> None:
        """Remove the temp files of runs killed mid-write (:func:`hashbench.durable.sweep_temps`)."""
        if not self.out.is_dir():
            return
        with folder_lock(self.out):
            removed = sweep_temps(self.out)
        if removed:
            log.info("%s: removed %d temp file(s) of interrupted runs", self.out, len(removed))

    def artifact_path(self, method: str, bits: int | None, config_hash: str) -> Path:
        return self.out / "cells" / f"{method}-{bits if bits is not None else 'float'}-{config_hash}.npz"

    def save_artifact(self, path: Path, **arrays: np.ndarray) -> str:
        return self.save_artifact_bytes(path, self.artifact_bytes(**arrays))

    @staticmethod
    def artifact_bytes(**arrays: np.ndarray) -> bytes:
        """A cell artifact's file contents: the arrays, ``np.savez_compressed`` (no pickle)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def save_artifact_bytes(self, path: Path, data: bytes) -> str:
        """Write an artifact (:meth:`artifact_bytes`) atomically under the folder lock; returns its path
        relative to the folder (the row's ``artifact``)."""
        with folder_lock(self.out):
            atomic_write_bytes(path, data)
        return str(path.relative_to(self.out))

    @staticmethod
    def method_path(artifact: Path) -> Path:
        """Where the fitted method of a cell goes: beside its artifact, ``<same stem>.method.pt``."""
        return artifact.with_name(artifact.name[: -len(".npz")] + ".method.pt")

    @staticmethod
    def method_bytes(method, where: str = "") -> bytes | None:
        """The fitted method's file contents: tensors and plain data only
        (:func:`hashbench.state.method_state`, then ``torch.save`` of that dict); ``None``, with a
        warning, when its state holds something else (the cell is kept, its method not saved)."""
        import torch

        from .state import method_state

        try:
            state = method_state(method)
            buf = io.BytesIO()
            torch.save(state, buf)
        except Exception as exc:  # a plugin holding something else must not lose the cell
            log.warning("%sfitted method not saved: %s", where, str(exc).splitlines()[0] if str(exc) else exc)
            return None
        return buf.getvalue()

    def save_method_bytes(self, artifact: Path, data: bytes) -> Path | None:
        """Write a fitted method's file (:meth:`method_bytes`) beside its artifact, atomically; ``None``,
        with a warning, when writing fails (a full disk, say: the cell is kept)."""
        path = self.method_path(artifact)
        try:
            with folder_lock(self.out):
                atomic_write_bytes(path, data)
        except HashbenchError:
            raise
        except Exception as exc:
            log.warning(
                "fitted method not saved to %s: %s", path, str(exc).splitlines()[0] if str(exc) else exc
            )
            return None
        return path

    def save_method(self, artifact: Path, method) -> Path | None:
        """Save the fitted method beside its artifact (:meth:`method_bytes`, :meth:`save_method_bytes`)."""
        data = self.method_bytes(method, f"{self.method_path(artifact)}: ")
        return None if data is None else self.save_method_bytes(artifact, data)

    def save_attribute_queries(self, rows: list[dict]) -> None:
        """Write a cell's attribute-query rows to ``attribute_queries.csv``, replacing any earlier rows of
        the same (dataset, method, bits, config_hash) (a cell killed after this and re-run), atomically."""
        new = [{k: str(_fmt(v)) for k, v in r.items() if k in AQ_COLUMNS} for r in rows]
        with folder_lock(self.out):
            self._store(self.out / AQ_NAME, list(AQ_COLUMNS), new, replace=True)

    def save_photo_description(self, rows: list[dict]) -> None:
        """Write a cell's photo + description rows to ``photo_description.csv``, replacing any earlier
        rows of the same (dataset, method, bits, config_hash), atomically."""
        new = [{k: str(_fmt(v)) for k, v in r.items() if k in PD_COLUMNS} for r in rows]
        with folder_lock(self.out):
            self._store(self.out / PD_NAME, list(PD_COLUMNS), new, replace=True)

    def append(self, row: ResultRow, cmc: np.ndarray) -> bool:
        """Add the cell's CMC curve to ``cmc.csv``, then its row to ``results.csv`` (the commit mark), under
        the folder lock. A no-op when the cell's key is stored already (another run finished it): returns
        whether the row was added."""
        bits = "" if row.bits is None else str(row.bits)
        key = {"dataset": row.dataset, "method": row.method, "bits": bits, "config_hash": row.config_hash}
        ranks = [f"r{k}" for k in range(1, len(cmc) + 1)]
        values = {k: str(_fmt(v)) for k, v in asdict(row).items()} | {"bits": bits}
        with folder_lock(self.out):
            if _key_of(values) in {_key_of(v) for _, v in self._scan(self.csv, ResultRow.columns()).good}:
                log.info("%s: %s @ %s already stored (another run); not added", self.csv, row.method, bits)
                return False
            cmc_row = {**key, **{r: f"{v:.6f}" for r, v in zip(ranks, cmc, strict=True)}}
            self._store(self.cmc_csv, [*CMC_KEY, *ranks], [cmc_row], replace=True)
            self._store(self.csv, ResultRow.columns(), [values], replace=False)
        return True

    # ------------------------------------------------------------------------------------------ helpers

    def _report(self, path: Path, damaged: Sequence[DamagedLine]) -> None:
        new = [d for d in damaged if (path, d) not in self._reported]
        if new:
            self._reported.update((path, d) for d in new)
            log.warning("%s", damage_message(path, new, "dropped (their cells count as not finished)"))

    def _scan(self, path: Path, columns: list[str]) -> ScannedCsv:
        scan = scan_csv(path, check_result_row, what="results file") if path.is_file() else None
        if scan is None or not scan.header:
            return ScannedCsv(path, (), b"", (), ())
        _check_header(path, list(scan.header), columns)
        self._report(path, scan.damaged)
        return scan

    def _store(self, path: Path, columns: list[str], rows: list[dict], replace: bool) -> None:
        """Rewrite ``path`` (the caller holds the folder lock): its good lines as written, then ``rows``.
        ``replace``: earlier rows of the same key go; else a row whose key is there already is not added.
        A file of an older version (its header a subset of ``columns``) is rewritten under ``columns``."""
        scan = self._scan(path, columns)
        keys = {_key_of(r) for r in rows}
        kept = [(raw, v) for raw, v in scan.good if not (replace and _key_of(v) in keys)]
        if not replace:
            there = {_key_of(v) for _, v in kept}
            rows = [r for r in rows if _key_of(r) not in there]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, restval="", extrasaction="ignore")
        if list(scan.header) == columns:
            head = scan.header_raw + b"".join(raw for raw, _ in kept)
        else:
            writer.writeheader()
            writer.writerows(v for _, v in kept)
            head = b""
            if scan.header:
                added = ", ".join(c for c in columns if c not in scan.header)
                log.info("%s: added column(s) %s", path, added)
        writer.writerows(rows)
        atomic_write_bytes(path, head + out.getvalue().encode("utf-8"))


def _check_header(path: Path, header: list[str], columns: list[str]) -> None:
    """A stored CSV must hold the key columns and no column this version does not write (an older
    version's file, missing only later columns, is fine: :meth:`ResultStore._store` extends it)."""
    unknown = [c for c in header if c not in columns]
    if unknown:
        raise HashbenchError(
            f"{path}: column(s) {', '.join(unknown)} not written by hashbench {__version__}; write to another --out"
        )
    missing = [c for c in ("dataset", "method", "bits", "config_hash") if c in columns and c not in header]
    if header and missing:
        raise HashbenchError(f"{path}: missing column(s) {', '.join(missing)}; write to another --out")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}"
    return v


def format_value(value) -> str:
    """A side table's cell as text: booleans lower-case, floats to 4 decimals (6 significant digits
    below 1e-3)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e-3 and value else f"{value:.4f}"
    return str(value)


def replace_keyed_rows(
    path: Path, columns: Sequence[str], key: Sequence[str], rows: list[dict], what: str
) -> Path:
    """Add ``rows`` to the side table ``path`` (``scale.csv``, ``cascade.csv``) under its folder's lock,
    atomically (written beside, fsynced, renamed): earlier rows of the same ``key`` are replaced, damaged
    lines dropped with one warning, every other row kept as written. A file with another header is
    refused (one line naming it)."""
    path = Path(path)

    def key_of(values: dict) -> tuple:
        return tuple(str(values.get(c, "")).strip() for c in key)

    new = [{c: format_value(r[c]) for c in columns} for r in rows]
    keys = {key_of(r) for r in new}
    with folder_lock(path.parent):
        kept: list[dict] = []
        if path.is_file():
            scan = scan_csv(path, check_result_row, what=what)
            if scan.header and list(scan.header) != list(columns):
                raise HashbenchError(
                    f"{path}: not a {path.name} of hashbench {__version__}; write to another --out"
                )
            if scan.damaged:
                log.warning("%s", damage_message(path, scan.damaged, "dropped"))
            kept = [v for _, v in scan.good if key_of(v) not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept + new)
        atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


__all__ = [
    "DamagedLine",
    "ResultRow",
    "ResultStore",
    "ResultTable",
    "StoredRow",
    "check_frame",
    "cpu_model",
    "device_name",
    "git_commit",
    "latest_positions",
    "latest_rows",
    "now",
    "read_results",
    "scan_csv",
    "__version__",
]
