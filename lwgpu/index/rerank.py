"""Certified re-ranking: grow the exactly re-ranked candidate pool until the embedding cannot hide a better spec.

FAISS orders candidates by ``e = ||psi(q) - psi(x)||^2``, an unbiased estimate of the squared MMD
``d(q, x)`` with noise (random features, quantisation). After re-ranking the first ``m`` candidates
exactly, a spec outside the pool has ``e >= e_m`` (the pool's largest embedding distance), so it can beat
the k-th exact distance ``d_k`` only if its noise exceeds ``e_m - d_k``. With the noise's mean ``mu`` and
spread ``sigma`` measured on the pool itself (``e - d`` of the re-ranked candidates), the pool is
*certified* when ``e_m - mu - d_k >= z * sigma`` (``settings.INDEX_CERTIFY_Z``); otherwise it grows
(x ``INDEX_CERTIFY_GROWTH``) up to ``INDEX_MAX_CANDIDATES``. A pool holding every reachable admitted spec is
certified too. Unfiltered queries usually certify with the first ``INDEX_CANDIDATES`` (1,000); a filter admitting
few specs near the query pushes the admitted top-k out to where many specs lie at nearly equal
distances, and the pool grows to cover them (on the clustered market at N = 100,000, 1,600 of 5,000
admitted at 5%).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import settings
from ..kernels.backend import Packed


def certified(e: np.ndarray, d: np.ndarray, k: int, z: float | None = None) -> bool:
    """Whether a pool (embedding distances ``e`` (m,) ascending, exact ``d`` (m,), ``inf`` for empty
    slots) certainly holds the k nearest reachable specs (see the module docstring)."""
    z = settings.INDEX_CERTIFY_Z if z is None else z
    ok = np.isfinite(d) & np.isfinite(e)
    if z is None or z <= 0:
        return True
    if ok.sum() <= k:
        return False
    dk = np.partition(d[ok], k - 1)[k - 1]
    resid = e[ok] - d[ok]
    return bool(e[ok].max() - resid.mean() - dk >= z * resid.std())


def grow_pool(k: int, first: int, most: int, fetch: Callable[[int], tuple[np.ndarray, np.ndarray]],
              exact: Callable[[np.ndarray], np.ndarray], e: np.ndarray, ids: np.ndarray,
              d: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Grow one query's pool until :func:`certified` or ``most`` candidates.

    ``e``/``ids`` (M,): FAISS's answer so far (ascending ``e``; ``-1`` ids pad), ``d`` (M,) exact distances of
    the first ``first`` slots (``inf`` beyond); ``fetch(m)`` asks FAISS again for ``m`` candidates,
    ``exact(ids)`` re-ranks ids (``inf`` for -1). Returns (ids, d, certified) of the final pool.
    """
    m = first
    while True:
        valid = int((ids[:m] >= 0).sum())
        if certified(e[:m], d[:m], k) or valid < m or m >= most:  # fewer than asked: every reachable spec
            return ids[:m], d[:m], certified(e[:m], d[:m], k) or valid < m
        m2 = min(most, m * settings.INDEX_CERTIFY_GROWTH)
        if m2 > len(ids):
            e2, ids2 = fetch(min(most, m2 * settings.INDEX_PREFETCH))
            if not np.array_equal(ids2[:m], ids[:m]):  # FAISS ordered ties differently: re-rank the lot
                m = 0
            d = np.concatenate([d[:m], np.full(len(ids2) - m, np.inf)])
            e, ids = e2, ids2
            m2 = min(m2, len(ids))
            if m2 <= m:
                return ids[:m], d[:m], True
        d[m:m2] = exact(ids[m:m2])
        m = m2


def row_of(q: Any, i: int) -> Packed:
    """Query ``i`` of packed queries, as a packed batch of one."""
    return Packed(q.z[i : i + 1], q.beta[i : i + 1], q.self_inner[i : i + 1], q.gamma)


def stack_rows(rows: list[np.ndarray], k: int, fill: float = np.inf) -> np.ndarray:
    """Rows of at most k entries as a (Q, k) array padded with ``fill``."""
    out = np.full((len(rows), k), fill, dtype=np.int64 if fill == -1 else np.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
