"""Batched simplex QP against exact float64 references (support enumeration, SLSQP)."""
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from lwgpu.kernels.reference import gaussian_gram
from lwgpu.spec.qp import frank_wolfe_gap, project_simplex, simplex_qp_objective, solve_simplex_qp


def exact_qp(G: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact minimiser of 0.5 x'Gx - c'x on the simplex by enumerating every support (M <= 8)."""
    M = len(c)
    best = (np.inf, None)
    for r in range(1, M + 1):
        for S in itertools.combinations(range(M), r):
            S = list(S)
            A = np.zeros((r + 1, r + 1))
            A[:r, :r] = G[np.ix_(S, S)]
            A[:r, r] = 1.0
            A[r, :r] = 1.0
            try:
                sol = np.linalg.solve(A, np.r_[c[S], 1.0])
            except np.linalg.LinAlgError:
                continue
            if (sol[:r] >= -1e-12).all():
                x = np.zeros(M)
                x[S] = np.clip(sol[:r], 0, None)
                f = 0.5 * x @ G @ x - c @ x
                if f < best[0] - 1e-15:
                    best = (f, x)
    return best


def kernel_problem(rng, M, d=3, gamma=0.5):
    z = rng.normal(size=(M, d))
    return gaussian_gram(z, z, gamma), rng.random(M)


BACKENDS = ["torch", "numba"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M", [2, 3, 5, 8])
def test_small_qps_match_support_enumeration(rng, M, backend):
    B = 60
    probs = [kernel_problem(rng, M) for _ in range(B)]
    G = torch.tensor(np.stack([p[0] for p in probs]))
    c = torch.tensor(np.stack([p[1] for p in probs]))
    x = solve_simplex_qp(G, c, backend=backend)
    assert x.dtype == torch.float64
    assert (x >= 0).all() and torch.allclose(x.sum(-1), torch.ones(B, dtype=torch.float64), atol=1e-12)
    f = simplex_qp_objective(G, c, x).numpy()
    for b, (Gb, cb) in enumerate(probs):
        f_ref, x_ref = exact_qp(Gb, cb)
        assert f[b] <= f_ref + 1e-12
        np.testing.assert_allclose(x[b].numpy(), x_ref, atol=1e-8)
    # float32 agrees to float32 accuracy
    x32 = solve_simplex_qp(G.float(), c.float(), backend=backend)
    assert x32.dtype == torch.float32
    f32 = simplex_qp_objective(G, c, x32.double()).numpy()
    assert np.all(f32 - f <= 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_general_psd_problems_match_slsqp(rng, backend):
    """Random PSD (rank-deficient too) problems of size 30 against scipy SLSQP in float64."""
    B, M = 6, 30
    Gs, cs = [], []
    for b in range(B):
        A = rng.normal(size=(M, M // 2 if b % 2 else M))
        Gs.append(A @ A.T / M)
        cs.append(rng.normal(size=M))
    G, c = torch.tensor(np.stack(Gs)), torch.tensor(np.stack(cs))
    x = solve_simplex_qp(G, c, iters=20000, backend=backend)
    for b in range(B):
        res = minimize(lambda v: 0.5 * v @ Gs[b] @ v - cs[b] @ v, np.full(M, 1.0 / M),
                       jac=lambda v: Gs[b] @ v - cs[b], bounds=[(0, None)] * M,
                       constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0}],
                       method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
        f_ref = 0.5 * res.x @ Gs[b] @ res.x - cs[b] @ res.x
        f = float(simplex_qp_objective(G[b : b + 1], c[b : b + 1], x[b : b + 1]))
        assert f <= f_ref + 1e-9
    assert float(frank_wolfe_gap(G, c, x).max()) < 1e-8


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_forces_padded_entries_to_zero_and_matches_unpadded(rng, backend):
    sizes = [2, 4, 7, 3]
    M = max(sizes)
    G = torch.zeros(len(sizes), M, M, dtype=torch.float64)
    c = torch.zeros(len(sizes), M, dtype=torch.float64)
    mask = torch.zeros(len(sizes), M, dtype=torch.bool)
    refs = []
    for b, m in enumerate(sizes):
        Gb, cb = kernel_problem(rng, m)
        G[b, :m, :m] = torch.tensor(Gb)
        G[b, m:, m:] = 5.0  # garbage in the padding must not matter
        c[b, :m] = torch.tensor(cb)
        c[b, m:] = 100.0
        mask[b, :m] = True
        refs.append(exact_qp(Gb, cb)[1])
    x = solve_simplex_qp(G, c, mask=mask, backend=backend)
    for b, m in enumerate(sizes):
        assert torch.all(x[b, m:] == 0)
        np.testing.assert_allclose(x[b, :m].numpy(), refs[b], atol=1e-8)
        alone = solve_simplex_qp(G[b, :m, :m], c[b, :m], backend=backend)
        np.testing.assert_allclose(alone.numpy(), refs[b], atol=1e-8)


def test_projection_is_exact(rng):
    v = torch.tensor(rng.normal(size=(50, 6)) * 3)
    p = project_simplex(v)
    # KKT of the projection: p = max(v - theta, 0) with a common theta, on the simplex
    assert torch.allclose(p.sum(-1), torch.ones(50, dtype=torch.float64))
    for b in range(50):
        res = minimize(lambda q: ((q - v[b].numpy()) ** 2).sum(), np.full(6, 1 / 6), bounds=[(0, None)] * 6,
                       constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1}], method="SLSQP",
                       options={"ftol": 1e-14})
        np.testing.assert_allclose(p[b].numpy(), res.x, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_big_batch_of_rkme_weight_problems_and_warm_start(rng, backend):
    """K=40 beta problems from clustered points (ill-conditioned Gram) in a batch of 32."""
    B, K, d, gamma = 32, 40, 5, 0.1
    Gs, cs = [], []
    for _ in range(B):
        x = rng.normal(size=(300, d))
        z = x[rng.choice(300, K, replace=False)] + 0.1 * rng.normal(size=(K, d))
        Gs.append(gaussian_gram(z, z, gamma))
        cs.append(gaussian_gram(z, x, gamma).mean(1))
    G, c = torch.tensor(np.stack(Gs)), torch.tensor(np.stack(cs))
    x = solve_simplex_qp(G, c, iters=5000, backend=backend)
    gap = frank_wolfe_gap(G, c, x)
    assert float(gap.max()) < 1e-9
    warm = solve_simplex_qp(G, c, x0=x, iters=50, backend=backend)
    assert torch.all(simplex_qp_objective(G, c, warm) <= simplex_qp_objective(G, c, x) + 1e-12)


def test_bad_inputs():
    G = torch.eye(3).unsqueeze(0)
    with pytest.raises(ValueError, match="shape"):
        solve_simplex_qp(torch.ones(1, 3, 4), torch.ones(1, 3))
    with pytest.raises(ValueError, match="c must"):
        solve_simplex_qp(G, torch.ones(1, 4))
    with pytest.raises(ValueError, match="valid"):
        solve_simplex_qp(G, torch.ones(1, 3), mask=torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend"):
        solve_simplex_qp(G, torch.ones(1, 3), backend="fortran")


@pytest.mark.parametrize("backend", BACKENDS)
def test_singular_gram_from_duplicate_candidates(backend):
    """Identical candidates (singular G, non-unique x) still give an optimal feasible x."""
    G = torch.ones(2, 4, 4, dtype=torch.float64)
    G[1] = torch.tensor([[1, 1, 0.5, 0.5], [1, 1, 0.5, 0.5], [0.5, 0.5, 1, 1], [0.5, 0.5, 1, 1]], dtype=torch.float64)
    c = torch.tensor([[1.0, 1, 1, 1], [0.5, 0.2, 0.5, 0.1]], dtype=torch.float64)
    for iters in (5, 2000):
        x = solve_simplex_qp(G, c, iters=iters, backend=backend)
        assert torch.isfinite(x).all() and (x >= 0).all()
        torch.testing.assert_close(x.sum(-1), torch.ones(2, dtype=torch.float64))
        assert float(frank_wolfe_gap(G, c, x).max()) < 1e-10
        # optima: f = 0.5 - 1 for any x in the first; x = (1/2, 0, 1/2, 0), f = -1/8 in the second
        f = simplex_qp_objective(G, c, x)
        torch.testing.assert_close(f, torch.tensor([-0.5, -0.125], dtype=torch.float64), atol=1e-12, rtol=0)
