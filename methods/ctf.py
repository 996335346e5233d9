"""CtF: coarse-to-fine hashing for fast re-id (Wang, Gong, Cheng, Hou, "Faster Person Re-Identification",
ECCV 2020).

References
----------
G. Wang, S. Gong, J. Cheng, Z. Hou, "Faster Person Re-Identification", ECCV 2020 (arXiv:2008.06826;
the authors' code: github.com/wangguanan/light-reid).

The method (as in the paper)
----------------------------
One network learns codes of several lengths at once (the paper's "All-in-One" framework: a pyramid of
codes, e.g. 2048 down to 32 bits, each trained with the identity losses, the shorter ones also taught to
mimic the longest by self-distillation). Search is coarse to fine: a short code ranks the whole gallery
cheaply, the long code re-ranks only the top candidates.

Here (documented choices)
-------------------------
- Codes are *nested prefixes* of one code (the paper uses a pyramid of separate projections, each from
  the longer code's features): the code of length ``L`` is the first ``L`` bits of the ``bits``-bit code,
  for the lengths ``bits/8, bits/4, bits/2, bits`` (``levels=4``; :func:`code_lengths`). So ``encode``
  returns the full ``bits``-bit code (the method contract) and every shorter code is a slice of it: a
  gallery stored once serves every stage of the search.
- Network: the backbone's top (MobileNetV2 blocks 14-18 on the cached block-13 maps, fresh ImageNet
  copy; ``finetune="full"``: the whole backbone from pixels) -> global average pooling -> one hash layer
  ``z = BN(W x)`` (:class:`~hashbench.deep.HashLayer`, ``bn=True`` as DBH), relaxed ``tanh(z)``
  (the authors' codes are ``tanh`` of batch-normalised features too); the code is ``z > 0``.
- Losses, for every length ``L`` (mean over the lengths): identity softmax cross-entropy of a linear
  classifier on the relaxed prefix (``label_smoothing=0.1``; its step scaled by ``128 / L``, at most 1,
  as DBH's classifier) + ``triplet_weight`` x batch-hard triplet on the L2-normalised relaxed prefix
  (distance ``2 - 2 cos``, ``margin=0.3``); plus ``distill_weight`` x self-distillation of every shorter
  prefix from the full code (teacher detached), as the authors' code: the mean squared difference of
  the row-normalised batch similarity matrices, and the symmetric KL divergence of the classifiers'
  softmax outputs.
- P x K identity-balanced batches (``P=16`` x ``K=4``, :func:`~hashbench.deep.pk_batches`), for the
  triplets.
- Search (:func:`coarse_to_fine_search`): the first stage ranks the gallery by the Hamming distance of
  the shortest prefix; each later stage re-ranks the first ``top_k`` of the ranking so far by a longer
  prefix (ties by gallery index, as every ranking of hashbench), the rest keeps its order. Within the
  re-ranked top-k the order is exactly the full-length Hamming ranking of those candidates, at a cost
  of ``n_gallery x L_short + top_k x bits`` bit comparisons per query instead of ``n_gallery x bits``
  (:func:`search_cost`). The paper picks the candidates by a learned distance threshold per stage
  ("Distance Threshold Optimization"); a fixed ``top_k`` is used here.
- The runner ranks every method's full codes with the usual Hamming search, so CtF's results rows and
  timing columns are the full-length search (comparable with every other row). Its coarse-to-fine
  search is measured on finished cells by ``hashbench cascade`` (:mod:`hashbench.cascade`): mAP,
  rank-1, ms per query and bits compared of the full code, the prefix alone and the cascade at each
  top-k, beside the same searches of any other method's prefixes.
- Optimisation as DBH: SGD with Nesterov momentum, ``lr=0.05``, new layers at 10 x, weight decay 5e-4,
  half an epoch of warm-up then cosine decay, horizontal flips; ``epochs`` (below).
- ``init="ide"``, ``epochs=2``, chosen on held-out training identities of Market-1501
  (``--holdout 151 --holdout-distractors 100``, never the test split). Starting from the IDE stage's
  trained top, 2 epochs gave 47.91 / 60.35 mAP at 128 / 2048 bits. 3 epochs from ImageNet gave
  40.52 / 53.56, at about 1.5 times the training time.
  Only the start and the epochs (and DPSH's ``theta_scale``) were tuned. The other values come from
  the paper, its code and the DBH recipe, checked to train on the synthetic set. The figures are in
  ``results/market1501/validation/README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hashbench.deep import DeepHashing, HashLayer, normalised, triplet_loss
from hashbench.errors import HashbenchError
from hashbench.method import Context, View
from hashbench.search import coarse_to_fine_cost, coarse_to_fine_rank, pack_codes


def code_lengths(bits: int, levels: int) -> tuple[int, ...]:
    """The nested code lengths, shortest first: ``bits / 2^(levels - 1), ..., bits / 2, bits`` (floored,
    at least 1, repeats dropped)."""
    if levels < 1:
        raise HashbenchError(f"ctf.levels={levels}: expected at least 1")
    return tuple(sorted({max(1, bits >> j) for j in range(levels)}))


# -- search ---------------------------------------------------------------------------------------------
def coarse_to_fine_search(
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    lengths: Sequence[int],
    top_k: int | Sequence[int],
    chunk: int = 256,
    backend: str = "auto",
) -> np.ndarray:
    """Rank the gallery for each query coarse to fine over nested code prefixes
    (:func:`hashbench.search.coarse_to_fine_rank` on the packed codes).

    Parameters
    ----------
    query_codes, gallery_codes : np.ndarray
        (nq, bits) and (ng, bits) 0/1 codes whose first ``L`` bits are the code of length ``L``.
    lengths : sequence of int
        Prefix lengths, strictly rising: the first ranks the whole gallery, each next one re-ranks the
        top candidates.
    top_k : int or sequence of int
        Candidates re-ranked at each stage after the first (one value for all, or one per stage,
        non-increasing); clipped to the gallery size.
    chunk : int
        Query rows per block (memory: ``chunk x top_k x bytes`` at a stage).
    backend : str
        Hamming backend of the first stage (every backend ranks identically).

    Returns
    -------
    np.ndarray
        (nq, ng) int32 gallery indices, nearest first: the first ``top_k`` (of the last stage) in the
        order of the longest prefix's Hamming distance (ties by gallery index), the others in the order of
        the stage that last ranked them.
    """
    q = np.asarray(query_codes, dtype=np.uint8)
    g = np.asarray(gallery_codes, dtype=np.uint8)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise HashbenchError(f"coarse-to-fine search: codes of shapes {q.shape} and {g.shape}")
    return coarse_to_fine_rank(
        pack_codes(q), pack_codes(g), q.shape[1], lengths, top_k, backend=backend, chunk=chunk
    )


search_cost = coarse_to_fine_cost  # bits compared per query (``n_gallery x bits`` for a full search)


# -- the method ---------------------------------------------------------------------------------------
class PyramidHead(nn.Module):
    """One hash layer; an identity classifier on each nested prefix of its relaxed code."""

    def __init__(self, channels: int, bits: int, lengths: Sequence[int], n_ids: int, bn: bool) -> None:
        super().__init__()
        self.lengths = tuple(int(n) for n in lengths)
        self.hash = HashLayer(channels, bits, bn)
        self.classifiers = nn.ModuleList(nn.Linear(n, n_ids) for n in self.lengths)
        for c in self.classifiers:
            nn.init.normal_(c.weight, std=0.01)
            nn.init.zeros_(c.bias)

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        pre = self.hash(pooled[:, 0])
        z = torch.tanh(pre)
        out = {"pre": pre, "relaxed": z}
        for n, classifier in zip(self.lengths, self.classifiers, strict=True):
            out[f"logits{n}"] = classifier(z[:, :n])
        return out


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the row-normalised batch similarity matrices (teacher detached)."""
    s = F.normalize(student @ student.T, dim=1)
    t = F.normalize((teacher @ teacher.T).detach(), dim=1)
    return (s - t).pow(2).mean()


