"""Exact top-k search by squared MMD over a SpecBank, batched over queries, tiled over the bank.

The backend (:mod:`lwgpu.kernels`) is resolved once per call and scans the bank in chunks; each chunk's
(Q, chunk) distances are merged into a running top-k, so memory stays O(Q * (k + chunk)) whatever N is
(a memory-mapped bank is read once, tile by tile). Ties (equal distances) are broken by the smaller id,
so results are deterministic. Results are :class:`~lwgpu.search.results.Neighbors`: always k columns,
``inf`` / ``-1`` after the real hits when the bank holds fewer than k specs.

With ``pivots=Pivots(bank)`` the scan is pruned without approximation: ``sqrt(dist)`` is a metric, so
``|sqrt d(q,p) - sqrt d(x,p)|`` bounds ``sqrt d(q,x)`` from below for every pivot p; specs are visited in
order of that bound (distances of chosen bank rows, computed in place) and the scan stops once the k-th
best distance is below the next bound (minus a slack covering float32 rounding of the distances).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .. import settings
from ..bank import SpecBank
from ..kernels import KernelBackend, Packed, backend_for
from ..spec.validation import check_same_kernel
from .results import Neighbors

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

    Pivots are chosen farthest-first (the first at random with ``seed``); building costs ``m`` full scans
    by ``backend`` (a name, resolved for the bank, or a :class:`~lwgpu.kernels.KernelBackend`).
    The table is tied to the bank's ids when built: after ``add``/``remove``, build it again.

    Attributes: ``ids`` (N,) the bank ids it was built for, ``pivots`` (SpecBank of m specs),
    ``table`` float64 (N, m) ``sqrt(dist(spec_n, pivot_p))``, ``slack`` (float) rounding allowance,
    ``last_visited``: fraction of the bank the last pruned search evaluated. When the bounds cannot
    exclude ``1 - settings.PRUNE_FALLBACK`` of the bank after the first candidates (distances
    concentrate), that query falls back to the plain scan.
    """

    def __init__(self, bank: SpecBank, m: int = settings.PIVOTS_M, seed: int = 0,
                 backend: "str | KernelBackend" = settings.BACKEND, device: Any = "auto",
                 rel_tol: float = settings.PIVOTS_REL_TOL) -> None:
        if len(bank) == 0:
            raise ValueError("cannot build pivots for an empty bank")
        if m < 1:
            raise ValueError(f"m (number of pivots) must be >= 1, got {m}")
        be = backend_for(bank, backend, device)
        packed = Packed.of(bank)
        m = min(int(m), len(bank))
        chosen = [int(np.random.default_rng(seed).integers(len(bank)))]
        cols, nearest = [], np.full(len(bank), np.inf)
        for t in range(m):
            p = chosen[-1]
            dist = be.mmd2(packed.rows(p, p + 1), bank)[0].cpu().numpy()
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
        """ValueError unless this table was built for the bank's current ids."""
        if len(bank) != len(self.ids) or not np.array_equal(bank.ids, self.ids):
            raise ValueError("these pivots were built for another state of the bank (ids differ); "
                             "rebuild them with Pivots(bank) after add/remove")

    def lower_bounds(self, dq: np.ndarray) -> np.ndarray:
        """(N,) lower bounds on sqrt(dist(q, spec_n)) given dq (m,) = sqrt(dist(q, pivot_p))."""
        lb = np.abs(self.table[:, 0] - dq[0])
        for p in range(1, self.table.shape[1]):
            np.maximum(lb, np.abs(self.table[:, p] - dq[p]), out=lb)
        return np.maximum(lb - self.slack, 0.0, out=lb)


