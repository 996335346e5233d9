"""Deep hashing (hashbench/deep.py, DBH, PDH): sampler, strips, losses, training, part codes, finetune=full."""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
import torch

from hashbench.backbones.mobilenetv2 import MobileNetV2
from hashbench.deep import (
    DeepHashing,
    HashLayer,
    inference_copy,
    make_body,
    normalised,
    pk_batches,
    random_batches,
    region_rows,
    split_bits,
    triplet_loss,
)
from hashbench.errors import HashbenchError
from hashbench.features import ImageSource
from hashbench.method import Context, View, check_codes
from hashbench.runner import RunConfig, make_method
from hashbench_methods.dbh import DBH
from hashbench_methods.deepssh import DeepSSH
from hashbench_methods.pdh import PAPER_STRIPS, PDH

MAPS = frozenset({"maps"})


# -- shared machinery ---------------------------------------------------------------------------------
def test_pk_batches_balanced_and_covering():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 30])
    batches = pk_batches(labels, 4, 3, np.random.default_rng(0))
    assert batches
    for b in batches:
        ids, counts = np.unique(labels[b], return_counts=True)
        assert len(b) == 12 and len(ids) == 4 and (counts == 3).all()
        assert (np.diff(b) >= 0).all()  # sorted, for memory-mapped reads
    seen = np.unique(np.concatenate(batches))
    assert len(seen) >= 0.6 * len(labels)  # about every image once per epoch
    again = pk_batches(labels, 4, 3, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    with pytest.raises(HashbenchError):
        pk_batches(labels, 11, 2, np.random.default_rng(0))


class Bare(DeepHashing):
    """A deep method that declares the default sampler ("pk") but has no P, K hyperparameters."""

    name = "bare"

    def __init__(self, bits, seed=0, finetune="top"):
        super().__init__(
            bits,
            seed,
            epochs=1,
            lr=0.1,
            head_lr_mult=1.0,
            weight_decay=0.0,
            warmup_epochs=0.0,
            flip=False,
            finetune=finetune,
        )

    def build_head(self, channels, n_ids, train, context):
        return HashLayer(channels, self.bits)

    def loss(self, out, targets):
        return out["pre"].sum(), {}


def test_the_sampler_is_declared():
    assert DeepHashing.sampler == "pk" and PDH.sampler == "pk" and DBH.sampler == "random"
    labels = np.repeat(np.arange(20), 5)
    for method, expected in [
        (PDH(bits=32, P=4, K=3), lambda rng: pk_batches(labels, 4, 3, rng)),
        (DBH(bits=32, batch_size=16), lambda rng: random_batches(len(labels), 16, rng)),
    ]:
        got = method.batches(labels, np.random.default_rng(5))
        want = expected(np.random.default_rng(5))
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    view = View("train", labels, np.zeros_like(labels), maps=np.zeros((100, 4, 2, 2), np.float16))
    # a "pk" method without P, K stops in one line, before any work (here: before the missing backbone)
    with pytest.raises(
        HashbenchError, match=r"^bare: sampler 'pk' needs the hyperparameter\(s\) P, K"
    ) as err:
        Bare(bits=16).fit(view, Context())
    assert "\n" not in str(err.value)
    odd = Bare(bits=16)
    odd.sampler = "shuffled"
    with pytest.raises(HashbenchError, match="sampler 'shuffled': expected one of 'pk', 'random'"):
        odd.fit(view, Context())
    odd.sampler = "custom"  # declared, but batches() is not overridden
    with pytest.raises(HashbenchError, match="sampler 'custom' declared, but batches"):
        odd.batches(labels, np.random.default_rng(0))


def test_paper_strips_on_maps_and_images():
    # trunk maps of 256x128 (16 rows) and 128x64 (8 rows) inputs, and a 128-row image: rows 1-48, 33-80, ...
    assert region_rows(16, PAPER_STRIPS) == [(0, 6), (4, 10), (6, 12), (10, 16)]
    assert region_rows(8, PAPER_STRIPS) == [(0, 3), (2, 5), (3, 6), (5, 8)]
    assert region_rows(128, PAPER_STRIPS) == [(0, 48), (32, 80), (48, 96), (80, 128)]
    assert region_rows(3, [(0.0, 0.1)]) == [(0, 1)]  # never empty
    assert split_bits(2048, 4) == [512] * 4 and split_bits(10, 4) == [3, 3, 2, 2]


def _brute_triplets(z, y, margin):
    d = ((z[:, None] - z[None]) ** 2).sum(-1) / z.shape[1]
    all_losses, hard = [], []
    for a in range(len(z)):
        pos = [p for p in range(len(z)) if y[p] == y[a] and p != a]
        neg = [n for n in range(len(z)) if y[n] != y[a]]
        all_losses += [max(0.0, margin + d[a, p] - d[a, n]) for p, n in itertools.product(pos, neg)]
        hard.append(max(0.0, margin + max(d[a, pos]) - min(d[a, neg])))
    all_losses = np.array(all_losses)
    return np.mean(hard), all_losses[all_losses > 0].mean()


def test_triplet_loss_matches_brute_force():
    rng = np.random.default_rng(1)
    z = rng.random((12, 8))
    y = np.repeat(np.arange(4), 3)
    hard, batch_all = _brute_triplets(z, y, 0.2)
    zt, yt = torch.tensor(z), torch.tensor(y)
    assert triplet_loss(zt, yt, 0.2, "hard")[0].item() == pytest.approx(hard)
    assert triplet_loss(zt, yt, 0.2, "all")[0].item() == pytest.approx(batch_all)
    separated = torch.tensor(np.repeat(np.eye(4), 3, axis=0))  # each id its own corner: loss 0
    assert triplet_loss(separated, yt, 0.2, "hard")[0].item() == 0.0


def test_hyperparameters_and_finetune_injection():
    warm = MAPS | {"ide"}  # the default start: the IDE stage's top
    assert PDH(bits=128).consumes == warm and DBH(bits=128).consumes == warm
    assert PDH(bits=128, init="imagenet").consumes == MAPS
    assert PDH(bits=128, finetune="full").consumes == frozenset({"images", "ide"})
    assert PDH.consumes == MAPS  # the class attribute is untouched
    with pytest.raises(HashbenchError):
        DBH(bits=128, finetune="half")
    with pytest.raises(HashbenchError):
        PDH(bits=128, K=1)
    method = make_method(PDH, 256, RunConfig(finetune="full", method_params={"pdh": {"epochs": 1}}))
    assert method.finetune == "full" and method.epochs == 1 and method.get_params()["finetune"] == "full"
    for cls in (DBH, PDH, DeepSSH):  # finetune is declared a run option, and is a hyperparameter
        assert cls.run_options == frozenset({"finetune"}) <= set(inspect.signature(cls.__init__).parameters)


def test_make_body_takes_the_cut_from_the_context():
    backbone = MobileNetV2(weights="none")
    n = len(backbone.stages())

    def top_stages(context):
        body, channels, trunk_params = make_body(context, "top")
        assert channels == backbone.out_channels and trunk_params == []
        return len(body)

    assert Context().cut is None and Context().finetune == "top"
    assert top_stages(Context(backbone=backbone)) == n - backbone.cuts[backbone.default_cut]
    assert top_stages(Context(backbone=backbone, cut="block16")) == n - backbone.cuts["block16"]
    assert top_stages(Context(backbone=backbone, extras={"cut": "block10"})) == n - backbone.cuts["block10"]
    both = Context(backbone=backbone, cut="block16", extras={"cut": "block10"})  # the field wins
    assert top_stages(both) == n - backbone.cuts["block16"]
    body, _, trunk_params = make_body(Context(backbone=backbone, cut="block6"), "full")
    assert len(body[0]) == backbone.cuts["block6"] and len(body[1]) == n - backbone.cuts["block6"]
    assert trunk_params and all(p.requires_grad for p in trunk_params)
    with pytest.raises(HashbenchError, match="unknown cut 'nope'"):
        make_body(Context(backbone=backbone, cut="nope"), "top")


def test_pdh_head_step_scales_with_the_part_length():
    """Each unit's triplet gradient is 1 / part length: ``scale_head_lr`` gives the hash branches a step
    that grows with it, so their per-unit dynamics are the same at every code length."""

    def head_lrs(bits, **hp):
        method = PDH(bits=bits, **hp)
        head = method.build_head(16, 10, None, None)
        return [g["lr"] for g in method.head_param_groups(head)]

    base = PDH(bits=128).lr * PDH(bits=128).head_lr_mult
    assert head_lrs(128, scale_head_lr=True) == [pytest.approx(base)]  # 32 bits a part: the reference
    assert head_lrs(2048, scale_head_lr=True) == [pytest.approx(16 * base)]  # 512 bits a part
    assert head_lrs(2048, scale_head_lr=False) == [pytest.approx(base)]
    with pytest.raises(HashbenchError, match="feature_weight"):
        PDH(bits=128, feature_weight=-1)


def test_pdh_feature_triplet_is_per_part_and_optional():
    torch.manual_seed(0)
    y = torch.arange(4).repeat_interleave(4)
    pooled = torch.randn(16, 4, 8)
    head = PDH(bits=64).build_head(8, 4, None, None)
    out = head(pooled)
    assert out["feat"] is pooled
    with_feat, stats = PDH(bits=64, feature_weight=1.0).loss(out, {"ids": y})
    without, stats0 = PDH(bits=64, feature_weight=0.0).loss(out, {"ids": y})
    assert "feat" in stats and "feat" not in stats0
    parts = [triplet_loss(normalised(pooled[:, j]), y, 0.3, "hard")[0] for j in range(4)]
    assert with_feat.item() == pytest.approx(without.item() + torch.stack(parts).mean().item(), rel=1e-5)


# -- training on the synthetic set ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def dbh64(synthetic_bench):
    return DBH(bits=64, epochs=4).fit(synthetic_bench.view("train", MAPS), synthetic_bench.context())


@pytest.fixture(scope="module")
def pdh64(synthetic_bench):
    return PDH(bits=64, epochs=3, part_mode="crop").fit(
        synthetic_bench.view("train", MAPS), synthetic_bench.context()
    )


@pytest.mark.parametrize("name", ["dbh64", "pdh64"])
def test_training_lowers_the_loss_and_codes_retrieve(name, request, synthetic_bench):
    method = request.getfixturevalue(name)
    losses = [h["loss"] for h in method.history_]
    assert losses[-1] < 0.95 * losses[0], losses
    query = synthetic_bench.view("query", MAPS)
    codes = check_codes(method.encode(query), len(query), 64, method.name)
    assert 0.2 < codes.mean() < 0.8
    assert synthetic_bench.score(method) > 10.0  # chance is about 2 % mAP


def test_encoding_folds_batchnorm_and_keeps_the_function(pdh64, synthetic_bench):
    model = pdh64.model_
    fast = inference_copy(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.body.modules())
    assert n_bn > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.body.modules())
    assert (
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.body.modules()) == n_bn
    )  # trained net intact
    assert fast.head is model.head and fast.region_mode == model.region_mode
    x = torch.from_numpy(np.asarray(synthetic_bench.view("query", MAPS).maps[:64], dtype=np.float32))
    with torch.inference_mode():
        a, b = model.eval()(x)["pre"], fast(x)["pre"]
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert ((a > 0) != (b > 0)).float().mean() < 1e-3


