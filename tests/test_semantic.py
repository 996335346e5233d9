"""Search by description (hashbench.semantic): planted bits, ranking, the evaluation by hand, errors, runner."""

import csv
import json

import numpy as np
import pytest
import torch

from hashbench.data import AttributeGroup, AttributeSchema, AttributeTable
from hashbench.errors import HashbenchError
from hashbench.runner import RunConfig, run
from hashbench.semantic import (
    AttributeDecoder,
    combined_distance,
    description_distance,
    evaluate_attribute_queries,
    rank_by_description,
    top_k_stable,
)

from .tiny import tiny_run_config

SCHEMA = AttributeSchema(
    (
        AttributeGroup("gender", ("male", "female"), ("gender",)),
        AttributeGroup("color", ("red", "green", "blue", "black"), ("c",)),
        AttributeGroup("bag", ("no", "yes"), ("bag",)),
    )
)
SIZES = [2, 4, 2]


def onehot(attr: np.ndarray) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    out = np.zeros((len(attr), offsets[-1]))
    for g in range(len(SIZES)):
        out[np.arange(len(attr)), offsets[g] + attr[:, g]] = 1
    return out


def planted(rng, attr: np.ndarray, bits: int = 256, strength: float = 1.2) -> np.ndarray:
    """Codes whose bits are noisy random projections of the attributes (every bit carries a little)."""
    proj = np.random.default_rng(99).standard_normal((sum(SIZES), bits))
    return ((onehot(attr) @ proj * strength + rng.standard_normal((len(attr), bits))) > 0).astype(np.uint8)


def test_weights_concentrate_on_the_bits_of_the_queried_group():
    rng = np.random.default_rng(0)
    n, bits = 3000, 64
    attr = np.stack([rng.integers(0, k, n) for k in SIZES], 1)
    codes = rng.integers(0, 2, (n, bits)).astype(np.uint8)
    # bits 0-7 encode the colour (two bits per value, 5 % flipped); the rest are coin flips
    colour_bits = np.repeat(np.eye(4, dtype=np.uint8)[attr[:, 1]], 2, axis=1)
    codes[:, :8] = colour_bits ^ (rng.random((n, 8)) < 0.05)
    decoder = AttributeDecoder(SCHEMA).fit(codes, attr)
    for v in range(4):
        expected, weights = decoder.decode({1: v})
        assert weights.shape == expected.shape == (bits,) and (weights >= 0).all()
        assert weights[:8].sum() > 0.8 * weights.sum()
        assert weights[:8].min() > weights[8:].max()
        assert expected[2 * v : 2 * v + 2].tolist() == [1.0, 1.0]  # the value's own bits: set
        assert set(np.delete(expected[:8], [2 * v, 2 * v + 1])) == {0.0}  # the other values' bits: unset
        assert 0.0 <= decoder.probabilities({1: v}).min() and decoder.probabilities({1: v}).max() <= 1.0
    # names and labels work too, and a group the bits do not carry gets little weight anywhere
    assert np.array_equal(decoder.decode("color=blue")[1], decoder.decode({1: 2})[1])
    assert decoder.decode({"gender": "female"})[1].sum() < 0.2 * decoder.decode({1: 0})[1].sum()
    # the colour is read back from the codes; the gender (not encoded) only at chance
    pred = decoder.predict(codes)
    assert pred.shape == (n, 3) and (pred[:, 1] == attr[:, 1]).mean() > 0.95
    assert (pred[:, 0] == attr[:, 0]).mean() < 0.6


