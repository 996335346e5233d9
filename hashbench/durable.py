"""Durable writes into a results folder: atomic replacement, the folder lock, per-cell claims.

* :func:`atomic_write` writes a file beside its destination under a per-process unique temp name
  (``<name>.<pid>.<token>.tmp``), flushes and fsyncs it, ``os.replace``-s it over the destination,
  then fsyncs the directory (where the platform allows): a reader sees the old file or the new one,
  never a part, and a crash leaves at most a temp file that :func:`sweep_temps` removes later.
* :func:`folder_lock` is the lock every writer of a results folder holds (``<folder>/.results.lock``,
  a ``filelock`` lock: an OS lock, released by the kernel when its holder dies).
* :func:`claim` is a non-blocking per-cell lock (``<folder>/cells/<config hash>.lock``): the run that
  holds it computes the cell, another run skips it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from .errors import HashbenchError

LOCK_NAME = ".results.lock"
LOCK_TIMEOUT_S = 600.0  # a writer holds the folder lock for milliseconds; this long is a stuck run
TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A temp name beside ``path`` unique to this process and call: ``<name>.<pid>.<token>.tmp``."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """fsync a directory, so that a rename in it survives a power loss; a no-op where the platform
    cannot open directories (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temp file beside it (binary), then flush, fsync,
    replace, fsync the directory. On any error the temp file is removed and the destination untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def folder_lock(folder: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the lock of a results folder (blocking, up to ``timeout`` seconds: then a one-line error)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise HashbenchError(
            f"results folder {folder} is locked by another run ({folder / LOCK_NAME}) for {timeout:.0f} s"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def claim(folder: Path, config_hash: str) -> Iterator[bool]:
    """Try to claim a cell for this run (non-blocking): yields whether it did; held until the block ends.

    The lock file stays (``cells/<hash>.lock``, empty): removing it on release would let a third run
    lock a new file while a second still waits on the old one."""
    path = Path(folder) / "cells" / f"{config_hash}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def sweep_temps(folder: Path) -> list[Path]:
    """Remove the temp files (:func:`temp_path`) in ``folder`` and ``folder/cells`` whose process is
    gone (a run killed mid-write); returns them. Call it holding :func:`folder_lock`."""
    removed = []
    for sub in (Path(folder), Path(folder) / "cells"):
        if not sub.is_dir():
            continue
        for tmp in sub.glob(f"*.*.*{TEMP_SUFFIX}"):
            parts = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or _alive(int(parts[1])):
                continue
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or a platform that cannot tell: leave its file
    return True
