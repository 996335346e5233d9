"""Digests and cache locations: the vocabulary every key of hashbench is written in.

Only :mod:`hashbench.pipeline` *computes* keys (once per run, from the run's configuration); this module
defines what they are made of, so that the feature cache, the IDE stage and the results store agree:

``trunk``    :class:`TrunkKey` — dataset content digest, backbone and weights digest, cut, input size and
             image transform: the folder of the cached trunk maps, ``<cache>/trunk/<digest>``;
``ide``      :func:`ide_key` — the trunk key (or, for a validation run, :func:`holdout_key` of it), the
             IDE stage's settings (with the run's seed), backbone and cut: ``<cache>/ide/<digest>``;
``config``   the digest of a cell's configuration (``config_hash`` in ``results.csv``), see
             :meth:`hashbench.pipeline.Pipeline.cell_config`.

It imports nothing else of hashbench, so any module may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_ENV = "HASHBENCH_CACHE"


def digest_of(obj) -> str:
    """Stable short digest (16 hex digits of SHA-256) of a JSON-able object; key order does not matter."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$HASHBENCH_CACHE`` if set, else ``~/.cache/hashbench``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hashbench"


def resolve_cache_dir(option: str | Path | None) -> Path:
    """The cache folder of a run: ``--cache-dir`` when given, else :func:`default_cache_dir`."""
    return Path(option).expanduser() if option is not None else default_cache_dir()


@dataclass(frozen=True)
class TrunkKey:
    """What the cached trunk maps of a dataset depend on."""

    dataset: str
    dataset_digest: str
    backbone: str
    weights_digest: str
    cut: str
    input_size: tuple[int, int]
    transform: str
    engine: str = "torch"  # what ran the trunk (hashbench.engines); maps of another engine differ in rounding

    def spec(self) -> dict:
        """The key as recorded: every field, ``engine`` only when it is not eager torch (so that the
        keys of maps computed before engines existed are unchanged)."""
        spec = asdict(self)
        if spec["engine"] == "torch":
            del spec["engine"]
        return spec

    def digest(self) -> str:
        return digest_of(self.spec())


def holdout_key(trunk: str, holdout: dict) -> str:
    """The key the IDE stage of a validation run trains on: its maps are rows of the training split's."""
    return digest_of({"trunk": trunk, "holdout": holdout})


def ide_key(source: str, ide: dict, backbone: str, cut: str) -> str:
    """The IDE stage's cache folder name: its input maps' key, its settings, backbone and cut."""
    return digest_of({"trunk": source, "ide": ide, "backbone": backbone, "cut": cut})
