"""Search over a market's specs: exact top-k by MMD (``search_exact``, returning :class:`Neighbors`);
single/mixture/semantic search."""
from __future__ import annotations

from .exact import Pivots, search_exact
from .mixture import Mixture, mixture_auto, mixture_greedy
from .results import MixtureItem, Neighbors, SearchResult, SingleItem
from .scores import dist_to_score
from .semantic_filter import filter_semantic, partial_ratio
from .statistical import statistical_search

__all__ = [
    "search_exact", "Pivots", "Neighbors", "statistical_search", "mixture_greedy", "mixture_auto", "Mixture",
    "filter_semantic", "partial_ratio", "dist_to_score", "SearchResult", "SingleItem", "MixtureItem",
]