def test_a_full_description_finds_its_identity_far_above_chance():
    rng = np.random.default_rng(1)
    ids = np.stack([rng.integers(0, k, 60) for k in SIZES], 1)  # identities' attributes
    train_pids = np.repeat(np.arange(60), 10)
    decoder = AttributeDecoder(SCHEMA).fit(planted(rng, ids[train_pids]), ids[train_pids])
    test = np.stack([rng.integers(0, k, 40) for k in SIZES], 1)
    gallery_pids = np.repeat(np.arange(40), 3)
    gallery = planted(rng, test[gallery_pids])
    hits = 0
    for pid in range(40):
        order = rank_by_description(decoder, dict(enumerate(test[pid])), gallery)
        assert sorted(order.tolist()) == list(range(len(gallery)))
        hits += gallery_pids[order[0]] == pid
        # the first hits fit the description
        assert (test[gallery_pids[order[:3]]] == test[pid]).all()
    assert hits / 40 > 5 * (1 / 40)  # chance: 2.5 %; identities sharing all values are tied at best
    # the distance is the weighted Hamming distance to the partial code
    query = {0: 1, 2: 0}
    expected, weights = decoder.decode(query)
    want = (weights * np.abs(gallery - expected)).sum(1)
    np.testing.assert_allclose(description_distance(decoder, query, gallery), want, rtol=1e-9, atol=1e-9)
    # photo + description: alpha 0 is the photo alone; the description term is in [0, 1]
    photo = gallery[5]
    d0 = combined_distance(decoder, query, photo, gallery, 0.0)
    np.testing.assert_allclose(d0, (gallery != photo).mean(1))
    d1 = combined_distance(decoder, query, photo, gallery, 1.0)
    assert ((d1 - d0) >= -1e-12).all() and ((d1 - d0) <= 1 + 1e-12).all()
    np.testing.assert_allclose(d1 - d0, want / weights.sum())


def test_identical_codes_tie_exactly_and_keep_gallery_order():
    rng = np.random.default_rng(2)
    attr = np.stack([rng.integers(0, k, 500) for k in SIZES], 1)
    decoder = AttributeDecoder(SCHEMA).fit(planted(rng, attr, 96), attr)
    gallery = np.repeat(planted(rng, attr[:20], 96), 3, axis=0)[rng.permutation(60)]
    d = description_distance(decoder, {1: 2, 0: 0}, gallery)
    for code in np.unique(gallery, axis=0):
        same = (gallery == code).all(1)
        assert len(set(d[same].tolist())) == 1
    order = rank_by_description(decoder, {1: 2, 0: 0}, gallery)
    assert np.array_equal(order, np.lexsort((np.arange(60), d)))
    dist = rng.integers(0, 4, (50, 30)).astype(float)
    assert np.array_equal(top_k_stable(dist, 10), np.argsort(dist, axis=1, kind="stable")[:, :10])


def test_the_evaluation_on_a_case_worked_by_hand():
    """Codes are the attributes' one-hot bits; the scores below were worked out by hand."""
    schema = AttributeSchema(
        (AttributeGroup("g0", ("a", "b"), ("g0",)), AttributeGroup("g1", ("x", "y", "z"), ("g1",)))
    )
    combos = np.array([(a, b) for a in range(2) for b in range(3)] * 10)  # balanced training set

    def code(attr):
        attr = np.asarray(attr).reshape(-1, 2)
        return np.concatenate([np.eye(2)[attr[:, 0]], np.eye(3)[attr[:, 1]]], 1).astype(np.uint8)

    decoder = AttributeDecoder(schema).fit(code(combos), combos)
    table = AttributeTable(schema, [1, 2, 3, 4], [[0, 0], [0, 1], [1, 1], [1, 2]])
    # gallery: pid 2, pid 1 x2, pid 3 x2, pid 4 x7, then a distractor and a junk image (not searched)
    pids = np.array([2, 1, 1, 3, 3] + [4] * 7 + [0, -1])
    codes = np.concatenate([code(table.lookup(pids[:12])), np.zeros((2, 5), np.uint8)])
    df = evaluate_attribute_queries(decoder, codes, pids, table, draws=5, seed=0)
    assert df["n_attributes"].tolist() == [1, 2] and df["draws"].tolist() == [5, 5]
    # n = 1: both single groups of each of the 4 identities (fewer than 5 subsets exist)
    one = df.iloc[0]
    assert one.n_queries == 8
    assert one.rank1 == pytest.approx(100 * 5 / 8)
    assert one.rank5 == pytest.approx(100.0)
    assert one.precision10 == pytest.approx(100 * 3.9 / 8)
    # n = 2: the full description ranks the identity's own images first
    two = df.iloc[1]
    assert two.n_queries == 4 and two.rank1 == 100.0 and two.rank5 == 100.0
    assert two.precision10 == pytest.approx(100 * (0.2 + 0.1 + 0.2 + 0.7) / 4)
    # the (pids, values) form gives the same; and the draws are fixed by the seed
    again = evaluate_attribute_queries(decoder, codes, pids, (table.pids, table.values), n_values=[1])
    assert again.iloc[0].to_dict() == pytest.approx(one.to_dict())


