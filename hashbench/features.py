"""The feature cache: trunk outputs of every split, computed once and stored on disk.

Layout: ``<cache>/trunk/<key>/<split>.npy`` (float16, N × C × H × W, memory-mapped on read) plus
``manifest.json`` (:mod:`hashbench.cache`: the key, the maps' shape, each split's size, SHA-256 and
extraction seconds; verified on every read, a split that fails is reported and extracted again). The
key is a digest of everything the maps depend on: the dataset's content digest, backbone name and
weights digest, cut, input size and image transform. Extraction writes into ``<split>.npy.part`` and
records the rows done (and the seconds spent) in ``<split>.rows``; a killed extraction resumes from
the last completed batch, and a finished split is recorded in the manifest, then renamed into place.
Extraction of a split holds its production lock, so two runs sharing a cache extract it once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import TRANSFORM_ID, Backbone, to_tensor
from .cache import CacheEntry
from .data import Dataset, Record
from .durable import atomic_write_bytes
from .engines import make_engine
from .errors import HashbenchError
from .keys import TrunkKey, digest_of, resolve_cache_dir

__all__ = ["FeatureCache", "ImageSource", "TrunkKey", "digest_of", "resolve_device", "trunk_key"]

log = logging.getLogger(__name__)


def trunk_key(
    dataset: Dataset, backbone: Backbone, cut: str, input_size: tuple[int, int], engine: str = "torch"
) -> TrunkKey:
    """The key of a dataset's trunk maps under a loaded backbone (see :mod:`hashbench.keys`)."""
    return TrunkKey(
        dataset.name,
        dataset.digest(),
        backbone.name,
        backbone.weights_digest,
        cut,
        tuple(input_size),
        TRANSFORM_ID,
        engine,
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` or ``cuda:N`` the GPU must exist (a clear error)."""
    import re

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device != "cpu" and match is None:
        raise HashbenchError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N (N a device number)")
    if match is not None:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not n:
            raise HashbenchError(f"--device {device}: no CUDA device available (use --device auto or cpu)")
        if match[1] is not None and int(match[1]) >= n:
            raise HashbenchError(
                f"--device {device}: no such CUDA device; {n} present (cuda:0 .. cuda:{n - 1})"
            )
    return torch.device(device)


def batched(it: Iterator, n: int) -> Iterator[list]:
    while batch := list(islice(it, n)):
        yield batch


def prefetched(batches: Iterator[list], fn: Callable[[list], object]) -> Iterator[tuple[int, object]]:
    """``(len(batch), fn(batch))`` for each batch, the next one computed in a worker thread while the
    caller works on this one (JPEG decoding and resizing overlap the trunk: both release the GIL). Only
    the worker touches ``batches``; its errors are raised here; closing the generator stops it."""

    def produce():
        batch = next(batches, None)
        return None if batch is None else (len(batch), fn(batch))

    with ThreadPoolExecutor(1, thread_name_prefix="hashbench-decode") as pool:
        pending = pool.submit(produce)
        while (item := pending.result()) is not None:
            pending = pool.submit(produce)
            yield item


class FeatureCache:
    """Computes and stores trunk maps per split; a second call with the same key only memory-maps them."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = resolve_cache_dir(root)

    def trunk_dir(self, key: TrunkKey) -> Path:
        return self.root / "trunk" / key.digest()

    def trunk_maps(
        self,
        dataset: Dataset,
        records: dict[str, Sequence[Record]],
        backbone: Backbone,
        cut: str,
        input_size: tuple[int, int],
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        progress: bool = True,
        key: TrunkKey | None = None,
        engine: str = "torch",
    ) -> tuple[dict[str, np.ndarray], dict]:
        """Trunk maps of every split (memory-mapped float16) and timing info ``{"extract_s": ...}``.

        ``key``: the maps' :class:`TrunkKey` when the caller has computed it (the pipeline does, once);
        else it is derived here with :func:`trunk_key` (with ``engine``, see :mod:`hashbench.engines`).
        """
        key = key or trunk_key(dataset, backbone, cut, input_size, engine)
        folder = self.trunk_dir(key)
        entry = CacheEntry(folder, key.spec(), "trunk maps", legacy=_legacy_meta(folder))
        shape = tuple(backbone.trunk_shape(cut, input_size))
        if entry.info.get("shape") is None:
            entry.set_info(shape=list(shape))
        elif tuple(entry.info["shape"]) != shape:
            raise HashbenchError(
                f"trunk maps cache {folder}: maps of shape {tuple(entry.info['shape'])}, the backbone gives "
                f"{shape}; remove the folder and rerun"
            )
        out, seconds, extracted = {}, 0.0, 0
        trunk = None
        for split, recs in records.items():
            name = f"{split}.npy"
            path = entry.path(name)
            if not entry.verified(name):
                with entry.producing(name):
                    if not entry.verified(name):  # else another run finished it while we waited
                        if trunk is None:  # the engine of the key (hashbench.engines)
                            trunk = make_engine(key.engine, backbone.trunk(cut), input_size, device)
                        t0 = time.perf_counter()
                        part, rows_file, before, resumed_at = self._extract(
                            dataset, recs, trunk, shape, input_size, path, device, batch_size, progress, split
                        )
                        now = time.perf_counter() - t0
                        entry.commit(name, part, seconds=before + now)
                        rows_file.unlink(missing_ok=True)
                        seconds += now
                        extracted += len(recs) - resumed_at
            try:
                maps = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise HashbenchError(
                    f"cached maps {path} cannot be read ({exc}); remove it and rerun"
                ) from None
            if maps.shape != (len(recs), *shape):
                raise HashbenchError(
                    f"cached maps {path} have shape {maps.shape}, expected {(len(recs), *shape)}; "
                    "remove it and rerun"
                )
            out[split] = maps
        return out, {
            "extract_s": seconds,  # spent in this call
            "extracted_n": extracted,  # images extracted in this call (a resumed split: its rest only)
            # when the cache was filled (a resumed extraction: the runs' times together)
            "extract_s_recorded": sum(entry.seconds(f"{s}.npy") for s in records),
            "cache_dir": str(folder),
            "key": key.digest(),
        }

    def _extract(
        self, dataset, recs, trunk, shape, input_size, path, device, batch_size, progress, split
    ) -> tuple[Path, Path, float, int]:
        """Fill ``<split>.npy.part`` (resuming at the rows its ``.rows`` file says are done); returns the
        part, the rows file, the seconds earlier (killed) runs spent on it and the row it resumed at. The caller holds the
        split's production lock, so the fixed part name has one writer."""
        part, rows_file = path.with_suffix(".npy.part"), path.with_suffix(".rows")
        n = len(recs)
        done, before = _rows_done(rows_file) if part.exists() else (0, 0.0)
        arr = None
        if done:
            try:
                arr = np.lib.format.open_memmap(part, mode="r+")
            except (OSError, ValueError):
                arr = None
            if arr is None or arr.shape != (n, *shape) or arr.dtype != np.float16 or done > n:
                log.warning("partial trunk maps %s unusable; extracting %s from the start", part, split)
                arr, done, before = None, 0, 0.0
        if arr is None:
            arr = np.lib.format.open_memmap(part, mode="w+", dtype=np.float16, shape=(n, *shape))
        if done:
            log.info("resuming %s extraction at row %d of %d", split, done, n)
        bar = tqdm(
            total=n,
            initial=done,
            desc=f"trunk maps [{split}]",
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        images = dataset.open_images(recs[done:])
        row = done
        t0 = time.perf_counter()
        with torch.inference_mode():
            decoded = prefetched(batched(images, batch_size), lambda b: to_tensor(b, input_size))
            for count, x in decoded:
                arr[row : row + count] = trunk(x)
                row += count
                if row % (batch_size * 16) == 0 or row == n:
                    arr.flush()
                    elapsed = before + time.perf_counter() - t0
                    atomic_write_bytes(rows_file, json.dumps({"rows": row, "seconds": elapsed}).encode())
                bar.update(count)
        bar.close()
        arr.flush()
        del arr
        return part, rows_file, before, done


def _rows_done(rows_file: Path) -> tuple[int, float]:
    """(rows done, seconds spent) of a partial extraction; a plain row count (older hashbench) or an
    unreadable file count as no time / nothing done."""
    try:
        text = rows_file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return 0, 0.0
    try:
        obj = json.loads(text)
    except ValueError:
        return 0, 0.0
    if isinstance(obj, int):
        return max(obj, 0), 0.0
    if isinstance(obj, dict) and isinstance(obj.get("rows"), int):
        sec = obj.get("seconds", 0.0)
        return max(obj["rows"], 0), float(sec) if isinstance(sec, (int, float)) else 0.0
    return 0, 0.0


def _legacy_meta(folder: Path) -> dict:
    """What an entry written before manifests recorded in its ``meta.json``: the maps' shape and the
    seconds each split took (adopted into the manifest); ``{}`` when absent or unreadable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(meta, dict):
        return {}
    extract = meta.get("extract_s", {})
    seconds = {f"{s}.npy": v for s, v in extract.items()} if isinstance(extract, dict) else {}
    info = {"legacy_seconds": seconds}
    if isinstance(meta.get("shape"), list):
        info["shape"] = meta["shape"]
    return info


class ImageSource:
    """The pixels of one split for methods that train from images (``--finetune full``).

    ``batch(index)`` reads, resizes and normalises those records exactly as the trunk cache does, so a
    network trained from pixels sees the inputs the cached maps were computed from.
    """

    def __init__(self, dataset: Dataset, records: Sequence[Record], input_size: tuple[int, int]) -> None:
        self.dataset = dataset
        self.records = list(records)
        self.input_size = tuple(input_size)

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, index: Sequence[int]) -> torch.Tensor:
        """(B, 3, H, W) float32 tensor of the records at ``index``."""
        return to_tensor(list(self.dataset.open_images([self.records[i] for i in index])), self.input_size)

    def subset(self, index: Sequence[int]) -> ImageSource:
        return ImageSource(self.dataset, [self.records[i] for i in index], self.input_size)
