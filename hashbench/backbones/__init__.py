"""CNN backbones in plain torch, with torchvision's parameter names, split at a named cut.

torchvision does not import beside the CPU torch build this project targets, so the networks are
written here; their ``state_dict`` keys match torchvision's, so torchvision checkpoints load as they
are. A backbone is split at a named ``cut`` into a frozen ``trunk`` (run once per image, its output
cached on disk) and a trainable ``top`` (the blocks a deep method or the IDE stage trains on cached
trunk maps).

Weight sources (``weights=``): ``"imagenet"`` (each backbone's default source, see its class),
a path to a state-dict file, an ``https://`` URL (downloaded once into the cache, checked against the
SHA-256 prefix in its file name, torchvision's naming convention), or ``"none"`` for random init.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..durable import temp_path
from ..errors import HashbenchError
from ..hookspecs import hookimpl
from ..keys import resolve_cache_dir

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class of backbone plugins: the full network as torchvision names it, plus named cuts."""

    name: ClassVar[str]
    description: ClassVar[str]
    cuts: ClassVar[dict[str, int]]  # cut name -> index of the first `top` stage in `self.stages()`
    default_cut: ClassVar[str]
    out_channels: ClassVar[int]  # channels of the top's output map

    def __init__(self, weights: str | Path | None = "imagenet") -> None:
        super().__init__()
        self.weights = "none" if weights in (None, "none") else str(weights)
        self.weights_digest = "none"

    # -- structure ---------------------------------------------------------------------------------
    @abstractmethod
    def stages(self) -> list[nn.Module]:
        """The network as an ordered list of stages whose composition maps an image to the top map."""

    def check_cut(self, cut: str) -> int:
        if cut not in self.cuts:
            raise HashbenchError(f"--cut: unknown cut {cut!r} for {self.name}; valid: {', '.join(self.cuts)}")
        return self.cuts[cut]

    def trunk(self, cut: str) -> nn.Module:
        """The frozen stages before ``cut`` (shares parameters with this backbone), in eval mode."""
        k = self.check_cut(cut)
        trunk = nn.Sequential(*self.stages()[:k]).eval()
        for p in trunk.parameters():
            p.requires_grad_(False)
        return trunk

    def top(self, cut: str) -> nn.Module:
        """A fresh, trainable copy of the stages from ``cut`` on (ImageNet-initialised if loaded)."""
        import copy

        k = self.check_cut(cut)
        top = copy.deepcopy(nn.Sequential(*self.stages()[k:])).train()
        for p in top.parameters():
            p.requires_grad_(True)
        return top

    def trunk_shape(self, cut: str, input_size: tuple[int, int]) -> tuple[int, int, int]:
        """(C, H, W) of the trunk output for an input of ``input_size`` (H, W)."""
        with torch.no_grad():
            out = self.trunk(cut)(torch.zeros(1, 3, *input_size))
        return tuple(out.shape[1:])

    # -- weights -----------------------------------------------------------------------------------
    @abstractmethod
    def imagenet_source(self) -> str:
        """Where the default (``"imagenet"``) weights come from: a file path or an https URL."""

    def load_weights(self, cache_dir: Path | None = None) -> Backbone:
        """Load ``self.weights`` into the network and record their digest."""
        if self.weights == "none":
            self.weights_digest = "none"
            return self
        source = self.imagenet_source() if self.weights == "imagenet" else self.weights
        path = resolve_weights(source, cache_dir)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # damaged, not a torch file, or a pickle payload (refused, not executed)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HashbenchError(
                f"--weights {path}: not a readable state dict of tensors ({first})"
            ) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = self.convert_state_dict(state)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing:
            raise HashbenchError(
                f"--weights {path}: missing {len(missing)} parameters of {self.name}, e.g. {missing[:3]}"
            )
        if unexpected:
            log.info(
                "%s: ignored %d unexpected keys in %s (e.g. %s)",
                self.name,
                len(unexpected),
                path,
                unexpected[:2],
            )
        self.weights_digest = _file_sha256(path)[:16]
        return self

    def convert_state_dict(self, state: dict) -> dict:
        """Map another naming of the same network onto torchvision's (default: unchanged)."""
        return state

    def config(self) -> dict:
        return {"name": self.name, "weights": self.weights, "weights_digest": self.weights_digest}


def resolve_weights(source: str, cache_dir: Path | None) -> Path:
    """A local path for a weights source: the file itself, or a checked download of a URL."""
    if source.startswith(("http://", "https://")):
        return _download(source, cache_dir)
    path = Path(source).expanduser()
    if not path.is_file():
        raise HashbenchError(f"--weights {source}: no such file")
    return path


def _download(url: str, cache_dir: Path | None) -> Path:
    """Download once into ``cache_dir/weights``; the file-name hash prefix (torchvision style) is checked."""
    target_dir = resolve_cache_dir(cache_dir) / "weights"
    target_dir.mkdir(parents=True, exist_ok=True)
    name = url.rsplit("/", 1)[-1]
    target = target_dir / name
    if target.is_file():
        return target
    stem = name.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else None
    tmp = temp_path(target)  # unique per process: two runs downloading at once do not collide
    try:
        torch.hub.download_url_to_file(url, str(tmp), hash_prefix=prefix, progress=True)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise HashbenchError(
            f"--weights {url}: download failed ({exc}); offline, pass a local file with --weights PATH"
        ) from exc
    os.replace(tmp, target)
    return target


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def to_tensor(images: list[Image.Image], input_size: tuple[int, int]) -> torch.Tensor:
    """Resize (bilinear) to (H, W), scale to [0, 1] and normalise with ImageNet statistics: (B, 3, H, W)."""
    h, w = input_size
    arr = np.stack(
        [np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32) for im in images]
    )
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


TRANSFORM_ID = "resize-bilinear/imagenet-norm/v1"


@hookimpl
def hashbench_register_backbones():
    from .mobilenetv2 import MobileNetV2
    from .resnet import ResNet50

    return [MobileNetV2, ResNet50]
