"""Search quality against ground truth: top-k accuracy, mixture precision/recall, recall@k vs exact."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def topk_accuracy(pred_ids: np.ndarray, true_ids: np.ndarray, k: int | None = None) -> float:
    """Fraction of queries whose true id is among the first ``k`` predictions.

    Parameters
    ----------
    pred_ids : (Q, k_max) int, ranked best first
    true_ids : (Q,) int, the right answer of every query
    k : int, optional
        Defaults to all ``k_max`` columns; ``k=1`` is top-1 accuracy.
    """
    pred = np.asarray(pred_ids)
    true = np.asarray(true_ids).reshape(-1)
    if pred.ndim != 2 or pred.shape[0] != true.shape[0]:
        raise ValueError(f"pred_ids must be (Q, k) with Q={true.shape[0]} rows, got shape {pred.shape}")
    k = pred.shape[1] if k is None else int(k)
    if not 1 <= k <= pred.shape[1]:
        raise ValueError(f"k must lie in [1, {pred.shape[1]}], got {k}")
    if true.size == 0:
        return float("nan")
    return float((pred[:, :k] == true[:, None]).any(axis=1).mean())


def mixture_precision_recall(
    pred_ids: Sequence[np.ndarray],
    pred_weights: Sequence[np.ndarray] | None,
    true_ids: Sequence[np.ndarray],
    min_weight: float = 0.0,
) -> tuple[float, float]:
    """Mean precision and recall of predicted mixture members against the true ones.

    A predicted member counts when its weight exceeds ``min_weight`` (all count when weights are None).
    Precision = |pred ∩ true| / |pred|, recall = |pred ∩ true| / |true|, averaged over queries;
    a query with no counted prediction has precision 0.
    """
    if len(pred_ids) != len(true_ids):
        raise ValueError(f"{len(pred_ids)} predictions for {len(true_ids)} queries; they must match")
    if len(true_ids) == 0:
        return float("nan"), float("nan")
    prec, rec = [], []
    for i, (p, t) in enumerate(zip(pred_ids, true_ids)):
        p = np.asarray(p).reshape(-1)
        if pred_weights is not None:
            w = np.asarray(pred_weights[i]).reshape(-1)
            if w.shape != p.shape:
                raise ValueError(f"query {i}: {p.size} ids but {w.size} weights")
            p = p[w > min_weight]
        pset, tset = set(p.tolist()), set(np.asarray(t).reshape(-1).tolist())
        if not tset:
            raise ValueError(f"query {i} has no true ids")
        hit = len(pset & tset)
        prec.append(hit / len(pset) if pset else 0.0)
        rec.append(hit / len(tset))
    return float(np.mean(prec)), float(np.mean(rec))


def _id_array(x: Any, name: str) -> np.ndarray:
    """(Q, k) int ids from an array or anything with ``.ids`` (a :class:`~lwgpu.search.results.Neighbors`)."""
    a = np.asarray(getattr(x, "ids", x))
    if a.ndim != 2:
        raise ValueError(f"{name} must be a (Q, k) id array (or Neighbors), got shape {a.shape}")
    return a


def recall_at_k(approx_ids: Any, exact_ids: Any, k: int | None = None) -> float:
    """Recall@k of an approximate search against exact search: the one rule used everywhere in lwgpu.

    ``recall = sum_q |A_q & E_q| / sum_q |E_q|``, where ``E_q`` is the set of real ids (>= 0) among the
    first ``k`` exact ids of query q and ``A_q`` the set of real ids among its first ``k`` approximate
    ids. Empty exact slots (``-1``: the bank or the admitted set held fewer than k specs) are not counted
    at all, neither as hits nor as misses; an empty approximate slot never matches.

    Parameters
    ----------
    approx_ids, exact_ids : (Q, >= k) int arrays, or :class:`~lwgpu.search.results.Neighbors`
        Ranked ids per query, best first, ``-1`` in empty slots.
    k : int, optional
        Columns compared; default: the columns both have.

    Returns
    -------
    float in [0, 1]; ``nan`` when no exact slot is real (nothing to find) or Q = 0.

    Raises
    ------
    ValueError
        Different Q, not 2-D, or ``k`` outside ``[1, columns]``.
    """
    a, e = _id_array(approx_ids, "approx_ids"), _id_array(exact_ids, "exact_ids")
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"approx_ids {a.shape} and exact_ids {e.shape} must have the same number of queries")
    k = min(a.shape[1], e.shape[1]) if k is None else int(k)
    if k < 1 or k > a.shape[1] or k > e.shape[1]:
        raise ValueError(f"k={k} must be in [1, {min(a.shape[1], e.shape[1])}] for these arrays")
    hits = total = 0
    for ai, ei in zip(a[:, :k], e[:, :k]):
        truth = set(ei[ei >= 0].tolist())
        hits += len(truth & set(ai[ai >= 0].tolist()))
        total += len(truth)
    return float(hits) / total if total else float("nan")
