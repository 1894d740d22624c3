"""Turning squared MMD distances into scores in [0, 1], with the reference package's min-max rule.

The rule (``EasyStatSearcher._convert_dist_to_score`` in the ``learnware`` package): with
``eps = ratio * mean(dist)`` clipped so that the best score is at least ``min_score``, the score of a
distance is ``(max - dist) / (max - eps)``, and scores below ``improve_score`` are lifted to
``min(sqrt(score), improve_score)``. Scores are relative to the list they are computed over.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def dist_to_score(
    dists: Sequence[float] | np.ndarray,
    dist_ratio: float = 0.1,
    min_score: float = 0.92,
    improve_score: float = 0.7,
) -> np.ndarray:
    """Scores (n,) in [0, 1] for squared MMD distances (n,); equal distances all score 1.

    Parameters
    ----------
    dists : (n,) finite squared MMD values (smaller is better).
    dist_ratio, min_score, improve_score : the reference package's defaults.
    """
    d = np.asarray(dists, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return np.zeros(0)
    if not np.all(np.isfinite(d)):
        raise ValueError("dists contains NaN/Inf; drop non-finite distances before scoring")
    return scores_from_stats(d, float(d.min()), float(d.max()), float(d.mean()), dist_ratio, min_score,
                             improve_score)


def scores_from_stats(d: np.ndarray, lo: float, hi: float, mean: float, dist_ratio: float = 0.1,
                      min_score: float = 0.92, improve_score: float = 0.7) -> np.ndarray:
    """Scores (m,) of distances ``d`` (m,) out of a list with the given min ``lo``, max ``hi`` and ``mean``.

    The rule reads the list only through those three numbers, so the scores of a shard-merged top list
    equal the scores over the full list without gathering it (:mod:`lwgpu.distributed.merge`).
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return np.zeros(0)
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(mean)):
        raise ValueError("the distance summary is not finite; drop non-finite distances before scoring")
    if lo == hi:
        return np.ones_like(d)
    eps = float(mean) * dist_ratio
    top = (hi - lo) / (hi - eps)
    if lo < eps:
        eps = lo
    elif top < min_score:
        eps = hi - (hi - lo) / min_score
    s = (hi - d) / (hi - eps)
    low = s < improve_score
    s[low] = np.minimum(np.sqrt(np.clip(s[low], 0.0, None)), improve_score)
    return np.clip(s, 0.0, 1.0)
