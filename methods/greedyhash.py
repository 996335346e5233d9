"""GreedyHash: sign in the forward pass, straight-through backward (Su et al., NeurIPS 2018).

References
----------
S. Su, C. Zhang, K. Han, Y. Tian, "Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in
CNN", NeurIPS 2018 (the authors' code: github.com/ssppp/GreedyHash).

The method (as in the paper)
----------------------------
The hash layer's output ``h`` is binarised *in the forward pass*, ``b = sign(h)``, and the gradient is
passed straight through, ``dL/dh = dL/db`` (:class:`SignST`): the greedy solution of the discrete
problem at every step, optimised as if ``sign`` were the identity. The supervised version feeds the
binary code itself to a linear classifier (no bias, as the authors' code) trained with softmax
cross-entropy, and adds the penalty ``alpha || |h| - 1 ||_3^3`` that keeps ``h`` near +-1 so that the
straight-through gradient stays honest; the authors' code weighs its mean, ``mean |(|h| - 1)^3|``, by
``alpha = 0.1``. The code is ``sign(h)``, i.e. ``h > 0`` (the base's ``pre > 0``).

Choices the paper leaves open or that the setting sets (documented hyperparameters)
----------------------------------------------------------------------------------
- Classes are the training identities (751 on Market-1501); test identities are new, so the classifier
  only trains the codes, which are then ranked by Hamming distance.
- Network: the backbone's top (MobileNetV2 blocks 14-18 on the cached block-13 maps, fresh ImageNet
  copy; ``finetune="full"``: the whole backbone from pixels) -> global average pooling ->
  ``h = BN(W x)`` (:class:`~hashbench.deep.HashLayer`; ``bn=True`` beyond the paper, as DBH: balanced
  bits from the start) -> ``b = sign(h)`` -> classifier.
- ``label_smoothing=0.1`` (as DBH and the IDE stage); the classifier's step size is scaled by
  ``128 / bits`` (at most 1), as DBH's, since its fan-in is the code length.
- Shuffled batches of 64 images (``sampler="random"``), as DBH: the loss is point-wise.
- Optimisation as DBH: SGD with Nesterov momentum, ``lr=0.05``, new layers at 10 x, weight decay 5e-4,
  half an epoch of warm-up then cosine decay, horizontal flips; ``epochs`` (below).
- ``init="ide"``, ``epochs=2``, chosen on held-out training identities of Market-1501
  (``--holdout 151 --holdout-distractors 100``, never the test split). Starting from the IDE stage's
  trained top, 2 epochs gave 43.19 / 47.70 mAP at 128 / 2048 bits. 3 epochs from ImageNet gave
  36.33 / 41.77, at about 1.5 times the training time.
  Only the start and the epochs (and DPSH's ``theta_scale``) were tuned. The other values come from
  the paper, its code and the DBH recipe, checked to train on the synthetic set. The figures are in
  ``results/market1501/validation/README.md``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hashbench.deep import DeepHashing, HashLayer
from hashbench.errors import HashbenchError
from hashbench.method import Context, View


class SignST(torch.autograd.Function):
    """``sign`` forward, identity backward (the straight-through estimator of GreedyHash)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        return torch.sign(h)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def sign_st(h: torch.Tensor) -> torch.Tensor:
    """``sign(h)`` whose gradient is passed through unchanged."""
    return SignST.apply(h)


def greedy_penalty(h: torch.Tensor) -> torch.Tensor:
    """The authors' ``mean |(|h| - 1)^3|`` (the paper's cubed 3-norm, per entry)."""
    return (h.abs() - 1).pow(3).abs().mean()


class GreedyHead(nn.Module):
    """Hash layer -> ``sign`` with a straight-through gradient -> identity classifier on the code."""

    def __init__(self, channels: int, bits: int, n_ids: int, bn: bool) -> None:
        super().__init__()
        self.hash = HashLayer(channels, bits, bn)
        self.classifier = nn.Linear(bits, n_ids, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.hash(pooled[:, 0])
        b = sign_st(h)
        return {"pre": h, "binary": b, "logits": self.classifier(b)}


class GreedyHash(DeepHashing):
    name = "greedyhash"
    description = "GreedyHash (Su et al. 2018): sign forward, straight-through backward, identity softmax"
    sampler = "random"  # point-wise loss: shuffled batches of batch_size images, as DBH

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        epochs: int = 2,
        lr: float = 0.05,
        head_lr_mult: float = 10.0,
        batch_size: int = 64,
        alpha: float = 0.1,
        label_smoothing: float = 0.1,
        bn: bool = True,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 0.5,
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
        if alpha < 0:
            raise HashbenchError(f"greedyhash.alpha={alpha}: expected >= 0")
        self.batch_size = int(batch_size)
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)
        self.bn = bool(bn)

    def build_head(self, channels: int, n_ids: int, train: View, context: Context) -> nn.Module:
        return GreedyHead(channels, self.bits, n_ids, self.bn)

    def head_param_groups(self, head: GreedyHead) -> list[dict]:
        lr = self.lr * self.head_lr_mult  # the classifier's fan-in is the code length (see DBH)
        return [
            {"params": list(head.hash.parameters()), "lr": lr},
            {"params": list(head.classifier.parameters()), "lr": lr * min(1.0, 128 / self.bits)},
        ]

    def loss(self, out, targets):
        logits, y = out["logits"], targets["ids"]
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        penalty = greedy_penalty(out["pre"])
        acc = float((logits.argmax(1) == y).float().mean())
        return ce + self.alpha * penalty, {"penalty": float(penalty.detach()), "acc": acc}
