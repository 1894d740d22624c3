"""Exact pruning by bounding balls (lwgpu.search.bounds): the bound never exceeds the float64 distance, the
pruned top-k equals the float64 brute force, and the balls follow the bank through appends and deletes."""
import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.data.clustered import synthetic_spec_arrays
from lwgpu.kernels import get_backend, reference
from lwgpu.kernels.backend import pack
from lwgpu.search.bounds import balls, bounds_for, pruned_rows_search
from lwgpu.search.planner import plan_search

GAMMA = 0.1


@pytest.fixture(scope="module")
def arrays():
    return synthetic_spec_arrays(3_000, 6, K=12, d=6, seed=7, gamma=GAMMA)


def brute(bank, qz, qb, rows):
    z, b = bank.z.numpy().astype(np.float64), bank.beta.numpy().astype(np.float64)
    return np.array([reference.mmd2(qz, qb, z[r], b[r], GAMMA) for r in rows])


def test_balls_hold_every_weighted_point():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7, 3)).astype(np.float32)
    b = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
    b[2, 4:] = 0.0  # padding: ignored
    c, r, l1 = balls(z, b)
    for i in range(5):
        live = b[i] != 0
        assert np.allclose(c[i], z[i][live].mean(0), atol=1e-6)
        dist = np.linalg.norm(z[i][live].astype(np.float64) - c[i].astype(np.float64), axis=1)
        assert dist.max() <= r[i] and r[i] == pytest.approx(dist.max(), rel=1e-4)
        assert l1[i] == pytest.approx(np.abs(b[i]).sum(), rel=1e-6)


def test_lower_bounds_never_exceed_the_float64_distance(arrays):
    bank = SpecBank.from_arrays(arrays["z"], arrays["beta"], GAMMA)
    q = pack(SpecBank.from_arrays(arrays["qz"], arrays["qbeta"], GAMMA))
    rows = np.arange(len(bank))
    lb = bounds_for(bank).lower_bounds(q, rows)
    for i in range(len(q)):
        exact = brute(bank, arrays["qz"][i].astype(np.float64), arrays["qbeta"][i].astype(np.float64), rows)
        assert np.all(lb[i] <= exact + 1e-9)
        assert (lb[i] > np.sort(exact)[10]).mean() > 0.3  # the bound excludes many specs of this market


@pytest.mark.parametrize("k", [1, 10])
def test_pruned_top_k_equals_brute_force(arrays, k):
    bank = SpecBank.from_arrays(arrays["z"], arrays["beta"], GAMMA)
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(bank), size=1_200, replace=False))
    q = pack(SpecBank.from_arrays(arrays["qz"], arrays["qbeta"], GAMMA))
    d, ids, visited = pruned_rows_search(bank, q, rows, bank.ids[rows], k, get_backend("torch", "cpu"))
    assert visited < 0.5
    for i in range(len(q)):
        exact = brute(bank, arrays["qz"][i].astype(np.float64), arrays["qbeta"][i].astype(np.float64), rows)
        want = np.argsort(exact, kind="stable")[:k]
        assert set(ids[i, :k]) == set(bank.ids[rows][want])
        np.testing.assert_allclose(d[i, :k], exact[want], rtol=1e-4, atol=1e-6)


def test_balls_follow_appends_and_deletes(arrays):
    bank = SpecBank.from_arrays(arrays["z"][:1000], arrays["beta"][:1000], GAMMA)
    first = bounds_for(bank)
    bank.add_arrays(arrays["z"][1000:1500], arrays["beta"][1000:1500])
    bank.remove(bank.ids[[3, 17, 600, 1499]])
    kept = bounds_for(bank)
    assert kept is first and kept.version == bank.version  # followed incrementally, not rebuilt
    c, r, l1 = balls(bank.z, bank.beta)
    np.testing.assert_array_equal(kept.centre, c)
    np.testing.assert_array_equal(kept.radius, r)
    np.testing.assert_array_equal(kept.l1, l1)
    np.testing.assert_array_equal(kept.self_inner, bank.self_inner.numpy().astype(np.float64))
    assert kept.self_max >= kept.self_inner.max()  # a delete may lower the maximum; the bound stays above it


