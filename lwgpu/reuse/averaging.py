"""Averaging: the plain ensemble of every learnware, with no labels."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import Reuser, known_classes, label_scores, predict_labels, predict_values

MODES = ("mean", "vote_by_label", "vote_by_prob")


def vote(labels: np.ndarray, classes: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Majority vote over columns of ``labels`` (n, M); ties go to the smallest class in ``classes``."""
    w = np.ones(labels.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    counts = np.zeros((labels.shape[0], len(classes)))
    for j, c in enumerate(classes.tolist()):
        counts[:, j] = ((labels == c) * w[None, :]).sum(1)
    return classes[counts.argmax(1)]


class Averaging(Reuser):
    """Combine every learnware's output.

    Parameters
    ----------
    learnwares : sequence
        Objects with ``predict(X)``.
    mode : {"mean", "vote_by_label", "vote_by_prob"}
        ``"mean"``: average of the outputs (regression values or scores), (n,) or (n, k).
        ``"vote_by_label"``: majority vote of the predicted labels (ties: smallest label).
        ``"vote_by_prob"``: average of class probabilities (``predict_proba`` when available,
        else the one-hot of ``predict``), then argmax; :meth:`predict_proba` gives the average.
    classes : array-like, optional
        The label space for the votes; default: the union of the learnwares' ``classes_``, or of
        their predicted labels.
    """

    def __init__(self, learnwares: Sequence[Any], mode: str = "vote_by_prob", classes: Any = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        super().__init__(learnwares, task="regression" if mode == "mean" else "classification")
        self.mode = mode
        self.classes = None if classes is None else np.asarray(classes)

    def _classes(self, X: np.ndarray, labels: list[np.ndarray] | None = None) -> np.ndarray:
        """The label space: ``classes``, else the learnwares' ``classes_``, else the labels they predict."""
        if self.classes is not None:
            return self.classes
        cls = known_classes(self.learnwares)
        if cls is None:
            labels = labels if labels is not None else [predict_labels(lw, X) for lw in self.learnwares]
            cls = np.unique(np.concatenate(labels))
        return cls

    def predict_proba(self, X: Any) -> np.ndarray:
        """Averaged class probabilities (n, len(classes)) (modes vote_by_prob / vote_by_label)."""
        X = self._check(X)
        if self.mode == "mean":
            raise ValueError("predict_proba needs a voting mode; mode='mean' averages raw outputs")
        if self.mode == "vote_by_label":
            labels = [predict_labels(lw, X) for lw in self.learnwares]
            cls = self._classes(X, labels)
            L = np.stack(labels, 1)
            return np.stack([(L == c).mean(1) for c in cls.tolist()], 1)
        cls = self._classes(X)
        return np.mean([label_scores(lw, X, cls) for lw in self.learnwares], axis=0)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions (n,) (labels, or mean values) or (n, k) for multi-output means."""
        X = self._check(X)
        if self.mode == "mean":
            out = np.mean([predict_values(lw, X) for lw in self.learnwares], axis=0)
            return out[:, 0] if out.shape[1] == 1 else out
        if self.mode == "vote_by_label":
            labels = [predict_labels(lw, X) for lw in self.learnwares]
            return vote(np.stack(labels, 1), self._classes(X, labels))
        return self._classes(X)[self.predict_proba(X).argmax(1)]