def test_more_draws_than_subsets_and_seeded_subsets():
    rng = np.random.default_rng(3)
    ids = np.stack([rng.integers(0, k, 30) for k in SIZES], 1)
    decoder = AttributeDecoder(SCHEMA).fit(planted(rng, ids[np.repeat(np.arange(30), 5)]), ids.repeat(5, 0))
    pids = np.repeat(np.arange(1, 31), 4)
    codes = planted(rng, ids[pids - 1])
    values = ids.copy()
    values[0, 1] = -1  # identity 1's colour is unknown: never queried, never matched
    table = AttributeTable(SCHEMA, np.arange(1, 31), values)
    a = evaluate_attribute_queries(decoder, codes, pids, table, draws=2, seed=4)
    b = evaluate_attribute_queries(decoder, codes, pids, table, draws=2, seed=4)
    assert a.equals(b)
    # 3 groups: n = 1 and 2 have 3 subsets, 2 drawn; n = 3 has one. Identity 1 knows 2 groups: 2 subsets
    # at n = 1, one at n = 2, none at n = 3
    assert a["n_queries"].tolist() == [60, 59, 29]
    assert (
        ((a[["rank1", "rank5", "precision10"]] >= 0) & (a[["rank1", "rank5", "precision10"]] <= 100))
        .all()
        .all()
    )
    assert (a["rank1"] <= a["rank5"]).all()


def test_bad_input_is_one_line_naming_the_valid_choices():
    rng = np.random.default_rng(5)
    attr = np.stack([rng.integers(0, k, 100) for k in SIZES], 1)
    codes = planted(rng, attr, 32)
    decoder = AttributeDecoder(SCHEMA).fit(codes, attr)

    def error(call) -> str:
        with pytest.raises(HashbenchError) as exc:
            call()
        msg = str(exc.value)
        assert "\n" not in msg
        return msg

    msg = error(lambda: decoder.decode("colour=red"))
    assert "colour" in msg and "gender, color, bag" in msg
    msg = error(lambda: decoder.decode("color=pink"))
    assert "pink" in msg and "red, green, blue, black" in msg
    msg = error(lambda: decoder.decode({"color": "pink"}))
    assert "red, green, blue, black" in msg
    msg = error(lambda: decoder.decode({1: 7}))
    assert "color" in msg and "black" in msg
    msg = error(lambda: decoder.decode({5: 0}))
    assert "gender, color, bag" in msg
    for empty in ({}, "", " , "):
        assert "gender, color, bag" in error(lambda empty=empty: decoder.decode(empty))
    assert "(100, 3)" in error(lambda: AttributeDecoder(SCHEMA).fit(codes, attr[:, :2]))
    assert "(100, 3)" in error(lambda: AttributeDecoder(SCHEMA).fit(codes, attr[:-1]))
    assert "out of range" in error(lambda: AttributeDecoder(SCHEMA).fit(codes, attr + 3))
    assert "0 and 1" in error(lambda: AttributeDecoder(SCHEMA).fit(codes * 2, attr))
    assert "32-bit" in error(lambda: description_distance(decoder, {0: 1}, codes[:, :16]))
    assert "not fitted" in error(lambda: AttributeDecoder(SCHEMA).decode({0: 1}))
    assert "alpha" in error(lambda: combined_distance(decoder, {0: 1}, codes[0], codes, -1.0))
    assert "1..3" in error(lambda: evaluate_attribute_queries(decoder, codes, np.ones(100), (
        np.array([1]), attr[:1]), n_values=[4]))  # fmt: skip


# --------------------------------------------------------------------------------------------- runner


def tiny(tmp_path, **kw) -> RunConfig:
    return tiny_run_config(tmp_path, **{"methods": ["lsh"], "reference": False, **kw})


