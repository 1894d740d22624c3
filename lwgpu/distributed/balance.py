"""Placing specs on shards: water-filling new specs onto the smallest shards, and the moves that rebalance.

Pure functions of the shard sizes (no Dask), used by :class:`~lwgpu.distributed.ShardedBank`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def water_fill(sizes: Sequence[int], m: int) -> np.ndarray:
    """How many of ``m`` new items each shard of the given ``sizes`` gets so the smallest fill up first.

    Returns int64 (S,) summing to ``m``; the resulting sizes differ by at most one among the shards that
    received items (ties go to the lower shard index).
    """
    s = np.asarray(sizes, np.int64)
    m = int(m)
    if m < 0:
        raise ValueError(f"cannot add a negative number of specs ({m})")
    if s.size == 0:
        raise ValueError("there are no shards to add to")
    lo, hi = int(s.min()), int(s.min()) + m  # find the largest level L with sum(max(0, L - s)) <= m
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.maximum(0, mid - s).sum()) <= m:
            lo = mid
        else:
            hi = mid - 1
    give = np.maximum(0, lo - s)
    rest = m - int(give.sum())
    if rest:
        at_level = np.nonzero(s + give == lo)[0]  # these are the smallest now: one more each, in order
        give[at_level[:rest]] += 1
    return give


def balance_moves(sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(from_shard, to_shard, n)`` moves that make ``sizes`` as equal as possible (max - min <= 1).

    Target sizes are ``total // S`` plus one for the shards that are largest now (so the fewest specs move).
    """
    s = np.asarray(sizes, np.int64)
    total, n = int(s.sum()), s.size
    target = np.full(n, total // n, np.int64)
    target[np.argsort(-s, kind="stable")[: total % n]] += 1
    surplus = s - target
    donors = [[int(j), int(surplus[j])] for j in np.nonzero(surplus > 0)[0]]
    takers = [[int(j), int(-surplus[j])] for j in np.nonzero(surplus < 0)[0]]
    moves = []
    while donors and takers:
        d, t = donors[0], takers[0]
        n_move = min(d[1], t[1])
        moves.append((d[0], t[0], n_move))
        d[1] -= n_move
        t[1] -= n_move
        if d[1] == 0:
            donors.pop(0)
        if t[1] == 0:
            takers.pop(0)
    return moves