def _bound_float64(qz, qa, s_q, centre, radius, l1, s_b, gamma):
    """The bound's formula in float64 numpy with every exponential (the maths the kernel computes; distances
    shrunk by the kernel's relative 1e-9, which only lowers the bound)."""
    dist = np.linalg.norm(qz[:, None, :] - centre[None].astype(np.float64), axis=2) * (1.0 - 1e-9)  # (Kq, M)
    gap = np.maximum(dist - radius[None], 0.0)
    return s_q + s_b - 2.0 * l1 * (qa @ np.exp(-gamma * gap * gap))


@pytest.mark.parametrize("spread", [0.5, 3.0, 30.0])  # overlapping balls, some far, all far (the cut-off)
def test_bound_kernel_matches_its_formula_and_skips_only_negligible_terms(spread):
    from lwgpu.kernels._bounds_numba import EXP_CUTOFF, ball_lower_bounds

    rng = np.random.default_rng(int(spread * 10))
    m, d, kq = 400, 5, 9
    centre = (rng.normal(size=(m, d)) * spread).astype(np.float32)
    radius, l1 = rng.uniform(0.1, 2.0, m), rng.uniform(0.5, 1.5, m)
    s_b = np.zeros(m)  # self terms 0: the cross term alone, so the cut-off's 2e-22 shares stay visible
    qz, qa = rng.normal(size=(kq, d)), rng.dirichlet(np.ones(kq))
    rows = rng.permutation(m)[:300]
    got = ball_lower_bounds(qz, qa, 0.0, centre, radius, l1, s_b, rows, GAMMA)
    want = _bound_float64(qz, qa, 0.0, centre[rows], radius[rows], l1[rows], s_b[rows], GAMMA)
    tail = 2.0 * l1[rows] * qa.sum() * np.exp(-EXP_CUTOFF)  # what the cut-off may take off, at most
    assert np.all(got <= want + 1e-12 * np.abs(want) + 1e-300)  # never above the formula (to rounding) ...
    assert np.all(got >= want - tail * (1 + 1e-9) - 1e-12 * np.abs(want))  # ... and below it only by the tail
    if spread == 30.0:
        assert np.mean(got < want - 1e-3 * tail) > 0.5  # the cut-off branch ran for most rows
    with_self = ball_lower_bounds(qz, qa, 0.7, centre, radius, l1, s_b + 0.3, rows, GAMMA)
    np.testing.assert_allclose(with_self, got + 1.0, rtol=0, atol=1e-12)
    assert ball_lower_bounds(qz, qa, 0.7, centre, radius, l1, s_b, rows[:0], GAMMA).shape == (0,)


def test_planner_prunes_from_prune_min_rows(arrays, monkeypatch):
    from lwgpu import settings

    bank = SpecBank.from_arrays(arrays["z"], arrays["beta"], GAMMA)
    q = SpecBank.from_arrays(arrays["qz"], arrays["qbeta"], GAMMA)
    allowed = bank.ids[::3]  # 1,000 rows
    every = plan_search(bank, q, k=5, allowed=allowed, keep_all=True)  # below the threshold: every row
    monkeypatch.setattr(settings, "PLANNER_PRUNE_MIN_ROWS", 500)
    pruned = plan_search(bank, q, k=5, allowed=allowed, keep_all=True)
    few = plan_search(bank, q, k=5, allowed=allowed[:400], keep_all=True)
    assert (pruned.method, every.method, few.method) == ("exact-rows-pruned", "exact-rows", "exact-rows")
    assert every.pool_ids.shape[1] == allowed.size and pruned.pool_ids.shape[1] < allowed.size
    np.testing.assert_array_equal(pruned.neighbors.ids, every.neighbors.ids)
    np.testing.assert_allclose(pruned.neighbors.dists, every.neighbors.dists, rtol=1e-6)


def test_planner_prunes_large_admitted_sets_with_exact_results(arrays):
    bank = SpecBank.from_arrays(arrays["z"], arrays["beta"], GAMMA)
    allowed = bank.ids[::2]
    q = SpecBank.from_arrays(arrays["qz"], arrays["qbeta"], GAMMA)
    full = plan_search(bank, q, k=5, allowed=allowed, exact_max_rows=10**9)
    pruned = plan_search(bank, q, k=5, allowed=allowed, exact_max_rows=100)
    assert full.method == "exact-rows" and pruned.method == "exact-rows-pruned"
    np.testing.assert_array_equal(pruned.neighbors.ids, full.neighbors.ids)
    np.testing.assert_allclose(pruned.neighbors.dists, full.neighbors.dists, rtol=1e-6)
