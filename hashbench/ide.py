"""The IDE stage: adapt the backbone to re-id once per dataset, on cached trunk maps.

ImageNet features are poor re-id features (about 3.5 % mAP on Market-1501), so every method that
consumes pooled features (LSH, ITQ, KSH, SDH, the float reference) gets *adapted* ones: the
backbone's top blocks, initialised from ImageNet, trained with an identity-classification loss
("ID-discriminative embedding", Zheng et al. 2016) on the frozen trunk maps of the training split.

Model: top blocks -> global average pooling -> BatchNorm1d "neck" (Luo et al., "Bag of tricks",
2019) -> bias-free linear classifier over training identities; cross-entropy with label smoothing.
Augmentation: horizontal flip of the trunk maps (the maps of a flipped image are, up to the
receptive field's asymmetry, the flipped maps). Features: the neck output, compared by cosine.
The checkpoint of every epoch is kept, so a killed training resumes at the last finished epoch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .cache import CacheEntry
from .durable import atomic_write
from .errors import HashbenchError
from .training import iterate_batches, label_index, maps_to_tensor, warmup_cosine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IDEConfig:
    """Hyperparameters of the identity adaptation (defaults measured on Market-1501, see the README).

    The stage's seed is the run's (``RunConfig.seed``, one slot): it is passed to :func:`train_ide`, and
    recorded beside these settings in the IDE key (:func:`hashbench.keys.ide_key`).
    """

    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.5
    flip: bool = True


class IDEModel(nn.Module):
    """Backbone top + GAP + BN neck (+ classifier during training)."""

    def __init__(self, top: nn.Module, channels: int, n_classes: int) -> None:
        super().__init__()
        self.top = top
        self.neck = nn.BatchNorm1d(channels)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(channels, n_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def embed(self, maps: torch.Tensor) -> torch.Tensor:
        return self.neck(self.top(maps).mean(dim=(2, 3)))

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.embed(maps)
        return feat, self.classifier(feat)


def train_ide(
    maps: np.ndarray,
    pids: np.ndarray,
    top: nn.Module,
    channels: int,
    config: IDEConfig,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[IDEModel, list[dict]]:
    """Train an :class:`IDEModel` on trunk ``maps``; returns the model and per-epoch logs."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(label_index(pids))
    n_classes = int(labels.max()) + 1
    model = IDEModel(top, channels, n_classes).to(device)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )
    steps_per_epoch = len(pids) // config.batch_size
    total = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history: list[dict] = []
    start = 0
    state = _read_checkpoint(checkpoint, device) if checkpoint is not None else None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            start, history = int(state["epoch"]), list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            log.warning("IDE checkpoint %s does not fit this training (%s); starting over", checkpoint, exc)
            return train_ide(maps, pids, top, channels, config, device, None, progress, seed)
        log.info("resuming IDE training at epoch %d", start + 1)
    for epoch in range(start, config.epochs):
        model.train()
        t0 = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"IDE epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not progress,
            dynamic_ncols=True,
        )
        for index in iterate_batches(len(pids), config.batch_size, rng):
            flip = rng.random(len(index)) < 0.5 if config.flip else None
            x = maps_to_tensor(maps, index, device, flip)
            y = labels[index].to(device)
            _, logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(index)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(index)
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.2f}")
        bar.close()
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total_loss / max(seen, 1),
                "acc": correct / max(seen, 1),
                "seconds": time.perf_counter() - t0,
            }
        )
        log.info(
            "IDE epoch %d: loss %.3f, train acc %.3f, %.0f s",
            epoch + 1,
            history[-1]["loss"],
            history[-1]["acc"],
            history[-1]["seconds"],
        )
        if checkpoint is not None:
            _atomic_save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch + 1,
                    "history": history,
                },
                checkpoint,
            )
    return model.eval(), history


@torch.inference_mode()
def embed_maps(
    model: IDEModel,
    maps: np.ndarray,
    device,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "embed",
) -> np.ndarray:
    """Neck features of all ``maps`` (N, C) float32, model in eval mode."""
    model.eval()
    out = np.empty((len(maps), model.neck.num_features), dtype=np.float32)
    for i in tqdm(range(0, len(maps), batch_size), desc=desc, disable=not progress, unit="batch"):
        index = np.arange(i, min(i + batch_size, len(maps)))
        out[index] = model.embed(maps_to_tensor(maps, index, device)).cpu().numpy()
    return out