def _search_pruned(be: KernelBackend, bank: SpecBank, q: Packed, k: int, pivots: Pivots, chunk: int,
                   tile: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per query: visit specs by increasing pivot bound (``be.mmd2(rows=...)``), stop when none can enter."""
    pivots.check(bank)
    dq_all = np.sqrt(be.mmd2(q, pivots.pivots).cpu().numpy())
    n = len(bank)
    out_d, out_i, visited = [], [], 0
    for qi in range(len(q)):
        lb = pivots.lower_bounds(dq_all[qi])
        order = np.argsort(lb, kind="stable")
        q1 = q.rows(qi, qi + 1)
        best_d, best_i = np.empty((1, 0)), np.empty((1, 0), np.int64)
        pos, step = 0, max(4 * k, settings.PRUNE_FIRST_STEP)
        while pos < n:
            cand = np.sort(order[pos : pos + step])
            dist = be.mmd2(q1, bank, rows=cand, tile=tile).cpu().numpy()
            best_d, best_i = merge_topk(np.concatenate([best_d, dist], 1),
                                        np.concatenate([best_i, bank.ids[cand][None, :]], 1), k)
            pos += len(cand)
            step = min(2 * step, chunk)
            if best_d.shape[1] == min(k, n) and pos < n:
                kth = np.sqrt(best_d[0, -1])
                if kth < lb[order[pos]]:
                    break
                if pos == len(cand) and np.count_nonzero(lb <= kth) > settings.PRUNE_FALLBACK * n:
                    # the bounds cannot prune enough (distances concentrate): plain scan of the bank
                    best_d, best_i = _scan(be, bank, q1, k, chunk, tile)
                    pos = n
                    break
        visited += pos
        out_d.append(best_d[0])
        out_i.append(best_i[0])
    pivots.last_visited = visited / max(1, n * len(q))
    logger.debug("pruned search visited %.1f%% of the bank", 100.0 * pivots.last_visited)
    return np.stack(out_d), np.stack(out_i)


def _scan(be: KernelBackend, bank: SpecBank, q: Packed, k: int, chunk: int,
          tile: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Full scan, one ``be.mmd2`` per chunk, with a running top-k merge (the default search path)."""
    n, nq = len(bank), len(q)
    best_d = np.empty((nq, 0), np.float64)
    best_i = np.empty((nq, 0), np.int64)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        dist = be.mmd2(q, bank, start=s, stop=e, tile=tile)
        kk = min(k, e - s)
        if dist.shape[1] > settings.TOPK_PRESELECT_RATIO * kk:
            # pre-select on the device (k + a margin for ties), then merge exactly
            keep = min(e - s, settings.TOPK_MARGIN_FACTOR * kk + settings.TOPK_MARGIN_EXTRA)
            vals, idx = torch.topk(dist, keep, dim=1, largest=False, sorted=False)
            kth = vals.max(1).values
            if bool((dist <= kth[:, None]).sum(1).gt(vals.shape[1]).any()):  # ties beyond the margin
                d_np, i_np = dist.cpu().numpy(), np.broadcast_to(bank.ids[s:e], (nq, e - s))
            else:
                d_np, i_np = vals.cpu().numpy(), bank.ids[s:e][idx.cpu().numpy()]
        else:
            d_np, i_np = dist.cpu().numpy(), np.broadcast_to(bank.ids[s:e], (nq, e - s))
        best_d, best_i = merge_topk(np.concatenate([best_d, d_np], 1), np.concatenate([best_i, i_np], 1), k)
    return best_d, best_i


def search_exact(
    bank: SpecBank,
    query: Any,
    k: int = settings.EXACT_K,
    backend: "str | KernelBackend" = settings.BACKEND,
    device: Any = "auto",
    chunk: int = settings.EXACT_CHUNK,
    pivots: Pivots | None = None,
    tile: int | None = None,
    **options: Any,
) -> Neighbors:
    """Exact k nearest bank specs to each query by squared MMD.

    Parameters
    ----------
    bank : SpecBank
        N market specs.
    query : RKME | list[RKME] | SpecBank
        Q query specs, with the bank's d and gamma (ValueError otherwise).
    k : int
        Results per query (>= 1).
    backend : name or :class:`~lwgpu.kernels.KernelBackend`
        Resolved once for the bank (:func:`lwgpu.kernels.backend_for`: float64 banks scan in float64 where
        the backend allows); a ready object is used as it is (its device wins over ``device``).
    device : ``"auto" | "cpu" | "cuda[:i]"``
        Where a named backend computes.
    chunk : int
        Bank specs scanned between top-k merges.
    pivots : Pivots, optional
        A pivot table of this bank: visit specs by their metric lower bound and stop early (exact).
    tile : int, optional
        Bank specs per kernel call (default: the backend's).
    **options
        Constructor options of a named backend (``accumulate`` for cuda, ``max_block_elems`` for torch).

    Returns
    -------
    Neighbors
        ``dists`` float64 (Q, k) ascending, ``ids`` int64 (Q, k); when N < k the last ``k - N`` slots of
        every row hold ``inf`` / ``-1`` (an empty bank gives only empty slots). ``method="exact"``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not isinstance(bank, SpecBank):
        raise ValueError(f"bank must be a SpecBank, got {type(bank).__name__}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    k, chunk = int(k), int(chunk)
    q = Packed.of(query)
    check_same_kernel(q.d, q.gamma, bank.d, bank.gamma, "the queries", "the bank")
    if len(bank) == 0:
        logger.warning("search_exact on an empty bank: every slot is empty (inf / -1)")
        return Neighbors.padded(np.empty((len(q), 0)), np.empty((len(q), 0), np.int64), k, "exact")
    be = backend_for(bank, backend, device, **options)
    if pivots is not None:
        d, ids = _search_pruned(be, bank, q, k, pivots, chunk, tile)
    else:
        d, ids = _scan(be, bank, q, k, chunk, tile)
    return Neighbors.padded(d, ids, k, "exact")
