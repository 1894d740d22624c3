"""Exact pruning by bounding balls: lower bounds on the squared MMD that skip far specs without a kernel sum.

Every spec ``B = sum_j b_j k(y_j, .)`` lies in a ball: centre ``c_B`` (the mean of its points with a
non-zero weight) and radius ``r_B = max_j ||y_j - c_B||``. For a query ``A`` and a spec ``B`` every
pair of points is at least ``g = max(0, ||c_A - c_B|| - r_A - r_B)`` apart, so the Gaussian cross term obeys

    <A, B> = sum_ij a_i b_j exp(-gamma ||x_i - y_j||^2) <= |a|_1 |b|_1 exp(-gamma g^2)

and ``mmd2(A, B) = <A,A> + <B,B> - 2 <A,B> >= <A,A> + <B,B> - 2 |a|_1 |b|_1 exp(-gamma g^2)``. The search
uses the tighter per-query-point form ``<A, B> <= |b|_1 sum_i |a_i| exp(-gamma max(0, ||x_i - c_B|| - r_B)^2)``
(``Q x K x N x d`` flops, still a K-th of a kernel sum), computed by a fused numba kernel
(:mod:`lwgpu.kernels._bounds_numba`) that skips the exponential of points far beyond a ball.
The bound is rigorous (not a tolerance): a spec whose bound exceeds the current k-th exact distance
(plus the rounding allowance of the float32 kernel sums, as for :class:`~lwgpu.search.exact.Pivots`)
cannot be among the k nearest. On markets whose specs form separated groups, which is what a semantic
filter admitting a random tenth of a million specs leaves, most admitted specs are excluded by
``Q x N x d`` flops instead of ``Q x N x K^2 x d``.

:class:`BallBounds` keeps the balls of one bank in step with it (appends and the row moves of a delete
are applied incrementally through :meth:`lwgpu.bank.SpecBank.watch`; anything else rebuilds them).
:func:`pruned_rows_search` is the exact top-k over chosen bank rows that the planner runs
(``"exact-rows-pruned"``).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .. import settings
from ..kernels._bounds_numba import ball_lower_bounds
from ..kernels.backend import KernelBackend, Packed

logger = logging.getLogger(__name__)

#: Rows whose balls are computed per chunk (float64 work arrays of CHUNK x K x d).
CHUNK = 8192


def balls(z: Any, beta: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounding balls of packed specs.

    Parameters
    ----------
    z : (M, K, d) points (tensor or array), beta : (M, K) weights; points with a zero weight are ignored.

    Returns
    -------
    centre float32 (M, d), radius float64 (M,) (from the float32 centre, widened by a float32 rounding
    allowance so the ball holds every weighted point), l1 float64 (M,) ``sum_j |b_j|``.
    """
    z = torch.as_tensor(z).detach().cpu().to(torch.float32)
    b = torch.as_tensor(beta).detach().cpu().to(torch.float32)
    live = (b != 0).to(torch.float32)
    centre = (z * live[..., None]).sum(1) / live.sum(1, keepdim=True).clamp_min(1.0)
    gap = (z - centre[:, None, :]).pow(2).sum(2).sqrt() * live
    radius = gap.max(1).values.to(torch.float64) if z.shape[1] else torch.zeros(z.shape[0], dtype=torch.float64)
    scale = z.abs().amax((1, 2)).to(torch.float64) + 1.0  # float32 rounding of ||y - c|| is below 1e-6 of this
    radius = radius * (1.0 + 1e-5) + 1e-5 * scale
    return centre.numpy(), radius.numpy(), b.to(torch.float64).abs().sum(1).numpy()


