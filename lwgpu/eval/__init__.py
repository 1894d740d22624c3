"""Metrics: search accuracy vs ground truth, recall@k vs exact, latency, fit residual, reuse error."""
from .fit import fit_residuals, subsample_residuals
from .reuse import reuse_vs_own
from .search import mixture_precision_recall, recall_at_k, topk_accuracy
from .timing import latency_stats, throughput, time_queries

__all__ = [
    "fit_residuals",
    "latency_stats",
    "mixture_precision_recall",
    "recall_at_k",
    "reuse_vs_own",
    "subsample_residuals",
    "throughput",
    "time_queries",
    "topk_accuracy",
]
