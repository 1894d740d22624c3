"""The torch engine of :func:`lwgpu.spec.fit.fit_arrays`: datasets in padded (B, n, d) batches.

The GPU path (one batch fits hundreds of datasets at once), and an option on the CPU, where per-op
overhead bounds it. The algorithm is the one described in :mod:`lwgpu.spec.fit`.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from ..device import single_torch_thread
from ..kernels.torch_backend import sqdist
from .kmeans import dataset_draws, kmeans_pp_init, lloyd
from .qp import solve_simplex_qp

logger = logging.getLogger(__name__)


def _kernel(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    return torch.exp(sqdist(a, b).mul_(-gamma))


class _Batch:
    """Padded batch state: subsampled data, z, beta and the kernel blocks at the current z."""

    def __init__(self, Xs: torch.Tensor, mask: torch.Tensor, z: torch.Tensor, gamma: float) -> None:
        self.Xs, self.mask, self.gamma = Xs, mask, gamma
        self.XsT = Xs.transpose(1, 2)
        self.padded = not bool(mask.all())
        self.mf = mask.to(Xs.dtype).unsqueeze(1)  # (B, 1, S)
        self.n = self.mf.sum(-1)  # (B, 1)
        self.x2 = (Xs * Xs).sum(-1).unsqueeze(1)  # (B, 1, S)
        self.set_z(z)

    def kernels(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Kzx (B,K,S) masked, m (B,K), Kzz (B,K,K)) at z; few fused in-place ops (overhead-bound)."""
        g = -self.gamma
        z2 = (z * z).sum(-1, keepdim=True)  # (B, K, 1)
        Kzx = torch.baddbmm(z2 + self.x2, z, self.XsT, alpha=-2.0).clamp_min_(0.0).mul_(g).exp_()
        if self.padded:
            Kzx.mul_(self.mf)
        m = Kzx.sum(-1).div_(self.n)
        Kzz = torch.baddbmm(z2 + z2.transpose(1, 2), z, z.transpose(1, 2), alpha=-2.0).clamp_min_(0.0).mul_(g).exp_()
        return Kzx, m, Kzz

    def set_z(self, z: torch.Tensor) -> None:
        self.z = z
        self.Kzx, self.m, self.Kzz = self.kernels(z)

    def objective(self, beta: torch.Tensor, m: torch.Tensor | None = None, Kzz: torch.Tensor | None = None):
        """J = beta'K_zz beta - 2 beta'm, (B,)."""
        m = self.m if m is None else m
        Kzz = self.Kzz if Kzz is None else Kzz
        return (beta * (Kzz @ beta.unsqueeze(-1)).squeeze(-1)).sum(-1) - 2.0 * (beta * m).sum(-1)

    def direction(self, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_i - A_i) (B,K,d) and the preconditioner D (B,K); gradient = 4 gamma beta_i (B_i - A_i)."""
        z = self.z
        Wx = (self.Kzx @ self.Xs).div_(self.n.unsqueeze(-1))
        P = self.Kzz * beta.unsqueeze(1)
        s = P.sum(-1)
        A = s.unsqueeze(-1) * z - P @ z
        Bt = self.m.unsqueeze(-1) * z - Wx
        D = torch.maximum(self.m, s).clamp_min(torch.finfo(z.dtype).tiny)
        return Bt - A, D


def _solve_beta(Kzz: torch.Tensor, c: torch.Tensor, beta0: torch.Tensor, iters: int, polish: bool = False):
    """QP for beta warm-started at beta0 (the solver never returns worse than its warm start).

    Inside the rounds FISTA alone is enough (the next round moves z anyway); the final solve
    adds the active-set polish for an exact beta."""
    return solve_simplex_qp(Kzz, c, x0=beta0, iters=iters, polish=polish)


def _uniform(batch: _Batch) -> torch.Tensor:
    B, K, _ = batch.z.shape
    return torch.full((B, K), 1.0 / K, dtype=batch.z.dtype, device=batch.z.device)


def _optimise(batch: _Batch, steps: int, opts: dict[str, Any], beta: torch.Tensor | None = None) -> torch.Tensor:
    """Run the rounds on a batch from beta (default: solved at the initial z); returns beta (B, K)
    and leaves the final z in batch.z."""
    B, K, _ = batch.z.shape
    if beta is None:
        beta = _solve_beta(batch.Kzz, batch.m, _uniform(batch), opts["qp_iters"])
    step_size = opts["step_size"]
    eta = torch.ones(B, dtype=batch.z.dtype, device=batch.z.device)
    active = torch.ones(B, dtype=torch.bool, device=batch.z.device)
    J = batch.objective(beta)
    for r in range(steps):
        dirn, D = batch.direction(beta)
        if step_size is not None:  # reference scheme: z <- z - step * exact gradient
            batch.set_z(batch.z - float(step_size) * 4.0 * batch.gamma * beta.unsqueeze(-1) * dirn)
        else:
            z_new = batch.z - eta.view(-1, 1, 1) * dirn / D.unsqueeze(-1)
            Kzx, m, Kzz = batch.kernels(z_new)
            J_new = batch.objective(beta, m, Kzz)
            acc = (J_new <= J) & active
            if bool(acc.all()):
                batch.z, batch.Kzx, batch.Kzz, batch.m = z_new, Kzx, Kzz, m
            else:
                a3 = acc.view(-1, 1, 1)
                batch.z = torch.where(a3, z_new, batch.z)
                batch.Kzx = torch.where(a3, Kzx, batch.Kzx)
                batch.Kzz = torch.where(a3, Kzz, batch.Kzz)
                batch.m = torch.where(acc.unsqueeze(-1), m, batch.m)
            eta = torch.where(acc, (eta * 1.5).clamp_max(opts["max_eta"]), eta * 0.5)
            active &= eta >= opts["min_eta"]
        beta_new = _solve_beta(batch.Kzz, batch.m, beta, opts["qp_iters"])
        beta = torch.where(active.unsqueeze(-1), beta_new, beta) if step_size is None else beta_new
        J = batch.objective(beta)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("round %d: J=%s eta=%s", r, J.tolist()[:4], eta.tolist()[:4])
        if step_size is None and not bool(active.any()):
            break
    return beta


def _full_mean_kernel(z: torch.Tensor, x: torch.Tensor, gamma: float, chunk: int) -> torch.Tensor:
    """m_i = 1/n sum_j k(z_i, x_j) over every row of x (n, d), in tiles: (K,)."""
    acc = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    for i in range(0, x.shape[0], chunk):
        acc += _kernel(z, x[i : i + chunk], gamma).sum(-1, dtype=torch.float64)
    return (acc / x.shape[0]).to(z.dtype)

def _fit_batch(xs: list[torch.Tensor], K: int, gamma: float, steps: int, seeds: list[int],
               opts: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fit one batch of centred datasets with the same d and K: returns [(z (K,d), beta (K,))]."""
    dev, dt = xs[0].device, xs[0].dtype
    B, d = len(xs), xs[0].shape[1]
    subs, gens = [], []
    for x, s in zip(xs, seeds):
        sub, kseed = dataset_draws(x, K, s, opts["max_points"])
        subs.append(sub)
        gens.append(kseed)
    S_max = max(s.shape[0] for s in subs)
    Xs = torch.zeros(B, S_max, d, dtype=dt, device=dev)
    mask = torch.zeros(B, S_max, dtype=torch.bool, device=dev)
    for b, s in enumerate(subs):
        Xs[b, : s.shape[0]] = s
        mask[b, : s.shape[0]] = True
    seeds_z = kmeans_pp_init(Xs, mask, K, gens, rounds=opts["kmeans_rounds"])  # data points, D^2-spread
    z0 = lloyd(Xs, mask, seeds_z, iters=int(opts["kmeans_iters"])) if opts["kmeans_iters"] > 0 else seeds_z
    batch = _Batch(Xs, mask, z0, gamma)
    beta = None
    if opts["kmeans_iters"] > 0:
        # In high dimension (relative to the kernel width) centroids embed worse than data points;
        # start each dataset from whichever of the two gives the lower objective with optimal beta.
        beta = _solve_beta(batch.Kzz, batch.m, _uniform(batch), int(opts["qp_iters"]))
        alt = _Batch(Xs, mask, seeds_z, gamma)
        b_s = _solve_beta(alt.Kzz, alt.m, _uniform(alt), int(opts["qp_iters"]))
        use = alt.objective(b_s) < batch.objective(beta)
        if bool(use.any()):
            batch.set_z(torch.where(use.view(-1, 1, 1), seeds_z, z0))
            beta = torch.where(use.unsqueeze(-1), b_s, beta)
    beta = _optimise(batch, steps, opts, beta)
    # final exact beta for every dataset of the batch at once, with c = m(z) over all rows
    c = torch.stack([
        batch.m[b] if subs[b] is x else _full_mean_kernel(batch.z[b], x, gamma, int(opts["chunk_rows"]))
        for b, x in enumerate(xs)
    ])
    beta = _solve_beta(batch.Kzz, c, beta, int(opts["final_qp_iters"]), polish=True)
    return [(batch.z[b], beta[b]) for b in range(B)]

