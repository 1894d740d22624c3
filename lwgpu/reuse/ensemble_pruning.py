"""EnsemblePruning: choose a weighted subset of learnwares with a few user labels.

The algorithm (lwgpu's own; the reference package uses a multi-objective evolutionary search):

1. Every learnware's output on the labeled rows is computed once: class probabilities
   (``predict_proba`` mapped to a common label space, else the one-hot of ``predict``) or
   regression values.
2. Greedy forward selection with replacement: start from the empty ensemble and repeatedly add
   the learnware whose addition gives the lowest loss of the averaged output. For
   classification the loss is the error rate, ties broken by the mean negative log-probability
   of the true class (so a handful of labels still orders the candidates); for regression the
   mean squared error. Adding a learnware twice doubles its weight.
3. The ensemble size is chosen by K-fold cross-validation over the labeled rows: the greedy
   path is grown on each training fold and every prefix scored on the held-out fold; among the
   sizes with the lowest held-out error the largest wins (few labels tie often, and a larger
   ensemble is the safer prior: on the digits mixture users it lowers the error at 5-10 labels
   by about 0.05 against taking the smallest). With fewer than 4 labels the greedy path on all
   rows simply stops when the loss stops improving.
4. The final ensemble is the greedy path of that size on all labeled rows.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from .base import Reuser, known_classes, label_scores, predict_values

logger = logging.getLogger(__name__)


def _loss(avg: np.ndarray, target: np.ndarray, task: str) -> tuple[float, float]:
    """(primary, tie-break) loss of averaged outputs avg (n, C) against target (n,) or (n, k)."""
    if task == "regression":
        return float(((avg - target) ** 2).mean()), 0.0
    err = float((avg.argmax(1) != target).mean())
    p = avg[np.arange(len(target)), target] / np.maximum(avg.sum(1), 1e-12)
    return err, float(-np.log(np.clip(p, 1e-6, 1.0)).mean())


def greedy_path(S: np.ndarray, target: np.ndarray, task: str, max_size: int, stop_early: bool = False) -> list[int]:
    """Greedy forward selection with replacement.

    S : (M, n, C) outputs of M learnwares on n rows; target : (n,) class positions or (n, C) values.
    Returns the chosen learnware positions in order (length <= max_size).
    """
    total = np.zeros(S.shape[1:])
    path: list[int] = []
    best_prev: tuple[float, float] | None = None
    for step in range(max_size):
        losses = [_loss((total + S[m]) / (step + 1), target, task) for m in range(S.shape[0])]
        m = min(range(len(losses)), key=lambda i: (losses[i], i))
        if stop_early and best_prev is not None and not losses[m] < best_prev:
            break
        best_prev = losses[m]
        total += S[m]
        path.append(m)
    return path


class EnsemblePruning(Reuser):
    """A weighted sub-ensemble chosen on a few labels; see the module docstring for the algorithm.

    Parameters
    ----------
    learnwares : sequence
        Objects with ``predict(X)`` (and ``predict_proba``/``classes_`` for soft votes).
    task : {"classification", "regression"}
    max_size : int, optional
        Longest greedy path (default ``min(2 M, 25)``).
    n_folds : int
        Folds for choosing the size (at most one per labeled row).
    seed : int
        Seeds the fold split.

    Attributes (after fit)
    ----------------------
    selected_ : list[int]  the distinct learnware positions kept
    weights_ : np.ndarray (M,)  each learnware's share of the ensemble (0 for pruned ones)
    classes_ : np.ndarray  the label space (classification)
    """

    needs_labels = True

    def __init__(self, learnwares: Sequence[Any], task: str = "classification", max_size: int | None = None,
                 n_folds: int = 5, seed: int = 0) -> None:
        super().__init__(learnwares, task)
        M = len(self.learnwares)
        self.max_size = min(2 * M, 25) if max_size is None else int(max_size)
        if self.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {n_folds}")
        self.n_folds = int(n_folds)
        self.seed = int(seed)
        self.classes_: np.ndarray | None = None
        self.weights_: np.ndarray | None = None
        self.selected_: list[int] = []

    def _outputs(self, X: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return np.stack([label_scores(lw, X, self.classes_) for lw in self.learnwares])
        return np.stack([predict_values(lw, X) for lw in self.learnwares])

    def fit(self, X: Any, y: Any = None) -> "EnsemblePruning":
        """Choose the ensemble from labeled rows X (n, d), y (n,) (n >= 1)."""
        if y is None:
            raise ValueError("EnsemblePruning needs labels: call fit(X_labeled, y)")
        X, y = self._check_labeled(X, y, min_labels=1)
        if self.task == "classification":
            self.classes_ = known_classes(self.learnwares, y)
            target = np.searchsorted(self.classes_, y)
        else:
            target = y.reshape(len(y), -1)
        S = self._outputs(X)
        n = len(y)
        if n >= 4:
            size = self._cv_size(S, target)
            path = greedy_path(S, target, self.task, size)
        else:
            path = greedy_path(S, target, self.task, self.max_size, stop_early=True)
        counts = np.bincount(path, minlength=len(self.learnwares)).astype(np.float64)
        self.weights_ = counts / counts.sum()
        self.selected_ = [int(i) for i in np.nonzero(counts)[0]]
        self.fitted_ = True
        logger.debug("ensemble pruning kept %s with weights %s", self.selected_, self.weights_[self.selected_])
        return self

    def _cv_size(self, S: np.ndarray, target: np.ndarray) -> int:
        n = S.shape[1]
        k = min(self.n_folds, n)
        folds = np.array_split(np.random.default_rng(self.seed).permutation(n), k)
        scores = np.zeros(self.max_size)
        for f in range(k):
            val = folds[f]
            tr = np.concatenate([folds[g] for g in range(k) if g != f])
            path = greedy_path(S[:, tr], target[tr], self.task, self.max_size)
            total = np.zeros(S[:, val].shape[1:])
            for s in range(self.max_size):
                total += S[path[s], val]
                scores[s] += _loss(total / (s + 1), target[val], self.task)[0]
        best = scores.min()
        return max(s for s in range(self.max_size) if scores[s] <= best + 1e-12 * max(1.0, abs(best))) + 1

    def predict_proba(self, X: Any) -> np.ndarray:
        """Weighted average class scores (n, len(classes_))."""
        self._require_fit()
        if self.task != "classification":
            raise ValueError("predict_proba is for classification; this reuser was built for regression")
        X = self._check(X)
        return sum(self.weights_[m] * label_scores(self.learnwares[m], X, self.classes_) for m in self.selected_)

    def predict(self, X: Any) -> np.ndarray:
        """Labels (n,) or regression values (n,) / (n, k) of the pruned ensemble."""
        self._require_fit()
        X = self._check(X)
        if self.task == "classification":
            return self.classes_[self.predict_proba(X).argmax(1)]
        out = sum(self.weights_[m] * predict_values(self.learnwares[m], X) for m in self.selected_)
        return out[:, 0] if out.shape[1] == 1 else out
