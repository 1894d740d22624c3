"""CPU kernel of :func:`lwgpu.spec.fit.fit_arrays`: the whole fit of one dataset in one numba call.

Same algorithm, same random draws and same accept/reject rule as the torch path in
:mod:`lwgpu.spec.fit` (blocked k-means++ seeding, Lloyd, the better of centroids and seeds,
backtracked mean-shift z-steps, warm-started simplex QPs for beta, a final polished QP over every
row). On the CPU the torch path is bound by per-op overhead for the sizes a market fits (hundreds
of small ops per round); here a round is two BLAS products, one pass of exponentials and one QP.

Arrays keep the caller's float type (float32 by default, float64 on request); sums over rows and
every QP run in float64. Random numbers are drawn on the Python side (torch generators seeded per
dataset) and passed in, so both engines see the same draws.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numba import njit

from ._qp_numba import _solve_one
from .kmeans import dataset_draws, seeding_blocks, seeding_uniforms


@njit(cache=True)
def _sqnorms(X):
    """Row squared norms of X (n, d) -> (n,), in X's dtype."""
    return (X * X).sum(axis=1)


#: Kernel values below exp(-_FLUSH) are stored as 0: subnormal floats make every later product
#: touching them ~100x slower, and at 1e-35 they are far below float32 resolution of any sum.
_FLUSH = 80.0


@njit(cache=True)
def _exp_f32_inplace(a, k):
    """a (n,) float32 <- exp(a) for a <= 0, vectorised; a < -_FLUSH gives 0. k: (n,) int32 scratch.

    exp(a) = 2^k e^r with k = round(a / ln 2) and |r| <= ln2 / 2 (Cody-Waite split of ln 2),
    e^r by its degree-7 Taylor polynomial (relative error < 1e-8, below float32 rounding);
    2^k is added to the exponent bits. numba has no vectorised exp of its own without SVML.
    """
    n = a.shape[0]
    log2e = np.float32(1.4426950408889634)
    ln2_hi = np.float32(0.693359375)
    ln2_lo = np.float32(-2.12194440e-4)
    flush = np.float32(-_FLUSH)
    half = np.float32(0.5)
    c2, c3, c4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
    c5, c6, c7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for j in range(n):
        x = a[j]
        keep = x >= flush
        x = x if keep else zero
        kf = np.floor(x * log2e + half)
        r = (x - kf * ln2_hi) - kf * ln2_lo
        p = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        a[j] = p if keep else zero
        k[j] = np.int32(kf) if keep else np.int32(0)
    bits = a.view(np.int32)
    for j in range(n):
        bits[j] += k[j] << 23


@njit(cache=True, fastmath=True)
def _sum64(a):
    """Sum of a 1-d array in float64 (reassociated: vectorised)."""
    acc = 0.0
    for j in range(a.shape[0]):
        acc += np.float64(a[j])
    return acc


@njit(cache=True)
def _gauss_into(Z, XT, x2, gamma, out, m):
    """out (K, n) <- exp(-gamma |z_i - x_j|^2); m (K,) float64 <- row means of out.

    XT is X transposed and C-contiguous (d, n); x2 (n,) its squared norms. In float32 the
    exponential is :func:`_exp_f32_inplace` (values below exp(-_FLUSH) are 0); in float64, np.exp.
    """
    K = Z.shape[0]
    n = XT.shape[1]
    cross = np.dot(Z, XT)
    z2 = _sqnorms(Z)
    two = Z.dtype.type(2.0)
    zero = Z.dtype.type(0.0)
    ng = -gamma
    f32 = Z.itemsize == 4
    kbuf = np.empty(n, dtype=np.int32)
    for i in range(K):
        zi = z2[i]
        row = out[i]
        for j in range(n):
            v = zi + x2[j] - two * cross[i, j]
            row[j] = ng * max(v, zero)
        if f32:
            _exp_f32_inplace(row, kbuf)
        else:
            for j in range(n):
                row[j] = np.exp(row[j])
        m[i] = _sum64(row) / n


