"""Search result types: :class:`Neighbors` (every nearest-specs entry point) and the market's :class:`SearchResult`.

The rule for fewer than ``k`` hits, everywhere: the arrays always have ``k`` columns; empty slots
hold distance ``inf`` and id ``-1``, after every real hit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np


@dataclass
class Neighbors:
    """The k nearest specs of each query, returned by exact search, the index and the market's planner.

    Attributes
    ----------
    dists : np.ndarray float64 (Q, k)
        Exact squared MMD, ascending per row; ``inf`` in empty slots.
    ids : np.ndarray int64 (Q, k)
        Spec ids; ``-1`` in empty slots (fewer than k specs were found or admitted).
    method : str
        Which path produced them: ``"exact"``, ``"exact-rows"`` (exact scan of admitted rows in place),
        ``"index"`` or ``"index-filtered"`` (FAISS with an id selector).

    Unpacks as ``dists, ids = neighbors`` (and ``neighbors[0]``, ``neighbors[1]``).
    """

    dists: np.ndarray
    ids: np.ndarray
    method: str = "exact"

    @classmethod
    def padded(cls, dists: np.ndarray, ids: np.ndarray, k: int, method: str = "exact") -> "Neighbors":
        """Pad (Q, m <= k) ascending results to (Q, k) with ``inf`` / ``-1``; non-finite hits become empty."""
        d = np.asarray(dists, dtype=np.float64).reshape(len(dists), -1)
        i = np.asarray(ids, dtype=np.int64).reshape(d.shape)
        q, m = d.shape
        if m < k:
            d = np.concatenate([d, np.full((q, k - m), np.inf)], 1)
            i = np.concatenate([i, np.full((q, k - m), -1, np.int64)], 1)
        d, i = d[:, :k], i[:, :k]
        i = np.where(np.isfinite(d), i, -1)
        return cls(d, i, method)

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.dists
        yield self.ids

    def __getitem__(self, i: int) -> np.ndarray:
        """``nb[0]`` is ``dists``, ``nb[1]`` is ``ids`` (as the ``(dists, ids)`` pair it replaces)."""
        return (self.dists, self.ids)[i]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def found(self) -> np.ndarray:
        """bool (Q, k): which slots hold a real hit."""
        return self.ids >= 0


@dataclass(frozen=True)
class SingleItem:
    """One learnware matched on its own: market ``id``, ``score`` in [0, 1] and raw squared MMD ``mmd2``."""

    id: int
    score: float
    mmd2: float


@dataclass(frozen=True)
class MixtureItem:
    """A weighted mixture of learnwares: ``ids`` (m,), simplex ``weights`` (m,), its ``mmd2`` and ``score``."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    mmd2: float
    score: float


@dataclass
class SearchResult:
    """``single``: ranked :class:`SingleItem` (best first); ``mixture``: a :class:`MixtureItem` or None.

    ``n_candidates`` is how many learnwares survived the semantic filter; ``method`` says which path of
    the planner found the single list (``"exact"``, ``"exact-rows"``, ``"index"``, ``"index-filtered"``;
    :mod:`lwgpu.search.planner`); ``timings`` holds seconds per step (``plan``, ``scan``, ``mixture``,
    ``total``).
    """

    single: list[SingleItem] = field(default_factory=list)
    mixture: MixtureItem | None = None
    n_candidates: int = 0
    method: str = "exact"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        """Ids of the single results, best first."""
        return [it.id for it in self.single]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON serialisable)."""
        return {
            "single": [{"id": it.id, "score": it.score, "mmd2": it.mmd2} for it in self.single],
            "mixture": None
            if self.mixture is None
            else {
                "ids": list(self.mixture.ids),
                "weights": list(self.mixture.weights),
                "mmd2": self.mixture.mmd2,
                "score": self.mixture.score,
            },
            "n_candidates": self.n_candidates,
            "method": self.method,
            "timings": dict(self.timings),
        }
