"""Differentially private RKME specs (docs/privacy.md has the derivation).

Mechanism (``"rff-gaussian"``), (epsilon, delta)-DP with respect to replacing one row of the data
(the row count n is public: it is stored in the spec as ``num_points``):

1. A random Fourier feature map ``phi(x) = sqrt(2/D) cos(W x + b)`` (D features; rows of W ~ N(0, 2 gamma I),
   b ~ U[0, 2 pi); drawn from a public seed, independent of the data), so that
   ``E[phi(a).phi(b)] = exp(-gamma ||a - b||^2)``. Every coordinate lies in ``[-sqrt(2/D), sqrt(2/D)]``.
2. The mean embedding ``psi = 1/n sum_j phi(x_j)`` (D,). Replacing one row x by x' moves it by
   ``(phi(x) - phi(x')) / n``, whose norm is at most ``sqrt(D * (2 sqrt(2/D))^2) / n = 2 sqrt(2) / n``:
   the L2 sensitivity is ``Delta = 2 sqrt(2) / n``, for any data (no clipping is needed).
3. ``psi~ = psi + N(0, sigma^2 I_D)`` with sigma from (epsilon, delta) by the analytic Gaussian mechanism
   (Balle & Wang, 2018; any epsilon > 0), or by the classic ``sigma = sqrt(2 ln(1.25/delta)) Delta / epsilon``
   (Dwork & Roth, Thm A.1; valid for epsilon < 1). The noise comes from the OS's entropy unless a
   ``noise_seed`` is given (tests only: a known noise seed voids the guarantee).
4. Post-processing only (the guarantee is kept): z and beta minimise
   ``beta' K_zz beta - 2 beta' Phi(z) psi~`` (the squared MMD to the noisy embedding, up to a constant).
   z starts from points drawn uniformly in a public box ``domain`` (never from data rows), moved uphill
   on the noisy witness ``c -> phi(c).psi~``, filtered (witness above the noise floor and above a fraction
   of the best) and resampled around the survivors (a particle search); K of them are chosen by kernel
   herding; then rounds of preconditioned gradient steps on z (backtracking) and the simplex QP for beta.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch

from .. import settings
from ..device import single_torch_thread
from ..kernels.torch_backend import gaussian_kernel
from .qp import solve_simplex_qp
from .validation import as_matrix, check_gamma, check_K

logger = logging.getLogger(__name__)

__all__ = ["rff_map", "sensitivity", "classic_sigma", "analytic_sigma", "gaussian_delta", "noisy_embedding",
           "fit_private_arrays", "privacy_record", "DEFAULT_FEATURES", "DEFAULT_DOMAIN", "MECHANISM"]

#: Random features of the private mechanism (more only improves accuracy: sigma does not depend on D).
DEFAULT_FEATURES = 2048
#: Public box the initial points are drawn from when none is given (per feature: [low, high]).
DEFAULT_DOMAIN = (-10.0, 10.0)
#: Name recorded in the spec's ``privacy`` field.
MECHANISM = "rff-gaussian"
#: Candidates per reduced point in the data-independent initialisation, and their witness-ascent steps.
_CANDIDATES_PER_POINT = 16
_ASCENT_STEPS = 30
_REFINE_ROUNDS = 4
#: Candidates kept: witness above this fraction of the largest one (and above the noise floor).
_KEEP_FRACTION = 0.2
_RESAMPLE_ROUNDS = 2
_REFINE_STEPS = 10


def rff_map(d: int, D: int, gamma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W (D, d), b (D,))`` float64 of the map ``phi(x) = sqrt(2/D) cos(x W' + b)`` for the kernel
    ``exp(-gamma ||a-b||^2)``, drawn from ``seed`` (public)."""
    gen = torch.Generator().manual_seed(int(seed))
    W = torch.randn(D, d, generator=gen, dtype=torch.float64) * math.sqrt(2.0 * gamma)
    b = torch.rand(D, generator=gen, dtype=torch.float64) * (2.0 * math.pi)
    return W, b


