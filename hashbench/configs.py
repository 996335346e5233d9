"""The recorded configuration of every cell: ``configs.jsonl`` beside ``results.csv``.

A results row names its configuration by ``config_hash`` only; this file holds what the hash was made
of, so that a committed row's full configuration is recoverable from git alone (the ``cells/``
artifacts are not committed). One JSON object a line, keyed by ``config_hash``, written by the runner
before the cell's row (a cell finished earlier and not yet recorded is recorded when a run meets it):

``config``       the digested configuration (``digest_of(config) == config_hash``): dataset and its
                 content digest, backbone and weights digest, cut, input size, IDE stage settings,
                 seed, hold-out, method and hyperparameters;
``keys``         the cache keys the cell was built from: ``trunk`` (and its ``trunk_spec``), ``ide``
                 (when the method consumes adapted features) and ``ide_input``;
``consumes``     the inputs the method was given; ``code_layout``: the named bit ranges it declares
                 (:meth:`hashbench.method.HashMethod.code_layout`), or null;
``method_class`` where the method's class lives (``module:Class``).

``hashbench show CONFIG_HASH`` prints a record with its rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from .durable import atomic_write_bytes, folder_lock
from .errors import HashbenchError
from .keys import digest_of

CONFIGS_NAME = "configs.jsonl"


def configs_path(results_dir: Path) -> Path:
    return Path(results_dir) / CONFIGS_NAME


def read_configs(results_dir: Path) -> dict[str, dict]:
    """config_hash -> record of ``results_dir/configs.jsonl`` (empty when the file does not exist)."""
    path = configs_path(results_dir)
    if not path.is_file():
        return {}
    records: dict[str, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[str(record["config_hash"])] = record
        except (ValueError, KeyError, TypeError):
            raise HashbenchError(
                f"{path}, line {n}: not a configuration record (JSON with config_hash)"
            ) from None
    return records


def record_config(results_dir: Path, record: dict) -> bool:
    """Add ``record`` to ``configs.jsonl`` unless its hash is there already; returns whether it was added.

    The record's ``config`` must digest to its ``config_hash`` (a record that does not describe its row
    is a bug, never written). The file is rewritten atomically (written beside, fsynced, replaced), under
    the folder lock (:func:`hashbench.durable.folder_lock`).
    """
    if digest_of(record["config"]) != record["config_hash"]:
        raise ValueError(
            f"record of {record['config_hash']}: its config digests to {digest_of(record['config'])}"
        )
    path = configs_path(results_dir)
    with folder_lock(path.parent):  # another run may be adding its record
        if record["config_hash"] in read_configs(results_dir):
            return False
        old = path.read_bytes() if path.is_file() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(path, old + (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
    return True


def recorded_layout(results_dir: Path, config_hash: str) -> dict[str, tuple[int, int]] | None:
    """The code layout recorded for a cell (name -> (start, stop)), or ``None`` (none declared, or no
    record: a results folder written before configurations were recorded)."""
    record = read_configs(results_dir).get(config_hash)
    layout = (record or {}).get("code_layout")
    return {str(k): (int(v[0]), int(v[1])) for k, v in layout.items()} if layout else None


def hash_prefix(prefix: str, label: str = "config hash") -> str:
    """``prefix`` stripped and lower-cased; a one-line error (``label`` first) unless it is at least 4 hex
    digits of a config hash."""
    prefix = prefix.strip().lower()
    if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
        raise HashbenchError(f"{label} {prefix!r}: expected at least 4 hex digits of a config_hash")
    return prefix


def find_config(prefix: str, root: Path) -> tuple[Path, dict]:
    """The record whose hash starts with ``prefix`` in any ``configs.jsonl`` under ``root`` (or in the
    folder ``root`` itself); one-line errors when none or several match."""
    prefix = hash_prefix(prefix)
    root = Path(root)
    if not root.exists():
        raise HashbenchError(f"--results {root}: no such file or directory")
    files = [root] if root.is_file() else sorted(root.rglob(CONFIGS_NAME))
    found = {}
    for path in files:
        for chash, record in read_configs(path.parent).items():
            if chash.startswith(prefix):
                found[(path.parent, chash)] = record
    if not found:
        raise HashbenchError(
            f"no configuration {prefix!r} in the {CONFIGS_NAME} files under {root} ({len(files)} read)"
        )
    hashes = sorted({h for _, h in found})
    if len(hashes) > 1:
        raise HashbenchError(f"config hash {prefix!r} is ambiguous: {', '.join(hashes)}")
    (folder, _), record = next(iter(found.items()))
    return folder, record
