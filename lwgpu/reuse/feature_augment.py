"""FeatureAugment: append learnware outputs to the user's features and fit a linear model on a few labels.

Classification: each learnware contributes its class scores (probabilities, or one-hot labels)
over a shared label space; a logistic regression is fitted on ``[X, scores]``. Regression: each
learnware's outputs are appended and a ridge regression is fitted. The regularisation strength
is chosen by cross-validation when the labels allow it (>= 2 rows per class / >= 3 rows).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from .base import Reuser, known_classes, label_scores, predict_values

logger = logging.getLogger(__name__)

CS = (0.1, 1.0, 10.0, 100.0)
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)


class _Constant:
    """The model for labels with a single class."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def predict(self, Z: np.ndarray) -> np.ndarray:
        return np.full(len(Z), self.value)


def fit_linear(Z: np.ndarray, y: np.ndarray, task: str, Cs: Sequence[float] = CS,
               alphas: Sequence[float] = ALPHAS, cv: int = 3, seed: int = 0) -> Any:
    """Logistic regression (classification) or ridge (regression) on Z (n, p), strength chosen by CV.

    Shared by :class:`FeatureAugment` and the user's own-model baseline so both learn the same way.
    Runs with one BLAS thread: these fits are small, and threads only add overhead.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _fit_linear(Z, y, task, Cs, alphas, cv, seed)


def _fit_linear(Z: np.ndarray, y: np.ndarray, task: str, Cs: Sequence[float], alphas: Sequence[float],
                cv: int, seed: int) -> Any:
    if task == "regression":
        from sklearn.linear_model import Ridge, RidgeCV

        if len(y) < 3:
            return Ridge(alpha=1.0).fit(Z, y)
        return RidgeCV(alphas=list(alphas)).fit(Z, y)
    from sklearn.linear_model import LogisticRegression

    labels, counts = np.unique(y, return_counts=True)
    if len(labels) == 1:
        return _Constant(labels[0])
    folds = min(cv, int(counts.min()))
    if folds < 2 or len(Cs) == 1:
        return LogisticRegression(C=float(Cs[len(Cs) // 2] if len(Cs) > 1 else Cs[0]), max_iter=2000).fit(Z, y)
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": list(Cs)},
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1)
    return search.fit(Z, y).best_estimator_


class FeatureAugment(Reuser):
    """Linear model on the user's features augmented with every learnware's outputs.

    Parameters
    ----------
    learnwares : sequence
        Objects with ``predict(X)`` (and ``predict_proba``/``classes_`` for soft scores).
    task : {"classification", "regression"}
    output_weight : float
        Scale of the appended learnware columns relative to the user's features. Scores lie in
        [0, 1]; the default 3 lets the regularised model lean on them when labels are few (on the
        digits market it lowers the error at 5-10 labels against 1).
    include_features : bool
        Keep the user's own features (True) or fit on learnware outputs only.
    Cs, alphas : sequences
        Candidate inverse regularisation (logistic) / ridge strengths for the CV.
    cv : int
        Folds for choosing the strength (fewer when labels are scarce; none below 2 per class).
    """

    needs_labels = True

    def __init__(self, learnwares: Sequence[Any], task: str = "classification", output_weight: float = 3.0,
                 include_features: bool = True, Cs: Sequence[float] = CS, alphas: Sequence[float] = ALPHAS,
                 cv: int = 3, seed: int = 0) -> None:
        super().__init__(learnwares, task)
        if output_weight <= 0:
            raise ValueError(f"output_weight must be > 0, got {output_weight}")
        self.output_weight = float(output_weight)
        self.include_features = include_features
        self.Cs, self.alphas, self.cv, self.seed = tuple(Cs), tuple(alphas), int(cv), int(seed)
        self.classes_: np.ndarray | None = None
        self.model_: Any = None

    def augment(self, X: Any) -> np.ndarray:
        """``[X, outputs]`` (n, d + sum of output widths)."""
        X = self._check(X)
        if self.task == "classification":
            cls = self.classes_ if self.classes_ is not None else known_classes(self.learnwares)
            if cls is None:
                raise ValueError("the label space is unknown: fit with labels first")
            outs = [label_scores(lw, X, cls) for lw in self.learnwares]
        else:
            outs = [predict_values(lw, X) for lw in self.learnwares]
        parts = ([X] if self.include_features else []) + [self.output_weight * np.concatenate(outs, 1)]
        return np.concatenate(parts, 1)

    def fit(self, X: Any, y: Any = None) -> "FeatureAugment":
        """Fit on labeled rows X (n, d), y (n,) (n >= 2)."""
        if y is None:
            raise ValueError("FeatureAugment needs labels: call fit(X_labeled, y)")
        X, y = self._check_labeled(X, y, min_labels=2)
        if self.task == "classification":
            self.classes_ = known_classes(self.learnwares, y)
        self.model_ = fit_linear(self.augment(X), y, self.task, self.Cs, self.alphas, self.cv, self.seed)
        self.fitted_ = True
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions (n,) (or (n, k) for multi-output regression)."""
        self._require_fit()
        return np.asarray(self.model_.predict(self.augment(X)))
