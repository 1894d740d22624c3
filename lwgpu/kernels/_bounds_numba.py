"""Fused numba kernel of the bounding-ball lower bound on the squared MMD (:mod:`lwgpu.search.bounds`).

For one query ``A`` (points ``x_i``, weights ``a_i``) and bank rows ``r`` (ball centre ``c_r``, radius
``R_r``, weight mass ``l1_r = sum_j |b_j|``, self term ``s_r``)::

    lb_r = s_A + s_r - 2 l1_r sum_i |a_i| exp(-gamma max(0, ||x_i - c_r|| - R_r)^2)

Parallel over blocks of rows; per row, the squared distances of all query points are summed from the
differences in float64 (no ``|x|^2 + |c|^2 - 2 x.c`` cancellation) in vectors over the points, their roots
shrunk by a relative 1e-9 so rounding can only lower the bound. A point farther than ``sqrt(EXP_CUTOFF /
gamma)`` beyond the ball adds ``|a_i| exp(-EXP_CUTOFF)`` (an upper bound on its true term). The
exponentials are branch-free and vectorised (:func:`._exp_numba.exp_split`; libm's ``exp`` does not
vectorise) and raised by a relative 1e-13, above their error, so a
computed term is never below the true one: the bound stays a lower bound.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ._exp_numba import exp_split

#: exp(-EXP_CUTOFF) = 2e-22: a far point's cross-term share is bounded by it, not computed.
EXP_CUTOFF = 50.0
_TAIL = math.exp(-EXP_CUTOFF)
#: rows per work item of the parallel loop (its buffers are allocated once per item)
_ROWS_PER_ITEM = 256
#: relative margin on each exponential: above the polynomial's and the rounding's error (< 1e-14), so the
#: computed term is never below the true one and the bound never above the formula's
_EXP_MARGIN = 1.0 + 1e-13


@numba.njit(parallel=True, fastmath=True, cache=True)
def _ball_bounds(qzt: np.ndarray, qa: np.ndarray, s_q: float, centre: np.ndarray, radius: np.ndarray,
                 l1: np.ndarray, s_b: np.ndarray, rows: np.ndarray, gamma: float,
                 out: np.ndarray) -> None:  # pragma: no cover - compiled
    """qzt (d, Kq): the query's points transposed, so every loop over them runs over contiguous lanes."""
    d, kq = qzt.shape
    m = rows.shape[0]
    for item in numba.prange((m + _ROWS_PER_ITEM - 1) // _ROWS_PER_ITEM):
        s = np.empty(kq)
        pb = np.empty(kq)
        ib = np.empty(kq, np.int64)
        fb = ib.view(np.float64)
        for j in range(item * _ROWS_PER_ITEM, min(m, (item + 1) * _ROWS_PER_ITEM)):
            r = rows[j]
            for i in range(kq):
                s[i] = 0.0
            for k in range(d):
                c = np.float64(centre[r, k])
                for i in range(kq):
                    t = qzt[k, i] - c
                    s[i] += t * t
            rad = radius[r]
            for i in range(kq):  # branch-free: a point inside the ball gives exp(0), a far one exp(-cut-off)
                gap = max(math.sqrt(s[i]) * (1.0 - 1e-9) - rad, 0.0)
                p, nf = exp_split(-min(gamma * gap * gap, EXP_CUTOFF))
                pb[i] = p * qa[i]
                ib[i] = (np.int64(nf) + np.int64(1023)) << np.int64(52)  # the float 2^nf, as bits
            cross = 0.0
            for i in range(kq):
                cross += pb[i] * fb[i]
            out[j] = s_q + s_b[r] - 2.0 * l1[r] * (cross * _EXP_MARGIN)


def ball_lower_bounds(qz: np.ndarray, qa: np.ndarray, s_q: float, centre: np.ndarray, radius: np.ndarray,
                      l1: np.ndarray, s_b: np.ndarray, rows: np.ndarray, gamma: float) -> np.ndarray:
    """Lower bounds of one query on bank ``rows`` (M,): float64 (M,).

    Parameters
    ----------
    qz : float64 (Kq, d) the query's points with a non-zero weight; qa : float64 (Kq,) their ``|a_i|``.
    s_q : the query's self term ``<A, A>``.
    centre : float32 (N, d); radius, l1, s_b : float64 (N,): the bank's balls and self terms.
    rows : int64 (M,) bank rows; gamma : the kernel's bandwidth.
    """
    out = np.empty(rows.shape[0], np.float64)
    if rows.shape[0] == 0:
        return out
    _ball_bounds(np.ascontiguousarray(np.asarray(qz, np.float64).T), np.ascontiguousarray(qa, np.float64), float(s_q),
                 np.ascontiguousarray(centre, np.float32), np.ascontiguousarray(radius, np.float64),
                 np.ascontiguousarray(l1, np.float64), np.ascontiguousarray(s_b, np.float64),
                 np.ascontiguousarray(rows, np.int64), float(gamma), out)
    return out