@njit(cache=True)
def _gram(Z, gamma):
    """exp(-gamma |z_i - z_l|^2) (K, K) as float64 (computed in Z's dtype, as the data kernel)."""
    K = Z.shape[0]
    out = np.empty((K, K), dtype=Z.dtype)
    _gauss_into(Z, Z.T.copy(), _sqnorms(Z), gamma, out, np.empty(K))
    G = out.astype(np.float64)
    for i in range(K):
        G[i, i] = 1.0
    return G


@njit(cache=True)
def _objective(beta, m, G):
    """J = beta' G beta - 2 beta' m (float64)."""
    return beta @ (G @ beta) - 2.0 * (beta @ m)


@njit(cache=True)
def _top_m(keys, m):
    """Indices of the m largest keys, largest first (torch.topk's order; ties: lower index first).

    An insertion buffer of m entries: O(n m) for the m <= ~10 of a seeding round, and far quicker
    to compile than np.partition / np.argsort."""
    m = min(m, keys.shape[0])
    best = np.full(m, -np.inf)
    idx = np.full(m, -1, dtype=np.int64)
    for j in range(keys.shape[0]):
        v = keys[j]
        if idx[m - 1] >= 0 and v <= best[m - 1]:
            continue
        a = m - 1
        while a > 0 and (idx[a - 1] < 0 or v > best[a - 1]):
            best[a] = best[a - 1]
            idx[a] = idx[a - 1]
            a -= 1
        best[a] = v
        idx[a] = j
    return idx


@njit(cache=True)
def _min_sqdist_into(X, x2, C, D2):
    """D2 (n,) <- min(D2, min_a |x_j - c_a|^2) for centres C (m, d)."""
    cross = np.dot(X, C.T.copy())  # (n, m)
    c2 = _sqnorms(C)
    for j in range(X.shape[0]):
        best = D2[j]
        for a in range(C.shape[0]):
            v = max(float(x2[j]) + float(c2[a]) - 2.0 * float(cross[j, a]), 0.0)
            if v < best:
                best = v
        D2[j] = best


@njit(cache=True)
def _kmeanspp(X, x2, K, u, per):
    """Blocked k-means++ seeding (Gumbel top-k D^2 draws), as :func:`lwgpu.spec.kmeans.kmeans_pp_init`.

    u (R+1, n) float64 uniforms, per (R+1,) centres drawn per round (per[0] = 1) -> (K, d).
    """
    n, d = X.shape
    C = np.empty((K, d), dtype=X.dtype)
    first = min(int(u[0, 0] * n), n - 1)
    C[0] = X[first]
    if K == 1:
        return C
    D2 = np.full(n, np.inf)
    _min_sqdist_into(X, x2, C[:1], D2)
    filled = 1
    R = per.shape[0] - 1
    keys = np.empty(n)
    for r in range(1, R + 1):
        mcount = per[r]
        for j in range(n):
            w = D2[j]
            keys[j] = np.log(u[r, j]) / w if w > 0 else -1e300 + u[r, j]
        idx = _top_m(keys, mcount)
        for a in range(mcount):
            C[filled + a] = X[idx[a]]
        if r < R:
            _min_sqdist_into(X, x2, C[filled:filled + mcount], D2)
        filled += mcount
    return C