def probability_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence between the softmax outputs (teacher detached), mean over the batch."""
    log_s, log_t = F.log_softmax(student, dim=1), F.log_softmax(teacher.detach(), dim=1)
    kl_ts = (log_t.exp() * (log_t - log_s)).sum(1)
    kl_st = (log_s.exp() * (log_s - log_t)).sum(1)
    return (kl_ts + kl_st).mean()


class CtF(DeepHashing):
    name = "ctf"
    description = "coarse-to-fine hashing (Wang et al. 2020): nested codes bits/8..bits, self-distillation"
    sampler = "pk"  # P x K identity-balanced batches, for the triplets

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        epochs: int = 2,
        lr: float = 0.05,
        head_lr_mult: float = 10.0,
        P: int = 16,
        K: int = 4,
        levels: int = 4,
        triplet_weight: float = 1.0,
        margin: float = 0.3,
        distill_weight: float = 1.0,
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
        if P < 2 or K < 2:
            raise HashbenchError(f"ctf: P={P}, K={K}: triplets need P >= 2 identities and K >= 2 images")
        if triplet_weight < 0 or distill_weight < 0:
            raise HashbenchError(
                f"ctf: triplet_weight={triplet_weight}, distill_weight={distill_weight}: expected >= 0"
            )
        self.P, self.K = int(P), int(K)
        self.levels = int(levels)
        self.lengths = code_lengths(bits, self.levels)
        self.triplet_weight = float(triplet_weight)
        self.margin = float(margin)
        self.distill_weight = float(distill_weight)
        self.label_smoothing = float(label_smoothing)
        self.bn = bool(bn)

    def build_head(self, channels: int, n_ids: int, train: View, context: Context) -> nn.Module:
        return PyramidHead(channels, self.bits, self.lengths, n_ids, self.bn)

    def head_param_groups(self, head: PyramidHead) -> list[dict]:
        lr = self.lr * self.head_lr_mult  # a classifier's fan-in is its code length (see DBH)
        groups = [{"params": list(head.hash.parameters()), "lr": lr}]
        for n, classifier in zip(head.lengths, head.classifiers, strict=True):
            groups.append({"params": list(classifier.parameters()), "lr": lr * min(1.0, 128 / n)})
        return groups

    def loss(self, out, targets):
        y, z = targets["ids"], out["relaxed"]
        full = self.lengths[-1]
        ce, tri, sim, prob = [], [], [], []
        for n in self.lengths:
            logits = out[f"logits{n}"]
            ce.append(F.cross_entropy(logits, y, label_smoothing=self.label_smoothing))
            if self.triplet_weight:
                tri.append(triplet_loss(normalised(z[:, :n]), y, self.margin, "hard")[0])
            if self.distill_weight and n != full:
                sim.append(similarity_distillation(z[:, :n], z))
                prob.append(probability_distillation(logits, out[f"logits{full}"]))
        loss = torch.stack(ce).mean()
        stats = {"id": float(loss.detach())}
        if tri:
            t = torch.stack(tri).mean()
            loss = loss + self.triplet_weight * t
            stats["triplet"] = float(t.detach())
        if sim:
            d = torch.stack(sim).mean() + torch.stack(prob).mean()
            loss = loss + self.distill_weight * d
            stats["distill"] = float(d.detach())
        return loss, stats

    def search(self, query_codes: np.ndarray, gallery_codes: np.ndarray, top_k: int = 100) -> np.ndarray:
        """:func:`coarse_to_fine_search` of this method's codes: the shortest prefix ranks the gallery,
        the full code re-ranks its ``top_k`` first."""
        lengths = sorted({self.lengths[0], self.bits})
        return coarse_to_fine_search(query_codes, gallery_codes, lengths, top_k)
