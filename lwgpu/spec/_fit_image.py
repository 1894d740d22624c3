"""Fitting internals of :class:`lwgpu.spec.image.ImageRKME`: chunked NNGP cross terms, kernel herding, and the
batched fit (Adam steps on the exact squared MMD in the NNGP kernel, exact simplex QP for ``beta``)."""
from __future__ import annotations

import logging
import math
import numpy as np
import torch

from ..kernels.nngp import ConvNNGP, DiagMaps, NNGPConfig
from .qp import solve_simplex_qp

logger = logging.getLogger(__name__)

#: Images are resized to IMAGE_WIDTH x IMAGE_WIDTH (the reference's size).
IMAGE_WIDTH = 32


# ----------------------------------------------------------------------------------------------
# fitting internals
# ----------------------------------------------------------------------------------------------

def _chunked_cross(kern: ConvNNGP, a: torch.Tensor, b: torch.Tensor, da: DiagMaps, db: DiagMaps,
                   same: bool = False, chunk_pairs: int = 20000) -> torch.Tensor:
    """k(a_i, b_j) (Na, Nb) computed over column chunks of b (no autograd); ``same`` needs a is b."""
    Na, Nb = a.shape[0], b.shape[0]
    step = max(1, chunk_pairs // max(Na, 1))
    if same and step < Nb:
        out = torch.empty(Na, Nb, dtype=kern.dtype, device=a.device)
        for s in range(0, Nb, step):
            e = min(Nb, s + step)
            blk = kern.cross(a, b[s:e], da, db.index(slice(s, e)))
            idx = torch.arange(s, e, device=a.device)
            blk[idx, idx - s] = da.self_k[s:e].to(blk.dtype)  # the exact diagonal
            out[:, s:e] = blk
        return out
    if same:
        return kern.gram(a, da)
    return torch.cat([kern.cross(a, b[s:s + step], da, db.index(slice(s, s + step))) for s in range(0, Nb, step)], 1)


def _herding(kern: ConvNNGP, pool: torch.Tensor, K: int) -> torch.Tensor:
    """Indices of K pool points chosen by kernel herding against the pool's own mean embedding."""
    with torch.no_grad():
        G = _chunked_cross(kern, pool, pool, kern.diag(pool), kern.diag(pool), same=True)
    mu = G.mean(1)
    acc = torch.zeros_like(mu)
    chosen = torch.zeros(pool.shape[0], dtype=torch.bool, device=pool.device)
    sel = []
    for t in range(K):
        score = mu - acc / (t + 1)
        score[chosen] = -math.inf
        i = int(torch.argmax(score))
        sel.append(i)
        chosen[i] = True
        acc += G[:, i]
    return torch.tensor(sel, device=pool.device)


def _fit_batch(xs: list[torch.Tensor], K: int, steps: int, lr: float, herding_pool: int,
               gens: list[np.random.Generator], config: NNGPConfig,
               chunk_pairs: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Herding init + (Adam on z, QP on beta) for D datasets of one channel count at once."""
    kern = ConvNNGP(config, torch.float64)
    D = len(xs)
    dev = xs[0].device
    n_max = max(x.shape[0] for x in xs)
    C = xs[0].shape[1]
    # padded data (D, n_max, C, 32, 32) and weights w (D, n_max): 1/n_d on real images, 0 on padding
    xb = torch.zeros(D, n_max, C, IMAGE_WIDTH, IMAGE_WIDTH, dtype=torch.float64, device=dev)
    w = torch.zeros(D, n_max, dtype=torch.float64, device=dev)
    z0 = []
    for d, x in enumerate(xs):
        n = x.shape[0]
        xb[d, :n] = x.double()
        xb[d, n:] = x[:1].double()  # any real image: its weight is 0
        w[d, :n] = 1.0 / n
        pool_idx = np.sort(gens[d].choice(n, min(n, max(herding_pool, K)), replace=False))
        pool = x[torch.from_numpy(pool_idx).to(dev)].double()
        z0.append(pool[_herding(kern, pool, K)])
    with torch.no_grad():
        dx = kern.diag(xb)
    z = torch.stack(z0).clone().requires_grad_(steps > 0)
    step = max(1, chunk_pairs // K)

    def evaluate(zt: torch.Tensor, beta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Kzz (D, K, K) and kzx = Kzx w (D, K) at zt; backpropagates the loss for ``beta`` if given."""
        grad = beta is not None and zt.requires_grad
        with torch.set_grad_enabled(grad):
            dz = kern.diag(zt)
            kzz = kern.cross(zt, zt, dz, dz, same=True)
            if grad:
                (beta.unsqueeze(-1) * kzz * beta.unsqueeze(-2)).sum().backward(retain_graph=False)
                dz = kern.diag(zt)
            kzx = torch.zeros(D, K, dtype=torch.float64, device=dev)
            for s in range(0, n_max, step):
                e = min(n_max, s + step)
                kc = kern.cross(zt, xb[:, s:e], dz, dx.index((slice(None), slice(s, e))))
                part = (kc * w[:, None, s:e]).sum(-1)
                if grad:
                    (-2.0 * (beta * part).sum()).backward(retain_graph=e < n_max)
                kzx += part.detach()
        return kzz.detach(), kzx

    def qp(kzz: torch.Tensor, kzx: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
        return solve_simplex_qp(kzz, kzx, x0=x0)

    def objective(kzz: torch.Tensor, kzx: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return (beta.unsqueeze(-1) * kzz * beta.unsqueeze(-2)).sum((-2, -1)) - 2.0 * (beta * kzx).sum(-1)

    with torch.no_grad():
        kzz, kzx = evaluate(z.detach(), None)
    beta = qp(kzz, kzx, None)
    best_obj = objective(kzz, kzx, beta)
    best_z = z.detach().clone()
    best_beta = beta.clone()
    if steps > 0:
        opt = torch.optim.Adam([z], lr=lr)
        for t in range(steps):
            opt.zero_grad(set_to_none=True)
            kzz, kzx = evaluate(z, beta)  # values at z_t; gradient for (z_t, beta)
            beta = qp(kzz, kzx, beta)
            obj = objective(kzz, kzx, beta)
            better = obj < best_obj
            if bool(better.any()):
                best_obj = torch.where(better, obj, best_obj)
                best_z[better] = z.detach()[better]
                best_beta[better] = beta[better]
            logger.debug("image fit step %d: objective %s", t, obj.tolist())
            opt.step()
        with torch.no_grad():
            kzz, kzx = evaluate(z.detach(), None)
        beta_f = qp(kzz, kzx, beta)
        obj = objective(kzz, kzx, beta_f)
        better = obj < best_obj
        best_z[better] = z.detach()[better]
        best_beta[better] = beta_f[better]
    zs = [best_z[d].float() for d in range(D)]
    return zs, [best_beta[d] for d in range(D)]


# ----------------------------------------------------------------------------------------------
# banks
# ----------------------------------------------------------------------------------------------
