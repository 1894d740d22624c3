"""Exact top-k search by squared MMD over a SpecBank, batched over queries, tiled over the bank.

The bank is scanned in chunks; each chunk's (Q, chunk) distances are merged into a running top-k,
so memory stays O(Q * (k + chunk)) whatever N is (a memory-mapped bank is read once, tile by tile).
Ties (equal distances) are broken by the smaller id, so results are deterministic.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..bank import SpecBank, as_bank
from ..device import resolve_device
from ..kernels import check_compatible, cross_matrix

logger = logging.getLogger(__name__)


def merge_topk(d: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest of each row of ``d`` (Q, M), ties broken by ``ids`` (Q, M); sorted ascending."""
    q, m = d.shape
    k = min(k, m)
    if k == 0:
        return d[:, :0], ids[:, :0]
    if m > k:
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(d, part, 1).max(1)
        n_le = (d <= kth[:, None]).sum(1)
        dsel, isel = np.take_along_axis(d, part, 1), np.take_along_axis(ids, part, 1)
        for r in np.nonzero(n_le > k)[0]:  # a tie straddles the k-th place: take the smallest ids
            cand = np.nonzero(d[r] <= kth[r])[0]
            order = np.lexsort((ids[r, cand], d[r, cand]))[:k]
            dsel[r], isel[r] = d[r, cand[order]], ids[r, cand[order]]
    else:
        dsel, isel = d, ids
    order = np.lexsort((isel, dsel), axis=1)
    return np.take_along_axis(dsel, order, 1), np.take_along_axis(isel, order, 1)


def search_exact(
    bank: SpecBank,
    query: Any,
    k: int = 10,
    backend: str = "auto",
    device: Any = "auto",
    chunk: int = 65536,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest bank specs to each query by squared MMD.

    Parameters
    ----------
    bank : SpecBank
        N market specs.
    query : RKME | list[RKME] | SpecBank
        Q query specs, with the bank's d and gamma (ValueError otherwise).
    k : int
        Results per query; clipped to N. An empty bank gives (Q, 0) arrays.
    backend, device, **options
        As in :func:`lwgpu.kernels.mmd2`.
    chunk : int
        Bank specs scanned between top-k merges.

    Returns
    -------
    dists : np.ndarray float64 (Q, min(k, N)), ascending
    ids : np.ndarray int64 (Q, min(k, N))
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not isinstance(bank, SpecBank):
        raise ValueError(f"bank must be a SpecBank, got {type(bank).__name__}")
    qbank = as_bank(query)
    check_compatible(qbank, bank)
    n, q = len(bank), len(qbank)
    best_d = np.empty((q, 0), np.float64)
    best_i = np.empty((q, 0), np.int64)
    if n == 0:
        logger.warning("search_exact on an empty bank: returning (Q, 0) results")
        return best_d, best_i
    dev = resolve_device(device)
    sq = qbank.self_inner.to(dev)
    for s in range(0, n, max(1, int(chunk))):
        e = min(s + int(chunk), n)
        cross = cross_matrix(qbank, bank, backend=backend, device=dev, start=s, stop=e, **options)
        dist = cross.mul_(-2.0).add_(sq[:, None]).add_(bank.self_inner[s:e].to(dev)[None, :]).clamp_min_(0.0)
        kk = min(k, e - s)
        if dist.shape[1] > 4 * kk:  # pre-select on the device (k + a margin for ties), then merge exactly
            vals, idx = torch.topk(dist, min(e - s, 2 * kk + 8), dim=1, largest=False, sorted=False)
            kth = vals.max(1).values
            if bool((dist <= kth[:, None]).sum(1).gt(vals.shape[1]).any()):  # ties beyond the margin
                d_np, i_np = dist.cpu().numpy(), np.broadcast_to(bank.ids[s:e], (q, e - s))
            else:
                d_np, i_np = vals.cpu().numpy(), bank.ids[s:e][idx.cpu().numpy()]
        else:
            d_np, i_np = dist.cpu().numpy(), np.broadcast_to(bank.ids[s:e], (q, e - s))
        best_d, best_i = merge_topk(np.concatenate([best_d, d_np], 1), np.concatenate([best_i, i_np], 1), k)
    return best_d, best_i
