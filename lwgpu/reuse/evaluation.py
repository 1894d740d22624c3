"""Reuse error against the number of user labels (the reference package's labeled-data curves).

For each repeat the user's rows are shuffled once: the first ``n_test`` rows are the fixed
evaluation set, the rest a label pool whose first ``k`` rows are revealed for ``k`` in
``label_counts`` (nested, so curves are monotone in information). Reusers that need no labels
(job selector, averaging) are evaluated once per repeat and reported at every ``k``; the user's
own model (the same linear learner as FeatureAugment, on the raw features only) and the mean and
best single learnware are reported alongside.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

import numpy as np

from .averaging import Averaging
from .base import check_X
from .ensemble_pruning import EnsemblePruning
from .feature_augment import FeatureAugment, fit_linear
from .job_selector import JobSelector

logger = logging.getLogger(__name__)

REUSERS = ("job_selector", "averaging", "ensemble_pruning", "feature_augment")
UNSUPERVISED = ("job_selector", "averaging")


def make_reuser(name: str, learnwares: Sequence[Any], task: str = "classification", seed: int = 0,
                specs: Sequence[Any] | None = None, **options: Any) -> Any:
    """A reuser by name: ``job_selector``, ``averaging``, ``ensemble_pruning``, ``feature_augment``."""
    if name == "job_selector":
        return JobSelector(learnwares, specs=specs, task=task, seed=seed, **options)
    if name == "averaging":
        return Averaging(learnwares, mode=options.pop("mode", "vote_by_prob" if task == "classification" else "mean"),
                         **options)
    if name == "ensemble_pruning":
        return EnsemblePruning(learnwares, task=task, seed=seed, **options)
    if name == "feature_augment":
        return FeatureAugment(learnwares, task=task, seed=seed, **options)
    raise ValueError(f"unknown reuser {name!r}; choose from {list(REUSERS)}")


def error(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    """Error rate (classification) or mean squared error (regression)."""
    y_pred = np.asarray(y_pred).reshape(np.shape(y_true))
    if task == "classification":
        return float((y_pred != y_true).mean())
    return float(((y_pred.astype(np.float64) - y_true) ** 2).mean())


def reuse_curve(
    learnwares: Sequence[Any],
    X: Any,
    y: Any,
    label_counts: Sequence[int] = (5, 10, 20, 50, 100),
    reusers: Sequence[str] = REUSERS,
    repeats: int = 3,
    task: str = "classification",
    n_test: int | None = None,
    seed: int = 0,
    specs: Sequence[Any] | None = None,
    market_learnwares: Sequence[Any] | None = None,
    reuser_options: dict[str, dict[str, Any]] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Reuse error vs. number of user labels, as plain dict rows.

    Parameters
    ----------
    learnwares : sequence
        The learnwares found for the user (objects with ``predict``; RKMEs for the job selector).
    X, y : (n, d), (n,)
        The user's rows and their (held-out) labels or targets.
    label_counts : ints
        Numbers of revealed labels; each must leave ``n_test`` rows for evaluation.
    reusers : names
        Any of :data:`REUSERS`.
    n_test : int, optional
        Evaluation rows per repeat (default: ``n - max(label_counts)``).
    market_learnwares : sequence, optional
        Learnwares whose mean and best single error are reported as ``single_mean`` /
        ``single_best`` (default: ``learnwares``).
    reuser_options : dict, optional
        Extra constructor arguments per reuser name.

    Returns
    -------
    list of dict
        One row per (method, n_labels, repeat): ``method``, ``n_labels``, ``repeat``, ``error``,
        ``metric`` ("error_rate" or "mse"), ``n_test``, ``seconds`` (fit + predict).
    """
    X = check_X(X)
    y = np.asarray(y)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    counts = sorted({int(k) for k in label_counts})
    if not counts or counts[0] < 1:
        raise ValueError(f"label_counts must be positive integers, got {list(label_counts)}")
    bad = [r for r in reusers if r not in REUSERS]
    if bad:
        raise ValueError(f"unknown reusers {bad}; choose from {list(REUSERS)}")
    n = len(y)
    n_test = n - counts[-1] if n_test is None else int(n_test)
    if n_test < 1 or n_test + counts[-1] > n:
        raise ValueError(f"{n} rows cannot hold {counts[-1]} labels and {n_test} test rows; "
                         "use fewer labels or a larger user")
    metric = "error_rate" if task == "classification" else "mse"
    options = reuser_options or {}
    market = list(market_learnwares) if market_learnwares is not None else list(learnwares)
    rows: list[dict[str, Any]] = []

    def emit(method: str, k: int, r: int, err: float, secs: float) -> None:
        row = {"method": method, "n_labels": k, "repeat": r, "error": err, "metric": metric,
               "n_test": n_test, "seconds": secs}
        rows.append(row)
        if callback is not None:
            callback(row)

    for r in range(repeats):
        perm = np.random.default_rng(seed + r).permutation(n)
        test, pool = perm[:n_test], perm[n_test:]
        Xt, yt = X[test], y[test]
        singles = [error(yt, lw.predict(Xt), task) for lw in market]
        fixed: dict[str, tuple[float, float]] = {}
        for name in reusers:
            if name in UNSUPERVISED:
                t0 = time.perf_counter()
                reuser = make_reuser(name, learnwares, task, seed + r, specs, **dict(options.get(name, {})))
                err = error(yt, reuser.predict(Xt), task)
                fixed[name] = (err, time.perf_counter() - t0)
        for k in counts:
            lab = pool[:k]
            for name, (err, secs) in fixed.items():
                emit(name, k, r, err, secs)
            emit("single_mean", k, r, float(np.mean(singles)), 0.0)
            emit("single_best", k, r, float(np.min(singles)), 0.0)
            t0 = time.perf_counter()
            own = fit_linear(X[lab], y[lab], task, seed=seed + r)
            emit("own", k, r, error(yt, own.predict(Xt), task), time.perf_counter() - t0)
            for name in reusers:
                if name in UNSUPERVISED:
                    continue
                min_labels = 2 if name == "feature_augment" else 1
                if k < min_labels:
                    continue
                t0 = time.perf_counter()
                reuser = make_reuser(name, learnwares, task, seed + r, specs, **dict(options.get(name, {})))
                reuser.fit(X[lab], y[lab])
                emit(name, k, r, error(yt, reuser.predict(Xt), task), time.perf_counter() - t0)
        logger.info("reuse curve repeat %d/%d done", r + 1, repeats)
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of ``error`` per (method, n_labels) over repeats."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["n_labels"]), []).append(row["error"])
    return [{"method": m, "n_labels": k, "error_mean": float(np.mean(v)), "error_std": float(np.std(v)),
             "repeats": len(v)} for (m, k), v in sorted(groups.items())]


def market_candidates(market: Any, user: Any, max_learnwares: int = 3, min_weight: float = 0.1) -> list[int]:
    """Task positions a mixture search would hand to reuse: the simplex-QP mixture of the whole
    market for the user's rows, members with weight >= ``min_weight`` (at most ``max_learnwares``)."""
    w = JobSelector(market.tasks).mixture_weights(user.X)
    order = [int(i) for i in np.argsort(-w)[:max_learnwares]]
    return [i for i in order if w[i] >= min_weight] or order[:1]
