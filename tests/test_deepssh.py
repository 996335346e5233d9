"""DeepSSH (methods/deepssh.py): code layout, training, semantic segments, attribute codes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashbench.data import AttributeGroup, AttributeSchema
from hashbench.errors import HashbenchError
from hashbench.features import ImageSource
from hashbench.method import View, check_codes
from hashbench.runner import RunConfig, make_method
from hashbench_methods.deepssh import IDENTITY, DeepSSH, codebook, semantic_layout, value_weights
from hashbench_methods.lsh import LSH

MAPS = frozenset({"maps", "attributes"})


def schema_of(sizes: dict[str, int]) -> AttributeSchema:
    return AttributeSchema(
        tuple(AttributeGroup(n, tuple(f"v{i}" for i in range(k)), (n,)) for n, k in sizes.items())
    )


# Market-1501's groups (Lin et al.): 9 binary, age 4, upper_color 8, lower_color 9; a DukeMTMC-like one
MARKET = schema_of(
    {
        **dict.fromkeys(["gender", "hair", "sleeve", "lower_length", "lower_type", "hat"], 2),
        **dict.fromkeys(["backpack", "bag", "handbag"], 2),
        "age": 4,
        "upper_color": 8,
        "lower_color": 9,
    }
)
DUKE = schema_of({**dict.fromkeys(["backpack", "bag", "handbag", "boots", "gender", "hat", "shoes", "top"], 2),
                  "upper_color": 8, "lower_color": 7})  # fmt: skip


def check_tiling(layout: dict[str, tuple[int, int]], schema: AttributeSchema, bits: int) -> None:
    assert list(layout) == [*schema.names, IDENTITY]
    covered = np.zeros(bits, int)
    for a, b in layout.values():
        covered[a:b] += 1
    assert (covered == 1).all()
    assert all(b > a for n, (a, b) in layout.items() if n != IDENTITY)


# -- layout ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema", [MARKET, DUKE], ids=["market", "duke"])
@pytest.mark.parametrize("bits", [32, 64, 128, 256, 2048])
def test_layout_tiles_the_code(schema, bits):
    layout = semantic_layout(schema, bits, 0.25)
    check_tiling(layout, schema, bits)
    n_sem = layout[IDENTITY][0]
    assert n_sem == max(round(0.25 * bits), 18 if schema is MARKET else 14)
    for g in schema.groups:  # every value has its own codeword
        a, b = layout[g.name]
        assert 2 ** (b - a) >= len(g.values) or g.kind == "binary"


def test_layout_sizes_follow_the_number_of_values():
    layout = semantic_layout(MARKET, 2048, 0.25)
    size = {n: b - a for n, (a, b) in layout.items()}
    assert size[IDENTITY] == 1536
    assert size["lower_color"] > size["upper_color"] > size["age"] > size["gender"]
    with pytest.raises(HashbenchError, match="too few"):
        semantic_layout(MARKET, 16, 0.25)


def test_codebook_separates_values():
    for n_bits, k in [(2, 4), (3, 8), (7, 9), (118, 9)]:
        words = codebook(n_bits, k)
        assert words.shape == (k, n_bits) and set(np.unique(words)) <= {-1.0, 1.0}
        assert len({w.tobytes() for w in words}) == k
        assert np.array_equal(words, codebook(n_bits, k))  # fixed
    far = codebook(118, 9)
    hamming = (far[:, None] != far[None]).sum(-1) + np.eye(9, dtype=int) * 118
    assert hamming.min() > 40


# -- training on the synthetic set -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssh64(synthetic_bench):
    method = DeepSSH(bits=64, epochs=6, attr_weight=3.0)
    return method.fit(synthetic_bench.view("train", MAPS), synthetic_bench.context())


def test_training_lowers_the_loss_and_codes_retrieve(ssh64, synthetic_bench):
    first, last = ssh64.history_[0], ssh64.history_[-1]
    assert last["loss"] < 0.6 * first["loss"], (first, last)
    assert last["attr"] < first["attr"] and last["id"] < first["id"]
    query = synthetic_bench.view("query", MAPS)
    codes = check_codes(ssh64.encode(query), len(query), 64, "deepssh")
    assert 0.2 < codes.mean() < 0.8
    assert synthetic_bench.score(ssh64) > 25.0  # chance is about 2 % mAP; DBH about 25 at 64 bits


def test_segments_cover_every_bit_and_every_group(ssh64, synthetic_bench):
    schema = synthetic_bench.context().schema
    check_tiling(ssh64.segments_, schema, 64)
    assert ssh64.segments_[IDENTITY] == (18, 64)  # 0.25 x 64 = 16, raised to the 18 the groups need


def test_code_layout_is_the_fitted_segments_else_the_layout_of_the_schema(ssh64, synthetic_bench):
    schema = synthetic_bench.context().schema
    assert ssh64.code_layout() == ssh64.segments_ == ssh64.code_layout(MARKET)  # fitted: its own
    starts = [a for a, _ in ssh64.code_layout().values()]
    assert starts == sorted(starts) and starts[0] == 0  # in bit order
    fresh = DeepSSH(bits=128, semantic_fraction=0.3)
    assert fresh.code_layout() is None and not hasattr(fresh, "segments_")
    assert fresh.code_layout(MARKET) == semantic_layout(MARKET, 128, 0.3)
    assert DeepSSH(bits=64).code_layout(schema) == ssh64.segments_  # what fit would use
    assert LSH(bits=64).code_layout(schema) is None  # the default: no named parts


def test_semantic_segment_predicts_attributes(ssh64, synthetic_bench):
    views = [synthetic_bench.view(s, MAPS) for s in ("query", "gallery")]
    truth = np.concatenate([v.attributes for v in views])
    pred = ssh64.predict_attributes(np.concatenate([ssh64.encode(v) for v in views]))
    above, informative = [], 0
    for g in range(truth.shape[1]):
        known = truth[:, g] >= 0
        majority = np.bincount(truth[known, g]).max() / known.sum()
        if majority >= 0.9:  # nearly constant on the test ids: no room above the baseline
            continue
        informative += 1
        above.append((pred[known, g] == truth[known, g]).mean() > majority)
    assert informative >= 8 and sum(above) > informative / 2, above


def test_predictions_read_only_the_groups_slice(ssh64):
    codes = np.random.default_rng(0).integers(0, 2, (50, 64), dtype=np.uint8)
    before = ssh64.predict_attributes(codes)
    a, b = ssh64.segments_["upper_color"]
    edited = codes.copy()
    edited[:, :a] ^= 1
    edited[:, b:] ^= 1
    after = ssh64.predict_attributes(edited)
    g = ssh64.schema_.index("upper_color")
    assert np.array_equal(before[:, g], after[:, g])


def test_attribute_code_retrieves_the_described_people(ssh64, synthetic_bench):
    schema = ssh64.schema_
    code, mask = ssh64.attribute_code("upper_color=red,gender=female")
    for name in ("upper_color", "gender"):
        a, b = ssh64.segments_[name]
        assert mask[a:b].all()
    assert mask.sum() == sum(b - a for n, (a, b) in ssh64.segments_.items() if n in ("upper_color", "gender"))
    a, b = ssh64.segments_["gender"]
    assert (code[a:b] == 1).all()  # binary group: all ones for value 1 ("female")
    same, _ = ssh64.attribute_code({"upper_color": schema.group("upper_color").code("red"), 0: 1})
    assert np.array_equal(same, code)
    # rank the gallery by the masked Hamming distance of the red-clad description: the nearest wear red far
    # more often than chance. The distance over a few bits ties widely, so "the nearest" are all images at
    # or below the 20th smallest distance (a top-20 by gallery order would be one or two identities);
    # upper_color is what the synthetic set shows plainly (its gender cue is faint: the conjunction with
    # gender=female is at chance on this 60-identity set, whatever the trunk engine)
    code, mask = ssh64.attribute_code("upper_color=red")
    gallery = synthetic_bench.view("gallery", MAPS)
    dist = ((ssh64.encode(gallery) != code) & mask).sum(1)
    want = gallery.attributes[:, schema.index("upper_color")] == schema.group("upper_color").code("red")
    near = dist <= np.sort(dist)[19]
    assert want[near].mean() > 2 * want.mean(), (want[near].mean(), want.mean(), near.sum())
    with pytest.raises(HashbenchError, match="upper_color"):
        ssh64.attribute_code("upper_color=chartreuse")


def test_same_seed_same_codes(synthetic_bench):
    train = synthetic_bench.view("train", MAPS)
    small = train.subset(np.flatnonzero(train.pids <= np.unique(train.pids)[9]))  # 10 identities
    query = synthetic_bench.view("query", MAPS).subset(np.arange(40))
    ctx = synthetic_bench.context()
    a = DeepSSH(bits=32, epochs=1, P=4, seed=3).fit(small, ctx).encode(query)
    b = DeepSSH(bits=32, epochs=1, P=4, seed=3).fit(small, ctx).encode(query)
    c = DeepSSH(bits=32, epochs=1, P=4, seed=4).fit(small, ctx).encode(query)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -- inputs and errors -----------------------------------------------------------------------------------
def test_consumes_and_finetune_injection():
    assert (
        DeepSSH(bits=128).consumes == MAPS | {"ide"} and DeepSSH(bits=128, init="imagenet").consumes == MAPS
    )
    full = DeepSSH(bits=128, finetune="full")
    assert full.consumes == frozenset({"images", "attributes", "ide"}) and DeepSSH.consumes == MAPS
    method = make_method(DeepSSH, 256, RunConfig(finetune="full", method_params={"deepssh": {"epochs": 2}}))
    assert (
        method.finetune == "full" and method.epochs == 2 and method.get_params()["semantic_fraction"] == 0.25
    )


@pytest.mark.parametrize(
    "params",
    [
        {"semantic_fraction": 0.0},
        {"semantic_fraction": 1.0},
        {"P": 1},
        {"K": 1},
        {"margin": -0.1},
        {"attr_weight": -1.0},
        {"attr_balance": -0.5},
        {"attr_balance": 1.5},
        {"distill_temperature": 0.0},
        {"id_scale": 0.0},
        {"label_smoothing": 1.0},
        {"id_weight": 0.0, "triplet_weight": 0.0, "distill_weight": 0.0},
        {"finetune": "half"},
        {"epochs": 0},
    ],
)
def test_bad_hyperparameters_give_one_line_errors(params):
    with pytest.raises(HashbenchError) as err:
        DeepSSH(bits=128, **params)
    assert "\n" not in str(err.value)


def test_a_view_without_attributes_is_refused(synthetic_bench):
    train = synthetic_bench.view("train", frozenset({"maps"}))
    with pytest.raises(HashbenchError, match="attributes") as err:
        DeepSSH(bits=64, epochs=1).fit(train, synthetic_bench.context())
    assert "\n" not in str(err.value)
    ctx = synthetic_bench.context()
    ctx.schema = None
    with pytest.raises(HashbenchError, match="schema"):
        DeepSSH(bits=64, epochs=1).fit(synthetic_bench.view("train", MAPS), ctx)
    with pytest.raises(HashbenchError, match="too few"):
        DeepSSH(bits=16, epochs=1).fit(synthetic_bench.view("train", MAPS), synthetic_bench.context())


def test_finetune_full_one_step_on_tiny_images(synthetic_bench):
    prep = synthetic_bench.prepared
    arrays = prep.splits.arrays["train"]
    index = np.concatenate([np.flatnonzero(arrays.pids == p)[:2] for p in np.unique(arrays.pids)[:2]])
    records = [prep.splits.records["train"][i] for i in index]
    images = ImageSource(prep.dataset, records, (64, 32))  # tiny images: 4 x 2 trunk maps
    attributes = prep.attributes.lookup(arrays.pids[index])
    view = View("train", arrays.pids[index], arrays.camids[index], images=images, attributes=attributes)
    method = DeepSSH(bits=32, epochs=1, P=2, K=2, finetune="full")
    ctx = synthetic_bench.context()
    trunk_before = [p.detach().clone() for p in ctx.backbone.trunk(ctx.cut).parameters()]
    method.fit(view, ctx)
    assert len(method.history_) == 1 and np.isfinite(method.history_[0]["loss"])
    assert np.isfinite(method.history_[0]["attr"])
    trunk_after = list(method.model_.body[0].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(trunk_after, trunk_before, strict=True))  # trunk trained
    shared = ctx.backbone.trunk(ctx.cut).parameters()
    assert all(torch.equal(a, b) for a, b in zip(shared, trunk_before, strict=True))  # the backbone is not
    assert check_codes(method.encode(view), len(view), 32, "deepssh").shape == (4, 32)


def test_its_own_decoder_is_the_codeword_readout(ssh64, synthetic_bench):
    """``DeepSSH.decoder()``: the readout as a :class:`hashbench.decoders.Decoder`; its argmax is
    ``predict_attributes`` and a description ranks by the sum of the values' log-posteriors."""
    from hashbench.semantic import evaluate_attribute_queries

    schema = ssh64.schema_
    assert DeepSSH(bits=64).decoder(schema) is None  # before fit: none
    decoder = ssh64.decoder(schema)
    assert decoder.name == "deepssh-readout"
    train = synthetic_bench.view("train", MAPS)
    decoder.fit(ssh64.encode(train), train.attributes)
    gallery = synthetic_bench.view("gallery", MAPS)
    codes = ssh64.encode(gallery)
    scores = decoder.value_scores(codes)
    for g in range(len(schema)):  # log-posteriors per group
        a, b = decoder.offsets_[g], decoder.offsets_[g + 1]
        assert np.allclose(np.exp(scores[:, a:b]).sum(1), 1.0)
    assert np.array_equal(decoder.predict(codes), ssh64.predict_attributes(codes))
    table = synthetic_bench.prepared.attributes
    df = evaluate_attribute_queries(decoder, codes, gallery.pids, table, n_values=[12], seed=0)
    assert df.iloc[0].n_queries > 0 and df.iloc[0].rank5 >= df.iloc[0].rank1 > 100 / 60  # above chance


