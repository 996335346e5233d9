"""The dataset interface: records, splits and identity-level attributes.

A dataset is the re-id triple of torchreid: ``train``, ``query`` and ``gallery`` lists of
:class:`Record` (image source, person id, camera id), plus an optional :class:`AttributeTable` whose
:class:`AttributeSchema` is read from the dataset's own annotation file. The dataset layer never knows
about features, methods or metrics.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from .errors import HashbenchError

SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class Record:
    """One image: where it comes from, whose it is, and which camera took it.

    ``source`` is opaque to everything but the dataset that made it (a path inside a folder or a zip,
    or a synthetic key). ``pid`` -1 marks junk images, 0 distractors (Market-1501 convention).
    """

    source: str
    pid: int
    camid: int


@dataclass(frozen=True)
class AttributeGroup:
    """One semantic attribute as a person would query it, e.g. ``upper_color`` in {black, white, ...}.

    ``values`` are the human labels of the group's values, in code order (code ``i`` is ``values[i]``).
    ``fields`` are the annotation-file fields the group was built from (one field for a binary or
    ordinal attribute, one field per value for a one-hot group such as the clothing colours).
    """

    name: str
    values: tuple[str, ...]
    fields: tuple[str, ...]
    description: str = ""

    @property
    def kind(self) -> str:
        return "binary" if len(self.values) == 2 else "categorical"

    def code(self, value: str) -> int:
        try:
            return self.values.index(value)
        except ValueError:
            raise HashbenchError(
                f"attribute {self.name!r}: unknown value {value!r}; valid: {', '.join(self.values)}"
            ) from None


@dataclass(frozen=True)
class AttributeSchema:
    """The attribute groups of a dataset, in a fixed order."""

    groups: tuple[AttributeGroup, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def index(self, name: str) -> int:
        for i, g in enumerate(self.groups):
            if g.name == name:
                return i
        raise HashbenchError(f"unknown attribute {name!r}; valid: {', '.join(self.names)}")

    def group(self, name: str) -> AttributeGroup:
        return self.groups[self.index(name)]

    def parse(self, text: str) -> dict[int, int]:
        """Parse ``"gender=female,upper_color=red"`` into ``{group index: value code}``."""
        out: dict[int, int] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise HashbenchError(f"attribute {item!r}: expected name=value")
            i = self.index(name.strip())
            out[i] = self.groups[i].code(value.strip())
        return out

    def describe(self, codes: Sequence[int]) -> str:
        """Human-readable ``name=value`` list of one identity's attribute codes (-1 = unknown)."""
        return ", ".join(
            f"{g.name}={g.values[c] if c >= 0 else '?'}" for g, c in zip(self.groups, codes, strict=True)
        )


@dataclass
class AttributeTable:
    """Identity-level attributes: row ``i`` holds the codes of person ``pids[i]``; -1 = unknown."""

    schema: AttributeSchema
    pids: np.ndarray  # (n_ids,) int64
    values: np.ndarray  # (n_ids, n_groups) int16, value codes, -1 unknown
    source: str = ""  # the annotation file it was read from (for messages), "" when generated

    def __post_init__(self) -> None:
        self.pids = np.asarray(self.pids, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.int16)
        if self.values.shape != (len(self.pids), len(self.schema)):
            raise ValueError(f"attribute values {self.values.shape} do not match {len(self.pids)} ids")

    def lookup(self, pids: np.ndarray) -> np.ndarray:
        """Attribute codes for each of ``pids`` (N, n_groups); rows of unannotated ids are all -1."""
        pids = np.asarray(pids, dtype=np.int64)
        out = np.full((len(pids), len(self.schema)), -1, dtype=np.int16)
        if len(self.pids) == 0:
            return out
        order = np.argsort(self.pids)
        sorted_pids = self.pids[order]
        pos = np.searchsorted(sorted_pids, pids).clip(max=len(sorted_pids) - 1)
        hit = sorted_pids[pos] == pids
        out[hit] = self.values[order[pos[hit]]]
        return out


def check_attribute_coverage(table: AttributeTable, splits: dict[str, np.ndarray], dataset: str) -> None:
    """Fail when most identities of a split (junk and distractors aside) have no attributes in ``table``:
    an annotation file of another dataset (or another version) would give meaningless attribute rows and
    query hits. ``splits``: split label -> the pids of its records."""
    annotated = set(table.pids.tolist())
    for label, pids in splits.items():
        ids = {int(p) for p in np.unique(pids) if p > 0}
        hit = len(ids & annotated)
        if ids and 2 * hit < len(ids):
            where = table.source or f"the attributes of dataset {dataset!r}"
            raise HashbenchError(
                f"{where}: only {hit} of the {len(ids)} {label} identities of {dataset!r} are annotated in it "
                "(an attribute file of another dataset?); pass this dataset's file with "
                "--dataset-option attributes=PATH, or attributes=none"
            )


