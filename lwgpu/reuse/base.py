"""What every reuser shares: the learnware list, input checks, and reading learnware outputs.

A learnware here is anything with ``predict(X)``; classification reusers also use
``predict_proba(X)`` (on the object or its ``.model``) with ``classes_`` when present.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

TASKS = ("classification", "regression")


def to_numpy(out: Any, what: str) -> np.ndarray:
    """A model output (numpy, torch tensor, list) as a numpy array."""
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    arr = np.asarray(out)
    if arr.dtype == object:
        raise ValueError(f"{what} returned non-numeric output of dtype object; return an array of numbers")
    return arr


def check_X(X: Any, d: int | None = None, name: str = "X") -> np.ndarray:
    """Rows (n, d) as a finite float64 array; ``d`` checks the number of columns."""
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {arr.shape}; reshape it to rows of features")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} has {arr.shape[1]} features but the learnwares take {d}; "
                         "align the feature spaces first")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN/Inf; impute missing values before reuse")
    return arr


def input_dim(learnware: Any) -> int | None:
    """The input dimension a learnware declares (its RKME's ``d`` or semantic ``input_dim``), if any."""
    spec = find_rkme(learnware)
    if spec is not None and hasattr(spec, "d"):
        return int(spec.d)
    sem = getattr(learnware, "semantic_spec", None)
    if isinstance(sem, dict) and "input_dim" in sem:
        return int(sem["input_dim"])
    return None


def find_rkme(learnware: Any) -> Any:
    """The learnware's RKME: attribute ``rkme``, ``spec`` or ``stat_spec`` (or a method of that name)."""
    for name in ("rkme", "spec", "stat_spec"):
        spec = getattr(learnware, name, None)
        if callable(spec) and not hasattr(spec, "herd"):
            spec = spec()
        if spec is not None and hasattr(spec, "herd"):
            return spec
    return None


def _model_chain(learnware: Any, depth: int = 3) -> list[Any]:
    """The learnware and the models it wraps through ``.model`` (e.g. market Learnware -> adapter -> estimator)."""
    chain = [learnware]
    while len(chain) < depth and getattr(chain[-1], "model", None) is not None:
        chain.append(chain[-1].model)
    return chain


def find_proba(learnware: Any) -> tuple[Any, Any]:
    """``(predict_proba callable or None, classes_ or None)`` of a learnware or a model it wraps.

    ``classes_`` falls back to the semantic spec's ``classes`` list.
    """
    objs = _model_chain(learnware)
    classes = next((getattr(o, "classes_") for o in objs if getattr(o, "classes_", None) is not None), None)
    if classes is None:
        sem = getattr(learnware, "semantic_spec", None)
        if isinstance(sem, dict) and sem.get("classes"):
            classes = np.asarray(sem["classes"])
    for obj in objs:
        if callable(getattr(obj, "predict_proba", None)):
            return obj.predict_proba, classes
    return None, classes


def label_scores(learnware: Any, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class scores (n, len(classes)) in the order of ``classes``.

    ``predict_proba`` columns are mapped through the learnware's ``classes_`` (or taken as
    ``classes`` when widths agree); without probabilities, the one-hot of ``predict``. Classes the
    learnware never outputs score 0.
    """
    proba, lw_classes = find_proba(learnware)
    n, out = len(X), np.zeros((len(X), len(classes)))
    pos = {c: i for i, c in enumerate(classes.tolist())}
    if proba is not None:
        P = to_numpy(proba(X), "predict_proba")
        if P.ndim == 2 and P.shape[0] == n:
            if lw_classes is None:
                if P.shape[1] != len(classes):
                    raise ValueError(f"predict_proba gives {P.shape[1]} columns for {len(classes)} classes and the "
                                     "learnware has no classes_ to map them; add classes_")
                lw_classes = classes
            for j, c in enumerate(np.asarray(lw_classes).tolist()):
                if c in pos:
                    out[:, pos[c]] += P[:, j]
            return out
    pred = predict_labels(learnware, X)
    for i, c in enumerate(pred.tolist()):
        if c in pos:
            out[i, pos[c]] = 1.0
    return out


def predict_labels(learnware: Any, X: np.ndarray) -> np.ndarray:
    """Labels (n,) from ``predict``; 2-D score outputs are turned into labels by argmax."""
    pred = to_numpy(learnware.predict(X), "predict")
    if pred.ndim == 2 and pred.shape[1] > 1:
        _, lw_classes = find_proba(learnware)
        idx = pred.argmax(1)
        return np.asarray(lw_classes)[idx] if lw_classes is not None else idx
    pred = pred.reshape(len(X))
    if np.issubdtype(pred.dtype, np.floating) and np.allclose(pred, np.round(pred)):
        pred = np.round(pred).astype(np.int64)
    return pred


def predict_values(learnware: Any, X: np.ndarray) -> np.ndarray:
    """Regression outputs as (n, k) float64 (1-D outputs become one column)."""
    pred = to_numpy(learnware.predict(X), "predict").astype(np.float64)
    return pred.reshape(len(X), -1)


def known_classes(learnwares: Sequence[Any], y: np.ndarray | None = None) -> np.ndarray | None:
    """Sorted union of the learnwares' ``classes_`` and the labels ``y``; None when nothing is known."""
    found: set = set()
    any_known = False
    for lw in learnwares:
        _, cls = find_proba(lw)
        if cls is not None:
            found.update(np.asarray(cls).tolist())
            any_known = True
    if y is not None:
        found.update(np.asarray(y).tolist())
        any_known = True
    return np.array(sorted(found)) if any_known else None


class Reuser:
    """Base class: holds the learnwares and checks inputs.

    Parameters
    ----------
    learnwares : sequence
        Objects with ``predict(X)``. At least one.
    task : {"classification", "regression"}
    """

    #: Whether :meth:`fit` needs labeled rows.
    needs_labels: bool = False

    def __init__(self, learnwares: Sequence[Any], task: str = "classification") -> None:
        if learnwares is None or len(learnwares) == 0:
            raise ValueError(f"{type(self).__name__} needs at least one learnware, got an empty list")
        bad = [i for i, lw in enumerate(learnwares) if not callable(getattr(lw, "predict", None))]
        if bad:
            raise ValueError(f"learnwares at positions {bad} have no predict(X) method")
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        dims = {i: input_dim(lw) for i, lw in enumerate(learnwares)}
        known = {d for d in dims.values() if d is not None}
        if len(known) > 1:
            raise ValueError(f"learnwares take different input dimensions {dims}; reuse needs one feature space "
                             "(align features first)")
        self.learnwares = list(learnwares)
        self.task = task
        self.input_dim: int | None = known.pop() if known else None
        self.fitted_ = False

    def _check(self, X: Any, name: str = "X") -> np.ndarray:
        X = check_X(X, self.input_dim, name)
        if self.input_dim is None:
            self.input_dim = X.shape[1]
        return X

    def _check_labeled(self, X: Any, y: Any, min_labels: int) -> tuple[np.ndarray, np.ndarray]:
        X = self._check(X, "X_labeled")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X_labeled has {X.shape[0]} rows but y has {y.shape[0]} labels")
        if len(y) < min_labels:
            raise ValueError(f"{type(self).__name__} needs at least {min_labels} labeled rows, got {len(y)}")
        if self.task == "regression":
            y = y.astype(np.float64)
            if not np.isfinite(y).all():
                raise ValueError("y contains NaN/Inf")
        return X, y

    def fit(self, X: Any, y: Any = None) -> "Reuser":
        """Fit on the user's rows X (n, d) and labels y (n,) where the reuser uses labels."""
        self._check(X)
        self.fitted_ = True
        return self

    def predict(self, X: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _require_fit(self) -> None:
        if self.needs_labels and not self.fitted_:
            raise ValueError(f"{type(self).__name__} must be fitted with labeled rows first: call fit(X, y)")
