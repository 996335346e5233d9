"""The Market-1501 protocol on hand-computed cases, and against a slow reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hashbench.metrics import Evaluation, evaluate_rankings, rank_by_distance


def evaluate(order, q_pid, q_cam, g_pids, g_cams, max_rank=5):
    """Evaluate one query whose ranking is ``order`` (gallery indices, nearest first)."""
    return evaluate_rankings(
        np.asarray([order]),
        np.asarray([q_pid]),
        np.asarray([q_cam]),
        np.asarray(g_pids),
        np.asarray(g_cams),
        max_rank=max_rank,
    )


# ---------------------------------------------------------------- hand-computed cases


def test_positives_at_ranks_1_and_3():
    # ranked pids: 1 2 1 3 4, all from another camera -> positives at ranks 1 and 3
    # AP = (1/1 + 2/3) / 2 = 5/6
    ev = evaluate([0, 1, 2, 3, 4], 1, 1, [1, 2, 1, 3, 4], [2, 2, 2, 2, 2])
    assert ev.ap[0] == pytest.approx(5 / 6)
    assert ev.mAP == pytest.approx(5 / 6)
    assert ev.n_valid == 1
    np.testing.assert_array_equal(ev.cmc, [1, 1, 1, 1, 1])


def test_ranking_order_is_the_one_given():
    # the same gallery ranked 4 3 2 1 0: pids 4 3 1 2 1 -> positives at ranks 3 and 5
    # AP = (1/3 + 2/5) / 2 = 11/30; first match at rank 3 -> CMC 0 0 1 1 1
    ev = evaluate([4, 3, 2, 1, 0], 1, 1, [1, 2, 1, 3, 4], [2, 2, 2, 2, 2])
    assert ev.ap[0] == pytest.approx(11 / 30)
    np.testing.assert_array_equal(ev.cmc, [0, 0, 1, 1, 1])


def test_junk_same_pid_same_camera_and_pid_minus_one_removed():
    # query pid 1, camera 1; ranked gallery (pid, cam):
    #   (1,1) junk: same person, same camera     (-1,3) junk: pid -1
    #   (2,2) negative                            (1,2) positive -> rank 2 after junk removal
    #   (0,3) distractor, a negative              (1,3) positive -> rank 4 after junk removal
    # AP = (1/2 + 2/4) / 2 = 1/2; first match at rank 2 -> CMC 0 1 1 1 1
    g_pids = [1, -1, 2, 1, 0, 1]
    g_cams = [1, 3, 2, 2, 3, 3]
    ev = evaluate([0, 1, 2, 3, 4, 5], 1, 1, g_pids, g_cams)
    assert ev.ap[0] == pytest.approx(0.5)
    np.testing.assert_array_equal(ev.cmc, [0, 1, 1, 1, 1])


def test_same_camera_image_of_the_query_person_is_not_a_match():
    # query pid 7 cam 2; ranked (5,1) negative, (7,2) junk, (7,1) positive
    # after junk removal: (5,1) (7,1) -> positive at rank 2, AP = 1/2, CMC 0 1 1 1 1
    # (counting the junk image as a match would have given AP = (1/2 + 2/3) / 2 = 7/12)
    ev = evaluate([0, 1, 2], 7, 2, [5, 7, 7], [1, 2, 1])
    assert ev.ap[0] == pytest.approx(0.5)
    np.testing.assert_array_equal(ev.cmc, [0, 1, 1, 1, 1])


def test_distractor_counts_as_negative():
    # ranked pids 0 (distractor) then 1: positive at rank 2 -> AP = 1/2, CMC 0 1 1 1 1
    ev = evaluate([0, 1], 1, 1, [0, 1], [1, 2])
    assert ev.ap[0] == pytest.approx(0.5)
    np.testing.assert_array_equal(ev.cmc, [0, 1, 1, 1, 1])


def test_ties_broken_by_gallery_order():
    # distances 3 1 3 1 -> ranking 1 3 0 2 (equal distances keep gallery order)
    np.testing.assert_array_equal(rank_by_distance(np.array([[3, 1, 3, 1]])), [[1, 3, 0, 2]])
    np.testing.assert_array_equal(rank_by_distance(np.array([[3.0, 1.0, 3.0, 1.0]])), [[1, 3, 0, 2]])
    # a negative and a positive at the same distance: the one first in the gallery ranks first
    # gallery pids 2 1 -> positive at rank 2, AP = 1/2; gallery pids 1 2 -> positive at rank 1, AP = 1
    dist = np.array([[5, 5]], dtype=np.uint16)
    ev = evaluate(rank_by_distance(dist)[0], 1, 1, [2, 1], [2, 2])
    assert ev.ap[0] == pytest.approx(0.5)
    ev = evaluate(rank_by_distance(dist)[0], 1, 1, [1, 2], [2, 2])
    assert ev.ap[0] == pytest.approx(1.0)


def test_query_without_valid_match_is_excluded():
    # q0 (pid 1 cam 1): only (1,1) junk and negatives -> no valid match: AP NaN, left out
    # q1 (pid 2 cam 1): ranked pids 1 2 3 -> positive at rank 2 (the (1,1) image is a negative for q1)
    #    AP = 1/2
    # q2 (pid 3 cam 1): ranked pids 3 1 2 -> positive at rank 1, AP = 1
    # mAP = (1/2 + 1) / 2 = 3/4; CMC over 2 valid queries: rank1 1/2, rank2+ 1
    g_pids = [1, 2, 3]
    g_cams = [1, 2, 2]
    indices = np.array([[0, 1, 2], [0, 1, 2], [2, 0, 1]])
    ev = evaluate_rankings(
        indices, np.array([1, 2, 3]), np.array([1, 1, 1]), np.array(g_pids), np.array(g_cams), max_rank=3
    )
    assert ev.n_valid == 2
    assert math.isnan(ev.ap[0])
    assert ev.ap[1:] == pytest.approx([0.5, 1.0])
    assert ev.mAP == pytest.approx(0.75)
    np.testing.assert_allclose(ev.cmc, [0.5, 1, 1])


def test_cmc_several_queries():
    # q0 first match at rank 1, q1 at rank 2, q2 at rank 4 (each has a single positive)
    # CMC = [1/3, 2/3, 2/3, 3/3, 3/3]; APs 1, 1/2, 1/4 -> mAP = 7/12
    g_pids = [1, 2, 3, 4]
    g_cams = [2, 2, 2, 2]
    indices = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 3, 2]])
    ev = evaluate_rankings(
        indices, np.array([1, 2, 3]), np.array([1, 1, 1]), np.array(g_pids), np.array(g_cams), max_rank=5
    )
    np.testing.assert_allclose(ev.cmc, [1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert ev.mAP == pytest.approx(7 / 12)
    assert ev.rank(1) == pytest.approx(1 / 3)
    assert ev.rank(4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rank 6"):
        ev.rank(6)
    d = ev.to_dict()
    assert d["map"] == pytest.approx(700 / 12)
    assert d["rank1"] == pytest.approx(100 / 3)
    assert d["rank5"] == pytest.approx(100.0)
    assert math.isnan(d["rank10"]) and math.isnan(d["rank20"])  # beyond max_rank
    assert set(d) == {"map", "rank1", "rank5", "rank10", "rank20"}


def test_no_valid_query_at_all():
    ev = evaluate([0], 1, 1, [1], [1])
    assert ev.n_valid == 0
    assert math.isnan(ev.mAP) and np.isnan(ev.cmc).all() and np.isnan(ev.ap).all()


def test_to_dict_default_max_rank():
    ev = evaluate([0, 1], 1, 1, [2, 1], [2, 2], max_rank=50)
    assert ev.cmc.shape == (50,)
    assert ev.to_dict() == pytest.approx(
        {"map": 50.0, "rank1": 0.0, "rank5": 100.0, "rank10": 100.0, "rank20": 100.0}
    )
    assert isinstance(ev, Evaluation)


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(indices=np.zeros(3, dtype=int)), "2-D"),
        (dict(indices=np.zeros((2, 2), dtype=int)), "full gallery"),
        (dict(indices=np.zeros((3, 3), dtype=int)), "q_pids has 2"),
        (dict(indices=np.zeros((2, 3))), "integers"),
        (dict(indices=np.full((2, 3), 3)), "0..2"),
        (dict(q_camids=np.array([1, 2, 3])), "q_camids has 3"),
        (dict(g_camids=np.array([1, 2])), "g_camids has 2"),
        (dict(g_pids=np.zeros((3, 1), dtype=int)), "1-D"),
        (dict(q_pids=np.array([1.0, 2.0])), "integers"),
        (dict(max_rank=0), "max_rank"),
    ],
)
def test_bad_inputs(change, message):
    args = dict(
        indices=np.zeros((2, 3), dtype=int),
        q_pids=np.array([1, 2]),
        q_camids=np.array([1, 1]),
        g_pids=np.array([1, 2, 3]),
        g_camids=np.array([2, 2, 2]),
        max_rank=5,
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate_rankings(**args)


def test_rank_by_distance_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        rank_by_distance(np.zeros(4))
    with pytest.raises(ValueError, match="k must be"):
        rank_by_distance(np.zeros((2, 4)), k=5)


# ---------------------------------------------------------------- ranking and reference cross-check


@pytest.mark.parametrize(
    "dist",
    [
        np.random.default_rng(1).integers(0, 5, (37, 200)).astype(np.uint8),
        np.random.default_rng(2).integers(0, 300, (37, 200)).astype(np.uint16),
        np.random.default_rng(3).integers(-100_000, 100_000, (37, 200)).astype(np.int64),  # not 16-bit
        np.random.default_rng(4).integers(0, 70_000, (37, 200)).astype(np.int32),
        np.round(np.random.default_rng(5).standard_normal((37, 200)), 1).astype(np.float32),  # many ties
        np.random.default_rng(6).standard_normal((37, 200)),
    ],
)
def test_rank_by_distance_is_a_stable_sort(dist):
    expected = np.argsort(dist, axis=1, kind="stable")
    got = rank_by_distance(dist, chunk=5, threads=2)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(rank_by_distance(dist, k=7, threads=1), expected[:, :7])


def test_rank_by_distance_float_with_nans_and_signed_zeros():
    dist = np.array([[np.nan, 1.0, np.nan, -0.0, 0.0, 1.0, -np.inf, np.inf]] * 3)
    np.testing.assert_array_equal(rank_by_distance(dist), np.argsort(dist, axis=1, kind="stable"))


def reference_evaluation(dist, q_pids, q_cams, g_pids, g_cams, max_rank):
    """Slow, obviously correct per-query loops: returns (ap list with NaN, cmc list, n_valid)."""
    aps, cmc, n_valid = [], [0.0] * max_rank, 0
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda j: (dist[i][j], j))
        kept = [
            j for j in order if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])
        ]
        hit_ranks = [r for r, j in enumerate(kept, start=1) if g_pids[j] == q_pids[i]]
        if not hit_ranks:
            aps.append(float("nan"))
            continue
        n_valid += 1
        aps.append(sum(n / r for n, r in enumerate(hit_ranks, start=1)) / len(hit_ranks))
        for k in range(max_rank):
            if hit_ranks[0] <= k + 1:
                cmc[k] += 1
    return aps, [c / n_valid for c in cmc], n_valid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    nq, ng, max_rank = 60, 400, 20
    g_pids = rng.integers(-1, 25, ng)  # includes junk (-1) and distractors (0)
    g_cams = rng.integers(1, 4, ng)
    q_pids = rng.integers(1, 30, nq)  # some ids absent from the gallery -> invalid queries
    q_cams = rng.integers(1, 4, nq)
    dist = rng.integers(0, 12, (nq, ng)).astype(np.uint16)  # many ties
    ev = evaluate_rankings(rank_by_distance(dist), q_pids, q_cams, g_pids, g_cams, max_rank=max_rank, chunk=7)
    aps, cmc, n_valid = reference_evaluation(
        dist.tolist(), q_pids.tolist(), q_cams.tolist(), g_pids.tolist(), g_cams.tolist(), max_rank
    )
    assert 0 < n_valid < nq
    assert ev.n_valid == n_valid
    np.testing.assert_allclose(ev.ap, aps, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ev.cmc, cmc, rtol=1e-12)
    assert ev.mAP == pytest.approx(np.nanmean(aps), rel=1e-12)
