"""Tiled torch cross terms between query specs and a bank tile (CPU or GPU).

For a block of ``t`` bank specs, one GEMM on augmented rows gives every exponent ``-gamma |a-b|^2``; the
Gaussian is taken in place, contracted with the query weights (a batched GEMV) and then with the bank
weights in float64. No tensor larger than ``max_block_elems`` elements (plus O(t K d) copies of
the tile) is made: an ``N x K x K`` tensor never exists.
"""
from __future__ import annotations

from typing import Any

import torch


def cross_terms(
    qz: torch.Tensor,
    qb: torch.Tensor,
    bz: torch.Tensor,
    bb: torch.Tensor,
    gamma: float,
    max_block_elems: int = 1 << 22,
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
