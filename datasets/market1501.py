"""Market-1501 (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015).

Also home of :class:`ReidFolderDataset`, the base it shares with DukeMTMC-reID: both distributions hold
``bounding_box_train/`` (train), ``query/`` and ``bounding_box_test/`` (gallery), encode person and camera
in each file name, and come with Lin et al.'s identity attributes in a separate ``.mat``. The data root is
the extracted folder (the split folders in it or one level down) or the distribution zip, which is read
in place: one open handle, reopened after pickling or in a forked worker.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from PIL import Image

from hashbench.data import SPLITS, AttributeTable, Dataset, Record
from hashbench.errors import HashbenchError

from ._lin_attributes import read_lin_attributes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
NO_ATTRIBUTES = ("none", "off", "")  # values of ``attributes=`` that switch attributes off


@dataclass(frozen=True)
class _Entry:
    """A file of a split folder: its name, size and (inside a zip) CRC-32."""

    name: str
    size: int
    crc: int | None = None


class _FolderSource:
    """Files under a folder; paths are relative, '/'-separated."""

    kind = "folder"

    def __init__(self, path: Path) -> None:
        self.path = path

    def bases(self) -> list[str]:
        """Where the split folders may be: the folder itself or one of its subfolders."""
        subdirs = sorted(e.name for e in os.scandir(self.path) if e.is_dir() and not _hidden(e.name))
        return ["", *subdirs]

    def is_dir(self, rel: str) -> bool:
        return (self.path / rel).is_dir()

    def is_file(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    def entries(self, rel: str) -> list[_Entry]:
        return [_Entry(e.name, e.stat().st_size) for e in os.scandir(self.path / rel) if e.is_file()]

    def read(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    def label(self, rel: str) -> str:
        return str(self.path / rel)

    def close(self) -> None:
        pass


class _ZipSource:
    """Members of a zip archive, read in place through one handle per process (dropped when pickled)."""

    kind = "zip"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1
        self._dirs: dict[str, list[_Entry]] | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_dirs": self._dirs}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])
        self._dirs = state["_dirs"]

    def _handle(self) -> zipfile.ZipFile:
        # A handle inherited through fork shares its file offset with the parent: open a fresh one.
        with self._lock:
            if self._zip is None or self._pid != os.getpid():
                try:
                    self._zip = zipfile.ZipFile(self.path)
                except (zipfile.BadZipFile, OSError) as exc:
                    raise HashbenchError(
                        f"--data-root {self.path}: not a readable zip file ({exc})"
                    ) from None
                self._pid = os.getpid()
            return self._zip

    def _index(self) -> dict[str, list[_Entry]]:
        """Folder -> files, from the zip's central directory ('' is the top level)."""
        if self._dirs is None:
            dirs: dict[str, list[_Entry]] = {"": []}
            for info in self._handle().infolist():
                path = info.filename.rstrip("/")
                parent, _, name = path.rpartition("/")
                if parent not in dirs:  # every ancestor of a member is a folder, listed in the zip or not
                    parts = parent.split("/")
                    for i in range(1, len(parts) + 1):
                        dirs.setdefault("/".join(parts[:i]), [])
                if info.is_dir():
                    dirs.setdefault(path, [])
                else:
                    dirs[parent].append(_Entry(name, info.file_size, info.CRC))
            self._dirs = dirs
        return self._dirs

    def bases(self) -> list[str]:
        subdirs = sorted(d for d in self._index() if d and "/" not in d and not _hidden(d))
        return ["", *subdirs]

    def is_dir(self, rel: str) -> bool:
        return rel in self._index()

    def is_file(self, rel: str) -> bool:
        parent, _, name = rel.rpartition("/")
        return any(e.name == name for e in self._index().get(parent, ()))

    def entries(self, rel: str) -> list[_Entry]:
        return list(self._index().get(rel, ()))

    def read(self, rel: str) -> bytes:
        """The member's bytes; a member that fails its CRC-32 or is cut off is a one-line error."""
        try:
            return self._handle().read(rel)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise HashbenchError(f"{self.label(rel)}: damaged zip member ({exc})") from None

    def label(self, rel: str) -> str:
        return f"{self.path}:{rel}"

    def close(self) -> None:
        with self._lock:
            if self._zip is not None:
                self._zip.close()
                self._zip = None


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _is_image(name: str) -> bool:
    return not _hidden(name) and name.lower().endswith(IMAGE_SUFFIXES)


