"""Checks of user-given paths, run before any expensive step so a bad option is one line, not a traceback
after minutes of work."""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Integral
from pathlib import Path

from .errors import HashbenchError


def check_writable_dir(path: str | Path, option: str) -> Path:
    """``path`` is, or can be created as, a folder this process may write into; names ``option`` if not.

    Nothing is created: the first existing component must be a folder that is writable (and, when it is
    ``path`` itself, so must it be).
    """
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise HashbenchError(f"{option} {path}: {what}, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "folder is not writable" if probe == path else f"cannot be created: {probe} is not writable"
        raise HashbenchError(f"{option} {path}: {where}")
    return path


def check_writable_file(path: str | Path, option: str) -> Path:
    """``path`` can be written as a file: not a folder, and its folder is (or can be made) writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise HashbenchError(f"{option} {path}: is a folder, expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise HashbenchError(f"{option} {path}: file is not writable")
    try:
        check_writable_dir(path.parent, option)
    except HashbenchError as exc:
        reason = str(exc).split(": ", 1)[1]  # about the folder: say which, as it is not the file named
        if not reason.startswith("cannot be created"):
            reason = f"cannot be created: {path.parent} {reason.replace('folder is not', 'is not')}"
        raise HashbenchError(f"{option} {path}: {reason}") from None
    return path


def check_bits(bits: Sequence[int]) -> None:
    """Code lengths: positive multiples of 8, at most :data:`hashbench.search.MAX_BITS` = 65528 (Hamming
    distances are counted in uint16, codes packed in bytes); an error naming ``--bits`` before any work."""
    from .search import MAX_BITS

    bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, Integral) or b <= 0 or b % 8]
    if not bits or bad:
        raise HashbenchError(f"--bits: code lengths must be positive multiples of 8 (got {bad or 'none'})")
    over = [b for b in bits if b > MAX_BITS]
    if over:
        raise HashbenchError(
            f"--bits {over[0]}: code lengths are at most {MAX_BITS} bits (Hamming distances are counted in 16 bits)"
        )
