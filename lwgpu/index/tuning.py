"""Recall against exact search, and choosing index parameters.

* :func:`evaluate_index`: recall@k of indexed search against ``lwgpu.search.search_exact`` on the
  same bank (:func:`recall_at_k` is :func:`lwgpu.eval.search.recall_at_k`, the one rule).
* :func:`tune`: the cheapest setting on a grid that reaches a target recall on sample queries.
  The defaults (``lwgpu.settings.INDEX_*``, ``lwgpu.index.layout``) were measured on
  :func:`lwgpu.data.clustered.synthetic_spec_arrays`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..eval.search import recall_at_k  # the one rule, re-exported for index users
from ..search.exact import search_exact
from .faiss_index import SpecIndex

logger = logging.getLogger(__name__)


__all__ = ["IndexReport", "evaluate_index", "recall_at_k", "tune"]


@dataclass
class IndexReport:
    """Recall and timings of one indexed-vs-exact comparison."""

    recall: float
    k: int
    n_queries: int
    index_seconds: float
    exact_seconds: float
    params: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.exact_seconds / max(self.index_seconds, 1e-12)


def evaluate_index(index: Any, queries: Any, k: int = 10, exact: tuple | None = None, **search_kw: Any) -> IndexReport:
    """Run ``index.search`` and ``search_exact`` on the same bank and queries; recall@k and times.

    ``exact`` may pass precomputed ``(dists, ids)`` of exact search to reuse across settings
    (``exact_seconds`` is then 0).
    """
    t0 = time.perf_counter()
    _, got = index.search(queries, k, **search_kw)
    t1 = time.perf_counter()
    if exact is None:
        _, truth = search_exact(index.bank, queries, k=k)
        t2 = time.perf_counter()
    else:
        truth, t2 = exact[1], t1
    return IndexReport(recall_at_k(got, truth, k), k, int(got.shape[0]), t1 - t0, t2 - t1, dict(search_kw))


# ---------------------------------------------------------------------- parameters
def tune(
    bank: Any,
    queries: Any,
    target: float = 0.99,
    k: int = 10,
    factory: str = "auto",
    Ds: Sequence[int] = (64, 128, 256, 512),
    candidates: Sequence[int] = (50, 100, 200, 400, 800),
    probes: Sequence[int] = (8, 16, 32, 64, 128),
    embedder: str = "orf",
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Cheapest ``(D, candidates, nprobe | efSearch)`` reaching recall@k >= ``target`` on ``queries``.

    Runs exact search once, then for each ``D`` (smallest first) builds one index and scans
    candidates (small first) and probes (small first); returns the first setting that meets the
    target together with its recall and the whole table under ``"table"``. Raises ``ValueError``
    when no setting on the grid reaches it (widen the grid).
    """
    exact = search_exact(bank, queries, k=k)
    table: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for D in sorted(Ds):
        idx = SpecIndex(bank, factory=factory, D=D, embedder=embedder, seed=seed, device=device)
        uses_probe = idx.layout.kind in ("ivf", "hnsw")
        for c in sorted(candidates):
            for p in (sorted(probes) if uses_probe else [None]):
                rep = evaluate_index(idx, queries, k=k, exact=exact, candidates=c, probe=p)
                row = {"D": D, "candidates": c, "probe": p, "recall": rep.recall, "seconds": rep.index_seconds}
                table.append(row)
                if rep.recall >= target and (best is None or rep.index_seconds < best["seconds"]):
                    best = dict(row)
                if rep.recall >= target:
                    break
        if best is not None:
            break
    if best is None:
        raise ValueError(f"no setting on the grid reached recall@{k} >= {target}; widen Ds/candidates/probes")
    best["table"] = table
    logger.info("tune: %s reaches recall %.4f", {k_: v for k_, v in best.items() if k_ != "table"}, best["recall"])
    return best
