"""PDH: Part-based Deep Hashing (Zhu, Kong, Zheng, Fu, Tian, IEEE TIP 2017).

References
----------
F. Zhu, X. Kong, L. Zheng, H. Fu, Q. Tian, "Part-based Deep Hashing for Large-scale Person
Re-identification", IEEE Transactions on Image Processing 26(10), 2017 (arXiv:1705.02145).

The method (as in the paper)
----------------------------
- The pedestrian is cut into horizontal parts; the default is the authors' 4 overlapping strips of a
  64 x 128 image: rows 1-48, 33-80, 49-96, 81-128 (fractions 0-3/8, 2/8-5/8, 3/8-6/8, 5/8-1 of the
  height, used at any input size).
- Each part has its own hash branch: a fully connected hash layer of ``bits / 4`` units with a sigmoid
  (the relaxation of the binary code); the part codes are concatenated into the image's code.
- Training: triplets (anchor, positive of the same identity, negative of another identity) and the loss
  ``max(0, margin + ||a - p||^2 - ||a - n||^2)`` on the relaxed codes, for every part (the loss is the
  mean of the parts' losses). Codes: each relaxed unit thresholded at 0.5 (the sign of ``sigmoid - 0.5``).

Choices the paper leaves open or that the budget sets (documented hyperparameters)
----------------------------------------------------------------------------------
Tuned on held-out *training* identities of Market-1501 (``hashbench run --holdout 151``), never on the
test split; the configurations, figures and test-split outcomes are in
``results/market1501/validation/pdh.md``.

- Parts on the top's output (``part_mode="pool"``, default): the top runs once on the whole block-13
  map and each part average-pools the top-output rows of its strip (each part sees its neighbours
  through the receptive field; a strip's own part still changes most when the strip changes). With
  ``part_mode="crop"`` the strips are cut from the block-13 trunk map rows that cover the image strips
  and each strip goes through the (shared) top on its own, like the authors' part images through their
  CNN. MobileNetV2's block-13 map has stride 16, so at 256 x 128 input
  (16 map rows) the strips are map rows 0-5, 4-9, 6-11, 10-15, exactly the stride cells of image rows
  1-96, 65-160, 97-192, 161-256 (the paper's strips at twice the height); at 128 x 64 (8 rows): 0-2, 2-4,
  3-5, 5-7. In crop mode a part's bits depend on its strip only, at 1.5 x the cost of pool mode. Pool
  is the default because it is both cheaper and better on held-out identities once the feature
  triplet below is on (with the paper's loss alone crop was better; with the feature triplet the
  shared context helps); the test split, looked at once afterwards, ranked crop with 6 epochs above
  pool with 3 (the held-out gallery has no distractors; see the note). With ``finetune="full"`` and
  crop mode the strips are cut from the image itself, as in the paper.
- One top shared by the parts, one hash branch per part: the issue's "own hash branch"; training four
  tops would cost the same compute with four times the parameters to fit in the same few epochs.
- Distances are divided by the code length of the part, so ``margin`` is a fraction of the bits
  (``margin=0.1``: the relaxed Hamming distance to the negative must exceed the one to the positive by
  a tenth of the part's bits), the same at every code length. ``margin=0.2`` was worse held out.
- Triplets come from P x K batches (``P=16`` identities x ``K=4`` images), so hard triplets exist in
  every batch. ``mining="all"`` (default) averages the loss over every valid (a, p, n) triplet of the
  batch that violates the margin (batch-all); ``mining="hard"`` keeps, per anchor, its farthest
  positive and nearest negative (batch-hard, Hermans et al. 2017). Batch-all because batch-hard nearly
  collapses the relaxed codes (worse held out).
- ``scale_head_lr=True``: the hash branches learn at ``head_lr_mult x lr x (part bits / 32)``. With
  the distance divided by the part length, each unit's (and each hash-layer row's, and each BatchNorm
  scale's) triplet gradient is ``1 / part length`` while the top's gradient, summed over the units,
  is not: without the scaling the branches of long codes barely move, their units stay near the
  threshold and thresholding discards what the top learned, so mAP *fell* with the code length (on
  the test split and held out). With it a unit's step is the same at every length (32 bits a part,
  i.e. 128 bits, is the reference), and held-out mAP at 2048 bits rose.
- ``feature_weight=1``: beside the paper's triplet on the relaxed part codes, a batch-hard triplet
  (``feature_margin=0.3``, distance ``2 - 2 cos``) on each part's pooled top features, before the hash
  layer, mean over parts. Same supervision (relative comparisons only, no identity classifier), but
  the top is trained through its 1,280-d features instead of only through ``bits / 4`` relaxed units:
  at 128 bits a part has 32. It raised held-out mAP at 128 bits alone and at 2048 bits with
  ``scale_head_lr``. ``feature_weight=0`` is the paper's loss alone.
- ``init="ide"``, ``epochs=2``: the top starts from the IDE stage's trained top. On held-out identities
  (``--holdout 151 --holdout-distractors 100``) this gave 43.81 / 51.42 mAP at 128 / 2048 bits. 3 epochs
  from ImageNet (the earlier default) gave 39.83 / 44.49, with about 1.4 times the training time. Before
  the warm start, pooled parts with the feature triplet at 3 epochs beat crop mode held out (its 6 epochs
  at 2048 bits, its 3 at 128), for about a quarter of the cost of crop with 6 (see the note for the test
  split). ``lr=0.1``: adopted on held-out identities together with ``scale_head_lr`` and the
  feature triplet. Head at 10 x ``lr`` (``head_lr_mult=10``): 1 x was worse held out at 128 bits.
- No weight decay (``weight_decay=0``): with 5e-4 the long part codes drifted to the threshold (each
  bit's triplet gradient is divided by the part length, so the decay of the BatchNorm-ed hash layers
  outweighs it at long codes), and held-out mAP was lower.
- No quantisation term: one, ``w * mean((|2s - 1| - 1)^2)``, hurt on held-out identities.
- ``bn=True``: each hash layer's pre-activation is batch-normalised (balanced bits from the start);
  without it held-out mAP fell.
- ``n_parts=1`` gives the whole-image triplet network (the paper's whole-image baseline); other values
  cut ``n_parts`` equal, non-overlapping strips.
- Optimisation otherwise as the IDE stage: SGD with Nesterov momentum, half an epoch of warm-up then
  cosine decay, horizontal flips.
"""