@njit(cache=True)
def _lloyd(X, x2, C, iters, tol):
    """Lloyd iterations from C (K, d); stops once the largest squared centre move is below
    ``tol`` times the mean squared feature spread. Empty clusters keep their centre."""
    n, d = X.shape
    K = C.shape[0]
    C = C.copy()
    mean = np.zeros(d)
    for j in range(n):
        for k in range(d):
            mean[k] += X[j, k]
    mean /= n
    spread = 0.0
    for j in range(n):
        for k in range(d):
            t = X[j, k] - mean[k]
            spread += t * t
    thresh = tol * max(spread / n / d, 1e-300)
    sums = np.empty((K, d))
    cnt = np.empty(K)
    two = X.dtype.type(2.0)
    for _ in range(iters):
        score = np.dot(X, C.T.copy())  # (n, K): x.c
        c2 = _sqnorms(C)
        sums[:] = 0.0
        cnt[:] = 0.0
        for j in range(n):
            row = score[j]
            for i in range(K):  # |c|^2 - 2 x.c, vectorised, then one scan for the smallest
                row[i] = c2[i] - two * row[i]
            a = np.argmin(row)
            cnt[a] += 1.0
            for k in range(d):
                sums[a, k] += X[j, k]
        shift = 0.0
        for i in range(K):
            if cnt[i] > 0:
                mv = 0.0
                for k in range(d):
                    v = sums[i, k] / cnt[i]
                    mv += (v - C[i, k]) ** 2
                    C[i, k] = v
                shift = max(shift, mv)
        if shift <= thresh:
            break
    return C


@njit(cache=True)
def _embed_start(z, XT, x2, gamma, qp_iters, qp_tol):
    """A starting point z (K, d): its kernel block (K, n), row means m (K,), Gram G (K, K) and the
    QP's beta (K,) from uniform weights."""
    K = z.shape[0]
    Kzx = np.empty((K, XT.shape[1]), dtype=z.dtype)
    m = np.empty(K)
    _gauss_into(z, XT, x2, gamma, Kzx, m)
    G = _gram(z, gamma)
    return Kzx, m, G, _solve_one(G, m, np.full(K, 1.0 / K), qp_iters, qp_tol, 10, False)


@njit(cache=True)
def fit_one(X, Xfull, gamma, steps, u, per, kmeans_iters, qp_iters, final_qp_iters, qp_tol,
            step_size, min_eta, max_eta, chunk):
    """Fit one centred dataset.

    Parameters
    ----------
    X : (S, d) float32/float64, the rows used for the z-steps (a subsample, or every row).
    Xfull : (n, d) same dtype, every row (for the final beta); may be X itself.
    gamma : scalar of X's dtype.
    u, per : the seeding's uniforms (R+1, S) and block sizes (R+1,) with per[0] = 1 (K = per.sum()).
    step_size : > 0 selects the reference scheme (fixed-size gradient steps), <= 0 the backtracked one.

    Returns
    -------
    z (K, d) in X's dtype, beta (K,) float64.
    """
    S, d = X.shape
    K = per.sum()
    XT = X.T.copy()
    x2 = _sqnorms(X)
    seeds = _kmeanspp(X, x2, K, u, per)
    z = seeds
    Kzx, m, G, beta = _embed_start(z, XT, x2, gamma, qp_iters, qp_tol)
    if kmeans_iters > 0:
        # in high dimension (relative to the kernel width) centroids embed worse than data points:
        # start from whichever of the two gives the lower objective with its optimal beta
        c = _lloyd(X, x2, seeds, kmeans_iters, 1e-4)
        Kzx_c, m_c, G_c, beta_c = _embed_start(c, XT, x2, gamma, qp_iters, qp_tol)
        if not _objective(beta, m, G) < _objective(beta_c, m_c, G_c):
            z, Kzx, m, G, beta = c, Kzx_c, m_c, G_c, beta_c

    Kzx_new = np.empty((K, S), dtype=X.dtype)
    m_new = np.empty(K)
    eta = 1.0
    J = _objective(beta, m, G)
    fixed = step_size > 0
    Wx = np.empty((K, d), dtype=X.dtype)
    moved = True
    for _ in range(steps):
        # direction B_i - A_i and preconditioner D_i (see lwgpu.spec.fit)
        if moved:  # a rejected step leaves z, hence sum_j k(z_i, x_j) x_j, as it was
            Wx = np.dot(Kzx, X)  # (K, d)
        s = np.dot(G, beta)  # (K_zz beta)_i
        Pz = np.dot(G, beta.reshape(K, 1) * z)  # sum_l beta_l k(z_i, z_l) z_l, (K, d)
        z_new = np.empty_like(z)
        for i in range(K):
            Di = max(m[i], s[i], 1e-300)
            for k in range(d):
                dk = m[i] * z[i, k] - Wx[i, k] / S - (s[i] * z[i, k] - Pz[i, k])
                if fixed:
                    z_new[i, k] = z[i, k] - step_size * 4.0 * gamma * beta[i] * dk
                else:
                    z_new[i, k] = z[i, k] - eta * dk / Di
        _gauss_into(z_new, XT, x2, gamma, Kzx_new, m_new)
        G_new = _gram(z_new, gamma)
        active = True
        moved = fixed or _objective(beta, m_new, G_new) <= J
        if moved:
            z, G = z_new, G_new
            Kzx, Kzx_new = Kzx_new, Kzx
            m, m_new = m_new, m
            if not fixed:
                eta = min(eta * 1.5, max_eta)
        else:
            eta *= 0.5
            active = eta >= min_eta
        beta_new = _solve_one(G, m, beta, qp_iters, qp_tol, 10, False)
        if active:
            beta = beta_new
        J = _objective(beta, m, G)
        if not active:
            break

    if Xfull.shape[0] != S:  # final beta against every row, in chunks
        n = Xfull.shape[0]
        acc = np.zeros(K)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            Xc = Xfull[a:b]
            out = np.empty((K, b - a), dtype=X.dtype)
            mc = np.empty(K)
            _gauss_into(z, Xc.T.copy(), _sqnorms(Xc), gamma, out, mc)
            acc += mc * (b - a)
        m = acc / n
    beta = _solve_one(G, m, beta, final_qp_iters, qp_tol, 10, True)
    return z, beta


