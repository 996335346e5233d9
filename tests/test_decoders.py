"""Attribute decoders (hashbench.decoders), the oracle, photo + description, and their runner / report /
CLI plumbing: hand-made cases, a regression against the naive-Bayes output before the decoders were
plugins, determinism."""

import csv

import numpy as np
import pandas as pd
import pytest

from hashbench.cli import main
from hashbench.data import AttributeGroup, AttributeSchema, AttributeTable
from hashbench.decoders import Decoder, LogisticDecoder, make_decoders
from hashbench.errors import HashbenchError
from hashbench.explain import balanced_accuracy
from hashbench.metrics import evaluate_rankings, rank_by_distance
from hashbench.runner import run
from hashbench.semantic import (
    AttributeDecoder,
    ap_and_rank1,
    evaluate_attribute_queries,
    evaluate_oracle,
    evaluate_photo_description,
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


def planted(rng, attr, bits=64, strength=0.6):
    """Codes whose bits are noisy random projections of the attributes (as in test_semantic)."""
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    onehot = np.zeros((len(attr), offsets[-1]))
    for g in range(len(SIZES)):
        onehot[np.arange(len(attr)), offsets[g] + attr[:, g]] = 1
    proj = np.random.default_rng(99).standard_normal((sum(SIZES), bits))
    return ((onehot @ proj * strength + rng.standard_normal((len(attr), bits))) > 0).astype(np.uint8)


def test_naive_bayes_rows_are_those_of_the_decoder_before_the_plugins():
    """Regression: the numbers below are the output of commit 8e94bc1 (before the decoder interface) on
    this fixed input; the naive-Bayes decoder must keep giving them, to the last digit."""
    rng = np.random.default_rng(7)
    ids = np.stack([rng.integers(0, k, 50) for k in SIZES], 1)
    train = np.repeat(np.arange(50), 6)
    decoder = AttributeDecoder(SCHEMA).fit(planted(rng, ids[train]), ids[train])
    test = np.stack([rng.integers(0, k, 30) for k in SIZES], 1)
    pids = np.repeat(np.arange(1, 31), 4)
    codes = planted(rng, test[pids - 1])
    df = evaluate_attribute_queries(
        decoder, codes, pids, AttributeTable(SCHEMA, np.arange(1, 31), test), draws=3, seed=11
    )
    assert df.to_dict("list") == {
        "n_attributes": [1, 2, 3],
        "draws": [3, 3, 3],
        "n_queries": [90, 90, 30],
        "rank1": [8.88888888888889, 22.22222222222222, 36.666666666666664],
        "rank5": [30.0, 57.77777777777777, 86.66666666666667],
        "precision10": [99.55555555555556, 93.0, 80.33333333333333],
    }
    assert decoder.predict(codes)[:8].tolist() == [
        [0, 3, 1], [0, 3, 1], [1, 3, 1], [0, 3, 1], [1, 2, 0], [1, 2, 0], [1, 2, 0], [0, 2, 0],
    ]  # fmt: skip
    assert decoder.name == "naive-bayes" and isinstance(decoder, Decoder)


def test_the_oracle_on_three_identities_worked_by_hand():
    """Ids 1 and 2 share every value (a, x); id 3 is (b, z). Gallery: id 1 once, id 2 three times, id 3
    twice (then a distractor and a junk image, never searched)."""
    schema = AttributeSchema(
        (AttributeGroup("g0", ("a", "b"), ("g0",)), AttributeGroup("g1", ("x", "y", "z"), ("g1",)))
    )
    table = AttributeTable(schema, [1, 2, 3], [[0, 0], [0, 0], [1, 2]])
    pids = np.array([2, 1, 3, 2, 3, 2, 0, -1])
    for seed in range(5):
        df = evaluate_oracle(schema, pids, table, seed=seed)
        one, two = df.iloc[0], df.iloc[1]
        # n = 2: ids 1 and 2 ask the same thing, so exactly one of them is first; id 3 always: 2 of 3
        assert two.n_queries == 3 and two.rank1 == pytest.approx(200 / 3) and two.rank5 == 100.0
        # P@10 over the 6 searched images: ids 1 and 2 see 4 matching, id 3 sees 2
        assert two.precision10 == pytest.approx(100 * (4 + 4 + 2) / 18)
        # n = 1: the two single-value queries of each id; (a) and (x) are shared by ids 1 and 2
        assert one.n_queries == 6 and one.rank1 == pytest.approx(100 * 4 / 6)
    assert evaluate_oracle(schema, pids, table, seed=3).equals(evaluate_oracle(schema, pids, table, seed=3))
    with pytest.raises(HashbenchError, match="1..2"):
        evaluate_oracle(schema, pids, table, n_values=[3])


def imbalanced(rng, n_ids=300, images=6, flip=0.25):
    """Identities with a 10 %-positive binary group carried by bits 0-15 (flipped with ``flip``), a
    4-valued group with one value on a single identity's 2 images and one value never seen in training,
    and 16 coin-flip bits."""
    schema = AttributeSchema(
        (AttributeGroup("hat", ("no", "yes"), ("hat",)), AttributeGroup("c", ("r", "g", "b", "k"), ("c",)))
    )
    hat = (rng.random(n_ids) < 0.1).astype(np.int64)
    colour = rng.integers(0, 2, n_ids)
    colour[0] = 2  # one identity: the very rare value; value 3 never occurs
    pids = np.repeat(np.arange(n_ids), images)
    attr = np.stack([hat[pids], colour[pids]], 1)
    attr[np.flatnonzero(pids == 0)[2:], 1] = -1  # the rare value on 2 images only
    codes = np.concatenate(
        [
            np.repeat(attr[:, :1], 16, 1) ^ (rng.random((len(pids), 16)) < flip),
            rng.integers(0, 2, (len(pids), 16)),
        ],
        1,
    ).astype(np.uint8)
    return schema, codes, attr


def test_the_calibrated_decoder_beats_majority_on_balanced_accuracy_and_handles_rare_values():
    rng = np.random.default_rng(0)
    schema, codes, attr = imbalanced(rng)
    lr = LogisticDecoder(schema).fit(codes, attr)
    _, test_codes, test_attr = imbalanced(np.random.default_rng(1))
    truth = test_attr[:, 0]
    bal, se, k = balanced_accuracy(lr.predict(test_codes, balanced=True)[:, 0], truth)
    assert k == 2 and bal > 0.5 + 0.3 and bal - 0.5 > 2 * se  # majority's balanced accuracy is 1/2
    # plain accuracy of the most probable value is at least majority's
    assert (lr.predict(test_codes)[:, 0] == truth).mean() >= (truth == 0).mean()
    scores = lr.value_scores(test_codes)
    assert np.isfinite(scores).all()
    # log-posteriors: each group's seen values sum to 1; the unseen value (k) is a constant, never predicted
    assert np.allclose(np.exp(scores[:, :2]).sum(1), 1.0)
    assert np.allclose(np.exp(scores[:, 2:5]).sum(1), 1.0)
    assert len(np.unique(scores[:, 5])) == 1 and scores[0, 5] < np.log(0.01)
    assert not (lr.predict(test_codes, balanced=True)[:, 1] == 3).any()
    # the naive-Bayes decoder, uncalibrated, is still compared in explain; the rare value does not break it
    assert AttributeDecoder(schema).fit(codes, attr).predict(test_codes).shape == (len(test_codes), 2)
    # deterministic: the same fit twice, to the last bit
    again = LogisticDecoder(schema).fit(codes, attr)
    assert np.array_equal(again.coef_, lr.coef_) and np.array_equal(again.intercept_, lr.intercept_)
    # a group with a single known value, or none, is constant
    flat = attr.copy()
    flat[:, 0] = 0
    flat[:, 1] = -1
    const = LogisticDecoder(schema).fit(codes, flat).value_scores(test_codes)
    assert (const == const[0]).all()


def test_decoder_errors_are_one_line():
    def error(call) -> str:
        with pytest.raises(HashbenchError) as exc:
            call()
        assert "\n" not in str(exc.value)
        return str(exc.value)

    assert "C=0" in error(lambda: LogisticDecoder(SCHEMA, C=0))
    assert "not fitted" in error(lambda: LogisticDecoder(SCHEMA).value_scores(np.zeros((1, 4), np.uint8)))
    assert "logistic, naive-bayes" in error(lambda: make_decoders(["bayes"], SCHEMA))
    codes = np.zeros((4, 8), np.uint8)
    assert "(4, 3)" in error(lambda: LogisticDecoder(SCHEMA).fit(codes, np.zeros((4, 2), int)))


@pytest.mark.parametrize("kind", ["integers", "photo+description", "continuous"])
def test_ap_and_rank1_are_those_of_the_stable_ranking(kind):
    rng = np.random.default_rng(3)
    nq, ng = 40, 300
    dist = rng.integers(0, 6, (nq, ng)).astype(float)  # many ties
    if (
        kind == "photo+description"
    ):  # hamming / bits + alpha * cost, the cost shared by equal codes: ties left
        dist = dist / 8 + 0.3 * rng.integers(0, 4, ng)[None, :] / 7
    elif kind == "continuous":
        dist = rng.random((nq, ng))
    g_pids = rng.integers(-1, 12, ng)
    g_cams = rng.integers(0, 3, ng)
    q_pids, q_cams = rng.integers(1, 12, nq), rng.integers(0, 3, nq)
    q_pids[0] = 99  # no positive: NaN, no hit
    ev = evaluate_rankings(rank_by_distance(dist), q_pids, q_cams, g_pids, g_cams)
    ap, hit = ap_and_rank1(dist, q_pids, q_cams, g_pids, g_cams)
    assert np.isnan(ap[0]) and not hit[0]
    valid = ~np.isnan(ap)
    np.testing.assert_allclose(ap[valid].mean(), ev.mAP, rtol=1e-12)
    assert hit[valid].mean() == pytest.approx(ev.cmc[0])
    for i in np.flatnonzero(valid)[:10]:  # query by query: its AP from the ranking by hand
        order = np.argsort(dist[i], kind="stable")
        junk = (g_pids[order] == -1) | ((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        good = (g_pids[order] == q_pids[i])[~junk]
        ranks = np.flatnonzero(good) + 1
        assert ap[i] == pytest.approx(np.mean(np.arange(1, len(ranks) + 1) / ranks), abs=1e-12)
        assert hit[i] == (ranks[0] == 1)


def test_photo_description_at_alpha_zero_is_the_photo_alone_and_a_description_helps():
    rng = np.random.default_rng(4)
    ids = np.stack([rng.integers(0, k, 80) for k in SIZES], 1)
    train = np.repeat(np.arange(40), 8)
    decoders = [AttributeDecoder(SCHEMA), LogisticDecoder(SCHEMA)]
    # test ids 41..80: 6 gallery images each over 2 cameras; one query each (camera 2)
    g_pids = np.repeat(np.arange(41, 81), 6)
    g_cams = np.tile([0, 1], 120)
    q_pids = np.arange(41, 81)
    table = AttributeTable(SCHEMA, np.arange(1, 81), ids)
    # photo codes: weak identity signal plus the attributes
    ident = np.random.default_rng(5).integers(0, 2, (81, 48))

    def codes(pids, noise):
        base = ident[pids] ^ (rng.random((len(pids), 48)) < noise)
        return np.concatenate([base, planted(rng, ids[pids - 1], 48, 1.5)], 1).astype(np.uint8)

    for decoder in decoders:
        decoder.fit(codes(train + 1, 0.4), ids[train])
        df = evaluate_photo_description(
            decoder, codes(q_pids, 0.4), q_pids, np.full(40, 2), codes(g_pids, 0.4), g_pids, g_cams, table
        )
        assert set(df["description"]) == {"none", "full", "partial3"} and (df["n_queries"] == 40).all()
        none = df[df["description"] == "none"].iloc[0]
        assert none.alpha == 0.0
        full = df[df["description"] == "full"]
        assert full["map"].max() > none["map"]  # the identity's full description adds to the photo


def test_threads_change_no_figure_and_the_query_draws_are_shared(monkeypatch, caplog):
    """The logistic decoder's groups, photo + description's query chunks and the attribute queries'
    chunks run on threads, and the attribute queries are drawn once per (identities, n, draws, seed):
    every figure equals that of one thread with nothing cached."""
    import hashbench.decoders as decoders_module
    import hashbench.semantic as semantic_module
    from hashbench import metrics

    rng = np.random.default_rng(8)
    ids = np.stack([rng.integers(0, k, 60) for k in SIZES], 1)
    ids[3, 1] = -1  # an unknown value: that identity's queries skip the group
    train = np.repeat(np.arange(30), 6)
    g_pids = np.repeat(np.arange(31, 61), 5)
    g_cams = np.tile([0, 1, 0, 1, 1], 30)
    q_pids = np.arange(31, 61)
    table = AttributeTable(SCHEMA, np.arange(1, 61), ids)
    tr_codes = planted(rng, ids[train], 64, 1.0)
    q_codes, g_codes = planted(rng, ids[q_pids - 1], 64, 1.0), planted(rng, ids[g_pids - 1], 64, 1.0)

    def figures():
        lr = LogisticDecoder(SCHEMA, max_iter=1).fit(tr_codes, ids[train])
        aq = evaluate_attribute_queries(lr, g_codes, g_pids, table, chunk=7)
        pdf = evaluate_photo_description(
            lr, q_codes, q_pids, np.full(30, 2), g_codes, g_pids, g_cams, table, chunk=4
        )
        return lr, aq, pdf

    semantic_module._query_plan.cache_clear()
    with caplog.at_level("INFO", logger="hashbench.decoders"):
        lr, aq, pdf = figures()
    # max_iter=1 stops every group's L-BFGS early: said once, naming the groups (from n_iter_)
    assert "stopped at max_iter=1 for gender, color, bag" in caplog.text
    hits = semantic_module._query_plan.cache_info().hits
    again = figures()[1]
    assert semantic_module._query_plan.cache_info().hits > hits  # the second decoder's draws: cached
    pd.testing.assert_frame_equal(aq, again)
    q_id, groups = semantic_module._query_plan.__wrapped__(
        np.arange(31, 61, dtype=np.int64).tobytes(),
        np.packbits(ids[30:] >= 0, axis=1).tobytes(),
        (30, 3),
        2,
        5,
        0,
    )
    assert not groups.flags.writeable and groups.shape == (len(q_id), 2)
    assert (q_id[:3] == 0).all()  # identity 31's three pairs of groups first, in draw order
    serial = lambda n, chunk, work, threads=None: metrics.run_chunks(n, chunk, work, threads=1)  # noqa: E731
    monkeypatch.setattr(semantic_module, "run_chunks", serial)
    monkeypatch.setattr(decoders_module, "default_threads", lambda: 1)
    semantic_module._query_plan.cache_clear()
    lr1, aq1, pdf1 = figures()
    assert np.array_equal(lr1.coef_, lr.coef_) and np.array_equal(lr1.intercept_, lr.intercept_)
    pd.testing.assert_frame_equal(aq1, aq)
    pd.testing.assert_frame_equal(pdf1, pdf)


def tiny(tmp_path, **kw):
    return tiny_run_config(tmp_path, **{"methods": ["lsh", "itq"], "bits": [32], "reference": False, **kw})


def test_runner_oracle_is_the_ceiling_and_describe_recomputes_the_same_rows(tmp_path, capsys):
    res = tmp_path / "res"
    run(tiny(tmp_path))
    aq = pd.read_csv(res / "attribute_queries.csv")
    oracle = aq[aq["method"] == "oracle"].set_index("n_attributes")["rank1"]
    assert len(oracle) == 12
    for (method, decoder), part in aq[aq["method"] != "oracle"].groupby(["method", "decoder"]):
        assert decoder in ("naive-bayes", "logistic")
        assert (part.set_index("n_attributes")["rank1"] <= oracle).all(), (method, decoder)
    pdesc = pd.read_csv(res / "photo_description.csv")
    results = pd.read_csv(res / "results.csv")
    for r in results.itertuples():  # alpha = 0 is the cell's own mAP and rank-1
        none = pdesc[(pdesc["method"] == r.method) & (pdesc["description"] == "none")]
        assert len(none) == 2 and np.allclose(none["map"], r.map) and np.allclose(none["rank1"], r.rank1)
    # `hashbench describe`, from the artifacts alone: the same numbers, the oracle not repeated
    before = aq.drop(columns=["commit", "date"])
    assert main(["describe", str(res)]) == 0
    after = pd.read_csv(res / "attribute_queries.csv").drop(columns=["commit", "date"])
    key = ["method", "decoder", "n_attributes"]
    pd.testing.assert_frame_equal(
        before.sort_values(key).reset_index(drop=True), after.sort_values(key).reset_index(drop=True)
    )
    assert (
        "written: attribute_queries 48 rows, photo_description 52 rows, oracle 0 rows"
        in capsys.readouterr().out
    )


def test_old_files_read_as_naive_bayes_and_the_alpha_is_picked_on_validation(tmp_path, capsys):
    from hashbench.report import attribute_query_tables, load_attribute_queries, write_report

    res = tmp_path / "res"
    run(tiny(tmp_path, methods=["lsh"], photo_description=True))
    # an attribute_queries.csv of an older hashbench: no decoder column, naive-Bayes rows only
    aq = pd.read_csv(res / "attribute_queries.csv", dtype=str, keep_default_na=False)
    old = aq[aq["decoder"] == "naive-bayes"].drop(columns=["decoder"])
    old.to_csv(res / "attribute_queries.csv", index=False)
    table = attribute_query_tables(load_attribute_queries(res, pd.read_csv(res / "results.csv")))["rank1"]
    assert list(table.index) == [("lsh", "naive-bayes")]
    # the photo + description table shows no description figure without a validation choice
    md = write_report(res).markdown
    assert "photo + description" in md
    photo_rows = [line for line in md.splitlines() if line.startswith("| lsh") and "logistic" in line]
    assert len(photo_rows) == 1 and "–" in photo_rows[0]
    # a validation run (held-out training ids) into results/.../validation; pick alpha there
    val = res / "validation"
    run(tiny(tmp_path, methods=["lsh"], holdout=4, out=val))
    assert main(["pick-alpha", str(val)]) == 0
    choice = list(csv.DictReader(open(val / "photo_description_alpha.csv")))
    assert {(r["decoder"], r["description"]) for r in choice} == {
        (d, k) for d in ("naive-bayes", "logistic") for k in ("full", "partial3")
    }
    assert all(r["dataset"] == "synthetic-holdout4" and float(r["alpha"]) > 0 for r in choice)
    capsys.readouterr()
    md = write_report(res).markdown  # finds results/validation/photo_description_alpha.csv
    [row] = [line for line in md.splitlines() if line.startswith("| lsh") and "logistic" in line]
    assert "–" not in row  # every figure is there, at the validation alpha
    assert main(["pick-alpha", str(tmp_path / "nowhere")]) == 2


def test_pick_alpha_chooses_on_the_named_configuration_only(tmp_path, capsys):
    # a tuning sweep: two configurations of itq in one validation folder, the second one the latest
    val = tmp_path / "val"
    for n_iter in (50, 3):
        run(tiny(tmp_path, methods=["itq"], holdout=4, out=val, method_params={"itq": {"n_iter": n_iter}}))
    rows = list(csv.DictReader(open(val / "results.csv")))
    first, latest = rows[0]["config_hash"], rows[-1]["config_hash"]
    assert first != latest
    assert main(["pick-alpha", str(val)]) == 0
    assert {r["config_hash"] for r in csv.DictReader(open(val / "photo_description_alpha.csv"))} == {latest}
    assert main(["pick-alpha", str(val), "--config", first[:6]]) == 0
    assert {r["config_hash"] for r in csv.DictReader(open(val / "photo_description_alpha.csv"))} == {first}
    capsys.readouterr()
    for bad in ("zz12", "abc", "0000000"):  # not hex, too short, no such row
        assert main(["pick-alpha", str(val), "--config", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--config" in err[0], err


def test_photo_description_at_the_validation_alphas_only(tmp_path, capsys):
    """--photo-description-alphas validation: rows at 0 and the recorded alphas only, the same numbers."""
    from hashbench.report import write_report

    res_all, res_val = tmp_path / "all", tmp_path / "val"
    for res in (res_all, res_val):  # the same held-out choice beside both test runs
        run(tiny(tmp_path, methods=["lsh"], holdout=4, out=res / "validation"))
        assert main(["pick-alpha", str(res / "validation")]) == 0
    run(tiny(tmp_path, methods=["lsh"], out=res_all))
    run(tiny(tmp_path, methods=["lsh"], out=res_val, photo_description_alphas="validation"))
    every = pd.read_csv(res_all / "photo_description.csv")
    chosen = pd.read_csv(res_val / "photo_description.csv")
    choice = pd.read_csv(res_val / "validation" / "photo_description_alpha.csv")
    for decoder, part in chosen.groupby("decoder"):
        want = {0.0} | set(choice[(choice["decoder"] == decoder) & (choice["bits"] == 32)]["alpha"])
        assert set(part["alpha"]) == want and len(want) < len(set(every["alpha"]))
    key = ["method", "bits", "decoder", "description", "alpha"]
    both = chosen.merge(every, on=key, suffixes=("", "_all"))
    assert len(both) == len(chosen)
    np.testing.assert_allclose(both["map"], both["map_all"])
    np.testing.assert_allclose(both["rank1"], both["rank1_all"])

    def decoder_rows(res):  # the search-by-description and photo + description tables (costs vary)
        md = write_report(res).markdown.splitlines()
        return [x for x in md if x.startswith("| lsh") and ("naive-bayes" in x or "logistic" in x)]

    rows = decoder_rows(res_val)
    assert any("–" not in x for x in rows) and rows == decoder_rows(res_all)
    # one-line errors: no choice recorded, a validation run, another mode
    capsys.readouterr()
    for args in (
        ["--out", str(tmp_path / "none"), "--photo-description-alphas", "validation"],
        ["--out", str(tmp_path / "h"), "--holdout", "4", "--photo-description-alphas", "validation"],
        ["--out", str(tmp_path / "x"), "--photo-description-alphas", "some"],
    ):
        assert main(["run", "--dataset", "synthetic", "--methods", "lsh", "--bits", "32", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--photo-description-alphas" in err[0], err


def test_balanced_accuracy_by_hand():
    # value 0: 2 of 3 right, value 1: 1 of 1 -> (2/3 + 1) / 2; always-majority would score 1/2
    bal, se, k = balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), np.array([5, 5, 6, 7]))
    assert k == 2 and bal == pytest.approx(5 / 6)
    # identities as the unit: value 0 has 2 identities (5, 6), value 1 one (7)
    assert se == pytest.approx(np.sqrt((2 / 3) * (1 / 3) / 2 + 0.0) / 2)
    assert balanced_accuracy(np.array([1, 1]), np.array([1, 1]))[:1] == (1.0,)


def test_decoder_hyperparameters_name_their_rows():
    nb, lr = make_decoders(["naive-bayes", "logistic"], SCHEMA, params={"logistic": {"C": 0.2}})
    assert (nb.name, lr.name, lr.C) == ("naive-bayes", "logistic(C=0.2)", 0.2)
    with pytest.raises(HashbenchError, match="valid: C, max_iter"):
        make_decoders(["logistic"], SCHEMA, params={"logistic": {"c": 1}})
    with pytest.raises(HashbenchError, match="not among --decoders"):
        make_decoders(["logistic"], SCHEMA, params={"naive-bayes": {"prior": 1}})
