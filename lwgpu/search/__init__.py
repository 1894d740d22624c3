"""Search over a market's specs: exact top-k by MMD (``search_exact``); single/mixture/semantic search."""
from __future__ import annotations

from .exact import Pivots, search_exact
from .mixture import mixture_auto, mixture_greedy
from .results import MixtureItem, SearchResult, SingleItem
from .scores import dist_to_score
from .semantic_filter import filter_semantic, partial_ratio
from .statistical import statistical_search

__all__ = [
    "search_exact", "Pivots", "statistical_search", "mixture_greedy", "mixture_auto", "filter_semantic", "partial_ratio",
    "dist_to_score", "SearchResult", "SingleItem", "MixtureItem",
]
