"""Search over a market's specs: exact top-k by MMD (``search_exact``); single/mixture/semantic search."""
from __future__ import annotations

from .exact import search_exact

__all__ = ["search_exact"]