def test_same_seed_same_codes(synthetic_bench):
    train = synthetic_bench.view("train", MAPS)
    small = train.subset(np.flatnonzero(train.pids <= np.unique(train.pids)[9]))  # 10 identities
    query = synthetic_bench.view("query", MAPS).subset(np.arange(40))
    ctx = synthetic_bench.context()
    a = PDH(bits=32, epochs=1, P=4, seed=3).fit(small, ctx).encode(query)
    b = PDH(bits=32, epochs=1, P=4, seed=3).fit(small, ctx).encode(query)
    c = PDH(bits=32, epochs=1, P=4, seed=4).fit(small, ctx).encode(query)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _changed_bits_per_part(method, maps, rows):
    """Bits of each part that change when map ``rows`` of every image are replaced by another image's."""
    pids = np.zeros(len(maps), int)
    before = method.encode(View("query", pids, pids, maps=maps))
    edited = maps.copy()
    edited[:, :, rows] = np.roll(maps, 1, axis=0)[:, :, rows]
    after = method.encode(View("query", pids, pids, maps=edited))
    return [int((before[:, s] != after[:, s]).sum()) for s in method.part_slices()]


def test_pdh_code_is_the_concatenation_of_part_codes(pdh64, synthetic_bench):
    maps = np.asarray(synthetic_bench.view("query", MAPS).maps[:64])
    # strips on map rows 0-2, 2-4, 3-5, 5-7: rows 0-1 are only in part 0, rows 6-7 only in part 3
    assert maps.shape[2] == 8
    first = _changed_bits_per_part(pdh64, maps, slice(0, 2))
    last = _changed_bits_per_part(pdh64, maps, slice(6, 8))
    assert first[0] > 0 and first[1:] == [0, 0, 0], first
    assert last[3] > 0 and last[:3] == [0, 0, 0], last
    # part_mode="pool": the parts see each other through the top's receptive field, but a strip's own
    # part still changes most
    pdh64.model_.region_mode = "pool"
    try:
        pooled = _changed_bits_per_part(pdh64, maps, slice(0, 2))
    finally:
        pdh64.model_.region_mode = "crop"
    assert pooled[0] > max(pooled[1:]), pooled


