"""Recall against exact search, and choosing index parameters.

* :func:`recall_at_k` / :func:`evaluate_index`: recall@k of indexed search against
  ``lwgpu.search.search_exact`` on the same bank.
* the defaults were measured on :func:`lwgpu.data.clustered.synthetic_spec_arrays`.
* :func:`default_params` (the documented defaults) and :func:`tune` (the cheapest setting on a grid
  that reaches a target recall on sample queries).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- recall
def recall_at_k(index_ids: Any, exact_ids: Any, k: int | None = None) -> float:
    """Mean fraction of the exact top-k ids that the indexed search also returned in its top-k.

    index_ids, exact_ids : (Q, >=k) int arrays (``-1`` marks an empty slot and never matches).
    """
    a, b = np.atleast_2d(np.asarray(index_ids)), np.atleast_2d(np.asarray(exact_ids))
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"index_ids has {a.shape[0]} queries but exact_ids has {b.shape[0]}; they must match")
    k = min(a.shape[1], b.shape[1]) if k is None else int(k)
    if k < 1 or k > a.shape[1] or k > b.shape[1]:
        raise ValueError(f"k={k} must be in [1, {min(a.shape[1], b.shape[1])}] for these arrays")
    hits = 0
    for row_a, row_b in zip(a[:, :k], b[:, :k]):
        truth = row_b[row_b >= 0]
        hits += np.isin(truth, row_a[row_a >= 0]).sum()
        hits += k - truth.size  # fewer than k specs in the bank: nothing to miss
    return float(hits) / (a.shape[0] * k)


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
    from ..search import search_exact

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
#: Documented defaults (README, "Indexed search"), measured on :func:`lwgpu.data.clustered.synthetic_spec_arrays`.
DEFAULTS: dict[str, Any] = {"embedder": "orf", "D": 512, "candidates": 100, "nprobe": 64, "ef_search": 256}


def effective_factory(factory: str, n: int, quiet: bool = False) -> str:
    """``factory`` with IVF list counts clipped to ``max(1, n // 39)`` (FAISS wants >= 39 points per list)."""
    limit = max(1, n // 39)

    def clip(m: re.Match) -> str:
        nlist = int(m.group(1))
        if nlist > limit:
            if not quiet:
                logger.info("SpecIndex: %d specs are too few for %d IVF lists; using %d", n, nlist, limit)
            return f"IVF{limit}"
        return m.group(0)
    return re.sub(r"IVF(\d+)", clip, factory)


def default_nprobe(n: int, nlist: int) -> int:
    """IVF nprobe when none is given: ``DEFAULTS["nprobe"]`` per 125,000 specs (at least once), at most nlist.

    Denser markets spread a query's true neighbours over more lists: on the synthetic market,
    IVF1024 reaches recall@10 0.996 with nprobe 64 at N = 100,000, but at N = 1,000,000 needs 512
    (0.999; 256 gives 0.989, 128 gives 0.978).
    """
    return int(min(max(1, nlist), DEFAULTS["nprobe"] * max(1, round(n / 125_000))))


def default_params(n: int, factory: str = "IVF1024,Flat") -> dict[str, Any]:
    """The documented defaults for a bank of ``n`` specs and a FAISS factory string."""
    p = dict(DEFAULTS)
    p["candidates"] = int(min(p["candidates"], max(n, 1)))
    m = re.search(r"IVF(\d+)", effective_factory(factory, n, quiet=True))
    p["nprobe"] = default_nprobe(n, int(m.group(1))) if m else None
    return p


def tune(
    bank: Any,
    queries: Any,
    target: float = 0.99,
    k: int = 10,
    factory: str = "IVF1024,Flat",
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
    from ..search import search_exact
    from .faiss_index import SpecIndex

    exact = search_exact(bank, queries, k=k)
    table: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    uses_probe = "IVF" in factory.upper() or "HNSW" in factory.upper()
    for D in sorted(Ds):
        idx = SpecIndex(bank, factory=factory, D=D, embedder=embedder, seed=seed, device=device)
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