def test_value_weights_balance_rare_values():
    """attr_balance=1: every value of a group weighs the same in total; 0: every image weighs 1."""
    schema = schema_of({"hat": 2, "age": 4})
    hat = np.array([0] * 90 + [1] * 10)
    age = np.array([0] * 50 + [1] * 30 + [2] * 15 + [-1] * 5)  # value 3 never seen, one unknown block
    attrs = np.stack([hat, age], 1)
    for g, y in enumerate([hat, age]):
        known = y[y >= 0]
        w = value_weights(attrs, schema.groups, 1.0)[g].numpy().astype(float)
        p = (np.bincount(known, minlength=len(w)) + 1.0) / (len(known) + len(w))
        assert np.allclose(p * w, (p * w)[0])  # the same total weight per value (Laplace-smoothed shares)
        assert np.isclose(p @ w, 1.0)  # expected weight 1: the loss keeps its scale
        assert w[1] > w[0]  # the rarer value weighs more
        assert np.allclose(value_weights(attrs, schema.groups, 0.0)[g].numpy(), 1.0)
    half, full = (value_weights(attrs, schema.groups, a)[0].numpy() for a in (0.5, 1.0))
    assert np.isclose(half[1] / half[0], np.sqrt(full[1] / full[0]))  # p ** -0.5 against p ** -1


