"""CPU kernel of :func:`lwgpu.spec.qp.solve_simplex_qp`: numba, float64, one problem at a time.

Same algorithm as the torch path (FISTA with adaptive restart, exact simplex projection, Frank-Wolfe
gap test); where FISTA has not reached the tolerance (ill-conditioned Gram matrices), a primal
active-set method started from its support ends at the exact KKT point after a few support changes.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _project_into(v: np.ndarray, out: np.ndarray) -> None:
    """out <- Euclidean projection of v onto the simplex (Michelot: exact, no sort).

    theta starts at (sum(v) - 1) / M and is recomputed over the entries above it until that set
    stops shrinking (a few O(M) passes); then out = max(v - theta, 0)."""
    M = v.shape[0]
    s = 0.0
    for i in range(M):
        s += v[i]
    count = M
    theta = (s - 1.0) / M
    while True:
        s = 0.0
        c = 0
        for i in range(M):
            if v[i] > theta:
                s += v[i]
                c += 1
        if c == count or c == 0:
            break
        count = c
        theta = (s - 1.0) / c
    for i in range(M):
        out[i] = max(v[i] - theta, 0.0)


@njit(cache=True)
def _project(v: np.ndarray) -> np.ndarray:
    out = np.empty_like(v)
    _project_into(v, out)
    return out


@njit(cache=True)
def _objective(G: np.ndarray, c: np.ndarray, x: np.ndarray) -> float:
    return 0.5 * (x @ (G @ x)) - c @ x


@njit(cache=True)
def _lipschitz(G: np.ndarray) -> float:
    M = G.shape[0]
    v = np.full(M, 1.0 / np.sqrt(M))
    lam = 0.0
    for _ in range(30):
        w = G @ v
        lam = v @ w
        nrm = np.sqrt(w @ w)
        if nrm <= 1e-300:
            break
        v = w / nrm
    inf_norm = np.max(np.sum(np.abs(G), axis=1))
    L = min(1.05 * abs(lam), inf_norm)
    return max(L, 1e-15 * max(inf_norm, 1.0))


@njit(cache=True)
def _active_set(G: np.ndarray, c: np.ndarray, x: np.ndarray, tol: float) -> np.ndarray:
    """Primal active-set method from a feasible x; returns a feasible point no worse than x."""
    M = c.shape[0]
    S = x > 0
    x = x.copy()
    f_prev = np.inf
    last_added = -1
    for _ in range(2 * M + 10):
        idx = np.nonzero(S)[0]
        r = idx.shape[0]
        A = np.zeros((r + 1, r + 1))
        rhs = np.zeros(r + 1)
        for a in range(r):
            for b in range(r):
                A[a, b] = G[idx[a], idx[b]]
            A[a, r] = 1.0
            A[r, a] = 1.0
            rhs[a] = c[idx[a]]
        rhs[r] = 1.0
        try:
            sol = np.linalg.solve(A, rhs)
        except Exception:  # noqa: BLE001 - singular KKT system: keep the current point
            break
        xs = sol[:r]
        nu = sol[r]
        if not np.all(np.isfinite(sol)):
            break
        if np.all(xs >= -1e-14):
            for a in range(r):
                x[idx[a]] = max(xs[a], 0.0)
            f = _objective(G, c, x)
            if f >= f_prev:  # no progress since the last add: round-off regime, stop
                break
            f_prev = f
            g = G @ x - c
            best = -tol
            j = -1
            for i in range(M):
                if not S[i] and g[i] + nu < best:
                    best = g[i] + nu
                    j = i
            if j < 0:
                break
            S[j] = True
            last_added = j
        else:
            alpha = 1.0
            j = -1
            for a in range(r):
                if xs[a] < 0.0:
                    step = x[idx[a]] / (x[idx[a]] - xs[a])
                    if step < alpha:
                        alpha = step
                        j = idx[a]
            if alpha <= 0.0 and j == last_added:
                # the index just added wants to leave at once: its multiplier was round-off; stop
                S[j] = False
                break
            for a in range(r):
                x[idx[a]] += alpha * (xs[a] - x[idx[a]])
            if j >= 0:
                x[j] = 0.0
                S[j] = False
            for a in range(r):
                if x[idx[a]] <= 0.0:
                    x[idx[a]] = 0.0
                    S[idx[a]] = False
            if not np.any(S):
                break
    x = np.maximum(x, 0.0)
    return x / np.sum(x)


@njit(cache=True, fastmath=True)
def _matvec_into(G: np.ndarray, y: np.ndarray, c: np.ndarray, out: np.ndarray) -> None:
    """out <- G y - c."""
    M = y.shape[0]
    for i in range(M):
        acc = 0.0
        for k in range(M):
            acc += G[i, k] * y[k]
        out[i] = acc - c[i]


@njit(cache=True)
def _solve_one(G, c, x0, iters, tol, check_every, polish):
    thresh = tol * (1.0 + np.max(np.abs(c)))
    L = _lipschitz(G)
    M = c.shape[0]
    x = _project(x0)
    start = x.copy()
    y = x.copy()
    xn = np.empty(M)
    g = np.empty(M)
    t = 1.0
    converged = False
    for it in range(1, iters + 1):
        _matvec_into(G, y, c, g)
        for i in range(M):
            g[i] = y[i] - g[i] / L
        _project_into(g, xn)
        mom = 0.0
        for i in range(M):
            mom += (y[i] - xn[i]) * (xn[i] - x[i])
        if mom > 0:  # adaptive restart: momentum points uphill
            t = 1.0
            for i in range(M):
                y[i] = xn[i]
        else:
            tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            w = (t - 1.0) / tn
            for i in range(M):
                y[i] = xn[i] + w * (xn[i] - x[i])
            t = tn
        x, xn = xn, x
        if it % check_every == 0:
            _matvec_into(G, x, c, g)
            if x @ g - np.min(g) <= thresh:
                converged = True
                break
    if polish and not converged:
        xp = _active_set(G, c, x, thresh)
        if np.all(np.isfinite(xp)) and _objective(G, c, xp) <= _objective(G, c, x):
            x = xp
    if _objective(G, c, start) < _objective(G, c, x):  # never worse than the warm start
        x = start
    return x


@njit(cache=True)
def solve_batch(G, c, mask, x0, warm, iters, tol, check_every, polish):
    """G (B,M,M), c (B,M), mask (B,M) bool, x0 (B,M) (used when warm) -> x (B,M), float64."""
    B, M = c.shape
    out = np.zeros((B, M))
    for b in range(B):
        idx = np.nonzero(mask[b])[0]
        m = idx.shape[0]
        Gb = np.empty((m, m))
        cb = np.empty(m)
        xb = np.empty(m)
        for a in range(m):
            cb[a] = c[b, idx[a]]
            xb[a] = x0[b, idx[a]] if warm else 1.0 / m
            for k in range(m):
                Gb[a, k] = G[b, idx[a], idx[k]]
        xs = _solve_one(Gb, cb, xb, iters, tol, check_every, polish)
        for a in range(m):
            out[b, idx[a]] = xs[a]
    return out