# ---------------------------------------------------------------- Python driver
_BLAS_CONTROLLER = None


def _single_thread_blas():
    """A context capping the BLAS libraries (the one numba calls included) at one thread.

    The fused kernel's products are small: multi-threaded BLAS only wakes pools of threads that then
    spin against torch's and numpy's own pools on the same cores (10x slower on 2 cores)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        import scipy.linalg.cython_blas  # noqa: F401, PLC0415 - the BLAS numba links against
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _fit_dataset(x: torch.Tensor, K: int, gamma: float, steps: int, seed: int,
                 opts: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit one centred CPU dataset x (n, d) with :func:`fit_one`: (z (K, d), beta (K,))."""
    sub, kseed = dataset_draws(x, K, seed, opts["max_points"])
    per = seeding_blocks(K, opts["kmeans_rounds"])
    u = seeding_uniforms([kseed], [sub.shape[0]], len(per), sub.shape[0])[0].numpy()
    np_dt = np.float32 if x.dtype == torch.float32 else np.float64
    X = np.ascontiguousarray(sub.numpy(), dtype=np_dt)
    Xfull = X if sub is x else np.ascontiguousarray(x.numpy(), dtype=np_dt)
    step_size = opts["step_size"]
    z, beta = fit_one(
        X, Xfull, np_dt(gamma), int(steps), np.ascontiguousarray(u), np.asarray(per, dtype=np.int64),
        int(opts["kmeans_iters"]), int(opts["qp_iters"]), int(opts["final_qp_iters"]),
        1e-7 if np_dt is np.float32 else 1e-12, -1.0 if step_size is None else float(step_size),
        float(opts["min_eta"]), float(opts["max_eta"]), int(opts["chunk_rows"]),
    )
    return torch.from_numpy(z), torch.from_numpy(beta).to(x.dtype)

def fit_all(xs: list[torch.Tensor], Ks: list[int], gamma: float, steps: int, seeds: list[int],
            opts: dict[str, Any], bar: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Centred CPU datasets xs (n_i, d_i) with K_i points each, one at a time through the fused
    kernel: [(z (K_i, d_i), beta (K_i,))]."""
    out = []
    with _single_thread_blas():
        for x, k, seed in zip(xs, Ks, seeds):
            out.append(_fit_dataset(x, k, gamma, steps, seed, opts))
            bar.update(1)
    return out
