"""Batched quadratic programs on the probability simplex, in torch (CPU or GPU).

Solves, for every batch element ``b``::

    min_x  0.5 x' G_b x - c_b' x    s.t.  x >= 0,  sum(x) = 1,  x_i = 0 where mask_b[i] is False

with accelerated projected gradient (FISTA, step ``1/L``, adaptive restart) and an exact
sort-based projection onto the simplex, then an active-set polish: the equality-constrained
KKT system on the support found by FISTA is solved directly and kept wherever it is feasible and
no worse. The Frank-Wolfe gap ``x'g - min_i g_i`` (an upper bound on ``f(x) - f*`` for convex
problems) is the convergence test; converged elements are frozen, so a batch element's answer
does not depend on what else is in the batch.

On the CPU the same algorithm runs as a numba kernel (float64, one problem at a time, with a full
primal active-set refinement instead of one polish step): per-op overhead, not arithmetic, dominates
torch for M ~ 100, and the kernel is ~100x faster there. ``backend="torch"`` forces the torch path.

Used for the RKME weights ``beta`` (G = K_zz, c = mean_j k(z, x_j)) and for mixture weights.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..device import numba_available

logger = logging.getLogger(__name__)

__all__ = ["project_simplex", "solve_simplex_qp", "simplex_qp_objective", "frank_wolfe_gap"]


def project_simplex(v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection of each row of v (B, M) onto the simplex over its valid entries.

    Entries where ``mask`` is False are set to 0 and take no part. Every row needs >= 1 valid entry.
    """
    if mask is None:
        vm = v
        valid_sorted = None
    else:
        vm = torch.where(mask, v, torch.full_like(v, float("-inf")))
    u, _ = torch.sort(vm, dim=-1, descending=True)
    if mask is not None:
        valid_sorted = torch.isfinite(u)
        u = torch.where(valid_sorted, u, torch.zeros_like(u))
    css = torch.cumsum(u, dim=-1) - 1.0
    j = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = u - css / j > 0
    if valid_sorted is not None:
        cond &= valid_sorted
    rho = cond.sum(-1, keepdim=True).clamp_min(1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    x = (v - theta).clamp_min(0.0)
    if mask is not None:
        x = x * mask
    return x


def simplex_qp_objective(G: torch.Tensor, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``0.5 x'Gx - c'x`` per batch element: G (B, M, M), c (B, M), x (B, M) -> (B,)."""
    return 0.5 * (x * (G @ x.unsqueeze(-1)).squeeze(-1)).sum(-1) - (c * x).sum(-1)


def frank_wolfe_gap(G: torch.Tensor, c: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``x'g - min_{valid i} g_i`` with ``g = Gx - c``: (B,), >= f(x) - f* for convex problems."""
    g = (G @ x.unsqueeze(-1)).squeeze(-1) - c
    gmin = g if mask is None else torch.where(mask, g, torch.full_like(g, float("inf")))
    return (x * g).sum(-1) - gmin.min(-1).values


def _lipschitz(G: torch.Tensor, mask_f: torch.Tensor, power_iters: int = 20) -> torch.Tensor:
    """Upper estimate of the largest eigenvalue of each (masked) G: (B,)."""
    v = mask_f / mask_f.sum(-1, keepdim=True).sqrt()
    lam = torch.zeros(G.shape[0], dtype=G.dtype, device=G.device)
    for _ in range(power_iters):
        w = (G @ v.unsqueeze(-1)).squeeze(-1)
        lam = (v * w).sum(-1)
        v = w / w.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
    inf_norm = G.abs().sum(-1).amax(-1)  # always >= spectral radius
    L = torch.minimum(1.05 * lam.abs(), inf_norm)
    return L.clamp_min(torch.finfo(G.dtype).eps * inf_norm.clamp_min(1.0))


def _polish(G: torch.Tensor, c: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Solve the KKT system on the support of x; keep it where feasible and no worse than x."""
    B, M = c.shape
    supp = (x > 0) & mask
    s = supp.to(G.dtype)
    A = torch.zeros(B, M + 1, M + 1, dtype=G.dtype, device=G.device)
    A[:, :M, :M] = G * s.unsqueeze(-1) * s.unsqueeze(-2) + torch.diag_embed(1.0 - s)
    A[:, :M, M] = s
    A[:, M, :M] = s
    rhs = torch.cat([c * s, torch.ones(B, 1, dtype=G.dtype, device=G.device)], dim=-1)
    sol, info = torch.linalg.solve_ex(A, rhs.unsqueeze(-1))
    xp = sol.squeeze(-1)[:, :M] * s
    ok = (info == 0) & torch.isfinite(xp).all(-1) & (xp >= 0).all(-1)
    xp = torch.where(ok.unsqueeze(-1), xp, x)
    xp = xp / xp.sum(-1, keepdim=True)
    better = simplex_qp_objective(G, c, xp) <= simplex_qp_objective(G, c, x)
    return torch.where((ok & better).unsqueeze(-1), xp, x)


@torch.no_grad()
def solve_simplex_qp(
    G: torch.Tensor,
    c: torch.Tensor,
    mask: torch.Tensor | None = None,
    iters: int = 2000,
    tol: float | None = None,
    x0: torch.Tensor | None = None,
    check_every: int = 10,
    polish: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Solve ``min 0.5 x'Gx - c'x`` over the simplex for a batch of problems.

    Parameters
    ----------
    G : torch.Tensor, (B, M, M) or (M, M)
        Symmetric positive semi-definite matrices (e.g. kernel Gram matrices).
    c : torch.Tensor, (B, M) or (M,)
        Linear terms.
    mask : torch.Tensor of bool, (B, M), optional
        Valid entries; padded entries are forced to 0. Each row needs at least one valid entry.
    iters : int
        Maximum FISTA iterations.
    tol : float, optional
        Stop an element once its Frank-Wolfe gap is below ``tol * (1 + max|c|)``;
        default 1e-12 in float64, 1e-7 in float32.
    x0 : torch.Tensor, (B, M), optional
        Warm start (projected onto the simplex first); default uniform over valid entries. The
        result is never worse than the projected warm start.
    check_every : int
        Iterations between convergence checks.
    polish : bool
        Finish with an active-set KKT solve on the found support (exact for small M).
    backend : {"auto", "torch", "numba"}
        ``"auto"``: numba on the CPU when available, else torch.

    Returns
    -------
    torch.Tensor, (B, M) (or (M,) for unbatched input): x >= 0, sum 1, 0 on padded entries.
    """
    if G.dim() == 2:
        out = solve_simplex_qp(G.unsqueeze(0), c.reshape(1, -1), None if mask is None else mask.reshape(1, -1),
                               iters, tol, None if x0 is None else x0.reshape(1, -1), check_every, polish,
                               backend)
        return out[0]
    if G.dim() != 3 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must have shape (B, M, M), got {tuple(G.shape)}")
    B, M, _ = G.shape
    if c.shape != (B, M):
        raise ValueError(f"c must have shape (B, M) = {(B, M)}, got {tuple(c.shape)}")
    if not G.is_floating_point():
        raise ValueError(f"G must be a float tensor, got {G.dtype}")
    if mask is None:
        mask = torch.ones(B, M, dtype=torch.bool, device=G.device)
    else:
        mask = mask.to(device=G.device, dtype=torch.bool)
        if mask.shape != (B, M):
            raise ValueError(f"mask must have shape (B, M) = {(B, M)}, got {tuple(mask.shape)}")
        if not bool(mask.any(-1).all()):
            raise ValueError("every batch element needs at least one valid (mask=True) entry")
    if backend not in ("auto", "torch", "numba"):
        raise ValueError(f"unknown backend {backend!r}: use 'auto', 'torch' or 'numba'")
    use_numba = backend == "numba" or (backend == "auto" and G.device.type == "cpu" and numba_available())
    if use_numba:
        if G.device.type != "cpu":
            raise ValueError("backend='numba' runs on the CPU only; use backend='torch' for GPU tensors")
        if tol is None:
            tol = 1e-12 if G.dtype == torch.float64 else 1e-7
        from ._qp_numba import solve_batch  # noqa: PLC0415 - compiled lazily

        x0n = np.zeros((B, M)) if x0 is None else x0.detach().cpu().numpy().astype(np.float64)
        out = solve_batch(
            np.ascontiguousarray(G.detach().numpy(), dtype=np.float64),
            np.ascontiguousarray(c.detach().numpy(), dtype=np.float64),
            np.ascontiguousarray(mask.numpy()), np.ascontiguousarray(x0n), x0 is not None,
            int(iters), float(tol), int(check_every), bool(polish),
        )
        return torch.from_numpy(out).to(device=G.device, dtype=G.dtype)
    c = c.to(G.dtype)
    mf = mask.to(G.dtype)
    G = G * mf.unsqueeze(-1) * mf.unsqueeze(-2)
    c = c * mf
    if tol is None:
        tol = 1e-12 if G.dtype == torch.float64 else 1e-7
    thresh = tol * (1.0 + c.abs().amax(-1))
    L = _lipschitz(G, mf)
    step = (1.0 / L).unsqueeze(-1)

    x = project_simplex(x0.to(G.dtype) if x0 is not None else mf, mask)
    y = x.clone()
    t = torch.ones(B, 1, dtype=G.dtype, device=G.device)
    active = torch.ones(B, dtype=torch.bool, device=G.device)
    it = 0
    for it in range(1, iters + 1):
        g = (G @ y.unsqueeze(-1)).squeeze(-1) - c
        x_new = project_simplex(y - step * g, mask)
        # adaptive restart: drop momentum where it points uphill (O'Donoghue & Candes)
        restart = ((y - x_new) * (x_new - x)).sum(-1, keepdim=True) > 0
        t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        y_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
        y_new = torch.where(restart, x_new, y_new)
        t_new = torch.where(restart, torch.ones_like(t_new), t_new)
        a = active.unsqueeze(-1)
        x = torch.where(a, x_new, x)
        y = torch.where(a, y_new, y)
        t = torch.where(a, t_new, t)
        if it % check_every == 0:
            active &= frank_wolfe_gap(G, c, x, mask) > thresh
            if not bool(active.any()):
                break
    if polish:
        x = _polish(G, c, x, mask)
    if x0 is not None:  # never worse than the (projected) warm start
        xs = project_simplex(x0.to(G.dtype), mask)
        x = torch.where((simplex_qp_objective(G, c, xs) < simplex_qp_objective(G, c, x)).unsqueeze(-1), xs, x)
    logger.debug("simplex QP: B=%d M=%d, %d iterations, %d not converged", B, M, it, int(active.sum()))
    return x
