"""Seeded k-means (k-means++ seeding + Lloyd iterations) in torch, batched over padded datasets.

Every dataset in a batch draws its random numbers from its own ``torch.Generator`` seeded with its
own seed, and converged datasets are frozen, so a dataset gets the same centres whether it is
clustered alone or inside a batch (up to floating-point rounding).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["kmeans_pp_init", "lloyd", "kmeans"]


def _check(X: torch.Tensor, mask: torch.Tensor | None, K: int) -> torch.Tensor:
    if X.dim() != 3:
        raise ValueError(f"X must have shape (B, n, d), got {tuple(X.shape)}")
    if mask is None:
        mask = torch.ones(X.shape[:2], dtype=torch.bool, device=X.device)
    if mask.shape != X.shape[:2]:
        raise ValueError(f"mask must have shape (B, n) = {tuple(X.shape[:2])}, got {tuple(mask.shape)}")
    counts = mask.sum(-1)
    if int(counts.min()) < 1:
        raise ValueError("every dataset in the batch needs at least one valid row")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    return mask


def _uniforms(seeds: Sequence[int], K: int) -> torch.Tensor:
    """(B, K) uniforms, row b from a generator seeded with seeds[b]."""
    rows = [torch.rand(K, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(rows)


def _gather_rows(X: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """X (B, n, d), idx (B,) -> (B, d)."""
    return X.gather(1, idx.view(-1, 1, 1).expand(-1, 1, X.shape[-1])).squeeze(1)


@torch.no_grad()
def kmeans_pp_init(X: torch.Tensor, mask: torch.Tensor | None, K: int, seeds: Sequence[int]) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling): X (B, n, d), mask (B, n) valid rows -> centres (B, K, d).

    ``seeds`` has one integer per dataset; the draws depend only on that seed and the dataset.
    """
    mask = _check(X, mask, K)
    B, n, d = X.shape
    if len(seeds) != B:
        raise ValueError(f"need one seed per dataset: got {len(seeds)} seeds for {B} datasets")
    u = _uniforms(seeds, K).to(X.device)
    counts = mask.sum(-1)
    mf = mask.to(X.dtype)
    x2 = (X * X).sum(-1)
    C = torch.empty(B, K, d, dtype=X.dtype, device=X.device)
    first = (u[:, 0] * counts).long().clamp_max(counts - 1)
    # valid rows may not be a prefix: map the j-th valid row to its position
    valid_pos = torch.cumsum(mask.long(), -1)
    first = torch.searchsorted(valid_pos, (first + 1).unsqueeze(-1)).squeeze(-1)
    C[:, 0] = _gather_rows(X, first)

    def d2_to(c: torch.Tensor) -> torch.Tensor:  # c (B, d) -> (B, n)
        return (x2 - 2.0 * (X @ c.unsqueeze(-1)).squeeze(-1) + (c * c).sum(-1, keepdim=True)).clamp_min_(0.0)

    D2 = d2_to(C[:, 0]) * mf
    for k in range(1, K):
        cs = torch.cumsum(D2.to(torch.float64), -1)
        total = cs[:, -1:]
        r = u[:, k : k + 1] * total
        idx = torch.searchsorted(cs, r, right=True).squeeze(-1)
        # all mass zero (duplicates): fall back to the first valid row
        idx = torch.where(total.squeeze(-1) > 0, idx, first).clamp_max(n - 1)
        C[:, k] = _gather_rows(X, idx)
        D2 = torch.minimum(D2, d2_to(C[:, k]) * mf)
    return C


@torch.no_grad()
def lloyd(
    X: torch.Tensor, mask: torch.Tensor | None, C: torch.Tensor, iters: int = 10, tol: float = 1e-4
) -> torch.Tensor:
    """Lloyd iterations from centres C (B, K, d); a dataset stops once its largest centre move
    (squared) is below ``tol`` times its mean squared feature spread. Empty clusters keep their centre.
    """
    mask = _check(X, mask, C.shape[1])
    B, n, d = X.shape
    K = C.shape[1]
    mf = mask.to(X.dtype)
    Xm = X * mf.unsqueeze(-1)
    counts = mf.sum(-1)
    mean = Xm.sum(1) / counts.unsqueeze(-1)
    spread = ((X - mean.unsqueeze(1)).pow(2).sum(-1) * mf).sum(-1) / counts / d
    thresh = tol * spread.clamp_min(torch.finfo(X.dtype).tiny)
    active = torch.ones(B, dtype=torch.bool, device=X.device)
    for _ in range(iters):
        c2 = (C * C).sum(-1).unsqueeze(1)  # (B, 1, K)
        score = torch.baddbmm(c2, X, C.transpose(1, 2), alpha=-2.0)  # |c|^2 - 2 x.c, (B, n, K)
        a = score.argmin(-1)  # (B, n)
        sums = torch.zeros(B, K, d, dtype=X.dtype, device=X.device).scatter_add_(
            1, a.unsqueeze(-1).expand(-1, -1, d), Xm
        )
        cnt = torch.zeros(B, K, dtype=X.dtype, device=X.device).scatter_add_(1, a, mf)
        newC = torch.where(cnt.unsqueeze(-1) > 0, sums / cnt.clamp_min(1.0).unsqueeze(-1), C)
        shift = (newC - C).pow(2).sum(-1).amax(-1)
        C = torch.where(active.view(-1, 1, 1), newC, C)
        active &= shift > thresh
        if not bool(active.any()):
            break
    return C


def kmeans(
    X: torch.Tensor, mask: torch.Tensor | None, K: int, seeds: Sequence[int], iters: int = 10, tol: float = 1e-4
) -> torch.Tensor:
    """Seeded k-means++ then Lloyd: X (B, n, d), mask (B, n) -> centres (B, K, d)."""
    C = kmeans_pp_init(X, mask, K, seeds)
    return lloyd(X, mask, C, iters=iters, tol=tol) if iters > 0 else C
