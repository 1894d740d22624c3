"""Search measurements of ``lwgpu-bench``: exact, indexed and mixture search against ground truth."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..eval.search import mixture_precision_recall, recall_at_k, topk_accuracy
from ..eval.timing import latency_stats, throughput, time_queries
from ..tracking import Results
from .steps import Built

logger = logging.getLogger(__name__)


def _time_method(name: str, search: Callable[[Any], tuple[np.ndarray, np.ndarray]], built: Built, k: int,
                 n_latency: int, results: Results, tags: dict[str, Any]) -> np.ndarray:
    """Latency (one query at a time), throughput (one batched call) and accuracy of ``search``.

    Returns the (Q, k) ids of the batched call.
    """
    queries = built.queries
    times, _ = time_queries(search, queries[: max(1, n_latency)])
    for metric, value in latency_stats(times).items():
        results.add(metric, value, "ms" if metric.endswith("_ms") else "queries/s", method=name, **tags)
    qps, (_, ids) = throughput(search, queries, len(queries))
    results.add("qps_batch", qps, "queries/s", method=name, **tags)
    ids = np.asarray(ids)
    truth = built.users.primary
    results.add("top1_accuracy", topk_accuracy(ids, truth, 1), "", method=name, **tags)
    results.add("topk_accuracy", topk_accuracy(ids, truth, k), "", method=name, k=k, **tags)
    single = ~built.users.is_mixture
    if single.any():
        results.add("top1_accuracy_single_users", topk_accuracy(ids[single], truth[single], 1), "",
                    method=name, **tags)
    return ids


def measure_search(cfg: DictConfig, built: Built, results: Results, tags: dict[str, Any]) -> None:
    """Exact and indexed single search (latency, throughput, accuracy, recall@k), then mixture search."""
    k = min(int(cfg.search.k), len(built.bank))
    n_latency = int(cfg.search.latency_queries)
    exact_ids = None
    if cfg.search.exact:
        exact = instantiate(cfg.kernel.search)
        exact_ids = _time_method("exact", lambda q: exact(built.bank, q, k=k), built, k, n_latency, results, tags)
    if built.index is not None:
        index = built.index
        index_ids = _time_method("index", lambda q: index.search(q, k), built, k, n_latency, results, tags)
        if exact_ids is not None:
            results.add("recall_at_k", recall_at_k(index_ids, exact_ids, k), "", method="index", k=k, **tags)
    if cfg.search.mixture.enabled:
        measure_mixture(cfg, built, results, tags)


def measure_mixture(cfg: DictConfig, built: Built, results: Results, tags: dict[str, Any]) -> None:
    """Mixture search for every user: precision/recall of members against the true tasks, and latency.

    Uses the market's statistical search (``lwgpu.search.statistical_search``); a user whose
    best answer is a single learnware counts as the one-member mixture of its top-1.
    """
    from ..search import statistical_search

    opts = {k: v for k, v in cfg.search.mixture.items() if k not in ("enabled", "min_weight")}
    pred_ids, pred_w, times = [], [], []
    for q in built.queries:
        t0 = time.perf_counter()
        res = statistical_search(built.bank, q, k=1, mixture=True, index=built.index, device=cfg.device, **opts)
        times.append(time.perf_counter() - t0)
        if res.mixture is not None:
            pred_ids.append(np.asarray(res.mixture.ids, dtype=np.int64))
            pred_w.append(np.asarray(res.mixture.weights, dtype=np.float64))
        else:
            pred_ids.append(np.asarray(res.ids[:1], dtype=np.int64))
            pred_w.append(np.ones(len(pred_ids[-1])))
    for metric, value in latency_stats(times).items():
        results.add(metric, value, "ms" if metric.endswith("_ms") else "queries/s", method="mixture", **tags)
    min_w = float(cfg.search.mixture.min_weight)
    true = built.users.true_ids
    p, r = mixture_precision_recall(pred_ids, pred_w, true, min_weight=min_w)
    results.add("mixture_precision", p, "", method="mixture", **tags)
    results.add("mixture_recall", r, "", method="mixture", **tags)
    mix = np.flatnonzero(built.users.is_mixture)
    if mix.size:
        p, r = mixture_precision_recall([pred_ids[i] for i in mix], [pred_w[i] for i in mix],
                                        [true[i] for i in mix], min_weight=min_w)
        results.add("mixture_precision_mixed_users", p, "", method="mixture", **tags)
        results.add("mixture_recall_mixed_users", r, "", method="mixture", **tags)
