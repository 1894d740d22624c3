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

__all__ = ["kmeans_pp_init", "lloyd", "kmeans", "seeding_blocks", "seeding_uniforms", "dataset_draws"]


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


def _gather_rows(X: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """X (B, n, d), idx (B,) -> (B, d)."""
    return X.gather(1, idx.view(-1, 1, 1).expand(-1, 1, X.shape[-1])).squeeze(1)


def dataset_draws(x: torch.Tensor, K: int, seed: int, max_points: int) -> tuple[torch.Tensor, int]:
    """A dataset's random draws for a fit: its rows for the z steps (a sorted uniform subsample of
    ``max(min(n, max_points), K)`` rows, or x itself) and the seed of its k-means++ uniforms, both
    from one generator seeded with the dataset's own seed."""
    g = torch.Generator().manual_seed(int(seed))
    S = max(min(x.shape[0], int(max_points)), K)
    if S < x.shape[0]:
        x = x[torch.randperm(x.shape[0], generator=g)[:S].sort().values.to(x.device)]
    return x, int(torch.randint(0, 2**62, (1,), generator=g))


def seeding_blocks(K: int, rounds: int | None) -> list[int]:
    """Centres drawn in each round of the blocked seeding: ``[1, m_1, ..., m_R]``, summing to K.

    Round 0 draws the first centre uniformly; ``rounds=None`` (or >= K - 1) gives classic k-means++
    (one centre per D^2 draw), a smaller number R splits the other K - 1 into R near-equal blocks.
    """
    if K <= 1:
        return [1]
    R = K - 1 if rounds is None else max(1, min(int(rounds), K - 1))
    return [1] + [len(a) for a in torch.arange(K - 1).tensor_split(R)]


def seeding_uniforms(seeds: Sequence[int], counts: Sequence[int], rounds: int, width: int) -> torch.Tensor:
    """(B, rounds, width) uniforms in (0, 1); dataset b draws (rounds, counts[b]) from its own seed.

    Row r serves seeding round r; both fit engines take their k-means++ draws from here."""
    out = torch.full((len(seeds), rounds, width), 0.5, dtype=torch.float64)
    for b, (s, n) in enumerate(zip(seeds, counts)):
        g = torch.Generator().manual_seed(int(s))
        out[b, :, :n] = torch.rand(rounds, n, generator=g, dtype=torch.float64).clamp_min_(1e-300)
    return out


@torch.no_grad()
def kmeans_pp_init(
    X: torch.Tensor, mask: torch.Tensor | None, K: int, seeds: Sequence[int], rounds: int | None = None
) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling): X (B, n, d), mask (B, n) valid rows -> centres (B, K, d).

    ``seeds`` has one integer per dataset; the draws depend only on that seed and the dataset.
    ``rounds=None`` (or >= K - 1) is classic k-means++, one centre per D^2 draw. A smaller number
    draws the centres in that many blocks, each block sampled without replacement in proportion to
    D^2 (Gumbel top-k, as in k-means||): far fewer sequential steps for nearly the same seeding.
    """
    mask = _check(X, mask, K)
    B, n, d = X.shape
    if len(seeds) != B:
        raise ValueError(f"need one seed per dataset: got {len(seeds)} seeds for {B} datasets")
    counts = mask.sum(-1)
    per = seeding_blocks(K, rounds)
    R = len(per) - 1
    u = seeding_uniforms(seeds, counts.tolist(), R + 1, n).to(X.device)
    mf = mask.to(X.dtype)
    x2 = (X * X).sum(-1)
    first = (u[:, 0, 0] * counts).long().clamp_max(counts - 1)
    valid_pos = torch.cumsum(mask.long(), -1)  # the j-th valid row need not be row j
    first = torch.searchsorted(valid_pos, (first + 1).unsqueeze(-1)).squeeze(-1)
    chosen = [_gather_rows(X, first).unsqueeze(1)]

    def d2_to(c: torch.Tensor) -> torch.Tensor:  # c (B, m, d) -> (B, n) distance to nearest of c
        cross = torch.baddbmm((c * c).sum(-1).unsqueeze(1), X, c.transpose(1, 2), alpha=-2.0)
        return (cross.amin(-1) + x2).clamp_min_(0.0)

    if K == 1:
        return chosen[0]
    D2 = d2_to(chosen[0]) * mf
    for r in range(1, R + 1):
        m = per[r]
        w = D2.to(torch.float64)
        # Efraimidis-Spirakis / Gumbel top-k: largest log(u)/w is a weighted draw without replacement
        keys = torch.where(w > 0, torch.log(u[:, r]) / w, torch.full_like(w, float("-inf")))
        keys = torch.where(mask, keys, torch.full_like(w, -float("inf")))
        # datasets with fewer positive-weight rows than m (duplicates) fall back to valid rows
        keys = torch.where((w <= 0) & mask, torch.full_like(w, -1e300) + u[:, r], keys)
        idx = keys.topk(m, dim=-1).indices  # (B, m)
        c = X.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
        chosen.append(c)
        if r < R:
            D2 = torch.minimum(D2, d2_to(c) * mf)
    return torch.cat(chosen, 1)


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
    X: torch.Tensor, mask: torch.Tensor | None, K: int, seeds: Sequence[int], iters: int = 10, tol: float = 1e-4,
    rounds: int | None = None,
) -> torch.Tensor:
    """Seeded k-means++ (``rounds`` as in :func:`kmeans_pp_init`) then Lloyd: X (B, n, d) -> (B, K, d)."""
    C = kmeans_pp_init(X, mask, K, seeds, rounds=rounds)
    return lloyd(X, mask, C, iters=iters, tol=tol) if iters > 0 else C
