"""Feature alignment: use a learnware whose columns differ from the user's (order, subset, superset).

Columns are matched by name (the learnware's semantic ``feature_descriptions`` against the user's
column names, compared case- and space-insensitively). Learnware columns the user lacks are
filled with the learnware's own data mean, read from its RKME (``sum_i beta_i z_i / sum_i beta_i``),
so the model sees a typical value instead of an out-of-distribution zero; user columns the
learnware does not know are dropped.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from .base import check_X, find_proba, find_rkme

logger = logging.getLogger(__name__)


def _names(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [str(value[k]) for k in sorted(value, key=int)]
    return [str(v) for v in value]


def _norm(name: str) -> str:
    return " ".join(str(name).lower().split())


class AlignedLearnware:
    """A learnware answering in the user's feature space.

    ``predict(X_user)`` builds the learnware's input (n, d_learnware): column ``j`` is the user's
    column ``columns[j]``, or ``fill[j]`` where ``columns[j]`` is None.
    """

    def __init__(self, learnware: Any, columns: Sequence[int | None], fill: np.ndarray, user_dim: int) -> None:
        self.learnware = learnware
        self.columns = list(columns)
        self.fill = np.asarray(fill, dtype=np.float64)
        self.user_dim = int(user_dim)
        proba, classes = find_proba(learnware)
        if classes is not None:
            self.classes_ = classes
        if proba is None:
            self.predict_proba = None  # type: ignore[assignment]

    def transform(self, X: Any) -> np.ndarray:
        """User rows (n, user_dim) -> learnware rows (n, d_learnware)."""
        X = check_X(X, self.user_dim)
        out = np.tile(self.fill, (len(X), 1))
        for j, c in enumerate(self.columns):
            if c is not None:
                out[:, j] = X[:, c]
        return out

    def predict(self, X: Any) -> Any:
        return self.learnware.predict(self.transform(X))

    def predict_proba(self, X: Any) -> Any:  # replaced by None when the learnware has no probabilities
        return find_proba(self.learnware)[0](self.transform(X))


def align_features(
    learnware: Any,
    user_features: Sequence[str],
    learnware_features: Sequence[str] | Mapping[Any, str] | None = None,
    fill: str | np.ndarray = "spec_mean",
) -> AlignedLearnware:
    """Wrap ``learnware`` so it takes rows with the user's columns ``user_features``.

    Parameters
    ----------
    learnware_features : names, optional
        The learnware's column names; default its semantic spec's ``feature_descriptions``.
    fill : "spec_mean" | "zero" | array (d_learnware,)
        Values for learnware columns the user lacks; ``"spec_mean"`` needs the learnware's RKME.
    """
    if learnware_features is None:
        sem = getattr(learnware, "semantic_spec", None) or {}
        if "feature_descriptions" not in sem:
            raise ValueError("the learnware has no feature_descriptions; pass learnware_features=")
        learnware_features = sem["feature_descriptions"]
    lw_names, user_names = _names(learnware_features), [str(u) for u in user_features]
    index = {}
    for i, name in enumerate(user_names):
        if _norm(name) in index:
            raise ValueError(f"user feature name {name!r} appears twice; names must be unique")
        index[_norm(name)] = i
    columns = [index.get(_norm(n)) for n in lw_names]
    matched = sum(c is not None for c in columns)
    if matched == 0:
        raise ValueError("no user feature name matches a learnware feature; nothing to align")
    d = len(lw_names)
    if isinstance(fill, str):
        if fill == "zero":
            fill_arr = np.zeros(d)
        elif fill == "spec_mean":
            spec = find_rkme(learnware)
            if spec is None:
                raise ValueError("fill='spec_mean' needs the learnware's RKME; use fill='zero' or an array")
            z, beta = (a.astype(np.float64) for a in spec.numpy())
            if z.shape[1] != d:
                raise ValueError(f"the RKME has d={z.shape[1]} but the learnware lists {d} features")
            fill_arr = beta @ z / beta.sum()
        else:
            raise ValueError(f"fill must be 'spec_mean', 'zero' or an array, got {fill!r}")
    else:
        fill_arr = np.asarray(fill, dtype=np.float64).reshape(-1)
        if fill_arr.shape != (d,):
            raise ValueError(f"fill has {fill_arr.size} values for {d} learnware features")
    logger.info("aligned %d of %d learnware features to %d user features", matched, d, len(user_names))
    return AlignedLearnware(learnware, columns, fill_arr, len(user_names))
