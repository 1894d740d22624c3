"""Search result types returned by :meth:`lwgpu.market.Market.search` and the search functions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    ``n_candidates`` is how many learnwares survived the semantic filter; ``method`` says how the single
    list was found (``"exact"`` or ``"index"``).
    """

    single: list[SingleItem] = field(default_factory=list)
    mixture: MixtureItem | None = None
    n_candidates: int = 0
    method: str = "exact"

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
        }
