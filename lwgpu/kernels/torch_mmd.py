"""Tiled torch cross terms between query specs and a bank tile (CPU or GPU).

For a block of ``t`` bank specs, one GEMM on augmented rows gives every exponent ``-gamma |a-b|^2``; the
Gaussian is taken in place, contracted with the query weights (a batched GEMV) and then with the bank
weights in float64. No tensor larger than ``max_block_elems`` elements (plus O(t K d) copies of
the tile) is made: an ``N x K x K`` tensor never exists.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import settings
from .backend import KernelBackend


def cross_terms(
    qz: torch.Tensor,
    qb: torch.Tensor,
    bz: torch.Tensor,
    bb: torch.Tensor,
    gamma: float,
    max_block_elems: int = settings.TORCH_BLOCK_MAX,
    stats: dict[str, Any] | None = None,
    **_: Any,
) -> torch.Tensor:
    """``<Q_q, B_n> = sum_ij qb[q,i] bb[n,j] k(qz[q,i], bz[n,j])`` for every pair.

    Parameters
    ----------
    qz, qb : (Q, Kq, d), (Q, Kq)
        Query points and weights (zero weights pad ragged queries), on the compute device.
    bz, bb : (T, K, d), (T, K)
        A bank tile; moved block by block to the query's device and dtype (so a memory-mapped
        or CPU bank can be scanned on a GPU).
    max_block_elems : int
        Largest kernel block (query points x bank points) materialised at once.
    stats : dict, optional
        Filled with ``max_block`` (largest block numel made), for memory tests.
    **_ :
        Options meant for other backends (e.g. ``accumulate``) are ignored: torch accumulates the
        query-point sums in the compute dtype and the bank-weight sums in float64.

    Returns
    -------
    torch.Tensor float64 (Q, T) on the query's device.
    """
    q, kq, d = qz.shape
    t, k, _ = bz.shape
    dev, dt = qz.device, qz.dtype
    out = torch.empty(q, t, dtype=torch.float64, device=dev)
    if q == 0 or t == 0:
        return out
    real = (qb != 0).reshape(-1, 1).to(dt)  # centre on the real (nonzero-weight) query points:
    center = (qz.reshape(-1, d) * real).sum(0) / real.sum().clamp_min(1.0)  # shift invariance keeps
    # |a|^2 + |b|^2 - 2ab accurate in float32 for data far from the origin
    qf = (qz - center).reshape(q * kq, d)
    ones = torch.ones(q * kq, 1, dtype=dt, device=dev)
    # augmented rows: [2g a, -g|a|^2, 1] . [b, 1, -g|b|^2] = -g |a - b|^2, so one GEMM gives the exponent
    qa = torch.cat([qf * (2.0 * gamma), (qf * qf).sum(-1, keepdim=True).mul_(-gamma), ones], 1)
    qbv = qb.reshape(q, 1, kq)
    step = max(1, int(max_block_elems) // max(1, q * kq * k))
    # one kernel block and one augmented-tile buffer, reused by every block: fresh 10-20 MB blocks
    # per step were kept by the allocator (glibc raises its mmap threshold after the first free),
    # which grew the CPU search by 0.7x the bank
    gbuf = torch.empty(q * kq * min(step, t) * k, dtype=dt, device=dev)
    zbuf = torch.empty(min(step, t) * k, d + 2, dtype=dt, device=dev)
    zbuf[:, d] = 1.0
    big = 0
    for s in range(0, t, step):
        e = min(s + step, t)
        m = (e - s) * k
        za = zbuf[:m]
        zt = za[:, :d]
        torch.sub(bz[s:e].to(dev, dt, non_blocking=True).reshape(m, d), center, out=zt)
        za[:, d + 1] = torch.einsum("ij,ij->i", zt, zt).mul_(-gamma)
        g = gbuf[: q * kq * m].view(q * kq, m)
        torch.mm(qa, za.T, out=g).exp_()  # (Q Kq, m): exp(-gamma |a - b|^2) (rounding may leave +1e-7)
        big = max(big, g.numel())
        r = torch.bmm(qbv, g.view(q, kq, m)).view(q, e - s, k)  # contract query points
        w = bb[s:e].to(dev, non_blocking=True).to(torch.float64)
        out[:, s:e] = torch.einsum("qtk,tk->qt", r.to(torch.float64), w)
    if stats is not None:
        stats["max_block"] = max(int(stats.get("max_block", 0)), big)
    return out


class TorchBackend(KernelBackend):
    """Torch on the CPU or a GPU, float32 or float64: the fallback everywhere and the float64 path.

    ``max_block_elems`` caps the largest (query points x bank points) kernel block made at once
    (default: 1/16 of the tile's own bytes, between ``settings.TORCH_BLOCK_MIN`` and ``TORCH_BLOCK_MAX``
    elements); queries are split so that a block holds at least ``settings.TORCH_SPECS_PER_BLOCK`` bank specs.
    """

    name = "torch"
    tile = settings.TILE_TORCH
    dtypes = (torch.float32, torch.float64)

    def __init__(self, device: Any = "cpu", dtype: Any = None, max_block_elems: int | None = None) -> None:
        super().__init__(device, dtype)
        self.max_block_elems = max_block_elems

    def cross(self, qz, qb, bz, bb, gamma, stats: dict[str, Any] | None = None) -> torch.Tensor:
        """float64 (Q, T) cross terms (see :meth:`KernelBackend.cross`); ``stats`` gets ``max_block``."""
        qz, qb = qz.to(self.device, self.dtype), qb.to(self.device, self.dtype)
        cap = self.max_block_elems or int(min(settings.TORCH_BLOCK_MAX,
                                              max(settings.TORCH_BLOCK_MIN, bz.numel() * bz.element_size() // 16)))
        per_block = settings.TORCH_SPECS_PER_BLOCK * qz.shape[1] * max(int(bz.shape[1]), 1)
        qstep = max(1, cap // max(1, per_block))
        if qstep >= qz.shape[0]:
            return cross_terms(qz, qb, bz, bb, gamma, max_block_elems=cap, stats=stats)
        return torch.cat([cross_terms(qz[s : s + qstep], qb[s : s + qstep], bz, bb, gamma, max_block_elems=cap,
                                      stats=stats) for s in range(0, qz.shape[0], qstep)])

    def mmd2_rows(self, queries: Any, bank: Any, positions: Any) -> torch.Tensor:
        """float64 (Q, C) squared MMD of each query to its own bank rows (``positions`` int (Q, C), -1 -> inf).

        Batched over queries (index re-ranking): each query's candidate points are gathered, centred on
        the query's real points (MMD is shift invariant), and one batched GEMM gives every exponent;
        blocks hold at most ``settings.INDEX_RERANK_TILE`` kernel values.
        """
        import math

        import numpy as np

        from .backend import rows_request, take_rows

        q, pos = rows_request(queries, bank, positions)
        nq, nc = pos.shape
        dev, dt, gamma = self.device, self.dtype, float(bank.gamma)
        kq, kb, d = int(q.z.shape[1]), int(bank.z.shape[1]), int(bank.z.shape[2])
        out = torch.full((nq, nc), math.inf, dtype=torch.float64, device=dev)
        step = max(1, settings.INDEX_RERANK_TILE // max(1, kq * nc * kb))
        with torch.no_grad():
            for s in range(0, nq, step):
                p = pos[s : s + step]
                m = len(p)
                flat = np.maximum(p, 0).reshape(-1)
                zc = take_rows(bank.z, flat).to(dev, dt).reshape(m, nc * kb, d)
                bc = take_rows(bank.beta, flat).to(dev, dt).reshape(m, nc, kb)
                sc = take_rows(bank.self_inner, flat).to(dev, torch.float64).reshape(m, nc)
                qz, qw = q.z[s : s + step].to(dev, dt), q.beta[s : s + step].to(dev, dt)
                real = (qw != 0).to(dt).unsqueeze(-1)
                centre = (qz * real).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp_min(1.0)
                qz, zc = qz - centre, zc.sub_(centre)
                # exponent -gamma (|a|^2 + |b|^2 - 2 a.b) from one batched GEMM, clamped at 0, exp in place
                base = (qz * qz).sum(-1, keepdim=True) + (zc * zc).sum(-1).unsqueeze(1)  # (m, Kq, C*K)
                kmat = base.baddbmm_(qz, zc.transpose(1, 2), beta=-gamma, alpha=2.0 * gamma).clamp_max_(0.0).exp_()
                cross = torch.bmm(qw.unsqueeze(1), kmat).reshape(m, nc, kb).to(torch.float64)
                cross = cross.mul_(bc.to(torch.float64)).sum(-1)
                sq = q.self_inner[s : s + step].to(dev, torch.float64)
                dist = (sq[:, None] - 2.0 * cross + sc).clamp_min_(0.0)
                out[s : s + step] = dist.masked_fill_(torch.as_tensor(p < 0, device=dev), math.inf)
        return out