def fit_all(xs: list[torch.Tensor], Ks: list[int], gamma: float, steps: int, seeds: list[int],
            opts: dict[str, Any], dev: torch.device, bar: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Centred host datasets xs (n_i, d_i) with K_i points each, grouped by (d, K) into padded
    batches under ``batch_memory``, fitted on ``dev``: [(z (K_i, d_i), beta (K_i,))] in input order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (x, k) in enumerate(zip(xs, Ks)):
        groups.setdefault((x.shape[1], k), []).append(i)
    itemsize = torch.finfo(xs[0].dtype).bits // 8
    batches = []
    for (d, Kg), idx in groups.items():
        idx.sort(key=lambda i: xs[i].shape[0])
        cur: list[int] = []
        for i in idx:
            S = max(min(xs[i].shape[0], int(opts["max_points"])), Kg)
            per = 4 * S * (Kg + d) * itemsize
            if cur and per * (len(cur) + 1) > opts["batch_memory"]:
                batches.append((Kg, cur))
                cur = []
            cur.append(i)
        batches.append((Kg, cur))
    out: list[Any] = [None] * len(xs)
    for Kg, idx in batches:
        work = sum(max(min(xs[i].shape[0], int(opts["max_points"])), Kg) * Kg * (xs[i].shape[1] + 8) for i in idx)
        small = dev.type == "cpu" and work < opts["small_work"]
        with single_torch_thread(small):
            fitted = _fit_batch([xs[i].to(dev) for i in idx], Kg, gamma, steps, [seeds[i] for i in idx], opts)
        for i, zb in zip(idx, fitted):
            out[i] = zb
        bar.update(len(idx))
    logger.debug("torch engine: %d datasets in %d batches", len(xs), len(batches))
    return out