class BallBounds:
    """The bounding balls of a bank's rows, following the bank (see the module docstring).

    Use :func:`bounds_for` (one per bank, built on first use); attributes ``centre`` (N, d) float32,
    ``radius``, ``l1`` and ``self_inner`` (N,) float64, aligned with the bank's rows, and ``self_max`` (an
    upper bound on the bank's largest self term, for the rounding allowance).
    """

    def __init__(self, bank: Any) -> None:
        self.bank = bank
        self.centre = np.empty((0, bank.d), np.float32)
        self.radius = np.empty(0)
        self.l1 = np.empty(0)
        self.self_inner = np.empty(0)
        self.self_max = 0.0
        self.version = -1
        bank.watch(self)
        self._rebuild()

    def _compute(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [balls(self.bank.z[s : min(s + CHUNK, stop)], self.bank.beta[s : min(s + CHUNK, stop)])
                 for s in range(start, stop, CHUNK)]
        if not parts:
            return np.empty((0, self.bank.d), np.float32), np.empty(0), np.empty(0)
        return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]

    def _self_terms(self, start: int, stop: int) -> np.ndarray:
        return self.bank.self_inner[start:stop].detach().cpu().numpy().astype(np.float64)

    def _rebuild(self) -> None:
        n = len(self.bank)
        self.centre, self.radius, self.l1 = self._compute(0, n)
        self.self_inner = self._self_terms(0, n)
        self.self_max = float(self.self_inner.max()) if n else 0.0
        self.version = self.bank.version
        logger.debug("BallBounds: balls of %d specs computed", n)

    def rows_appended(self, start: int, count: int, version: int) -> None:
        """Bank hook: rows ``start .. start+count`` were appended."""
        if self.version != version - 1 or start != len(self.radius):
            self.version = -1  # out of step: rebuilt on the next use
            return
        c, r, l1 = self._compute(start, start + count)
        self.centre = np.concatenate([self.centre, c])
        self.radius = np.concatenate([self.radius, r])
        self.l1 = np.concatenate([self.l1, l1])
        new = self._self_terms(start, start + count)
        self.self_inner = np.concatenate([self.self_inner, new])
        self.self_max = max(self.self_max, float(new.max())) if count else self.self_max
        self.version = version

    def rows_moved(self, src: np.ndarray, dst: np.ndarray, n: int, version: int) -> None:
        """Bank hook: a delete moved rows ``src`` into ``dst`` and left ``n`` rows."""
        if self.version != version - 1:
            self.version = -1
            return
        for a in (self.centre, self.radius, self.l1, self.self_inner):
            a[dst] = a[src]
        self.centre, self.radius, self.l1 = self.centre[:n], self.radius[:n], self.l1[:n]
        self.self_inner = self.self_inner[:n]  # self_max stays: an upper bound still
        self.version = version

    def current(self) -> "BallBounds":
        """Itself, rebuilt first when the bank changed in a way it was not told about."""
        if self.version != self.bank.version or len(self.radius) != len(self.bank):
            self._rebuild()
        return self

    def lower_bounds(self, q: Packed, rows: np.ndarray) -> np.ndarray:
        """float64 (Q, M) lower bounds on the squared MMD of queries ``q`` to bank ``rows`` (M,)."""
        rows = np.ascontiguousarray(rows, np.int64)
        s_q = q.self_inner.detach().cpu().numpy().astype(np.float64)
        qz = q.z.detach().cpu().numpy().astype(np.float64)
        qb = np.abs(q.beta.detach().cpu().numpy().astype(np.float64))
        out = np.empty((len(qz), len(rows)))
        for i in range(len(qz)):
            live = qb[i] != 0
            out[i] = ball_lower_bounds(qz[i][live], qb[i][live], s_q[i], self.centre, self.radius, self.l1,
                                       self.self_inner, rows, float(self.bank.gamma))
        return out


def bounds_for(bank: Any) -> BallBounds:
    """The bank's :class:`BallBounds`, built on first use and kept in step with it afterwards."""
    b = getattr(bank, "_ball_bounds", None)
    if b is None:
        b = BallBounds(bank)
        bank._ball_bounds = b
    return b.current()


def pruned_rows_search(bank: Any, q: Packed, rows: np.ndarray, ids: np.ndarray, k: int, backend: KernelBackend,
                       first: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top-k of queries ``q`` over bank ``rows`` (M,) (ids ``ids`` (M,)), skipping rows by ball bounds.

    The ``first`` rows of smallest bound (default ``max(4k, settings.PRUNE_FIRST_STEP)``) are evaluated,
    then every row whose bound minus the rounding allowance is below the k-th exact distance so far.
    Returns ``(dists, ids, visited)``: float64 (Q, P) / int64 (Q, P) every exactly evaluated row, ascending
    (``inf`` / ``-1`` pad), and the fraction of the rows evaluated. The top-k equal an exact scan's.
    """
    m = int(rows.size)
    nq = len(q)
    bounds = bounds_for(bank)
    lb = bounds.lower_bounds(q, rows)
    slack = 4.0 * settings.PIVOTS_REL_TOL * (bounds.self_max + float(q.self_inner.max())) \
        if bank.dtype != torch.float64 else 0.0
    first = min(m, max(4 * k, settings.PRUNE_FIRST_STEP) if first is None else int(first))
    out_d, out_i, visited = [], [], 0
    for i in range(nq):
        one = Packed(q.z[i : i + 1], q.beta[i : i + 1], q.self_inner[i : i + 1], q.gamma)
        order = np.argpartition(lb[i], first - 1)[:first] if first < m else np.arange(m)
        d = backend.mmd2_rows(one, bank, rows[order][None]).cpu().numpy()[0]
        kth = np.partition(d, min(k, d.size) - 1)[min(k, d.size) - 1]
        seen = np.zeros(m, bool)
        seen[order] = True
        more = np.nonzero(~seen & (lb[i] - slack < kth))[0]
        if more.size:
            d = np.concatenate([d, backend.mmd2_rows(one, bank, rows[more][None]).cpu().numpy()[0]])
            order = np.concatenate([order, more])
        srt = np.lexsort((ids[order], d))
        out_d.append(d[srt])
        out_i.append(ids[order][srt])
        visited += order.size
    width = max(len(r) for r in out_d)
    dists = np.full((nq, width), np.inf)
    found = np.full((nq, width), -1, np.int64)
    for i, (dd, ii) in enumerate(zip(out_d, out_i)):
        dists[i, : dd.size], found[i, : ii.size] = dd, ii
    frac = visited / max(1, nq * m)
    logger.debug("pruned scan: %.1f%% of %d rows evaluated for %d queries", 100 * frac, m, nq)
    return dists, found, frac

