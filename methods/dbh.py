"""DBH: deep binary hashing of the whole image, trained with identity labels (Lin et al., CVPRW 2015).

References
----------
K. Lin, H.-F. Yang, J.-H. Hsiao, C.-S. Chen, "Deep Learning of Binary Hash Codes for Fast Image
Retrieval", CVPR Workshops (DeepVision) 2015. The whole-image deep hashing baseline ("DBH") of the
comparison in F. Zhu et al., "Part-based Deep Hashing for Large-scale Person Re-identification", IEEE
TIP 2017, and of the DeepSSH paper's table.

Formulation (Lin et al.'s, with identities as classes)
------------------------------------------------------
One network: the backbone's top (a fresh ImageNet copy of MobileNetV2 blocks 14-18 on the cached
block-13 trunk maps; with ``finetune="full"`` the whole backbone from pixels) -> global average pooling
-> a *latent* hash layer of ``bits`` units with a sigmoid, ``h = sigmoid(W x)`` -> a classifier over
the training identities on ``h`` -> softmax cross-entropy. This is Lin et al.'s point-wise scheme: they
insert the sigmoid latent layer H between the last hidden layer and the classification layer and
fine-tune with the usual classification loss, so that ``h`` must carry the class information through
(nearly) binary activations; there is no pairwise or triplet term. Re-id has no classes at test time
but its training identities are classes (751 on Market-1501), so identity classification is the
direct translation ("ID-discriminative" training, as the IDE stage). Codes: ``h > 0.5``, i.e.
thresholding the relaxation, as in the paper.

Why this formulation and not the PDH paper's whole-image triplet network (12.4 mAP at 512 bits there):
the issue asks for Lin et al.'s identity supervision; the triplet variant is available as
``pdh`` with ``n_parts=1`` (one strip = the whole image; ``feature_weight=0`` for the code triplet alone).

Choices beyond the paper (documented hyperparameters)
-----------------------------------------------------
- ``bn=True``: the latent layer's pre-activation is batch-normalised (``h = sigmoid(BN(W x))``), so
  every bit starts balanced (about half the training images on each side of 0.5) and in the sigmoid's
  sensitive range; without it short codes waste bits on nearly constant units.
- ``label_smoothing=0.1`` (as the IDE stage): softer targets keep the 751-way classifier from pushing
  ``h`` to extreme, overfit values in a few epochs.
- Optimisation as the IDE stage: SGD with Nesterov momentum, ``lr=0.05``, batches of 64 shuffled images,
  weight decay 5e-4, half an epoch of linear warm-up then cosine decay, horizontal flips.
- ``init="ide"``, ``epochs=2``: the top starts from the IDE stage's trained top. On held-out training
  identities of Market-1501 (``--holdout 151 --holdout-distractors 100``, never the test split) this gave
  48.01 / 60.13 mAP at 128 / 2048 bits. 3 epochs from ImageNet (the earlier default, ``init="imagenet"``,
  ``epochs=3``) gave 41.74 / 52.98, with about 1.5 times the training time. An epoch costs about a minute
  on Market-1501's 12,936 training maps on 2 CPU cores. The figures are in
  ``results/market1501/validation/README.md``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hashbench.deep import DeepHashing, HashLayer
from hashbench.method import Context, View


class LatentHashHead(nn.Module):
    """Sigmoid latent hash layer + identity classifier on it (Lin et al.'s H and fc8)."""

    def __init__(self, channels: int, bits: int, n_ids: int, bn: bool) -> None:
        super().__init__()
        self.hash = HashLayer(channels, bits, bn)
        self.classifier = nn.Linear(bits, n_ids)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        pre = self.hash(pooled[:, 0])
        h = torch.sigmoid(pre)
        return {"pre": pre, "relaxed": h, "logits": self.classifier(h)}


class DBH(DeepHashing):
    name = "dbh"
    description = (
        "deep binary hashing (Lin et al. 2015): top + sigmoid latent layer, identity softmax; whole image"
    )
    sampler = "random"  # shuffled batches of batch_size images, as the IDE stage

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        epochs: int = 2,
        lr: float = 0.05,
        head_lr_mult: float = 10.0,
        batch_size: int = 64,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 0.5,
        label_smoothing: float = 0.1,
        bn: bool = True,
        flip: bool = True,
        finetune: str = "top",
        init: str = "ide",
        shared_top: str = "",
    ) -> None:
        super().__init__(
            bits,
            seed,
            epochs=epochs,
            lr=lr,
            head_lr_mult=head_lr_mult,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            flip=flip,
            finetune=finetune,
            init=init,
            shared_top=shared_top,
        )
        self.batch_size = int(batch_size)
        self.label_smoothing = float(label_smoothing)
        self.bn = bool(bn)

    def build_head(self, channels: int, n_ids: int, train: View, context: Context) -> nn.Module:
        return LatentHashHead(channels, self.bits, n_ids, self.bn)

    def head_param_groups(self, head: LatentHashHead) -> list[dict]:
        # the classifier's fan-in is the code length: its step size is scaled by 128 / bits (at most 1)
        # so that a step moves the logits by the same amount at every length (it diverges at 1024 bits
        # with the hash layer's rate)
        lr = self.lr * self.head_lr_mult
        return [
            {"params": list(head.hash.parameters()), "lr": lr},
            {"params": list(head.classifier.parameters()), "lr": lr * min(1.0, 128 / self.bits)},
        ]

    def loss(self, out, targets):
        logits, y = out["logits"], targets["ids"]
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, {"acc": float((logits.argmax(1) == y).float().mean())}