def _image_stem(name: str) -> str:
    """An image's name without its extension(s) (Market-1501 has a few ``.jpg.jpg``)."""
    stem = name
    while stem.lower().endswith(IMAGE_SUFFIXES):
        stem = stem[: stem.rfind(".")]
    return stem


class ReidFolderDataset(Dataset):
    """A re-id distribution with ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` folders.

    Subclasses set ``title`` (for messages), ``name_pattern`` (matched against a file name without its
    extension; groups ``pid`` and ``camid``), ``name_format`` (the pattern in words) and
    ``attribute_file`` (the Lin et al. ``.mat`` looked for beside and inside the data root).

    Options: ``attributes=PATH`` reads identity attributes from PATH (``attributes=none``: none). Records
    are sorted by file name within a split; ``source`` is ``<split folder>/<file name>`` whether the data
    lies in a folder or a zip, so both give the same records. ``camid`` is the camera number as written
    in the file name (1-based).
    """

    title: ClassVar[str]
    name_pattern: ClassVar[re.Pattern[str]]
    name_format: ClassVar[str]
    attribute_file: ClassVar[str]
    split_dirs: ClassVar[dict[str, str]] = {
        "train": "bounding_box_train",
        "query": "query",
        "gallery": "bounding_box_test",
    }

    def __init__(
        self, root: str | Path | None = None, attributes: str | Path | None = None, **options
    ) -> None:
        if options:
            raise HashbenchError(
                f"dataset {self.name!r}: unknown option(s) {', '.join(sorted(options))}; valid: attributes"
            )
        super().__init__(root, **({} if attributes is None else {"attributes": str(attributes)}))
        assert self.root is not None
        if not self.root.exists():
            raise HashbenchError(f"--data-root {self.root}: no such file or directory")
        if self.root.is_dir():
            self._source: _FolderSource | _ZipSource = _FolderSource(self.root)
        elif zipfile.is_zipfile(self.root):
            self._source = _ZipSource(self.root)
        else:
            raise HashbenchError(f"--data-root {self.root}: neither a folder nor a zip file")
        self._attributes_option = None if attributes is None else str(attributes)
        self._base: str | None = None
        self._entries: dict[str, list[_Entry]] | None = None
        self._splits: dict[str, list[Record]] | None = None
        self._attributes: AttributeTable | None = None
        self._attributes_read = False

    # -- layout ---------------------------------------------------------------------------------------

    def _base_dir(self) -> str:
        """The folder (relative to the root, '' = the root itself) holding the split folders."""
        if self._base is None:
            wanted = list(self.split_dirs.values())
            found = {b: [d for d in wanted if self._source.is_dir(_join(b, d))] for b in self._source.bases()}
            complete = [b for b, present in found.items() if len(present) == len(wanted)]
            if len(complete) > 1:
                raise HashbenchError(
                    f"--data-root {self.root}: several {self.title} folders inside ({', '.join(complete)}); "
                    "point at one"
                )
            if not complete:
                best = max(found, key=lambda b: len(found[b]))
                missing = [f"{d}/" for d in wanted if d not in found[best]]
                where = f" (looked in {best}/)" if best and found[best] else ""
                raise HashbenchError(
                    f"--data-root {self.root}: not a {self.title} {self._source.kind}: "
                    f"missing {', '.join(missing)}{where}"
                )
            self._base = complete[0]
        return self._base

    def _split_entries(self) -> dict[str, list[_Entry]]:
        """Image files of each split folder, sorted by name (non-images such as Thumbs.db left out)."""
        if self._entries is None:
            base = self._base_dir()
            out = {}
            for split in SPLITS:
                folder = self.split_dirs[split]
                images = [e for e in self._source.entries(_join(base, folder)) if _is_image(e.name)]
                if not images:
                    raise HashbenchError(f"--data-root {self.root}: no images in {_join(base, folder)}/")
                out[split] = sorted(images, key=lambda e: e.name)
            self._entries = out
        return self._entries

    def _record(self, folder: str, name: str) -> Record:
        match = self.name_pattern.fullmatch(_image_stem(name))
        if match is None:
            raise HashbenchError(
                f"{self._source.label(_join(self._base_dir(), folder, name))}: not a {self.title} image name "
                f"(expected {self.name_format})"
            )
        return Record(f"{folder}/{name}", int(match["pid"]), int(match["camid"]))

    # -- Dataset --------------------------------------------------------------------------------------

    def splits(self) -> dict[str, list[Record]]:
        if self._splits is None:
            entries = self._split_entries()
            self._splits = {
                split: [self._record(self.split_dirs[split], e.name) for e in entries[split]]
                for split in SPLITS
            }
        return {split: list(records) for split, records in self._splits.items()}

    def open_images(self, records: Sequence[Record]) -> Iterator[Image.Image]:
        base = self._base_dir()
        for record in records:
            rel = _join(base, record.source)
            try:
                data = self._source.read(rel)
            except (KeyError, FileNotFoundError):
                raise HashbenchError(f"{self._source.label(rel)}: no such image in the dataset") from None
            except OSError as exc:
                raise HashbenchError(f"{self._source.label(rel)}: cannot be read ({exc})") from None
            try:
                with Image.open(io.BytesIO(data)) as image:
                    rgb = image.convert("RGB")
            except OSError as exc:
                raise HashbenchError(f"{self._source.label(rel)}: cannot decode image ({exc})") from None
            yield rgb

    def digest(self) -> str:
        """Digest of the images only (names, sizes, and in a zip their CRC-32); attributes are not part of it.

        It keys the cache of trunk features, which the attribute file does not affect.
        """
        h = hashlib.sha256(f"{self.name}\n".encode())
        for split, entries in self._split_entries().items():
            for e in entries:
                h.update(f"{self.split_dirs[split]}/{e.name}\0{e.size}\0{e.crc}\n".encode())
        return h.hexdigest()[:16]

    def attributes(self) -> AttributeTable | None:
        if not self._attributes_read:
            self._attributes = self._read_attributes()
            self._attributes_read = True
        return self._attributes

    def _read_attributes(self) -> AttributeTable | None:
        option = self._attributes_option
        if option is not None:
            if option.strip().lower() in NO_ATTRIBUTES:
                return None
            path = Path(option).expanduser()
            if not path.is_file():
                raise HashbenchError(f"attributes={option}: no such file")
            return read_lin_attributes(path)
        assert self.root is not None
        base = self._base_dir()
        inside = [_join(base, self.attribute_file), _join(base, "attribute", self.attribute_file)]
        if base:
            inside.append(self.attribute_file)
        for rel in inside:
            if self._source.is_file(rel):
                label = self._source.label(rel)
                if self._source.kind == "folder":
                    return read_lin_attributes(label)
                return read_lin_attributes(label, self._source.read(rel))
        beside = self.root.parent / self.attribute_file
        if beside.is_file():
            return read_lin_attributes(beside)
        log.warning(
            "%s: no %s inside or beside %s; attributes unavailable (pass attributes=PATH)",
            self.name,
            self.attribute_file,
            self.root,
        )
        return None

    def close(self) -> None:
        """Release the open zip handle (it is reopened on the next read)."""
        self._source.close()


class Market1501(ReidFolderDataset):
    """Market-1501: 1,501 identities, 6 cameras; 12,936 train / 3,368 query / 19,732 gallery images."""

    name = "market1501"
    description = "Market-1501 (Zheng et al. 2015): 1,501 ids, 6 cameras, 32,668 boxes; Lin et al. attributes"
    title = "Market-1501"
    # PPPP_cCsS_FFFFFF_NN: person (-1 junk, 0000 distractor), camera, sequence, frame, box
    name_pattern = re.compile(r"(?P<pid>-1|\d+)_c(?P<camid>\d)s(?P<seq>\d)_(?P<frame>\d+)_(?P<box>\d+)")
    name_format = "PPPP_cCsS_FFFFFF_NN.jpg"
    attribute_file = "market_attribute.mat"