@dataclass(frozen=True)
class SplitArrays:
    """The label arrays of one split, aligned with its records."""

    pids: np.ndarray
    camids: np.ndarray

    @classmethod
    def of(cls, records: Sequence[Record]) -> SplitArrays:
        return cls(
            pids=np.fromiter((r.pid for r in records), dtype=np.int64, count=len(records)),
            camids=np.fromiter((r.camid for r in records), dtype=np.int64, count=len(records)),
        )


class Dataset(ABC):
    """Base class of dataset plugins.

    Subclasses set ``name`` and ``description``, and implement :meth:`splits`, :meth:`open_images`
    and :meth:`digest`; :meth:`attributes` returns ``None`` for a dataset without attributes.
    ``default_input_size`` is the (height, width) images are resized to unless the run says otherwise.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    default_input_size: ClassVar[tuple[int, int]] = (256, 128)
    needs_root: ClassVar[bool] = True

    def __init__(self, root: str | Path | None = None, **options) -> None:
        if self.needs_root and root is None:
            raise HashbenchError(
                f"dataset {self.name!r} needs --data-root (a folder or the distribution zip)"
            )
        self.root = Path(root) if root is not None else None
        self.options = options

    @abstractmethod
    def splits(self) -> dict[str, list[Record]]:
        """The ``train``, ``query`` and ``gallery`` records, in a fixed order."""

    def attributes(self) -> AttributeTable | None:
        """Identity-level attributes, or ``None``."""
        return None

    @abstractmethod
    def open_images(self, records: Sequence[Record]) -> Iterator[Image.Image]:
        """Yield the RGB image of each record, in order."""

    @abstractmethod
    def digest(self) -> str:
        """A short hex digest that changes whenever the dataset's content would (for cache keys)."""

    def config(self) -> dict:
        """What identifies this dataset instance in a results row."""
        return {"name": self.name, "root": str(self.root) if self.root else None, **self.options}


def file_digest(path: Path, chunk: int = 1 << 20, head_only: int | None = None) -> str:
    """SHA-256 of a file (of its first ``head_only`` bytes plus its size, when given; for big files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if head_only is not None:
            h.update(str(path.stat().st_size).encode())
            h.update(f.read(head_only))
        else:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    return h.hexdigest()[:16]


@dataclass
class Splits:
    """Records of the three splits with their label arrays (a convenience the runner passes around)."""

    records: dict[str, list[Record]]
    arrays: dict[str, SplitArrays] = field(init=False)

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.records]
        if missing:
            raise HashbenchError(f"dataset is missing split(s): {', '.join(missing)}")
        self.arrays = {k: SplitArrays.of(v) for k, v in self.records.items()}


def holdout_splits(
    train: Sequence[Record], n_ids: int, seed: int, n_distractor_ids: int = 0
) -> tuple[Splits, dict[str, np.ndarray]]:
    """A validation protocol inside the training split, for tuning without looking at the test split.

    ``n_ids`` training identities (drawn with ``seed``; junk and distractor ids excluded) are held out;
    the others stay for training. Among the held-out ones, Market-style: for every (identity, camera) one
    image (drawn with ``seed``) is a query, the rest of their images form the gallery, so a query's
    valid matches are the identity's images from the other cameras. ``n_distractor_ids`` further
    identities (drawn after them, from their own stream: the held-out ids and queries do not change)
    put all their images in the gallery and none in the query: people no query is looking for, as the
    test gallery's distractors are (they keep their ids, so they are never a match and never junk), and
    they are not trained on either. Returns the new splits and, per split, the row indices of its
    records in ``train`` (to reuse features computed for the training split).
    """
    arrays = SplitArrays.of(train)
    ids = np.unique(arrays.pids[arrays.pids > 0])
    if not 2 <= n_ids < len(ids):
        raise HashbenchError(
            f"--holdout {n_ids}: expected 2 .. {len(ids) - 1} of the {len(ids)} training ids"
        )
    if not 0 <= n_distractor_ids <= len(ids) - n_ids - 1:
        raise HashbenchError(
            f"--holdout-distractors {n_distractor_ids}: expected 0 .. {len(ids) - n_ids - 1} (the "
            f"{len(ids)} training ids less the {n_ids} held out and at least one to train on)"
        )
    rng = np.random.default_rng([seed, 0x401D])
    chosen = rng.choice(ids, n_ids, replace=False)
    held = np.isin(arrays.pids, chosen)
    others = np.random.default_rng([seed, 0x401D, 1]).choice(
        np.setdiff1d(ids, chosen), n_distractor_ids, replace=False
    )
    extra = np.isin(arrays.pids, others)
    fit = np.flatnonzero(~held & ~extra)
    query = []
    for key in np.unique(np.stack([arrays.pids[held], arrays.camids[held]], 1), axis=0):
        rows = np.flatnonzero(held & (arrays.pids == key[0]) & (arrays.camids == key[1]))
        query.append(rng.choice(rows))
    query = np.sort(np.asarray(query, dtype=np.int64))
    gallery = np.setdiff1d(np.flatnonzero(held | extra), query)
    index = {"train": fit, "query": query, "gallery": gallery}
    return Splits({k: [train[i] for i in v] for k, v in index.items()}), index
