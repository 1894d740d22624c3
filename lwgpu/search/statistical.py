"""Statistical search over a spec bank: top-k single specs by MMD, then a mixture, with scores.

Follows the reference package's ``EasyStatSearcher``: squared MMD to every admitted spec, found by the
planner (:mod:`lwgpu.search.planner`: exact scan of the bank or of the admitted rows in place, or a
:class:`~lwgpu.index.SpecIndex` whose candidates are re-ranked exactly), a mixture over the
``max(k, max_mixture**2)`` nearest specs when the best distance is not 0, scores from
:func:`lwgpu.search.scores.dist_to_score` over the single distances plus the mixture's, and the
mixture dropped when it scores no better (to 2 decimals) than the best single.

Every distance is computed once. The mixture QP needs the cross terms ``c_i = <U, B_i>`` and the
Gram matrix of its candidates: the cross terms come from the single search's distances,
``c_i = (<U,U> + <B_i,B_i> - dist_i) / 2``, so only the small Gram matrix is computed (float64).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch

from .. import settings
from ..kernels.backend import KernelBackend, get_backend, pack, take_rows
from .mixture import mixture_auto, mixture_greedy
from .planner import plan_search
from .results import MixtureItem, SearchResult, SingleItem
from .scores import dist_to_score

logger = logging.getLogger(__name__)

METHODS = ("greedy", "auto")


def cross_from_dists(dists: np.ndarray, self_q: float, self_b: np.ndarray) -> np.ndarray:
    """Cross terms ``<U, B_i> = (<U,U> + <B_i,B_i> - dist_i) / 2`` (float64 (M,)) from squared MMDs (M,)."""
    return 0.5 * (float(self_q) + np.asarray(self_b, np.float64) - np.asarray(dists, np.float64))


def mixture_gram(bank: Any, ids: np.ndarray, device: Any) -> torch.Tensor:
    """float64 (M, M) Gram matrix ``<B_i, B_j>`` of bank specs ``ids``, by the float64 torch backend."""
    be = get_backend("torch", device, torch.float64)
    pos = bank.positions(ids)
    return be.gram(take_rows(bank.z, pos), take_rows(bank.beta, pos), bank.gamma)


def statistical_search(
    bank: Any,
    query: Any,
    k: int = settings.SEARCH_K,
    ids: Sequence[int] | np.ndarray | None = None,
    mixture: bool = True,
    max_mixture: int = settings.MIXTURE_MAX,
    method: str = settings.MIXTURE_METHOD,
    index: Any = None,
    backend: str | KernelBackend = "auto",
    device: Any = "auto",
    decay_rate: float = settings.MIXTURE_DECAY_RATE,
    weight_cutoff: float = settings.MIXTURE_WEIGHT_CUTOFF,
) -> SearchResult:
    """Search ``bank`` (a SpecBank) for a user RKME ``query``.

    Parameters
    ----------
    ids : the admitted market ids (the semantic filter's output); None = all.
    mixture, max_mixture, method : mixture search on/off, its size bound, ``"greedy"`` or ``"auto"``.
    index : a SpecIndex following ``bank``; the planner uses it for unfiltered searches and for
        admitted sets above ``settings.PLANNER_EXACT_MAX_ROWS``. Scores are over every admitted spec, as
        the reference's, up to ``settings.PLANNER_PRUNE_MIN_ROWS`` admitted specs; above, over the rows
        the pruned scan evaluated or the index's re-ranked candidates (the ranking is the same).
    backend, device : kernel backend of the exact paths (resolved once).

    Returns
    -------
    SearchResult
        ``method`` is the planner's path, ``n_candidates`` the admitted count, ``timings`` in seconds.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_mixture < 1:
        raise ValueError(f"max_mixture must be >= 1, got {max_mixture}")
    if bank is None or len(bank) == 0:
        return SearchResult()
    if ids is not None and np.asarray(ids).size == 0:
        return SearchResult()
    t0 = time.perf_counter()
    be = get_backend(backend, device, torch.float64 if bank.dtype == torch.float64 else None)
    n_top = max(k, max_mixture * max_mixture) if mixture else k
    planned = plan_search(bank, query, k=n_top, allowed=ids, index=index, backend=be, keep_all=True)
    how = planned.method
    dists, found = planned.pool_dists[0], planned.pool_ids[0]
    keep = found >= 0
    if np.isnan(dists).any():
        logger.warning("dropping %d specs whose distance to the query is not finite", int(np.isnan(dists).sum()))
        keep &= ~np.isnan(dists)
    dists, found = dists[keep], found[keep]
    timings = dict(planned.timings)
    if dists.size == 0:
        return SearchResult(n_candidates=planned.n_admitted, method=how, timings=timings)

    t1 = time.perf_counter()
    n_top = min(n_top, dists.size)
    mix = None
    if mixture and max_mixture > 1 and n_top > 1 and dists[0] > 0:
        top_ids = found[:n_top]
        q = pack(query)
        uu = float(q.self_inner[0])
        G = mixture_gram(bank, top_ids, be.device)
        s = take_rows(bank.self_inner, bank.positions(top_ids)).cpu().numpy()
        c = torch.as_tensor(cross_from_dists(dists[:n_top], uu, s), device=G.device)
        fn = mixture_greedy if method == "greedy" else mixture_auto
        kw = {"decay_rate": decay_rate} if method == "greedy" else {"weight_cutoff": weight_cutoff}
        m = fn(G, c, uu, max_mixture, **kw)
        if len(m.members) > 1:
            mix = m
    if mix is None:
        scores = dist_to_score(dists)
        mix_item = None
    else:
        merged = dist_to_score(np.concatenate([dists, [mix.mmd2]]))
        scores, mix_score = merged[:-1], float(merged[-1])
        mix_item = MixtureItem(ids=tuple(int(found[j]) for j in mix.members), weights=mix.weights,
                               mmd2=float(mix.mmd2), score=mix_score)
        if int(mix_score * 100) == int(scores[0] * 100):
            mix_item = None
    single = [SingleItem(id=int(found[j]), score=float(scores[j]), mmd2=float(dists[j]))
              for j in range(min(k, dists.size))]
    timings["mixture"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    return SearchResult(single=single, mixture=mix_item, n_candidates=planned.n_admitted, method=how,
                        timings=timings)