def aq_rows(res):
    with open(res / "attribute_queries.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_runner_writes_attribute_queries_and_complete_artifacts(tmp_path):
    from hashbench.report import write_report
    from hashbench.results import AQ_COLUMNS

    res = tmp_path / "res"
    rows = run(tiny(tmp_path))
    aq = aq_rows(res)
    assert list(aq[0]) == list(AQ_COLUMNS)
    oracle = [r for r in aq if r["method"] == "oracle"]
    assert [int(r["n_attributes"]) for r in oracle] == list(range(1, 13))
    assert all(r["decoder"] == "oracle" and r["bits"] == "" for r in oracle)
    for row in rows:
        mine = [r for r in aq if r["config_hash"] == row.config_hash]
        assert [r["decoder"] for r in mine] == ["naive-bayes"] * 12 + ["logistic"] * 12
        assert [int(r["n_attributes"]) for r in mine] == list(range(1, 13)) * 2
        assert all(
            r["method"] == "lsh" and r["bits"] == str(row.bits) and r["dataset"] == "synthetic" for r in mine
        )
        assert all(0 <= float(r["rank1"]) <= float(r["rank5"]) <= 100 for r in mine)
        assert all(int(r["n_queries"]) > 0 and r["commit"] and r["date"] and r["seed"] == "0" for r in mine)
        art = np.load(res / row.artifact)
        n_train = row.n_train
        assert art["train_codes"].shape == (n_train, row.bits // 8) and art["train_codes"].dtype == np.uint8
        for split, n in (("train", n_train), ("query", row.n_query), ("gallery", row.n_gallery)):
            assert art[f"{split}_pids"].shape == art[f"{split}_camids"].shape == (n,)
            assert (
                art[f"{split}_attributes"].shape == (n, 12) and art[f"{split}_attributes"].dtype == np.int16
            )
        groups = json.loads(str(art["schema"]))
        assert [g["name"] for g in groups][:2] == ["gender", "age"] and groups[0]["values"] == [
            "male",
            "female",
        ]
        saved = torch.load(res / row.artifact.replace(".npz", ".method.pt"), weights_only=True)
        assert saved["method"] == "lsh" and saved["params"]["bits"] == row.bits
    # the report draws them
    report = write_report(res)
    assert "table_attribute_queries.md" in report and (res / "attribute_queries.png").stat().st_size > 10_000
    md = (res / "table_attribute_queries.md").read_text()
    assert "32-bit codes" in md and "| lsh" in md and "n=12" in md and "P@10" in md
    assert "| naive-bayes" in md and "| logistic" in md and "*oracle*" in md
    assert "16-bit" in write_report(res, out_dir=tmp_path / "r16", aq_bits=16).markdown

    # a cell killed after its attribute queries but before its row: the re-run leaves no duplicates
    path = res / "results.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    redone = run(tiny(tmp_path))
    assert [(r.method, r.bits) for r in redone] == [("lsh", 32)]
    again = aq_rows(res)
    keys = [(r["method"], r["bits"], r["decoder"], r["config_hash"], r["n_attributes"]) for r in again]
    assert len(keys) == len(set(keys)) == 2 * 24 + 12  # 2 cells x 2 decoders x 12, the oracle's 12

    # switched off: no new rows
    run(tiny(tmp_path, bits=[8], attribute_queries=False))
    assert len(aq_rows(res)) == 60


def test_the_report_shows_the_latest_rows_of_the_cells_in_the_results(tmp_path):
    import pandas as pd

    from hashbench.report import attribute_query_tables, load_attribute_queries

    results = pd.DataFrame(
        {"dataset": "d", "method": ["a", "b"], "bits": [64, 64], "map": 1.0, "rank1": 1.0,
         "date": "2026-01-01T00:00:00+00:00", "artifact": "x.npz", "config_hash": ["ha", "hb"]}
    )  # fmt: skip
    rows = [
        ("a", "ha", 1, 10.0, "2026-01-01T00:00:00+00:00"),
        ("a", "ha", 1, 20.0, "2026-01-02T00:00:00+00:00"),  # the same cell re-run later: this one
        ("b", "hb", 1, 30.0, "2026-01-01T00:00:00+00:00"),
        ("b", "old", 1, 99.0, "2026-01-03T00:00:00+00:00"),  # a config the results no longer show
    ]
    pd.DataFrame(
        [dict(dataset="d", method=m, bits=64, n_attributes=n, draws=5, n_queries=3, rank1=r, rank5=r,
              precision10=r, config_hash=h, commit="c", seed=0, date=t) for m, h, n, r, t in rows]
    ).to_csv(tmp_path / "attribute_queries.csv", index=False)  # fmt: skip
    aq = load_attribute_queries(tmp_path, results)
    table = attribute_query_tables(aq)["rank1"]
    # a file without the decoder column (an older hashbench) holds naive-Bayes rows
    assert table.loc[("a", "naive-bayes"), 1] == 20.0 and table.loc[("b", "naive-bayes"), 1] == 30.0
    assert load_attribute_queries(tmp_path / "nowhere") is None
    with pytest.raises(HashbenchError, match="--aq-bits 32"):
        attribute_query_tables(aq, 32)
