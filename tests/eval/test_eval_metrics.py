"""Metrics against hand-computed values and brute force."""
import time

import numpy as np
import pytest

from lwgpu.eval import (fit_residuals, latency_stats, mixture_precision_recall, recall_at_k, reuse_vs_own,
                        subsample_residuals, throughput, time_queries, topk_accuracy)
from lwgpu.kernels import reference
from lwgpu.spec.rkme import RKME


def test_topk_accuracy():
    pred = np.array([[3, 1, 2], [0, 5, 6], [9, 8, 7]])
    true = np.array([3, 5, 1])
    assert topk_accuracy(pred, true, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(pred, true, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(pred, true) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        topk_accuracy(pred, true, 4)
    with pytest.raises(ValueError):
        topk_accuracy(pred, true[:2])


def test_mixture_precision_recall():
    pred = [np.array([1, 2, 3]), np.array([4])]
    w = [np.array([0.5, 0.45, 0.05]), np.array([1.0])]
    true = [np.array([1, 2]), np.array([4, 5])]
    p, r = mixture_precision_recall(pred, w, true, min_weight=0.1)
    assert p == pytest.approx((1.0 + 1.0) / 2) and r == pytest.approx((1.0 + 0.5) / 2)
    p, r = mixture_precision_recall(pred, None, true)
    assert p == pytest.approx((2 / 3 + 1) / 2)
    p, _ = mixture_precision_recall([np.array([1])], [np.array([0.0])], [np.array([1])], min_weight=0.1)
    assert p == 0.0


def test_recall_at_k():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 2, 9], [-1, -1, -1]])
    assert recall_at_k(approx, exact) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(approx, exact, 1) == 0.0
    assert recall_at_k(exact, exact) == 1.0
    # the one rule: empty exact slots (-1: fewer than k specs) count neither as hits nor as misses,
    # pooled over queries; an empty approximate slot never matches
    assert recall_at_k(np.array([[1, -1, -1]]), np.array([[1, -1, -1]])) == 1.0
    assert recall_at_k(np.array([[7, 1, 5], [2, -1, -1]]), np.array([[1, 5, -1], [2, 3, 4]])) == pytest.approx(3 / 5)
    assert recall_at_k(np.array([[1, 1, 1]]), np.array([[1, 2, 3]])) == pytest.approx(1 / 3)  # repeats count once
    assert np.isnan(recall_at_k(np.array([[1, 2]]), np.array([[-1, -1]])))
    from lwgpu.search import Neighbors
    nb = Neighbors.padded(np.array([[0.1, 0.2]]), np.array([[5, 6]]), 3)
    assert recall_at_k(nb, np.array([[6, 5, 9]]), k=2) == 1.0 and recall_at_k(nb, np.array([[6, 5, 9]])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same number"):
        recall_at_k(exact[:1], exact)
    with pytest.raises(ValueError, match="k="):
        recall_at_k(exact, exact, 4)
    with pytest.raises(ValueError, match="Q, k"):
        recall_at_k(exact[0], exact[0])


def test_latency_stats_percentiles():
    s = latency_stats([0.001 * i for i in range(1, 101)])
    assert s["latency_p50_ms"] == pytest.approx(50.5)
    assert s["latency_p99_ms"] == pytest.approx(99.01)
    assert s["qps_single"] == pytest.approx(100 / 5.05)
    with pytest.raises(ValueError):
        latency_stats([])


def test_latency_stats_on_a_hand_computed_list():
    # 4 calls of 1, 2, 3, 10 ms: linear-interpolated percentiles at rank (n - 1) p = 3p
    s = latency_stats([0.001, 0.003, 0.002, 0.010])
    assert s["latency_p50_ms"] == pytest.approx(2.5)                  # halfway between 2 and 3
    assert s["latency_p90_ms"] == pytest.approx(3.0 + 0.7 * 7.0)      # rank 2.7: 3 + 0.7 (10 - 3)
    assert s["latency_p99_ms"] == pytest.approx(3.0 + 0.97 * 7.0)
    assert s["latency_mean_ms"] == pytest.approx(4.0)
    assert s["qps_single"] == pytest.approx(4 / 0.016)                # 4 calls in 16 ms
    assert latency_stats([0.0, 0.0])["qps_single"] == float("inf")
    with pytest.raises(ValueError, match="finite"):
        latency_stats([0.001, -0.001])
    with pytest.raises(ValueError, match="finite"):
        latency_stats([float("nan")])


def test_time_queries_times_each_call():
    calls = []
    times, outs = time_queries(lambda q: calls.append(q) or time.sleep(q) or q * 2, [0.0, 0.02, 0.05], warmup=1)
    assert outs == [0.0, 0.04, 0.1] and calls == [0.0, 0.0, 0.02, 0.05]   # the warm-up call is untimed
    assert len(times) == 3
    # each time covers its own call: at least the sleep, and the longer sleep takes longer
    assert times[1] >= 0.02 and times[2] >= 0.05


def test_throughput_is_queries_over_the_fastest_call():
    delays = iter([0.3, 0.05, 0.25])  # three calls: the fastest (>= 0.05 s) decides

    def fn(batch):
        time.sleep(next(delays))
        return sum(batch)

    qps, out = throughput(fn, [1, 2], 12, repeats=3)
    assert out == 3
    assert 12 / 0.25 < qps <= 12 / 0.05   # the best call slept 0.05 s, and it beat the 0.25 s one
    qps1, _ = throughput(lambda b: time.sleep(0.05), None, 5, repeats=0)  # repeats < 1: one call
    assert qps1 <= 5 / 0.05


def test_fit_residuals_match_reference(rng):
    x = rng.normal(size=(40, 3))
    spec = RKME(x[:5], np.full(5, 0.2), 0.3, dtype="float64")
    res = fit_residuals([spec], [x])
    assert res[0] == pytest.approx(reference.residual(x[:5], np.full(5, 0.2), x, 0.3), rel=1e-9)
    base = subsample_residuals([x], K=40, gamma=0.3)
    assert base[0] == pytest.approx(0.0, abs=1e-12)   # all rows: the empirical embedding itself
    with pytest.raises(ValueError):
        fit_residuals([spec], [x, x])


def test_reuse_vs_own_gap():
    rows = [{"method": "own", "n_labels": 5, "error": 0.4, "metric": "error_rate"},
            {"method": "own", "n_labels": 5, "error": 0.2, "metric": "error_rate"},
            {"method": "job_selector", "n_labels": 5, "error": 0.1, "metric": "error_rate"},
            {"method": "job_selector", "n_labels": 10, "error": 0.1, "metric": "error_rate"}]
    out = {(r["method"], r["n_labels"]): r for r in reuse_vs_own(rows)}
    assert out[("own", 5)]["error"] == pytest.approx(0.3) and out[("own", 5)]["gap"] == pytest.approx(0.0)
    assert out[("job_selector", 5)]["gap"] == pytest.approx(-0.2)
    assert np.isnan(out[("job_selector", 10)]["own_error"])


def test_recall_at_k_matches_a_brute_force_count(rng):
    """recall@k against a plain per-query set count on random id lists with repeats and -1 padding."""
    for _ in range(20):
        q, cols = int(rng.integers(1, 6)), int(rng.integers(1, 8))
        exact = rng.integers(-1, 12, size=(q, cols))
        approx = rng.integers(-1, 12, size=(q, cols))
        k = int(rng.integers(1, cols + 1))
        hits = sum(len({int(v) for v in exact[i, :k] if v >= 0} & {int(v) for v in approx[i, :k] if v >= 0})
                   for i in range(q))
        total = sum(len({int(v) for v in exact[i, :k] if v >= 0}) for i in range(q))
        got = recall_at_k(approx, exact, k)
        if total == 0:
            assert np.isnan(got)
        else:
            assert got == pytest.approx(hits / total)
