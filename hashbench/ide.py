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
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .features import write_json
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
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start, history = state["epoch"], state["history"]
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

    ``info`` reports the cost of producing them (``ide_train_s``: sum of the epochs' times, resumed
    epochs included; ``ide_embed_s``: embedding all splits) whether they were computed now or read from
    the cache, so a results row never claims a cached stage was free.
    """
    folder = ide_dir(cache_root, key)
    folder.mkdir(parents=True, exist_ok=True)
    final, timings_path = folder / "model.pt", folder / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {"embed_s": {}}
    model, history = None, None
    feats: dict[str, np.ndarray] = {}
    for split in maps:
        path = folder / f"{split}.npy"
        if path.exists():
            feats[split] = np.load(path)
            continue
        if model is None:
            model, history = _trained_model(
                cache_root, key, maps, train_pids, backbone, cut, config, device, seed, progress
            )
        t0 = time.perf_counter()
        feats[split] = embed_maps(
            model, maps[split], device, progress=progress, desc=f"IDE features [{split}]"
        )
        timings["embed_s"][split] = time.perf_counter() - t0
        tmp = folder / f"{split}.tmp.npy"
        np.save(tmp, feats[split])
        os.replace(tmp, path)
        write_json(timings_path, timings)
    if history is None and final.exists():
        history = torch.load(final, map_location="cpu", weights_only=False)["history"]
    info = {
        "ide_key": key,
        "ide_history": history,
        "ide_train_s": sum(h["seconds"] for h in history or ()),
        "ide_embed_s": sum(timings["embed_s"].get(s, 0.0) for s in maps),
    }
    return feats, info


def ide_dir(cache_root: Path, key: str) -> Path:
    """The cache folder of the IDE stage with key ``key``."""
    return Path(cache_root) / "ide" / key


def load_ide_model(cache_root: Path, key: str, backbone, cut: str, device) -> tuple[IDEModel, list] | None:
    """The trained IDE model cached under ``key`` (eval mode on ``device``) and its per-epoch log, or
    ``None`` when that stage has not been trained."""
    final = ide_dir(cache_root, key) / "model.pt"
    if not final.exists():
        return None
    state = torch.load(final, map_location=device, weights_only=False)
    model = IDEModel(backbone.top(cut), backbone.out_channels, state["n_classes"]).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state["history"]


def _trained_model(cache_root, key, maps, train_pids, backbone, cut, config, device, seed, progress):
    """The IDE model: loaded from the cache if trained before, else trained (resuming a checkpoint)."""
    trained = load_ide_model(cache_root, key, backbone, cut, device)
    if trained is not None:
        return trained
    folder = ide_dir(cache_root, key)
    final, checkpoint = folder / "model.pt", folder / "checkpoint.pt"
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
    _atomic_save(state, final)
    checkpoint.unlink(missing_ok=True)
    return model, history


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