def _phi(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, D) random features."""
    return torch.cos(x @ W.T + b) * math.sqrt(2.0 / W.shape[0])


def sensitivity(n: int) -> float:
    """L2 sensitivity ``2 sqrt(2) / n`` of the RFF mean embedding of n rows (replace-one adjacency)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return 2.0 * math.sqrt(2.0) / n


def _check_budget(epsilon: float, delta: float) -> None:
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}; typically delta << 1/n")


def classic_sigma(epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """``sqrt(2 ln(1.25/delta)) * Delta / epsilon`` (Dwork & Roth, Thm A.1; requires epsilon < 1)."""
    _check_budget(epsilon, delta)
    if epsilon >= 1:
        raise ValueError(f"the classic Gaussian mechanism needs epsilon < 1, got {epsilon}; use mechanism='analytic'")
    return math.sqrt(2.0 * math.log(1.25 / delta)) * l2_sensitivity / epsilon


def gaussian_delta(epsilon: float, sigma: float, l2_sensitivity: float) -> float:
    """The exact delta of the Gaussian mechanism with noise sigma at this epsilon (Balle & Wang 2018, Thm 8):
    ``Phi(Delta/(2 sigma) - epsilon sigma/Delta) - e^epsilon Phi(-Delta/(2 sigma) - epsilon sigma/Delta)``."""
    from scipy.special import log_ndtr  # noqa: PLC0415 - log Phi, stable in the tails

    a = l2_sensitivity / (2.0 * sigma)
    c = epsilon * sigma / l2_sensitivity
    return float(math.exp(log_ndtr(a - c)) - math.exp(min(epsilon + log_ndtr(-a - c), 700.0)))


def analytic_sigma(epsilon: float, delta: float, l2_sensitivity: float, rel_tol: float = 1e-10) -> float:
    """Smallest sigma whose exact delta (:func:`gaussian_delta`) is <= delta: the analytic Gaussian
    mechanism, by bisection on sigma (delta decreases in sigma). Any epsilon > 0."""
    _check_budget(epsilon, delta)
    lo, hi = 1e-12 * l2_sensitivity, l2_sensitivity
    while gaussian_delta(epsilon, hi, l2_sensitivity) > delta:
        lo, hi = hi, 2.0 * hi
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if gaussian_delta(epsilon, mid, l2_sensitivity) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def noise_sigma(epsilon: float, delta: float, n: int, mechanism: str = "analytic") -> float:
    """sigma of the Gaussian noise per feature for n rows: ``"analytic"`` or ``"classic"``."""
    if mechanism == "analytic":
        return analytic_sigma(epsilon, delta, sensitivity(n))
    if mechanism == "classic":
        return classic_sigma(epsilon, delta, sensitivity(n))
    raise ValueError(f"unknown mechanism {mechanism!r}: use 'analytic' or 'classic'")


def noisy_embedding(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma: float,
                    noise_seed: int | None = None, tile: int = 16384) -> torch.Tensor:
    """``1/n sum_j phi(x_j) + N(0, sigma^2 I_D)``: (D,) float64. ``noise_seed=None`` draws the noise from
    OS entropy (``os.urandom``), as a real release must."""
    n = x.shape[0]
    psi = torch.zeros(W.shape[0], dtype=torch.float64)
    for s in range(0, n, tile):
        psi += _phi(x[s:s + tile].double(), W, b).sum(0)
    psi /= n
    seed = int.from_bytes(os.urandom(8), "little") if noise_seed is None else int(noise_seed)
    gen = torch.Generator().manual_seed(seed)
    return psi + sigma * torch.randn(W.shape[0], generator=gen, dtype=torch.float64)


def _domain(domain: Any, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    low, high = DEFAULT_DOMAIN if domain is None else domain
    lo = torch.as_tensor(np.broadcast_to(np.asarray(low, np.float64), (d,)).copy())
    hi = torch.as_tensor(np.broadcast_to(np.asarray(high, np.float64), (d,)).copy())
    if not bool((hi > lo).all()):
        raise ValueError(f"privacy domain needs high > low in every feature, got low={low}, high={high}")
    return lo, hi


def _witness_grad(c: torch.Tensor, W: torch.Tensor, b: torch.Tensor, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Witness ``f(c) = phi(c).psi`` (M,) and its gradient (M, d) at points c (M, d)."""
    arg = c @ W.T + b
    scale = math.sqrt(2.0 / W.shape[0])
    f = torch.cos(arg) @ psi * scale
    g = -(torch.sin(arg) * (psi * scale)) @ W
    return f, g


def fit_to_embedding(psi: torch.Tensor, W: torch.Tensor, b: torch.Tensor, K: int, gamma: float,
                     domain: Any = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``(z (K, d), beta (K,))`` to a (noisy) RFF mean embedding psi (D,), using nothing else.

    Minimises ``J = beta' K_zz beta - 2 beta' Phi(z) psi`` (exact Gaussian K_zz, RFF witness). Initialisation:
    candidates uniform in the public ``domain`` box are moved uphill on the witness ``f(c) = phi(c).psi``
    (Adam); those whose witness is below the floor of random features and noise (5x the median |f| at the
    random start, where almost every candidate is far from all data) or below ``_KEEP_FRACTION`` of the
    best are dropped, and the rest resampled around (``_RESAMPLE_ROUNDS``); K are chosen by kernel herding.
    Then rounds of preconditioned gradient steps on z (accepted only if J decreases) and the simplex QP.
    """
    d = W.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    lo, hi = _domain(domain, d)
    M = max(_CANDIDATES_PER_POINT * K, 512)
    cand = lo + (hi - lo) * torch.rand(M, d, generator=gen, dtype=torch.float64)
    f0, _ = _witness_grad(cand, W, b, psi)
    floor = 5.0 * float(f0.abs().median())
    width = 1.0 / math.sqrt(2.0 * gamma)

    def ascend(c: torch.Tensor, steps: int) -> torch.Tensor:
        p = c.clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=0.25 * width)
        for _ in range(steps):
            _, g = _witness_grad(p.detach(), W, b, psi)
            p.grad = -g
            opt.step()
        return p.detach()

    def keep_good(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, _ = _witness_grad(c, W, b, psi)
        good = f > max(floor, _KEEP_FRACTION * float(f.max()))
        return c[good], f[good]

    cand, witness = keep_good(ascend(cand, _ASCENT_STEPS))
    for _ in range(_RESAMPLE_ROUNDS):  # particles: resample around the good candidates, ascend, filter
        pick = torch.randint(0, cand.shape[0], (M - cand.shape[0],), generator=gen)
        moved = cand[pick] + width * torch.randn(pick.shape[0], d, generator=gen, dtype=torch.float64)
        cand, witness = keep_good(torch.cat([cand, ascend(moved, _ASCENT_STEPS // 3)]))
    # kernel herding: at step t take argmax witness(c) - 1/(t+1) sum_{s<=t} k(c, z_s)
    chosen: list[int] = []
    acc = torch.zeros(cand.shape[0], dtype=torch.float64)
    for t in range(min(K, cand.shape[0])):
        score = witness - acc / (t + 1)
        if chosen:
            score[chosen] = -math.inf
        i = int(torch.argmax(score))
        chosen.append(i)
        acc += gaussian_kernel(cand[i:i + 1], cand, gamma)[0]
    z = cand[chosen].clone()
    if z.shape[0] < K:  # too few distinct candidates: jitter copies of the best ones
        extra = z[torch.arange(K - z.shape[0]) % z.shape[0]]
        z = torch.cat([z, extra + 0.1 * width * torch.randn(extra.shape, generator=gen, dtype=torch.float64)])

    def beta_for(zz: torch.Tensor, b0: torch.Tensor | None) -> torch.Tensor:
        f, _ = _witness_grad(zz, W, b, psi)
        return solve_simplex_qp(gaussian_kernel(zz, zz, gamma), f, x0=b0, iters=settings.FIT_FINAL_QP_ITERS,
                                polish=True)

    def objective(zz: torch.Tensor, bb: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        Kzz = gaussian_kernel(zz, zz, gamma)
        f, g = _witness_grad(zz, W, b, psi)
        return float(bb @ Kzz @ bb - 2.0 * bb @ f), Kzz, f, g

    beta = beta_for(z, None)
    eta = 1.0
    for _ in range(_REFINE_ROUNDS):
        J, Kzz, f, g = objective(z, beta)
        for _ in range(_REFINE_STEPS):
            P = Kzz * beta  # P_il = k_il beta_l
            s = P.sum(1)
            rep = s[:, None] * z - P @ z  # sum_l beta_l k_il (z_i - z_l)
            # dJ/dz_i = beta_i (-4 gamma rep_i - 2 g_i); preconditioned as a mean-shift step (per unit beta)
            direction = (-4.0 * gamma * rep - 2.0 * g) / (4.0 * gamma * torch.maximum(f, s).clamp_min(1e-3))[:, None]
            direction = direction * (beta > 0)[:, None]
            norm = direction.norm(dim=1, keepdim=True)
            direction = direction * torch.clamp(width / norm.clamp_min(1e-30), max=1.0)  # <= one kernel width
            accepted = False
            for _try in range(4):
                z_new = z - eta * direction
                J_new, Kzz_new, f_new, g_new = objective(z_new, beta)
                if J_new <= J:
                    z, J, Kzz, f, g = z_new, J_new, Kzz_new, f_new, g_new
                    eta = min(2.0, eta * 1.25)
                    accepted = True
                    break
                eta *= 0.5
            if not accepted:
                break
        beta = beta_for(z, beta)
    return z, beta


def privacy_record(epsilon: float, delta: float, n: int, sigma: float, D: int, mechanism: str,
                   rff_seed: int) -> dict[str, Any]:
    """The ``privacy`` field a private spec carries (and writes into its JSON)."""
    return {"epsilon": float(epsilon), "delta": float(delta), "mechanism": MECHANISM,
            "calibration": mechanism, "sigma": float(sigma), "sensitivity": sensitivity(n),
            "features": int(D), "rff_seed": int(rff_seed), "adjacency": "replace-one"}


@torch.no_grad()
def _noisy(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma: float, noise_seed: int | None) -> torch.Tensor:
    return noisy_embedding(x, W, b, sigma, noise_seed)


def fit_private_arrays(
    X: Any,
    epsilon: float,
    delta: float,
    K: int = settings.K,
    gamma: float = settings.GAMMA,
    features: int = DEFAULT_FEATURES,
    mechanism: str = "analytic",
    domain: Any = None,
    seed: int = 0,
    noise_seed: int | None = None,
    nan_policy: str = "raise",
) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, Any]]:
    """An (epsilon, delta)-DP RKME of X (n, d) (see the module docstring).

    Parameters
    ----------
    X : array-like, (n, d)
    epsilon, delta : float
        The privacy budget (replace-one adjacency).
    features : int
        D, the random features (no privacy cost; accuracy grows with D).
    mechanism : {"analytic", "classic"}
        Noise calibration (classic needs epsilon < 1).
    domain : (low, high), optional
        Public box (scalars or (d,) arrays) the initial points are drawn from; default ``DEFAULT_DOMAIN``.
        Choose it without looking at the data (e.g. from the features' documented ranges).
    seed : int
        Public seed of the feature map and of the initialisation.
    noise_seed : int, optional
        Seed of the privacy noise; None (default) uses OS entropy. Fixing it is for tests only.

    Returns
    -------
    ``(z (K, d), beta (K,), n, privacy record)``, float64 on the CPU.
    """
    K = check_K(K)
    gamma = check_gamma(gamma)
    _check_budget(float(epsilon), float(delta))
    if features < 1:
        raise ValueError(f"features must be >= 1, got {features}")
    x = as_matrix(X, nan_policy=nan_policy, dtype=torch.float64)
    n, d = x.shape
    sigma = noise_sigma(float(epsilon), float(delta), n, mechanism)
    W, b = rff_map(d, int(features), gamma, seed)
    with single_torch_thread(True):  # many small ops: one thread is faster on a shared CPU
        psi = _noisy(x, W, b, sigma, noise_seed)
        z, beta = fit_to_embedding(psi, W, b, K, gamma, domain=domain, seed=seed)
    logger.info("private RKME: n=%d, eps=%g, delta=%g, sigma=%.3g per feature (D=%d, %s)", n, epsilon, delta, sigma,
                features, mechanism)
    return z, beta, n, privacy_record(epsilon, delta, n, sigma, features, mechanism, seed)