# -- finetune="full": the whole backbone from pixels ---------------------------------------------------
@pytest.mark.parametrize("cls", [DBH, PDH])
def test_finetune_full_one_step_on_tiny_images(cls, synthetic_bench):
    prep = synthetic_bench.prepared
    arrays = prep.splits.arrays["train"]
    index = np.concatenate([np.flatnonzero(arrays.pids == p)[:2] for p in np.unique(arrays.pids)[:2]])
    records = [prep.splits.records["train"][i] for i in index]
    images = ImageSource(prep.dataset, records, (64, 32))  # tiny images: 4 x 2 trunk maps
    view = View("train", arrays.pids[index], arrays.camids[index], images=images)
    hp = {"batch_size": 4} if cls is DBH else {"P": 2, "K": 2}
    method = cls(bits=16, epochs=1, finetune="full", **hp)
    assert method.consumes == frozenset({"images", "ide"})  # pixels, and the IDE top to start from
    ctx = synthetic_bench.context()
    trunk_before = [p.detach().clone() for p in ctx.backbone.trunk(ctx.cut).parameters()]
    method.fit(view, ctx)
    assert len(method.history_) == 1 and np.isfinite(method.history_[0]["loss"])
    trunk_after = list(method.model_.body[0].parameters())
    assert len(trunk_after) == len(trunk_before)
    assert any(not torch.equal(a, b) for a, b in zip(trunk_after, trunk_before, strict=True))  # trunk trained
    shared = ctx.backbone.trunk(ctx.cut).parameters()
    assert all(torch.equal(a, b) for a, b in zip(shared, trunk_before, strict=True))  # the backbone is not
    codes = check_codes(method.encode(view), len(view), 16, method.name)
    assert codes.shape == (4, 16)
