"""Cache entries that prove what they hold: a manifest of each file's size and SHA-256.

A cache entry is one folder (``<cache>/trunk/<key>``, ``<cache>/ide/<key>``). Its ``manifest.json``
records the key of the inputs it was built from and, for every finished file, its size, SHA-256 and
the seconds it took to produce. A file is recorded in the manifest *before* it is renamed into place
(:meth:`CacheEntry.commit`), so a file in the folder that the manifest does not list was not written
by a finished step of hashbench.

A read (:meth:`CacheEntry.verified`) checks the file against its record. A file that fails (changed
bytes behind an intact header, a truncation, a file the manifest does not know) is reported in one
warning line, deleted and rebuilt by the caller; an entry whose manifest is unreadable or holds
another key is rebuilt whole. Entries written before manifests existed are *adopted*: their files'
checksums are recorded on first read (with one info line), and checked from then on.

Producing a file is done under a per-file lock (:meth:`CacheEntry.producing`), so two runs sharing a
cache never write the same file: the second waits, then finds it finished. Resumable partial files
(``<name>.part`` of a trunk extraction) keep fixed names so that a killed run resumes; only the lock
holder writes them. Other temp files have per-process unique names (:func:`hashbench.durable.temp_path`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .durable import atomic_write_bytes, sweep_temps, temp_path
from .errors import HashbenchError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "hashbench.cache/1"
LOCK_SUFFIX = ".lock"
WAIT_NOTICE_S = 2.0  # wait this long for a producer's lock silently, then say who is waited for
CHUNK = 1 << 22

# (path, size, mtime_ns, inode) of files this process has verified: a second read in one process does
# not hash a large file again
_verified: set[tuple[str, int, int, int]] = set()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns, st.st_ino


class CacheEntry:
    """One cache folder and its manifest. ``key``: the inputs' key (JSON-able), stored and compared;
    ``what``: how messages name the entry ("trunk maps", "IDE features")."""

    def __init__(self, folder: Path, key: dict, what: str, legacy: dict | None = None) -> None:
        self.folder = Path(folder)
        self.key = json.loads(json.dumps(key, default=str))
        self.what = what
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.folder / MANIFEST
        self._lock = FileLock(self.folder / (MANIFEST + LOCK_SUFFIX))
        self.adopting = False
        with self._lock:
            removed = sweep_temps(self.folder)  # of runs killed mid-write
            if removed:
                log.info(
                    "%s cache %s: removed %d temp file(s) of interrupted runs",
                    what,
                    self.folder,
                    len(removed),
                )
            self._open(legacy or {})

    # -- the manifest -----------------------------------------------------------------------------
    def _open(self, legacy: dict) -> None:
        if not self.manifest_path.exists():
            data_files = [p for p in self.folder.iterdir() if self._is_data(p)]
            self.adopting = bool(data_files)
            info = legacy if self.adopting else {}
            self._write({"format": FORMAT, "key": self.key, "info": info, "files": {}})
            if self.adopting:
                log.info(
                    "%s cache %s predates checksums: recording its files' checksums now",
                    self.what,
                    self.folder,
                )
            return
        manifest, why = self._read()
        if why is None and manifest.get("key") != self.key:
            why = "it holds another key (a folder copied or renamed by hand)"
        if why is not None:
            log.warning("%s cache %s: manifest %s; rebuilding the entry", self.what, self.folder, why)
            self._clear()
            self._write({"format": FORMAT, "key": self.key, "info": {}, "files": {}})

    def _read(self) -> tuple[dict, str | None]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return {}, f"unreadable ({type(exc).__name__})"
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            return {}, "of an unknown format"
        if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("info", {}), dict):
            return {}, "malformed"
        return manifest, None

    def _manifest(self) -> dict:
        manifest, why = self._read()
        if why is not None:  # replaced behind our back since it was opened
            raise HashbenchError(
                f"{self.manifest_path}: cache manifest {why}; remove {self.folder} and rerun"
            )
        return manifest

    def _write(self, manifest: dict) -> None:
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())

    def _update(self, change) -> None:
        with self._lock:
            manifest = self._manifest()
            change(manifest)
            self._write(manifest)

    def _is_data(self, path: Path) -> bool:
        return path.is_file() and path.name != MANIFEST and not path.name.endswith(LOCK_SUFFIX)

    def _clear(self) -> None:
        for p in self.folder.iterdir():
            if p.name.endswith(LOCK_SUFFIX):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    @property
    def info(self) -> dict:
        """Entry-level facts (e.g. the maps' shape), JSON."""
        return self._manifest().get("info", {})

    def set_info(self, **info) -> None:
        self._update(lambda m: m.setdefault("info", {}).update(info))

    def record(self, name: str) -> dict | None:
        """The manifest's record of ``name`` (``bytes``, ``sha256``, optional ``seconds``), or ``None``."""
        return self._manifest()["files"].get(name)

    # -- files ------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.folder / name

    def verified(self, name: str) -> bool:
        """Whether ``name`` is present and matches its record. A file that fails is reported in one
        warning line and deleted (the caller rebuilds it); an adopted entry's file is recorded now."""
        path = self.path(name)
        rec = self.record(name)
        if not path.is_file():
            # a record without its file is left alone: it is what another run's :meth:`commit` looks like
            # between recording the file and renaming it into place (dropping the record there made
            # that run's file look unrecorded, and rebuilt); the next commit of ``name`` replaces it
            return False
        if rec is None:
            if self.adopting:
                self._record(name, path, self._legacy_seconds(name))
                return True
            return self._reject(name, "is not in the entry's manifest (not written by a finished run)")
        stamp = _stamp(path)
        if stamp in _verified:
            return True
        size = path.stat().st_size
        if size != rec.get("bytes"):
            return self._reject(
                name, f"has {size} bytes, {rec.get('bytes')} when written (truncated or changed)"
            )
        if sha256_of(path) != rec.get("sha256"):
            return self._reject(name, "fails its checksum (damaged or changed since it was written)")
        _verified.add(stamp)
        return True

    def _legacy_seconds(self, name: str) -> float | None:
        seconds = self.info.get("legacy_seconds", {})
        value = seconds.get(name) if isinstance(seconds, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    def _reject(self, name: str, why: str) -> bool:
        log.warning("%s cache: %s %s; rebuilding it", self.what, self.path(name), why)
        self.path(name).unlink(missing_ok=True)
        self._update(lambda m: m["files"].pop(name, None))
        return False

    def _record(self, name: str, source: Path, seconds: float | None) -> None:
        rec = {"bytes": source.stat().st_size, "sha256": sha256_of(source)}
        if seconds is not None:
            rec["seconds"] = float(seconds)
        self._update(lambda m: m["files"].__setitem__(name, rec))

    def commit(self, name: str, part: Path, seconds: float | None = None) -> Path:
        """Record the finished file ``part`` as ``name`` (size, checksum, ``seconds`` it took), then
        rename it into place; returns the final path."""
        self._record(name, part, seconds)
        final = self.path(name)
        os.replace(part, final)
        _verified.add(_stamp(final))
        return final

    def commit_write(self, name: str, write, seconds: float | None = None) -> Path:
        """Fill a per-process temp file with ``write(f)`` (binary; flushed and fsynced) and
        :meth:`commit` it as ``name``."""
        part = temp_path(self.path(name))
        try:
            with open(part, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            return self.commit(name, part, seconds)
        finally:
            part.unlink(missing_ok=True)

    def discard(self, *names: str) -> None:
        """Delete ``names`` and their records (an entry whose model must be rebuilt)."""
        for name in names:
            self.path(name).unlink(missing_ok=True)
        self._update(lambda m: [m["files"].pop(n, None) for n in names])

    def seconds(self, name: str) -> float:
        rec = self.record(name) or {}
        return float(rec.get("seconds", 0.0))

    @contextlib.contextmanager
    def producing(self, name: str) -> Iterator[None]:
        """Hold the lock of producing ``name``: a second run needing it waits (saying so), then should
        check :meth:`verified` again."""
        lock = FileLock(self.path(name + LOCK_SUFFIX))
        try:
            lock.acquire(timeout=WAIT_NOTICE_S)
        except Timeout:
            log.info("waiting for another run that is producing %s", self.path(name))
            lock.acquire()
        try:
            yield
        finally:
            lock.release()
