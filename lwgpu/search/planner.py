"""The search planner: admitted ids (the semantic filter's) -> exact scan in place, or the index with a selector.

One search walks one path, chosen by :func:`choose_path` from the admitted set and the bank's index:

- no filter: ``"index"`` (FAISS candidates, re-ranked exactly) when the bank has an index, else ``"exact"``
  (a scan of the whole bank);
- a filter: ``"exact-rows"`` (``backend.mmd2(query, bank, rows=positions)`` on the admitted rows in place: no
  copy, no new bank) when there is no index, when at most ``PLANNER_EXACT_MAX_ROWS`` specs are admitted, or
  when fewer than ``PLANNER_INDEX_MIN_FRACTION`` of the bank are admitted (at most
  ``PLANNER_FALLBACK_MAX_ROWS``); else ``"index-filtered"`` (FAISS with an id selector, re-ranked exactly),
  which falls back to the exact rows for queries whose candidate pool the index could not certify.
  An exact scan of more than ``PLANNER_EXACT_MAX_ROWS`` rows is pruned (``"exact-rows-pruned"``): rows whose
  bounding-ball lower bound exceeds the k-th exact distance are skipped (:mod:`lwgpu.search.bounds`), the
  top-k unchanged; its scores are then over the rows it evaluated, as the index paths' are over theirs.

Every distance returned is the exact squared MMD, computed once (the index re-ranks its own
candidates; the exact paths compute nothing else). :func:`plan_search` also hands back the whole
list the path computed (every admitted spec for the exact paths, the re-ranked candidates for the
index), which :func:`lwgpu.search.statistical.statistical_search` scores and mixes without
recomputing a distance.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import settings
from ..kernels.backend import KernelBackend, Packed, get_backend, pack
from ..idsets import sorted_unique
from ..spec.validation import check_same_kernel
from .bounds import pruned_rows_search
from .exact import merge_topk, search_exact
from .results import Neighbors

logger = logging.getLogger(__name__)

PATHS = ("exact", "exact-rows", "exact-rows-pruned", "index", "index-filtered")


def limit_rows(exact_max_rows: int | None = None) -> int:
    """Admitted specs scanned without pruning (``settings.PLANNER_EXACT_MAX_ROWS`` unless overridden)."""
    return settings.PLANNER_EXACT_MAX_ROWS if exact_max_rows is None else int(exact_max_rows)


def prune_rows(n_admitted: int, exact_max_rows: int | None = None) -> bool:
    """An exact scan of ``n_admitted`` rows skips rows by their bounds first: above
    ``settings.PLANNER_PRUNE_MIN_ROWS``, or above a smaller ``exact_max_rows``."""
    return n_admitted > min(limit_rows(exact_max_rows), settings.PLANNER_PRUNE_MIN_ROWS)


def choose_path(n_admitted: int | None, has_index: bool, exact_max_rows: int | None = None,
                n_bank: int | None = None) -> str:
    """The path for ``n_admitted`` admitted specs (None: no filter) of ``n_bank``, with or without an index.

    Exact rows when there is no index, when at most ``exact_max_rows`` (``PLANNER_EXACT_MAX_ROWS``) are
    admitted, or when fewer than ``PLANNER_INDEX_MIN_FRACTION`` of the bank are admitted and at most
    ``PLANNER_FALLBACK_MAX_ROWS`` (the embedding cannot order their far-out nearest); else the index with a
    selector.
    """
    limit = limit_rows(exact_max_rows)
    if n_admitted is None:
        return "index" if has_index else "exact"
    if not has_index or n_admitted <= limit:
        return "exact-rows"
    sparse = n_bank is not None and n_admitted < settings.PLANNER_INDEX_MIN_FRACTION * n_bank
    if sparse and n_admitted <= settings.PLANNER_FALLBACK_MAX_ROWS:
        return "exact-rows"
    return "index-filtered"


@dataclass
class Planned:
    """What one planned search computed.

    Attributes
    ----------
    neighbors : Neighbors
        The top-k (Q, k), ``method`` naming the path.
    pool_dists, pool_ids : np.ndarray float64 / int64 (Q, M)
        Every exact distance the path computed, ascending per row (``inf``/``-1`` pad): all admitted
        specs for ``"exact"``/``"exact-rows"`` when ``keep_all``, the rows it evaluated for
        ``"exact-rows-pruned"`` (the nearest and every row its bound could not rule out), the re-ranked
        candidates for the index paths, else the top-k.
    n_admitted : int
        Specs the search could return (the bank's size without a filter).
    timings : dict
        Seconds: ``"plan"`` (admitted ids to rows), ``"scan"`` (distances and top-k).
    """

    neighbors: Neighbors
    pool_dists: np.ndarray
    pool_ids: np.ndarray
    n_admitted: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.neighbors.method


def admitted_positions(bank: Any, allowed: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique admitted ids that the bank holds (others dropped, logged) and their current rows."""
    ids = sorted_unique(allowed)
    try:
        return ids, bank.positions(ids)
    except ValueError:
        kept = ids[np.isin(ids, np.asarray(bank.ids, np.int64))]
        logger.info("planner: %d admitted ids are not in this bank; ignored", ids.size - kept.size)
        return kept, bank.positions(kept)


def _sorted_all(d: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of d (Q, M) sorted ascending, ties by the smaller id; ids (M,) broadcast."""
    ib = np.broadcast_to(ids, d.shape)
    order = np.lexsort((ib, d), axis=1)
    return np.take_along_axis(d, order, 1), np.take_along_axis(ib, order, 1)


def _rows(q: Any, rows: np.ndarray) -> Packed:
    """Queries ``rows`` of packed queries."""
    idx = torch.as_tensor(rows, device=q.z.device)
    return Packed(q.z.index_select(0, idx), q.beta.index_select(0, idx), q.self_inner.index_select(0, idx), q.gamma)


def _merge_rows(d: np.ndarray, i: np.ndarray, rows: np.ndarray, d2: np.ndarray, i2: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """``d``/``i`` (Q, M) with ``rows`` replaced by ``d2``/``i2`` (R, M2), padded (inf / -1) to a common width."""
    w = max(d.shape[1], d2.shape[1])
    pad = lambda a, fill: np.pad(a, ((0, 0), (0, w - a.shape[1])), constant_values=fill)  # noqa: E731
    d, i = pad(d, np.inf), pad(i, -1)
    d[rows], i[rows] = pad(d2, np.inf), pad(i2, -1)
    return d, i


def plan_search(bank: Any, query: Any, k: int = 10, allowed: Any = None, index: Any = None,
                backend: str | KernelBackend = "auto", device: Any = "auto", keep_all: bool = False,
                exact_max_rows: int | None = None) -> Planned:
    """Run the planned search for ``query`` (Q specs) over ``bank`` restricted to ``allowed`` ids.

    Parameters
    ----------
    bank : SpecBank
    query : RKME, list of RKMEs, or a bank of Q query specs
    k : int
        Results per query.
    allowed : array-like int64, optional
        Admitted ids (None: every spec of the bank).
    index : SpecIndex over ``bank``, optional
    backend, device
        Kernel backend of the exact paths (resolved once with :func:`~lwgpu.kernels.get_backend`).
    keep_all : bool
        Keep every distance of the exact paths in ``pool_*`` (scores over the admitted list); a pruned
        scan (more than ``PLANNER_PRUNE_MIN_ROWS`` admitted) keeps those of the rows it evaluated.
    exact_max_rows : int, optional
        Overrides ``settings.PLANNER_EXACT_MAX_ROWS``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if index is not None and getattr(index, "bank", bank) is not bank:
        raise ValueError("the index was built over another bank object; pass the bank it follows")
    t0 = time.perf_counter()
    q = pack(query)
    check_same_kernel(q.d, q.gamma, bank.d, bank.gamma, "the query spec", "the market's specs")
    nq = len(q)
    has_index = index is not None and len(index) > 0
    ids = pos = None
    if allowed is not None:
        ids = sorted_unique(allowed)
    n_admitted = len(bank) if ids is None else int(ids.size)
    path = choose_path(None if ids is None else n_admitted, has_index, exact_max_rows, len(bank))
    if ids is not None and path == "exact-rows":
        ids, pos = admitted_positions(bank, ids)  # rows only where they are scanned
        n_admitted = int(ids.size)
    t1 = time.perf_counter()
    if n_admitted == 0 or len(bank) == 0:
        nb = Neighbors.padded(np.empty((nq, 0)), np.empty((nq, 0), np.int64), k, path)
        return Planned(nb, nb.dists, nb.ids, 0, {"plan": t1 - t0, "scan": 0.0})
    if path in ("index", "index-filtered"):
        pool_k = max(k, int(index.candidates))
        nb, certified = index.search_certified(q, pool_k, allowed=ids, certify_k=k)
        pool_d, pool_i = nb.dists, nb.ids
        if path == "index-filtered" and not certified.all():
            if n_admitted <= settings.PLANNER_FALLBACK_MAX_ROWS:  # the embedding cannot rank these: scan them
                path = "exact-rows" if not certified.any() else "index-filtered+exact-rows"
                be = get_backend(backend, device, torch.float64 if bank.dtype == torch.float64 else None)
                ids, pos = admitted_positions(bank, ids)
                redo = np.nonzero(~certified)[0]
                sub = q if len(redo) == nq else _rows(q, redo)
                if prune_rows(n_admitted, exact_max_rows):
                    d2, i2, _ = pruned_rows_search(bank, sub, pos, ids, pool_k, be)
                else:
                    dist = be.mmd2(sub, bank, rows=pos).cpu().numpy()
                    d2, i2 = (_sorted_all(dist, ids) if keep_all else
                              merge_topk(dist, np.broadcast_to(ids, dist.shape), pool_k))
                pool_d, pool_i = _merge_rows(pool_d, pool_i, redo, d2, i2)
            else:
                logger.info("planner: %d queries' pools were not certified; %d admitted specs are too many to scan",
                            int((~certified).sum()), n_admitted)
        method = nb.method if path in ("index", "index-filtered") else path
        top = Neighbors.padded(pool_d[:, :k], pool_i[:, :k], k, method)
    else:
        be = get_backend(backend, device, torch.float64 if bank.dtype == torch.float64 else None)
        if path == "exact" and not keep_all:
            d, i = search_exact(bank, q, k=k, backend=be, device=be.device)
            pool_d, pool_i = np.asarray(d, np.float64), np.asarray(i, np.int64)
        elif path == "exact-rows" and prune_rows(n_admitted, exact_max_rows):
            # many admitted rows (a filter over a large bank): exact top-k, far rows skipped by bounds
            path = "exact-rows-pruned"
            pool_d, pool_i, _ = pruned_rows_search(bank, q, pos, ids, k, be)
        else:
            dist = be.mmd2(q, bank, rows=pos).cpu().numpy()
            row_ids = np.asarray(bank.ids if ids is None else ids, np.int64)
            if keep_all:
                pool_d, pool_i = _sorted_all(dist, row_ids)
            else:
                pool_d, pool_i = merge_topk(dist, np.broadcast_to(row_ids, dist.shape), k)
        top = Neighbors.padded(pool_d[:, :k], pool_i[:, :k], k, path)
    t2 = time.perf_counter()
    logger.debug("planner: %s over %d admitted of %d specs in %.1f ms", path, n_admitted, len(bank), 1e3 * (t2 - t0))
    return Planned(top, pool_d, pool_i, n_admitted, {"plan": t1 - t0, "scan": t2 - t1})


def search(bank: Any, query: Any, k: int = 10, allowed: Any = None, index: Any = None,
           backend: str | KernelBackend = "auto", device: Any = "auto") -> Neighbors:
    """The k nearest admitted specs of each query by exact squared MMD, by the planned path.

    Returns :class:`~lwgpu.search.results.Neighbors` (Q, k); ``method`` says which path ran.
    """
    return plan_search(bank, query, k, allowed=allowed, index=index, backend=backend, device=device).neighbors
