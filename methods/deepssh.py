"""DeepSSH: Deep Semantic Structured Hashing (Zhao, Luo, Yang, Song, ICIP 2018).

References
----------
Y. Zhao, S. Luo, Y. Yang, M. Song, "DeepSSH: Deep Semantic Structured Hashing for Explainable Person
Re-identification", IEEE ICIP 2018. Only the abstract is public: one deep hashing network learned from
both identity labels and mid-level (semantic) attributes; its codes are *structured*, part of the bits
standing for attributes, so that a match can be explained ("both wear a red upper garment") and a
person can be searched by a description. Everything below the abstract's level is our design, chosen
for the strongest faithful version; every choice is a documented hyperparameter.

Network (one network, as the abstract says)
-------------------------------------------
The backbone's top (a fresh ImageNet copy of MobileNetV2 blocks 14-18 on the cached block-13 trunk
maps, ``finetune="top"``; with ``finetune="full"`` the whole backbone from pixels, as DBH and PDH) ->
global average pooling ``f`` (1280-d) -> a BatchNorm "neck" ``t = BN(f)`` (Luo et al., "Bag of tricks",
2019) -> the hash layer ``pre = BN(W t)`` (:class:`~hashbench.deep.HashLayer`) with the relaxation
``z = tanh(pre)`` in [-1, 1]^bits; the code is ``pre > 0`` (i.e. ``sign(z)``).

Structured code (``segments_``)
-------------------------------
The first ``n_sem = round(semantic_fraction * bits)`` bits are the *semantic segment* (raised to the
groups' minimum when that is more, at most ``bits - 1``): each attribute group of the dataset's schema
(read from ``context.schema``, never a fixed list; 12 groups on Market-1501, 10 on DukeMTMC-reID) gets
its own contiguous slice, in schema order, of a size proportional to its number of values (largest
remainders), at least ``ceil(log2(n_values))`` bits (1 for a binary group) so that every value has its
own codeword. At 128 bits on Market-1501 (``n_sem = 32``) a binary group gets 1-2 bits, ``age`` 3,
``upper_color`` 6 and ``lower_color`` 7; at 2048 bits 26-27, 53, 105 and 118. The remaining bits are
the *identity segment*, free of any attribute constraint. After ``fit``, ``segments_`` maps each group
name, and ``"identity"``, to its ``(start, stop)`` bit range; the ranges tile ``0 .. bits`` exactly once,
in that order (the groups' in schema order, the identity segment last).

Each group's attribute head reads *only its slice* ``z_g`` of the relaxed code, through *fixed*
codewords (:class:`AttributeReadout`): a binary group has one logit ``a * mean(z_g) + b`` (all bits on
= value 1, e.g. "female", "yes"; sigmoid / binary cross-entropy); a group of k values has k logits
``a * (z_g . c_v) / |z_g| + b_v`` with fixed, far-apart +-1 codewords ``c_v`` (:func:`codebook`; softmax
cross-entropy). Only the scale ``a`` and the biases are learned. Why fixed and not a learned linear
head: a freshly initialised head passes almost no gradient to the bits, and the bits none to the
head (on the synthetic set the learned linear heads stayed at the majority class); with a fixed
readout the bits themselves must carry the attribute from the first step, and the code of a value is
known (its codeword), which is what explanation and search need: :meth:`DeepSSH.predict_attributes`
reads the attributes back from binary codes, :meth:`DeepSSH.attribute_code` gives the bits and the mask
that a description such as ``upper_color=red`` sets (rank by Hamming distance on the mask), and a
Hamming distance splits into per-group parts along ``segments_``. A readout constrains the slice's
*mean* (or correlation with the codeword), not each bit, so the semantic bits are also trained by the
identity terms (attributes are identity-level: bits that carry them are consistent across a person's
images and help matching).

Losses (every weight is a hyperparameter; a term with weight 0 is skipped)
---------------------------------------------------------------------------
On the relaxed code ``z`` (the output):

- ``id_weight`` x identity classification: a cosine classifier, ``id_scale * cos(z, w_c)``, softmax
  cross-entropy with ``label_smoothing`` (a normalised classifier ranks by the code's angle, which is
  the Hamming distance for binary codes; a plain linear classifier on ``bits`` inputs needs its step
  size rescaled with the length, see DBH);
- ``triplet_weight`` x batch-hard triplet (Hermans et al. 2017, :func:`~hashbench.deep.triplet_loss`) on the
  L2-normalised relaxed codes, P x K batches (:func:`~hashbench.deep.pk_batches`): distance ``2 - 2 cos``
  (``= 4 x`` the Hamming fraction for binary codes), ``margin`` in those units; the normalisation
  keeps the triplet from being met by saturating ``tanh`` alone;
- ``attr_weight`` x attribute prediction from the semantic slices: the mean over groups of the
  group's BCE / CE, labels -1 (unknown) ignored;
- ``quant_weight`` x quantisation, ``mean((|z| - 1)^2)``: the relaxation is pulled to the binary code;
- ``balance_weight`` x bit balance, ``mean_bits(mean_batch(z)^2)``: each bit half on, half off.

The float teacher (why: short codes). At 128 bits the code alone is a tight bottleneck for training
the top; identity-only hashing reached about 14 mAP at 128 bits on Market-1501 (DBH) against 37 at
2048. So the network also trains a wide float embedding jointly, and the code learns the teacher's
neighbourhoods:

- ``teacher_weight`` x (identity cross-entropy with label smoothing on the neck ``t``, bias-free linear
  classifier + batch-hard triplet on the normalised pooled ``f``, same ``margin``): the "bag of tricks"
  strong re-id baseline, which trains the top blocks (the IDE stage, identity loss only, gives 40.78
  mAP float on Market-1501);
- ``distill_weight`` x similarity distillation: for each image of the batch, the distribution over the
  other images of ``softmax(cos / distill_temperature)`` of the code must match the teacher's (cosines
  of the neck ``t``, detached), Kullback-Leibler divergence, mean over images (relational / listwise
  distillation: what Hamming ranking needs is the teacher's *ranking* of the neighbours, not its
  values). The teacher is not used at encoding time: ``encode`` returns ``pre > 0``.

Choices beyond the paper (documented hyperparameters)
-----------------------------------------------------
- ``semantic_fraction=0.25``: at 128 bits 32 bits for Market-1501's 39 attribute values (12 groups, at
  least 18 bits), 96 bits free for identity; at 2048 bits 512 and 1536.
- ``P=16``, ``K=4`` (64 images a batch, as PDH), ``margin=0.3``, ``label_smoothing=0.1``,
  ``id_scale=16``, ``distill_temperature=0.1``.
- Optimisation as DBH / PDH: SGD with Nesterov momentum, ``lr=0.05`` for the top, weight decay 5e-4,
  one epoch of linear warm-up then cosine decay, horizontal flips; the neck's bias is frozen (BNNeck).
  But ``head_lr_mult=1``, not 10: with the new layers (neck, hash layer, cosine and teacher classifiers,
  readouts) at 10 x ``lr`` the bits collapsed to nearly constant values on the synthetic set (3 x was
  better, 1 x best). The heads cost little next to the top: an epoch costs about as much as DBH's
  (tests/benchmarks/test_bench_deep.py).
- The float teacher and its distillation raised mAP on the synthetic set (at 128 bits DeepSSH came
  out above DBH and about level with the ``ide-float`` reference).
- ``init="ide"``, ``epochs=3``: the top starts from the IDE stage's trained top (already trained for
  identity), so the triplet + identity model needs fewer epochs. On held-out identities of Market-1501
  (``--holdout 151 --holdout-distractors 100``) 3 warm epochs gave 45.93 / 56.46 mAP at 128 / 2048 bits.
  8 epochs from ImageNet (the earlier default) gave 46.07 / 56.95, at 2.7 times the training time.
  From ImageNet, 8 epochs had beaten 3 by 5.5 points at 2048 bits (``--holdout 151``). An epoch costs
  about a minute on Market-1501 on 2 CPU cores.
- ``attr_weight=3``, ``attr_balance=0.5``: the attribute term (a mean over groups) at 3 times one
  identity term, each image weighed by ``p_v ** -0.5`` of its value's training share ``p_v``
  (:func:`value_weights`; 0 weighs every image the same, 1 is class-balanced), so rare values (a hat, a
  handbag) are not learned as "always no". Chosen together on held-out identities (``--holdout 151
  --holdout-distractors 100``, warm start, 3 epochs), against the earlier ``attr_weight=1``,
  ``attr_balance=0``. mAP at 128 / 2048 bits went from 45.93 / 56.46 to 47.36 / 57.96. Full-description
  rank-1 with DeepSSH's own readout went from 21.1 / 31.7 % to 24.8 / 35.3 %.
  ``attr_balance=1`` with ``attr_weight=1`` lost 1.3 mAP and 7 rank-1 points at 128 bits. Only these
  three points were tried. ``attr_balance=0`` leaves the parameter out of the configuration, as before it
  existed.

- ``shared_top`` on by default in a run (``shared_top_default = True``; :data:`hashbench.deep.SHARED_TOP`):
  when ``hashbench run --bits`` has two or more lengths, one top is trained with a hash head per
  length and every length's cell takes its own head's codes. On held-out identities (``--holdout 151
  --holdout-distractors 100``, 3 warm epochs) it raised DeepSSH's mAP at 128 / 256 / 512 / 1024 / 2048
  bits from 45.78 / 51.79 / 54.07 / 55.23 / 56.73 (each length alone) to 50.84 / 56.61 / 59.51 / 61.19
  / 62.30, at 1.73 instead of 4.52 cell-minutes for the five cells; full-description rank-1 did not
  fall (``results/market1501/validation/shared-top/``). The same test on DBH and PDH lost 1.1 to 7.6
  points, so they keep one top per length. ``--no-shared-top`` or ``--param deepssh.shared_top=``
  trains each length alone; a constructed ``DeepSSH(bits)`` (one cell, nothing to share) has it off.

The figures behind these choices (held-out and synthetic) are in
``results/market1501/validation/deepssh.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hashbench.data import AttributeSchema
from hashbench.decoders import Decoder, check_codes
from hashbench.deep import DeepHashing, HashLayer, normalised, triplet_loss
from hashbench.errors import HashbenchError
from hashbench.method import Context, View

IDENTITY = "identity"


# -- the code layout -------------------------------------------------------------------------------------
def min_bits(n_values: int) -> int:
    """Fewest bits that give each of ``n_values`` values its own codeword (1 for a binary group)."""
    return max(1, math.ceil(math.log2(n_values)))


def semantic_layout(
    schema: AttributeSchema, bits: int, semantic_fraction: float
) -> dict[str, tuple[int, int]]:
    """Bit ranges ``(start, stop)`` of each attribute group (in schema order), then ``"identity"``.

    The semantic segment has ``round(semantic_fraction * bits)`` bits, raised to the groups' minimum
    (:func:`min_bits` each), at most ``bits - 1``; each group's share is proportional to its number of
    values (largest remainders, never below its minimum).
    """
    if len(schema) == 0:
        raise HashbenchError("deepssh: the attribute schema has no groups")
    values = np.array([len(g.values) for g in schema.groups], dtype=float)
    floor = np.array([min_bits(len(g.values)) for g in schema.groups])
    if floor.sum() > bits - 1:
        raise HashbenchError(
            f"deepssh: {bits} bits are too few for the {len(schema)} attribute groups ({floor.sum()} "
            "semantic bits at least) and an identity bit"
        )
    n_sem = min(max(round(semantic_fraction * bits), int(floor.sum())), bits - 1)
    quota = n_sem * values / values.sum()
    alloc = np.maximum(floor, np.floor(quota)).astype(int)
    while alloc.sum() > n_sem:  # the floors overshot: take from the most over-served
        over = np.where(alloc > floor, alloc - quota, -np.inf)
        alloc[int(np.argmax(over))] -= 1
    while alloc.sum() < n_sem:  # largest remainders, ties to the first group
        alloc[int(np.argmax(quota - alloc))] += 1
    layout, start = {}, 0
    for group, size in zip(schema.groups, alloc, strict=True):
        layout[group.name] = (start, start + int(size))
        start += int(size)
    layout[IDENTITY] = (start, bits)
    return layout


def codebook(n_bits: int, n_values: int) -> np.ndarray:
    """Fixed +-1 codewords (n_values, n_bits) of a multi-valued group, far apart in Hamming distance.

    Farthest-point selection (first pick: the first candidate, then the one farthest from those chosen, ties to
    the first) among all ``2^n_bits`` patterns when ``n_bits <= 10``, else among 1,024 patterns drawn with
    a fixed seed: deterministic, so the same layout always means the same codewords.
    """
    if n_bits <= 10:
        cand = ((np.arange(2**n_bits)[:, None] >> np.arange(n_bits)[::-1]) & 1).astype(np.int8)
    else:
        cand = np.random.default_rng([n_bits, n_values, 0x55A]).integers(0, 2, (1024, n_bits), dtype=np.int8)
    chosen = [0]
    dist = (cand != cand[0]).sum(1)
    for _ in range(n_values - 1):
        j = int(np.argmax(dist))
        chosen.append(j)
        dist = np.minimum(dist, (cand != cand[j]).sum(1))
    return cand[chosen].astype(np.float32) * 2.0 - 1.0


# -- network -----------------------------------------------------------------------------------------------
class AttributeReadout(nn.Module):
    """One group's attribute head on its slice ``z`` (B, s) of the relaxed code: fixed codewords.

    Binary group: one logit, ``scale * mean(z) + bias`` (all bits +1 = value 1, e.g. "yes", all -1 =
    value 0). Multi-valued group of k values: k logits, ``scale * (z . c_v) / s + bias_v`` with the fixed
    codewords ``c_v`` of :func:`codebook`. The scale (initially 4) and the biases are learned; the
    codewords are not, so the bits themselves must carry the attribute, and the code of a value is
    known: its codeword.
    """

    def __init__(self, n_bits: int, n_values: int) -> None:
        super().__init__()
        self.binary = n_values == 2
        words = np.ones((1, n_bits), np.float32) if self.binary else codebook(n_bits, n_values)
        self.register_buffer("codewords", torch.from_numpy(words))
        self.scale = nn.Parameter(torch.tensor(4.0))
        self.bias = nn.Parameter(torch.zeros(len(words)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * (z @ self.codewords.T) / z.shape[1] + self.bias

    def value_bits(self, value: int) -> np.ndarray:
        """The slice's bits (0/1) of attribute value ``value``."""
        word = self.codewords[0] * (1 if value == 1 else -1) if self.binary else self.codewords[value]
        return (word > 0).cpu().numpy().astype(np.uint8)


