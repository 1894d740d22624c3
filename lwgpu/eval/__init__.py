"""Metrics: search accuracy vs ground truth, recall@k vs exact, latency, fit residual, reuse error."""
from .fit import fit_residuals, subsample_residuals
from .search import mixture_precision_recall, recall_at_k, topk_accuracy
from .timing import latency_stats, throughput, time_queries

__all__ = [
    "fit_residuals",
    "latency_stats",
    "mixture_precision_recall",
    "recall_at_k",
    "subsample_residuals",
    "throughput",
    "time_queries",
    "topk_accuracy",
]