def _read_checkpoint(checkpoint: Path, device) -> dict | None:
    """The per-epoch checkpoint of a killed training (tensors and plain data only), or ``None``; a
    damaged one is reported in one line and training starts over."""
    if not checkpoint.is_file():
        return None
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as exc:  # truncated, damaged, or holding a pickle payload: never executed
        log.warning(
            "IDE checkpoint %s cannot be read (%s); training from the start", checkpoint, _first_line(exc)
        )
        return None
    return state if isinstance(state, dict) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def adapted_features(
    cache_root: Path,
    key: str,
    maps: dict[str, np.ndarray],
    train_pids: np.ndarray,
    backbone,
    cut: str,
    config: IDEConfig,
    device,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict]:
    """Adapted features of every split, cached under ``<cache>/ide/<key>``.

    ``key`` is the stage's :func:`hashbench.keys.ide_key`, computed by the pipeline from the maps' key,
    ``config``, ``seed``, the backbone and the cut.

    The entry (:class:`hashbench.cache.CacheEntry`) holds ``model.pt`` (the trained model's tensors and
    its epoch log) and ``<split>.npy`` per split, each verified against the manifest on read. A split
    that fails is embedded again with the model; a model that fails is trained again and every split
    re-embedded with it, so features and model always belong together.

    ``info`` reports the cost of producing them (``ide_train_s``: sum of the epochs' times, resumed
    epochs included; ``ide_embed_s``: embedding all splits) whether they were computed now or read from
    the cache, so a results row never claims a cached stage was free.
    """
    entry = ide_entry(cache_root, key)
    splits = [f"{split}.npy" for split in maps]
    if not entry.verified(MODEL) and any(entry.path(n).exists() for n in splits):
        log.warning("IDE cache %s: no sound model; its features are rebuilt with a new one", entry.folder)
        entry.discard(*splits)
    model, history = None, None
    feats: dict[str, np.ndarray] = {}
    for split, name in zip(maps, splits, strict=True):
        if not entry.verified(name):
            with entry.producing(name):
                if not entry.verified(name):  # else another run embedded it while we waited
                    if model is None:
                        model, history = _trained_model(
                            entry, maps, train_pids, backbone, cut, config, device, seed, progress
                        )
                    t0 = time.perf_counter()
                    arr = embed_maps(
                        model, maps[split], device, progress=progress, desc=f"IDE features [{split}]"
                    )
                    entry.commit_write(name, lambda f, a=arr: np.save(f, a), seconds=time.perf_counter() - t0)
        feats[split] = _read_features(entry.path(name))
    if history is None and entry.verified(MODEL):
        history = _model_state(entry.path(MODEL), "cpu").get("history")
    info = {
        "ide_key": key,
        "ide_history": history,
        "ide_train_s": sum(h["seconds"] for h in history or ()),
        "ide_embed_s": sum(entry.seconds(n) for n in splits),
    }
    return feats, info


MODEL = "model.pt"


def ide_dir(cache_root: Path, key: str) -> Path:
    """The cache folder of the IDE stage with key ``key``."""
    return Path(cache_root) / "ide" / key


def ide_entry(cache_root: Path, key: str) -> CacheEntry:
    """The IDE stage's cache entry of key ``key`` (an entry of an older hashbench is adopted, its
    ``timings.json`` seconds kept)."""
    folder = ide_dir(cache_root, key)
    legacy: dict = {}
    try:
        timings = json.loads((folder / "timings.json").read_text())
        legacy = {"legacy_seconds": {f"{s}.npy": v for s, v in timings["embed_s"].items()}}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return CacheEntry(folder, {"ide_key": key}, "IDE features", legacy=legacy)


def _read_features(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HashbenchError(
            f"cached IDE features {path} cannot be read ({exc}); remove it and rerun"
        ) from None


def _model_state(path: Path, device) -> dict:
    """A verified ``model.pt``: tensors and plain data only (``weights_only``); one-line error else."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a pickle payload is refused here, never executed
        raise HashbenchError(
            f"IDE model {path} cannot be loaded as tensors ({_first_line(exc)}); remove it and rerun"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "n_classes" not in state:
        raise HashbenchError(f"IDE model {path} is not a hashbench IDE model; remove it and rerun")
    return state


def load_ide_model(cache_root: Path, key: str, backbone, cut: str, device) -> tuple[IDEModel, list] | None:
    """The trained IDE model cached under ``key`` (eval mode on ``device``) and its per-epoch log, or
    ``None`` when that stage has not been trained (or its model fails verification)."""
    entry = ide_entry(cache_root, key)
    if not entry.verified(MODEL):
        return None
    return _build_model(entry.path(MODEL), backbone, cut, device)


def _build_model(path: Path, backbone, cut: str, device) -> tuple[IDEModel, list]:
    state = _model_state(path, device)
    model = IDEModel(backbone.top(cut), backbone.out_channels, int(state["n_classes"])).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise HashbenchError(f"IDE model {path} does not fit the backbone ({_first_line(exc)})") from None
    return model.eval(), list(state.get("history") or [])


def _trained_model(entry: CacheEntry, maps, train_pids, backbone, cut, config, device, seed, progress):
    """The IDE model: loaded from the cache if trained before, else trained (resuming a checkpoint),
    under the entry's production lock so that two runs sharing a cache train it once."""
    with entry.producing(MODEL):
        if entry.verified(MODEL):
            return _build_model(entry.path(MODEL), backbone, cut, device)
        checkpoint = entry.path("checkpoint.pt")
        model, history = train_ide(
            maps["train"],
            train_pids,
            backbone.top(cut),
            backbone.out_channels,
            config,
            device,
            checkpoint=checkpoint,
            progress=progress,
            seed=seed,
        )
        state = {
            "model": model.state_dict(),
            "n_classes": model.classifier.out_features,
            "history": history,
            "config": {**asdict(config), "seed": seed},
        }
        entry.commit_write(MODEL, lambda f: torch.save(state, f))
        checkpoint.unlink(missing_ok=True)
    return model, history


def _atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))