class SemanticHashHead(nn.Module):
    """Neck + tanh hash layer + code classifier (cosine) + per-group attribute readouts + float teacher."""

    def __init__(
        self,
        channels: int,
        bits: int,
        n_ids: int,
        slices: list[tuple[int, int]],
        n_values: list[int],
        id_scale: float,
    ) -> None:
        super().__init__()
        self.neck = nn.BatchNorm1d(channels)
        self.neck.bias.requires_grad_(False)
        self.teacher_classifier = nn.Linear(channels, n_ids, bias=False)
        nn.init.normal_(self.teacher_classifier.weight, std=0.001)
        self.hash = HashLayer(channels, bits, bn=True)
        self.code_classifier = nn.Parameter(torch.randn(n_ids, bits) * 0.01)
        self.id_scale = float(id_scale)
        self.slices = [tuple(s) for s in slices]
        self.readouts = nn.ModuleList(
            AttributeReadout(b - a, k) for (a, b), k in zip(slices, n_values, strict=True)
        )

    def attribute_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, sum of logits) attribute logits, each group's readout on its own slice of ``z``."""
        return torch.cat([r(z[:, a:b]) for (a, b), r in zip(self.slices, self.readouts, strict=True)], 1)

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        f = pooled[:, 0]
        t = self.neck(f)
        pre = self.hash(t)
        out = {"pre": pre}
        if not self.training:  # encoding needs the code only
            return out
        z = torch.tanh(pre)
        cos = F.normalize(z, dim=1) @ F.normalize(self.code_classifier, dim=1).T
        out.update(
            relaxed=z,
            logits=self.id_scale * cos,
            attr_logits=self.attribute_logits(z),
            feat=f,
            teacher=t,
            teacher_logits=self.teacher_classifier(t),
        )
        return out


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of KL(p_teacher || p_student), ``p = softmax(cos / temperature)`` over the other rows."""
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher.detach(), dim=1)
    eye = torch.eye(len(s), dtype=torch.bool, device=s.device)
    log_ps = F.log_softmax((s @ s.T / temperature).masked_fill(eye, float("-inf")), dim=1)
    log_pt = F.log_softmax((t @ t.T / temperature).masked_fill(eye, float("-inf")), dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).masked_fill(eye, 0.0)
    return kl.sum(1).mean()


# -- the method --------------------------------------------------------------------------------------------
class DeepSSH(DeepHashing):
    name = "deepssh"
    description = (
        "deep semantic structured hashing (Zhao et al. 2018): identity + attributes, attribute-tied bit "
        "segments, triplet, float-teacher distillation"
    )
    consumes = frozenset({"maps", "attributes"})
    shared_top_default = True  # the runner trains all of --bits from one top (module docstring)

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        epochs: int = 3,
        lr: float = 0.05,
        head_lr_mult: float = 1.0,
        P: int = 16,
        K: int = 4,
        semantic_fraction: float = 0.25,
        margin: float = 0.3,
        label_smoothing: float = 0.1,
        id_scale: float = 16.0,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        attr_weight: float = 3.0,
        attr_balance: float = 0.5,
        quant_weight: float = 0.1,
        balance_weight: float = 0.01,
        teacher_weight: float = 1.0,
        distill_weight: float = 1.0,
        distill_temperature: float = 0.1,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 1.0,
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
        checks = [
            (P >= 2 and K >= 2, f"P={P}, K={K}: triplets need P >= 2 identities and K >= 2 images"),
            (0.0 < semantic_fraction < 1.0, f"semantic_fraction={semantic_fraction}: expected 0 < f < 1"),
            (margin >= 0.0, f"margin={margin}: expected >= 0"),
            (0.0 <= label_smoothing < 1.0, f"label_smoothing={label_smoothing}: expected 0 <= ls < 1"),
            (id_scale > 0.0, f"id_scale={id_scale}: expected > 0"),
            (distill_temperature > 0.0, f"distill_temperature={distill_temperature}: expected > 0"),
            (lr > 0.0, f"lr={lr}: expected > 0"),
            (0.0 <= attr_balance <= 1.0, f"attr_balance={attr_balance}: expected 0 <= a <= 1"),
        ]
        weights = dict(
            id_weight=id_weight,
            triplet_weight=triplet_weight,
            attr_weight=attr_weight,
            quant_weight=quant_weight,
            balance_weight=balance_weight,
            teacher_weight=teacher_weight,
            distill_weight=distill_weight,
        )
        checks += [(w >= 0.0, f"{k}={w}: expected >= 0") for k, w in weights.items()]
        for ok, message in checks:
            if not ok:
                raise HashbenchError(f"deepssh.{message}")
        if id_weight == 0.0 and triplet_weight == 0.0 and distill_weight == 0.0:
            raise HashbenchError(
                "deepssh: id_weight, triplet_weight and distill_weight are all 0: no identity term"
            )
        self.P, self.K = int(P), int(K)
        self.semantic_fraction = float(semantic_fraction)
        self.margin = float(margin)
        self.label_smoothing = float(label_smoothing)
        self.id_scale = float(id_scale)
        for k, w in weights.items():
            setattr(self, k, float(w))
        self.distill_temperature = float(distill_temperature)
        self.attr_balance = float(attr_balance)

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters, ``attr_balance`` left out at its default 0 (earlier cells keep their hashes)."""
        params = super().get_params()
        if params.get("attr_balance", None) == 0.0:
            del params["attr_balance"]
        return params

    # -- training -------------------------------------------------------------------------------------
    def fit(self, train: View, context: Context | None = None) -> DeepSSH:
        context = context or Context()
        if train.attributes is None:
            raise HashbenchError(
                f"deepssh needs identity attributes: the view of split {train.split!r} carries none "
                "(use a dataset with an attribute table, e.g. market1501 with market_attribute.mat)"
            )
        schema = context.schema
        if schema is None:
            raise HashbenchError("deepssh needs the attribute schema in its context (context.schema)")
        if np.asarray(train.attributes).shape != (len(train), len(schema)):
            raise HashbenchError(
                f"deepssh: attributes of shape {np.asarray(train.attributes).shape} do not match "
                f"{len(train)} images x {len(schema)} schema groups"
            )
        self.schema_ = schema
        self.segments_ = semantic_layout(schema, self.bits, self.semantic_fraction)
        return super().fit(train, context)

    def build_head(self, channels: int, n_ids: int, train: View, context: Context) -> nn.Module:
        groups = self.schema_.groups
        self._kinds = [g.kind for g in groups]
        n_logits = [1 if g.kind == "binary" else len(g.values) for g in groups]
        self._offsets = np.concatenate([[0], np.cumsum(n_logits)]).tolist()
        slices = [self.segments_[g.name] for g in groups]
        self._value_weights = value_weights(train.attributes, groups, self.attr_balance)
        return SemanticHashHead(
            channels, self.bits, n_ids, slices, [len(g.values) for g in groups], self.id_scale
        )

    def attribute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Mean over groups (with a known label in the batch) of BCE / CE; and the mean accuracy."""
        losses, correct, known = [], 0.0, 0
        weights = getattr(self, "_value_weights", None) if self.attr_balance else None
        for g, kind in enumerate(self._kinds):
            lo, hi = self._offsets[g], self._offsets[g + 1]
            y = labels[:, g]
            ok = (y >= 0) & (y < hi - lo if kind != "binary" else y < 2)
            if not ok.any():
                continue
            w = None if weights is None else weights[g].to(y.device)[y[ok]]
            if kind == "binary":
                x = logits[ok, lo]
                each = F.binary_cross_entropy_with_logits(x, y[ok].float(), reduction="none")
                correct += float(((x > 0).long() == y[ok]).sum())
            else:
                x = logits[ok, lo:hi]
                each = F.cross_entropy(x, y[ok], reduction="none")
                correct += float((x.argmax(1) == y[ok]).sum())
            losses.append(each.mean() if w is None else (each * w).mean())
            known += int(ok.sum())
        if not losses:
            return logits.sum() * 0.0, float("nan")
        return torch.stack(losses).mean(), correct / known

    def loss(self, out, targets):
        y = targets["ids"]
        z = out["relaxed"]
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        if self.id_weight:
            terms["id"] = F.cross_entropy(out["logits"], y, label_smoothing=self.label_smoothing)
            stats["acc"] = float((out["logits"].argmax(1) == y).float().mean())
        if self.triplet_weight:
            terms["triplet"], stats["active"] = triplet_loss(normalised(z), y, self.margin)
        if self.attr_weight and "attributes" in targets:
            terms["attr"], acc = self.attribute_loss(out["attr_logits"], targets["attributes"])
            if not math.isnan(acc):  # a batch without any known attribute has no accuracy
                stats["attr_acc"] = acc
        if self.quant_weight:
            terms["quant"] = ((z.abs() - 1.0) ** 2).mean()
        if self.balance_weight:
            terms["balance"] = (z.mean(0) ** 2).mean()
        if self.teacher_weight:
            t_id = F.cross_entropy(out["teacher_logits"], y, label_smoothing=self.label_smoothing)
            t_tri, _ = triplet_loss(normalised(out["feat"]), y, self.margin)
            terms["teacher"] = t_id + t_tri
            stats["teacher_acc"] = float((out["teacher_logits"].argmax(1) == y).float().mean())
        if self.distill_weight:
            terms["distill"] = similarity_distillation(z, out["teacher"], self.distill_temperature)
        total = sum(getattr(self, f"{k}_weight") * v for k, v in terms.items())
        stats.update({k: float(v.detach()) for k, v in terms.items()})
        return total, stats

    # -- semantics of the code -------------------------------------------------------------------------
    def code_layout(self, schema: AttributeSchema | None = None) -> dict[str, tuple[int, int]] | None:
        """The segments of the code: ``segments_`` once fitted, else the :func:`semantic_layout` of
        ``schema`` (``None`` without one)."""
        if hasattr(self, "segments_"):
            return dict(self.segments_)
        if schema is None:
            return None
        return semantic_layout(schema, self.bits, self.semantic_fraction)

    def _group_index(self, key: int | str) -> int:
        g = self.schema_.index(key) if isinstance(key, str) else int(key)
        if not 0 <= g < len(self.schema_):
            raise HashbenchError(f"attribute group index {g}: expected 0..{len(self.schema_) - 1}")
        return g

    @torch.inference_mode()
    def predict_attributes(self, codes: np.ndarray) -> np.ndarray:
        """Attribute value codes (N, n_groups) int16 read from binary ``codes`` (N, bits) by the attribute
        heads, each on its own slice: what the semantic segment says about each image."""
        head = self.model_.head
        device = next(head.parameters()).device
        z = torch.as_tensor(np.asarray(codes, dtype=np.float32) * 2.0 - 1.0, device=device)
        logits = head.attribute_logits(z)
        out = np.empty((len(z), len(self._kinds)), dtype=np.int16)
        for g, kind in enumerate(self._kinds):
            lo, hi = self._offsets[g], self._offsets[g + 1]
            pred = logits[:, lo] > 0 if kind == "binary" else logits[:, lo:hi].argmax(1)
            out[:, g] = pred.long().cpu().numpy()
        return out

    def decoder(self, schema: AttributeSchema | None = None) -> ReadoutDecoder | None:
        """The fixed-codeword readout of the semantic segment as a decoder (:class:`ReadoutDecoder`), so
        that DeepSSH's search-by-description rows use its own readout; ``None`` before ``fit``."""
        return ReadoutDecoder(self) if hasattr(self, "model_") else None

    def attribute_code(self, query: str | Mapping[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The bits a description sets, and the mask of the bits it constrains.

        ``query``: ``"gender=female,upper_color=red"`` or ``{group name or index: value label or code}``.
        Returns ``(bits, mask)``, both ``(bits,)``: the ``uint8`` 0/1 code whose slice of each queried
        group is the value's codeword (all ones / all zeros for a binary group), and the ``bool`` mask of
        those slices. Rank a gallery by the Hamming distance on the masked bits.
        """
        if isinstance(query, str):
            items = list(self.schema_.parse(query).items())
        else:
            items = []
            for key, value in query.items():
                g = self._group_index(key)
                group = self.schema_.groups[g]
                items.append((g, group.code(value) if isinstance(value, str) else int(value)))
        code = np.zeros(self.bits, dtype=np.uint8)
        mask = np.zeros(self.bits, dtype=bool)
        for g, v in items:
            group = self.schema_.groups[g]
            if not 0 <= v < len(group.values):
                raise HashbenchError(
                    f"attribute {group.name!r}: value code {v} out of 0..{len(group.values) - 1}"
                )
            a, b = self.segments_[group.name]
            code[a:b] = self.model_.head.readouts[g].value_bits(v)
            mask[a:b] = True
        return code, mask


def value_weights(attributes, groups, balance: float) -> list[torch.Tensor]:
    """Per group, a weight per value for the attribute loss: ``p_v ** -balance`` with ``p_v`` the value's
    share of the training images with a known label (Laplace-smoothed), scaled so that the expected weight
    over the training images is 1 (the loss keeps its scale). ``balance`` 0: all 1; 1: every value weighs
    as much in total as any other (class-balanced)."""
    attributes = np.asarray(attributes)
    out = []
    for g, group in enumerate(groups):
        k = len(group.values)
        y = attributes[:, g]
        y = y[(y >= 0) & (y < k)].astype(np.int64)
        p = (np.bincount(y, minlength=k) + 1.0) / (len(y) + k)
        w = p**-balance
        out.append(torch.as_tensor(w / float(p @ w), dtype=torch.float32))
    return out


class ReadoutDecoder(Decoder):
    """DeepSSH's own decoder: each group's fixed-codeword readout (:class:`AttributeReadout`) on its slice
    of the *binary* code (bits as +-1), the logits it was trained with turned into log-posteriors
    (binary group: ``log sigmoid(+-logit)``; k values: ``log softmax``). Nothing is learned from the
    decoder's training codes: ``fit`` only checks them and keeps the training prior (for
    ``predict(balanced=True)``). The argmax is :meth:`DeepSSH.predict_attributes`; a description scores
    a code by the sum of its values' log-posteriors (as :class:`~hashbench.decoders.LogisticDecoder`).
    """

    name = "deepssh-readout"
    description = "DeepSSH's fixed-codeword readout of its semantic segment"

    def __init__(self, method: DeepSSH) -> None:
        super().__init__(method.schema_)
        self.method = method

    def fit(self, codes: np.ndarray, attributes: np.ndarray) -> ReadoutDecoder:
        codes = check_codes(codes, "training codes", self.method.bits)
        self._fit_prior(self._attributes(attributes, len(codes), "training attributes"))
        self.bits_ = self.method.bits
        return self

    @torch.inference_mode()
    def value_scores(self, codes: np.ndarray) -> np.ndarray:
        self._check_fitted()
        codes = check_codes(codes, bits=self.bits_)
        head = self.method.model_.head
        device = next(head.parameters()).device
        kinds, offsets = self.method._kinds, self.method._offsets
        out = np.empty((len(codes), int(self.offsets_[-1])))
        for s in range(0, len(codes), 4096):
            z = torch.as_tensor(codes[s : s + 4096].astype(np.float32) * 2.0 - 1.0, device=device)
            logits = head.attribute_logits(z).double()
            for g, kind in enumerate(kinds):
                lo, hi = offsets[g], offsets[g + 1]
                a = int(self.offsets_[g])
                if kind == "binary":
                    x = logits[:, lo]
                    part = torch.stack([F.logsigmoid(-x), F.logsigmoid(x)], 1)
                else:
                    part = F.log_softmax(logits[:, lo:hi], 1)
                out[s : s + 4096, a : a + part.shape[1]] = part.cpu().numpy()
        return out
