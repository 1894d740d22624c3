"""Statistical search over a spec bank: top-k single specs by MMD, then a mixture, with scores.

Follows the reference package's ``EasyStatSearcher``: squared MMD to every admitted spec (exactly, or
through a :class:`~lwgpu.index.SpecIndex` for large markets, whose candidates are always re-ranked by
the exact distance), a mixture over the ``max_mixture**2`` nearest specs when the best distance is
not 0, scores from :func:`lwgpu.search.scores.dist_to_score` over the single distances plus the
mixture's, and the mixture dropped when it scores no better (to 2 decimals) than the best single.
The top candidates' distances are recomputed in float64.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from ..spec.validation import check_same_kernel
from .mixture import cross_and_self, gram_and_cross, mixture_auto, mixture_greedy
from .results import MixtureItem, SearchResult, SingleItem
from .scores import dist_to_score

logger = logging.getLogger(__name__)

METHODS = ("greedy", "auto")


def _check_query(bank: Any, query: Any) -> None:
    check_same_kernel(query.d, query.gamma, bank.d, bank.gamma, "the query spec", "the market's specs")


def _all_dists(bank: Any, query: Any, device: Any) -> np.ndarray:
    from ..kernels import mmd2

    return mmd2(query, bank, device=device)[0].detach().cpu().numpy().astype(np.float64)


def statistical_search(
    bank: Any,
    query: Any,
    k: int = 5,
    ids: Sequence[int] | np.ndarray | None = None,
    mixture: bool = True,
    max_mixture: int = 5,
    method: str = "greedy",
    index: Any = None,
    index_candidates: int = 256,
    device: Any = "auto",
    decay_rate: float = 0.95,
    weight_cutoff: float = 0.98,
) -> SearchResult:
    """Search ``bank`` (a SpecBank) for a user RKME ``query``.

    Parameters
    ----------
    ids : restrict the search to these market ids (the semantic filter's output); None = all.
    mixture, max_mixture, method : mixture search on/off, its size bound, ``"greedy"`` or ``"auto"``.
    index : a SpecIndex over ``bank`` to use (only when ``ids`` is None); its ``index_candidates``
        nearest are re-ranked exactly and scores are computed over them.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_mixture < 1:
        raise ValueError(f"max_mixture must be >= 1, got {max_mixture}")
    if bank is None or len(bank) == 0:
        return SearchResult()
    _check_query(bank, query)
    how = "exact"
    if ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return SearchResult()
        sub = bank if ids.size == len(bank) and np.array_equal(np.sort(ids), np.sort(bank.ids)) else bank.subset(ids)
    elif index is not None:
        n_cand = min(len(bank), max(index_candidates, k, max_mixture * max_mixture))
        _, cand = index.search(query, n_cand)
        cand = np.asarray(cand, dtype=np.int64).reshape(-1)
        cand = cand[cand >= 0]
        sub = bank.subset(np.unique(cand))
        how = "index"
    else:
        sub = bank
    dists = _all_dists(sub, query, device)
    sub_ids = np.asarray(sub.ids, dtype=np.int64)
    finite = np.isfinite(dists)
    if not finite.all():
        logger.warning("dropping %d specs whose distance to the query is not finite", int((~finite).sum()))
        dists, sub_ids, pos_all = dists[finite], sub_ids[finite], np.nonzero(finite)[0]
    else:
        pos_all = np.arange(len(sub_ids))
    if dists.size == 0:
        return SearchResult(n_candidates=int(len(sub)), method=how)
    order = np.argsort(dists, kind="stable")

    # float64 refinement of the top candidates (they also form the mixture pool)
    n_top = min(len(order), max(k, max_mixture * max_mixture if mixture else k))
    top = order[:n_top]
    top_pos = torch.as_tensor(pos_all[top], device=sub.z.device)
    zu, bu = query.z.to(sub.z.device), query.beta.to(sub.z.device)
    want_mix = mixture and max_mixture > 1 and n_top > 1
    zt, bt = sub.z[top_pos], sub.beta[top_pos]
    if want_mix:
        G, c, uu = gram_and_cross(zt, bt, zu, bu, sub.gamma)
        diag = torch.diagonal(G)
    else:  # self terms were computed in float64 when the specs entered the bank
        c, uu = cross_and_self(zt, bt, zu, bu, sub.gamma)
        diag = sub.self_inner[top_pos].to(c.device, torch.float64)
    exact_top = (uu - 2.0 * c + diag).clamp_min(0.0).cpu().numpy()
    dists = dists.copy()
    dists[top] = exact_top
    top_sorted = np.argsort(exact_top, kind="stable")
    top = top[top_sorted]
    order = np.concatenate([top, order[n_top:]])

    mix = None
    if want_mix and dists[order[0]] > 0:
        ts = torch.as_tensor(top_sorted, device=c.device)
        G, c = G[ts][:, ts], c[ts]
        fn = mixture_greedy if method == "greedy" else mixture_auto
        kw = {"decay_rate": decay_rate} if method == "greedy" else {"weight_cutoff": weight_cutoff}
        m = fn(G, c, uu, max_mixture, **kw)
        if len(m.members) > 1:
            mix = m
    sorted_d = dists[order]
    if mix is None:
        scores = dist_to_score(sorted_d)
        mix_item = None
    else:
        merged = dist_to_score(np.concatenate([sorted_d, [mix.mmd2]]))
        scores, mix_score = merged[:-1], float(merged[-1])
        mix_item = MixtureItem(
            ids=tuple(int(sub_ids[top[j]]) for j in mix.members),
            weights=mix.weights,
            mmd2=float(mix.mmd2),
            score=mix_score,
        )
        if int(mix_score * 100) == int(scores[0] * 100):
            mix_item = None
    single = [
        SingleItem(id=int(sub_ids[order[j]]), score=float(scores[j]), mmd2=float(sorted_d[j]))
        for j in range(min(k, len(order)))
    ]
    return SearchResult(single=single, mixture=mix_item, n_candidates=int(len(sub)), method=how)
