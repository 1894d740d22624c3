"""Merging the answers of bank shards into the answer a single bank would give (pure functions, no Dask).

- :func:`merge_neighbors`: per-shard exact top-k (Q, k_s) -> the global exact top-k (Q, k), ties broken
  by the smaller id as :func:`lwgpu.search.exact.search_exact` breaks them.
- :func:`merge_pools`: per-shard statistical-search pools -> the global ``n_top`` nearest and the summary
  (count, sum, min, max) of every distance, from which :func:`~lwgpu.search.scores.scores_from_stats` gives exactly the scores
  :func:`lwgpu.search.scores.dist_to_score` gives over the full list (it only reads its min, max and mean).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..search.exact import merge_topk
from ..search.results import Neighbors


def merge_neighbors(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, method: str = "exact") -> Neighbors:
    """Global top-k from shard top-k lists.

    Parameters
    ----------
    parts : per shard ``(dists float64 (Q, k_s), ids int64 (Q, k_s))``, ``inf`` / ``-1`` in empty slots.
    k : results per query.

    Returns
    -------
    Neighbors ``(Q, k)``, ascending, ties by the smaller id; ``inf`` / ``-1`` after the real hits.
    """
    if not parts:
        raise ValueError("merge_neighbors got no shard results")
    d = np.concatenate([np.asarray(p[0], np.float64) for p in parts], 1)
    i = np.concatenate([np.asarray(p[1], np.int64) for p in parts], 1)
    i = np.where(i >= 0, i, np.iinfo(np.int64).max)  # empty slots sort after real hits of equal distance
    d, i = merge_topk(d, i, k)
    return Neighbors.padded(d, np.where(i == np.iinfo(np.int64).max, -1, i), k, method)


@dataclass
class Pool:
    """The merged statistical-search pool of one query.

    Attributes
    ----------
    dists, ids : float64 / int64 (m,) the global ``n_top`` nearest admitted specs, ascending (ties by id).
    count, total, lo, hi : number, sum, min and max of every finite distance the shards computed.
    n_admitted : specs the search could return; methods : the planner path of each shard that searched.
    """

    dists: np.ndarray
    ids: np.ndarray
    count: int
    total: float
    lo: float
    hi: float
    n_admitted: int
    methods: tuple[str, ...]

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def method(self) -> str:
        """One name when every shard took the same path, else the distinct paths joined by ``+``."""
        seen = list(dict.fromkeys(self.methods))
        return "+".join(seen) if seen else "exact"


def merge_pools(parts: Sequence[dict[str, Any]], n_top: int) -> Pool:
    """Merge :meth:`lwgpu.distributed.shard.Shard.pool` answers: global ``n_top`` nearest + distance summary."""
    d = np.concatenate([np.asarray(p["dists"], np.float64) for p in parts]) if parts else np.empty(0)
    i = np.concatenate([np.asarray(p["ids"], np.int64) for p in parts]) if parts else np.empty(0, np.int64)
    if d.size:
        d2, i2 = merge_topk(d[None], i[None], min(int(n_top), d.size))
        d, i = d2[0], i2[0]
    return Pool(dists=d, ids=i, count=int(sum(p["count"] for p in parts)),
                total=float(sum(p["sum"] for p in parts)),
                lo=float(min((p["lo"] for p in parts), default=np.inf)),
                hi=float(max((p["hi"] for p in parts), default=-np.inf)),
                n_admitted=int(sum(p["n_admitted"] for p in parts)),
                methods=tuple(p["method"] for p in parts if p["count"]))
