"""Fused numba kernel of the bounding-ball lower bound on the squared MMD (:mod:`lwgpu.search.bounds`).

For one query ``A`` (points ``x_i``, weights ``a_i``) and bank rows ``r`` (ball centre ``c_r``, radius
``R_r``, weight mass ``l1_r = sum_j |b_j|``, self term ``s_r``)::

    lb_r = s_A + s_r - 2 l1_r sum_i |a_i| exp(-gamma max(0, ||x_i - c_r|| - R_r)^2)

Parallel over rows; the squared distance is summed from the differences in float64 (no
``|x|^2 + |c|^2 - 2 x.c`` cancellation), its root shrunk by a relative 1e-9 so rounding can only lower
the bound. A point farther than ``sqrt(EXP_CUTOFF / gamma)`` beyond the ball adds ``|a_i| exp(-EXP_CUTOFF)``
(an upper bound on its true term) instead of an exponential: most rows of a large bank are far from a
query, so the kernel is a d-long difference per (point, row) and hardly any ``exp``.
"""
from __future__ import annotations

import math

import numba
import numpy as np

#: exp(-EXP_CUTOFF) = 2e-22: a far point's cross-term share is bounded by it, not computed.
EXP_CUTOFF = 50.0
_TAIL = math.exp(-EXP_CUTOFF)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _ball_bounds(qz: np.ndarray, qa: np.ndarray, s_q: float, centre: np.ndarray, radius: np.ndarray,
                 l1: np.ndarray, s_b: np.ndarray, rows: np.ndarray, gamma: float,
                 out: np.ndarray) -> None:  # pragma: no cover - compiled
    kq, d = qz.shape
    for j in numba.prange(rows.shape[0]):
        r = rows[j]
        cross = 0.0
        for i in range(kq):
            s = 0.0
            for k in range(d):
                t = qz[i, k] - np.float64(centre[r, k])
                s += t * t
            gap = math.sqrt(s) * (1.0 - 1e-9) - radius[r]
            if gap <= 0.0:
                cross += qa[i]
            else:
                g2 = gamma * gap * gap
                cross += qa[i] * (math.exp(-g2) if g2 < EXP_CUTOFF else _TAIL)
        out[j] = s_q + s_b[r] - 2.0 * l1[r] * cross


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
    _ball_bounds(np.ascontiguousarray(qz, np.float64), np.ascontiguousarray(qa, np.float64), float(s_q),
                 np.ascontiguousarray(centre, np.float32), np.ascontiguousarray(radius, np.float64),
                 np.ascontiguousarray(l1, np.float64), np.ascontiguousarray(s_b, np.float64),
                 np.ascontiguousarray(rows, np.int64), float(gamma), out)
    return out
