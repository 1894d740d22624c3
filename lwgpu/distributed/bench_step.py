"""The ``lwgpu-bench`` step for ``cluster=<local|cuda|slurm|pbs|address>``: the study's bank searched sharded.

:func:`measure_sharded` connects to the configured cluster (:func:`lwgpu.distributed.cluster.connect`),
shards the study's bank over its workers and records, with ``method="sharded"``: single-query latency,
batched throughput, top-k accuracy and recall@k against the exact search in this process (1.0: the
sharded search is exact), and with ``method="sharded-mixture"``: the statistical search's latency,
mixture precision/recall, and the fraction of users whose answer equals the single-process one.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..eval.search import mixture_precision_recall, recall_at_k, topk_accuracy
from ..eval.timing import latency_stats, throughput, time_queries
from ..search import search_exact, statistical_search
from ..tracking import Results
from .cluster import connect
from .sharded_bank import ShardedBank

logger = logging.getLogger(__name__)


def _same(a: Any, b: Any) -> bool:
    """Two SearchResults give the same learnwares (single ids and mixture members)."""
    return a.ids == b.ids and (a.mixture is None) == (b.mixture is None) and (
        a.mixture is None or a.mixture.ids == b.mixture.ids)


def measure_sharded(cfg: Any, built: Any, results: Results, tags: dict[str, Any]) -> None:
    """Shard ``built.bank`` over the cluster ``cfg.cluster`` and measure its searches into ``results``.

    ``built`` is the study's pipeline state (``bank``, ``queries``, ``users`` with ``primary``,
    ``true_ids``, ``is_mixture``; ``index``).
    """
    c = cfg.cluster
    queries = list(built.queries)
    k = min(int(cfg.search.k), len(built.bank))
    n_latency = max(1, int(cfg.search.latency_queries))
    with connect(c) as client:
        t0 = time.perf_counter()
        sb = ShardedBank(client, built.bank, n_shards=c.get("shards"), device=str(c.get("shard_device", "auto")),
                         backend=str(c.get("backend", "auto")))
        try:
            results.add("shard_time", time.perf_counter() - t0, "s", method="sharded", shards=len(sb.shards), **tags)
            times, _ = time_queries(lambda q: sb.search(q, k), queries[:n_latency])
            for metric, value in latency_stats(times).items():
                results.add(metric, value, "ms" if metric.endswith("_ms") else "queries/s", method="sharded", **tags)
            qps, (_, ids) = throughput(lambda q: sb.search(q, k), queries, len(queries))
            results.add("qps_batch", qps, "queries/s", method="sharded", **tags)
            truth = built.users.primary
            results.add("top1_accuracy", topk_accuracy(ids, truth, 1), "", method="sharded", **tags)
            results.add("topk_accuracy", topk_accuracy(ids, truth, k), "", method="sharded", k=k, **tags)
            exact_ids = search_exact(built.bank, queries, k=k).ids
            results.add("recall_at_k", recall_at_k(ids, exact_ids, k), "", method="sharded", k=k, **tags)
            if cfg.search.mixture.enabled:
                _measure_mixture(cfg, built, sb, results, tags)
        finally:
            sb.close()


def _measure_mixture(cfg: Any, built: Any, sb: ShardedBank, results: Results, tags: dict[str, Any]) -> None:
    """Sharded statistical search for every user: latency, mixture precision/recall, agreement."""
    opts = {key: v for key, v in dict(cfg.search.mixture).items() if key not in ("enabled", "min_weight")}
    pred_ids, pred_w, times, same = [], [], [], 0
    for q in built.queries:
        t0 = time.perf_counter()
        res = sb.statistical_search(q, k=1, mixture=True, **opts)
        times.append(time.perf_counter() - t0)
        same += _same(res, statistical_search(built.bank, q, k=1, mixture=True, device=cfg.device, **opts))
        if res.mixture is not None:
            pred_ids.append(np.asarray(res.mixture.ids, np.int64))
            pred_w.append(np.asarray(res.mixture.weights, np.float64))
        else:
            pred_ids.append(np.asarray(res.ids[:1], np.int64))
            pred_w.append(np.ones(len(pred_ids[-1])))
    for metric, value in latency_stats(times).items():
        results.add(metric, value, "ms" if metric.endswith("_ms") else "queries/s", method="sharded-mixture", **tags)
    p, r = mixture_precision_recall(pred_ids, pred_w, built.users.true_ids,
                                    min_weight=float(cfg.search.mixture.min_weight))
    results.add("mixture_precision", p, "", method="sharded-mixture", **tags)
    results.add("mixture_recall", r, "", method="sharded-mixture", **tags)
    results.add("same_as_single_process", same / max(1, len(built.queries)), "", method="sharded-mixture", **tags)