from __future__ import annotations

import torch
from torch import nn

from hashbench.deep import DeepHashing, HashLayer, normalised, split_bits, triplet_loss
from hashbench.errors import HashbenchError
from hashbench.method import Context, View

# the authors' strips of a 128-row image, rows 1-48, 33-80, 49-96, 81-128, as fractions of the height
PAPER_STRIPS = ((0 / 128, 48 / 128), (32 / 128, 80 / 128), (48 / 128, 96 / 128), (80 / 128, 128 / 128))


def strips(n_parts: int) -> tuple[tuple[float, float], ...]:
    """The authors' 4 overlapping strips for ``n_parts=4``, else ``n_parts`` equal non-overlapping ones."""
    if n_parts == 4:
        return PAPER_STRIPS
    return tuple((i / n_parts, (i + 1) / n_parts) for i in range(n_parts))


class PartHashHead(nn.Module):
    """One sigmoid hash layer per part; the part codes are concatenated."""

    def __init__(self, channels: int, part_bits: list[int], bn: bool) -> None:
        super().__init__()
        self.part_bits = list(part_bits)
        self.branches = nn.ModuleList(HashLayer(channels, b, bn) for b in part_bits)

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        pres = [branch(pooled[:, j]) for j, branch in enumerate(self.branches)]
        pre = torch.cat(pres, dim=1)
        return {"pre": pre, "relaxed": torch.sigmoid(pre), "feat": pooled}


class PDH(DeepHashing):
    name = "pdh"
    description = "part-based deep hashing (Zhu et al. 2017): 4 strips, a hash branch each, triplet loss"

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        epochs: int = 2,
        lr: float = 0.1,
        head_lr_mult: float = 10.0,
        P: int = 16,
        K: int = 4,
        margin: float = 0.1,
        mining: str = "all",
        n_parts: int = 4,
        part_mode: str = "pool",
        bn: bool = True,
        weight_decay: float = 0.0,
        warmup_epochs: float = 0.5,
        flip: bool = True,
        finetune: str = "top",
        init: str = "ide",
        shared_top: str = "",
        scale_head_lr: bool = True,
        feature_weight: float = 1.0,
        feature_margin: float = 0.3,
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
        if mining not in ("hard", "all"):
            raise HashbenchError(f"pdh.mining={mining!r}: expected 'hard' or 'all'")
        if part_mode not in ("crop", "pool"):
            raise HashbenchError(f"pdh.part_mode={part_mode!r}: expected 'crop' or 'pool'")
        if not 1 <= n_parts <= bits:
            raise HashbenchError(f"pdh.n_parts={n_parts}: expected 1 .. bits")
        if P < 2 or K < 2:
            raise HashbenchError(f"pdh: P={P}, K={K}: triplets need P >= 2 identities and K >= 2 images")
        self.P, self.K = int(P), int(K)
        self.margin = float(margin)
        self.mining = mining
        self.n_parts = int(n_parts)
        self.part_mode = part_mode
        self.bn = bool(bn)
        self.regions = strips(self.n_parts)
        self.region_mode = part_mode
        if feature_weight < 0:
            raise HashbenchError(f"pdh.feature_weight={feature_weight}: expected >= 0")
        self.scale_head_lr = bool(scale_head_lr)
        self.feature_weight = float(feature_weight)
        self.feature_margin = float(feature_margin)

    @property
    def part_bits(self) -> list[int]:
        return split_bits(self.bits, self.n_parts)

    def part_slices(self) -> list[slice]:
        """Column ranges of each part's bits in the code."""
        out, start = [], 0
        for b in self.part_bits:
            out.append(slice(start, start + b))
            start += b
        return out

    def build_head(self, channels: int, n_ids: int, train: View, context: Context) -> nn.Module:
        return PartHashHead(channels, self.part_bits, self.bn)

    def head_param_groups(self, head: nn.Module) -> list[dict]:
        groups = super().head_param_groups(head)
        if self.scale_head_lr:  # each unit's triplet gradient is 1 / part length: the same step at any length
            for group in groups:
                group["lr"] *= max(self.part_bits) / 32
        return groups

    def loss(self, out, targets):
        relaxed, y = out["relaxed"], targets["ids"]
        losses, active = [], []
        for part in self.part_slices():
            loss, frac = triplet_loss(relaxed[:, part], y, self.margin, self.mining)
            losses.append(loss)
            active.append(frac)
        total = torch.stack(losses).mean()
        stats = {"active": sum(active) / len(active)}
        if self.feature_weight:
            feat = out["feat"]
            f_losses = [
                triplet_loss(normalised(feat[:, j]), y, self.feature_margin, "hard")[0]
                for j in range(feat.shape[1])
            ]
            f_loss = torch.stack(f_losses).mean()
            stats["feat"] = float(f_loss.detach())
            total = total + self.feature_weight * f_loss
        return total, stats
