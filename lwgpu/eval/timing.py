"""Latency percentiles and throughput of a query function."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean latency in milliseconds and queries per second of per-query times (seconds)."""
    t = np.asarray(seconds, dtype=np.float64)
    if t.size == 0:
        raise ValueError("latency_stats needs at least one timing")
    if (t < 0).any() or not np.isfinite(t).all():
        raise ValueError("timings must be finite and >= 0")
    ms = t * 1e3
    return {
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p90_ms": float(np.percentile(ms, 90)),
        "latency_p99_ms": float(np.percentile(ms, 99)),
        "latency_mean_ms": float(ms.mean()),
        "qps_single": float(t.size / t.sum()) if t.sum() > 0 else float("inf"),
    }


def time_queries(fn: Callable[[Any], Any], queries: Sequence[Any], warmup: int = 1) -> tuple[list[float], list[Any]]:
    """Call ``fn(q)`` for each query, one at a time; returns (seconds per call, outputs).

    The first ``warmup`` queries are run once untimed first (JIT, caches, thread pools).
    """
    for q in list(queries)[:warmup]:
        fn(q)
    times, outs = [], []
    for q in queries:
        t0 = time.perf_counter()
        outs.append(fn(q))
        times.append(time.perf_counter() - t0)
    return times, outs


def throughput(fn: Callable[[Any], Any], batch: Any, n_queries: int, repeats: int = 1) -> tuple[float, Any]:
    """Queries per second of one batched call ``fn(batch)`` answering ``n_queries`` (best of ``repeats``)."""
    best, out = float("inf"), None
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        out = fn(batch)
        best = min(best, time.perf_counter() - t0)
    return (n_queries / best if best > 0 else float("inf")), out
