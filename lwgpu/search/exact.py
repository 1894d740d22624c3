"""Exact top-k search by squared MMD over a SpecBank, batched over queries, tiled over the bank.

The bank is scanned in chunks; each chunk's (Q, chunk) distances are merged into a running top-k,
so memory stays O(Q * (k + chunk)) whatever N is (a memory-mapped bank is read once, tile by tile).
Ties (equal distances) are broken by the smaller id, so results are deterministic.

With ``pivots=Pivots(bank)`` the scan is pruned without approximation: ``sqrt(dist)`` is a metric, so
``|sqrt d(q,p) - sqrt d(x,p)|`` bounds ``sqrt d(q,x)`` from below for every pivot p; specs are visited in
order of that bound and the scan stops once the k-th best distance is below the next bound (minus a
slack covering float32 rounding of the distances).
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


class Pivots:
    """Pivot specs and their sqrt-MMD to every bank spec, for exact pruning in :func:`search_exact`.

    Pivots are chosen farthest-first (the first at random with ``seed``); building costs ``m`` full scans.
    The table is tied to the bank's ids when built: after ``add``/``remove``, build it again.

    Attributes: ``ids`` (N,) the bank ids it was built for, ``pivots`` (SpecBank of m specs),
    ``table`` float64 (N, m) ``sqrt(dist(spec_n, pivot_p))``, ``slack`` (float) rounding allowance,
    ``last_visited``: fraction of the bank the last pruned search evaluated. When the bounds cannot
    exclude half the bank after the first candidates (distances concentrate), that query falls back to
    the plain scan.
    """

    def __init__(self, bank: SpecBank, m: int = 16, seed: int = 0, backend: str = "auto", device: Any = "auto",
                 rel_tol: float = 1e-5) -> None:
        from ..kernels import mmd2

        if len(bank) == 0:
            raise ValueError("cannot build pivots for an empty bank")
        if m < 1:
            raise ValueError(f"m (number of pivots) must be >= 1, got {m}")
        m = min(int(m), len(bank))
        chosen = [int(np.random.default_rng(seed).integers(len(bank)))]
        cols, nearest = [], np.full(len(bank), np.inf)
        for t in range(m):
            p = chosen[-1]
            dist = mmd2(bank.rows(p, p + 1), bank, backend=backend, device=device)[0].cpu().numpy()
            cols.append(np.sqrt(dist))
            nearest = np.minimum(nearest, dist)
            if t + 1 < m:
                chosen.append(int(np.argmax(nearest)))
        self.ids = bank.ids.copy()
        self.pivots = bank.subset(bank.ids[chosen])
        self.table = np.stack(cols, 1)
        # |dist error| <= rel_tol * (terms) <= rel_tol * 4 max self term; |sqrt a - sqrt b| <= sqrt|a - b|,
        # and the bound compares three such rounded square roots
        self.slack = 3.0 * float(np.sqrt(rel_tol * 4.0 * float(bank.self_inner.max())))
        self.last_visited: float = float("nan")  # fraction of the bank the last pruned search evaluated

    def check(self, bank: SpecBank) -> None:
        if len(bank) != len(self.ids) or not np.array_equal(bank.ids, self.ids):
            raise ValueError("these pivots were built for another state of the bank (ids differ); "
                             "rebuild them with Pivots(bank) after add/remove")

    def lower_bounds(self, dq: np.ndarray) -> np.ndarray:
        """(N,) lower bounds on sqrt(dist(q, spec_n)) given dq (m,) = sqrt(dist(q, pivot_p))."""
        lb = np.abs(self.table[:, 0] - dq[0])
        for p in range(1, self.table.shape[1]):
            np.maximum(lb, np.abs(self.table[:, p] - dq[p]), out=lb)
        return np.maximum(lb - self.slack, 0.0, out=lb)


def _gather(bank: SpecBank, pos: np.ndarray) -> SpecBank:
    """Rows ``pos`` of the bank as a new (copied) bank; numpy row copies on the CPU (faster than index_select)."""
    out = SpecBank(bank.gamma, bank.d, bank.K, dtype=bank.dtype, device=bank.device)
    if bank.device.type == "cpu":
        z, b, s = (torch.from_numpy(np.take(t.numpy(), pos, axis=0)) for t in (bank.z, bank.beta, bank.self_inner))
    else:
        idx = torch.as_tensor(pos, device=bank.device)
        z, b, s = (t.index_select(0, idx) for t in (bank.z, bank.beta, bank.self_inner))
    out._set_arrays(bank.ids[pos], z, b, bank.counts[pos], s)
    return out


def _search_pruned(bank, qbank, k, pivots, backend, device, chunk, options, fallback: float = 0.5):
    from ..kernels import mmd2

    pivots.check(bank)
    dq_all = np.sqrt(mmd2(qbank, pivots.pivots, backend=backend, device=device).cpu().numpy())
    n = len(bank)
    out_d, out_i, visited = [], [], 0
    for qi in range(len(qbank)):
        lb = pivots.lower_bounds(dq_all[qi])
        order = np.argsort(lb, kind="stable")
        q1 = qbank.rows(qi, qi + 1)
        best_d, best_i = np.empty((1, 0)), np.empty((1, 0), np.int64)
        pos, step = 0, max(4 * k, 256)
        while pos < n:
            cand = np.sort(order[pos : pos + step])
            sub = _gather(bank, cand)
            dist = mmd2(q1, sub, backend=backend, device=device, **options).cpu().numpy()
            best_d, best_i = merge_topk(np.concatenate([best_d, dist], 1),
                                        np.concatenate([best_i, sub.ids[None, :]], 1), k)
            pos += len(cand)
            step = min(2 * step, chunk)
            if best_d.shape[1] == min(k, n) and pos < n:
                kth = np.sqrt(best_d[0, -1])
                if kth < lb[order[pos]]:
                    break
                if pos == len(cand) and np.count_nonzero(lb <= kth) > fallback * n:
                    # the bounds cannot prune enough (distances concentrate): plain scan of the bank
                    best_d, best_i = _scan(bank, q1, k, backend, device, chunk, options)
                    pos = n
                    break
        visited += pos
        out_d.append(best_d[0])
        out_i.append(best_i[0])
    pivots.last_visited = visited / max(1, n * len(qbank))
    logger.debug("pruned search visited %.1f%% of the bank", 100.0 * pivots.last_visited)
    return np.stack(out_d), np.stack(out_i)


def _scan(bank, qbank, k, backend, dev, chunk, options) -> tuple[np.ndarray, np.ndarray]:
    """Full tiled scan with a running top-k merge (the default search path)."""
    n, q = len(bank), len(qbank)
    best_d = np.empty((q, 0), np.float64)
    best_i = np.empty((q, 0), np.int64)
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


def search_exact(
    bank: SpecBank,
    query: Any,
    k: int = 10,
    backend: str = "auto",
    device: Any = "auto",
    chunk: int = 65536,
    pivots: Pivots | None = None,
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
    pivots : Pivots, optional
        A pivot table of this bank: visit specs by their metric lower bound and stop early (exact).

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
    if pivots is not None:
        return _search_pruned(bank, qbank, k, pivots, backend, dev, int(chunk), options)
    return _scan(bank, qbank, k, backend, dev, int(chunk), options)
