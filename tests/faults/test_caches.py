"""Caches that prove what they hold: a damaged, truncated, foreign or planted cache file is reported in
one line and rebuilt to the clean figures; a pickle payload is refused, never executed; an entry of an
older hashbench (no manifest) is adopted without recomputing; two runs sharing a fresh cache extract
and train once, without a crash."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hashbench import features, ide
from hashbench.cache import MANIFEST
from hashbench.errors import HashbenchError
from hashbench.runner import run

from .child import grid_config
from .conftest import stable_rows, start_child


def entry(cache: Path, stage: str) -> Path:
    (folder,) = (cache / stage).iterdir()
    return folder


def warm_copy(clean_run, tmp_path) -> Path:
    cache, _ = clean_run
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    return copy


def overwrite_behind_header(path: Path) -> None:
    """Zero the data of a ``.npy`` after its header: the file still loads, with the wrong numbers."""
    with open(path, "r+b") as f:
        f.seek(256)
        f.write(bytes(path.stat().st_size - 256))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(3000))


DAMAGES = {
    "trunk maps overwritten behind their header": ("trunk", "train.npy", overwrite_behind_header, "checksum"),
    "IDE features overwritten behind their header": (
        "ide",
        "gallery.npy",
        overwrite_behind_header,
        "checksum",
    ),
    "IDE features truncated": ("ide", "query.npy", truncate, "bytes"),
    "IDE model garbage": ("ide", "model.pt", garbage, "bytes"),
    "trunk manifest garbage": ("trunk", MANIFEST, garbage, "manifest unreadable"),
    "a foreign file in place of IDE features": ("ide", "gallery.npy", None, "not in the entry's manifest"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_damaged_cache_file_is_reported_in_one_line_and_rebuilt(clean_run, tmp_path, caplog, damage):
    stage, name, harm, why = DAMAGES[damage]
    _, clean = clean_run
    cache = warm_copy(clean_run, tmp_path)
    target = entry(cache, stage) / name
    if harm is None:  # a file put in place of a split by something else than a finished run
        np.save(target, np.zeros((3, 3), np.float32))
        manifest = json.loads((target.parent / MANIFEST).read_text())
        del manifest["files"]["gallery.npy"]
        (target.parent / MANIFEST).write_text(json.dumps(manifest))
    else:
        harm(target)
    with caplog.at_level(logging.INFO, logger="hashbench"):
        run(grid_config(tmp_path / "res", cache))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(why in w and str(target.parent) in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)
    assert stable_rows(tmp_path / "res") == stable_rows(clean)
    # rebuilt and recorded: a second run reads it without a word
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hashbench"):
        run(grid_config(tmp_path / "res2", cache))
    assert [r.getMessage() for r in caplog.records if "cache" in r.getMessage()] == []


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_payload_in_the_ide_cache_is_refused_not_executed(clean_run, tmp_path):
    cache = warm_copy(clean_run, tmp_path)
    folder = entry(cache, "ide")
    marker = tmp_path / "executed"
    model = folder / "model.pt"
    torch.save({"model": Payload(marker), "n_classes": 16, "history": []}, model)
    # the attacker also fixes the manifest, so the checksum passes: the load itself must refuse
    manifest = json.loads((folder / MANIFEST).read_text())
    data = model.read_bytes()
    manifest["files"]["model.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    for split in ("train", "query", "gallery"):  # so that the model must be loaded
        (folder / f"{split}.npy").unlink()
    with pytest.raises(HashbenchError) as err:
        run(grid_config(tmp_path / "res", cache))
    assert "cannot be loaded as tensors" in str(err.value) and str(model) in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_an_entry_of_an_older_hashbench_is_adopted_without_recomputing(clean_run, tmp_path, monkeypatch):
    _, clean = clean_run
    cache = warm_copy(clean_run, tmp_path)
    for stage in ("trunk", "ide"):
        (entry(cache, stage) / MANIFEST).unlink()

    def fail(*a, **k):
        pytest.fail("an adopted cache entry was recomputed")

    monkeypatch.setattr(features.FeatureCache, "_extract", fail)
    monkeypatch.setattr(ide, "train_ide", fail)
    monkeypatch.setattr(ide, "embed_maps", fail)
    run(grid_config(tmp_path / "res", cache))
    assert stable_rows(tmp_path / "res") == stable_rows(clean)
    for stage in ("trunk", "ide"):
        files = json.loads((entry(cache, stage) / MANIFEST).read_text())["files"]
        assert {"train.npy", "query.npy", "gallery.npy"} <= set(files)


def test_two_runs_sharing_a_fresh_cache_extract_and_train_once(clean_run, tmp_path):
    _, clean = clean_run
    cache = tmp_path / "cache"
    children = [start_child(tmp_path / f"res{i}", cache, tmp_path / f"run{i}.log") for i in range(2)]
    for i, child in enumerate(children):
        assert child.wait(timeout=240) == 0, (tmp_path / f"run{i}.log").read_text()[-3000:]
    logs = "".join((tmp_path / f"run{i}.log").read_text() for i in range(2))
    assert "Traceback" not in logs and "rebuilding" not in logs
    for i in range(2):
        assert stable_rows(tmp_path / f"res{i}") == stable_rows(clean)
    leftovers = [p.name for p in cache.rglob("*") if p.suffix in (".part", ".rows", ".tmp")]
    assert leftovers == []


def test_a_damaged_ide_checkpoint_restarts_training(tmp_path, caplog):
    maps = np.random.default_rng(0).standard_normal((32, 8, 4, 2)).astype(np.float16)
    pids = np.repeat(np.arange(8), 4)
    top = torch.nn.Conv2d(8, 8, 1)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
    cfg = ide.IDEConfig(epochs=2, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="hashbench"):
        _, history = ide.train_ide(maps, pids, top, 8, cfg, checkpoint=ckpt, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert any("cannot be read" in r.getMessage() and str(ckpt) in r.getMessage() for r in caplog.records)


def test_a_reader_between_a_commits_record_and_rename_leaves_the_record(tmp_path, caplog):
    """Another run's commit records the file, then renames it into place; a run that checks the entry in
    between must not drop the record (that made the committed file look unrecorded, and rebuilt)."""
    from hashbench.cache import CacheEntry

    writer = CacheEntry(tmp_path / "entry", {"k": 1}, "test")
    reader = CacheEntry(tmp_path / "entry", {"k": 1}, "test")
    part = tmp_path / "entry" / "maps.part"
    part.write_bytes(b"0123456789")
    writer._record("maps", part, 1.0)  # the commit's first half
    assert not reader.verified("maps")  # not there yet
    os.replace(part, writer.path("maps"))  # its second half
    with caplog.at_level(logging.WARNING):
        assert reader.verified("maps") and writer.verified("maps")
    assert "rebuilding" not in caplog.text