def test_balanced_attribute_loss_weighs_each_image_by_its_value():
    schema = schema_of({"hat": 2, "age": 3})
    ssh = DeepSSH(bits=64, attr_balance=1.0)
    ssh._kinds = [g.kind for g in schema.groups]
    ssh._offsets = [0, 1, 4]
    attrs = np.array([[0, 0], [0, 1], [0, 2], [1, -1]])
    ssh._value_weights = value_weights(attrs, schema.groups, 1.0)
    logits = torch.tensor([[0.5, 1.0, 0.0, 0.0], [-1.0, 0.0, 2.0, 0.0], [2.0, 0.0, 0.0, 1.0], [0.1, 0, 0, 0]])
    labels = torch.as_tensor(attrs)
    loss, acc = ssh.attribute_loss(logits, labels)
    w_hat, w_age = (w.numpy().astype(float) for w in ssh._value_weights)
    x = logits[:, 0].numpy().astype(float)
    y = np.array([0, 0, 0, 1])
    bce = np.log1p(np.exp(-np.where(y == 1, x, -x)))
    lsm = torch.log_softmax(logits[:3, 1:4].double(), 1).numpy()
    ce = -lsm[np.arange(3), [0, 1, 2]]
    expected = ((bce * w_hat[y]).mean() + (ce * w_age[[0, 1, 2]]).mean()) / 2
    assert np.isclose(float(loss), expected, rtol=1e-5)
    ssh.attr_balance = 0.0  # unweighted: the plain means
    assert np.isclose(float(ssh.attribute_loss(logits, labels)[0]), (bce.mean() + ce.mean()) / 2, rtol=1e-5)


def test_attr_balance_enters_the_config_only_when_set():
    assert (
        "attr_balance" not in DeepSSH(bits=64, attr_balance=0.0).get_params()
    )  # earlier cells keep their hashes
    assert DeepSSH(bits=64).get_params()["attr_balance"] == 0.5  # the default
