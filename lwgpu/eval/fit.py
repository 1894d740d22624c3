"""Fit quality: residual of fitted specs against their data, and a random-subsample baseline."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def fit_residuals(specs: Sequence, datasets: Sequence[np.ndarray], max_rows: int = 2000) -> np.ndarray:
    """(n,) float64 residual (MMD^2 to the empirical embedding of its data) of every spec.

    Each dataset is cut to its first ``max_rows`` rows (the X-X term costs O(n^2 d)).
    """
    if len(specs) != len(datasets):
        raise ValueError(f"{len(specs)} specs for {len(datasets)} datasets; they must match")
    return np.array([s.residual(np.asarray(x)[:max_rows]) for s, x in zip(specs, datasets)], dtype=np.float64)


def subsample_residuals(datasets: Sequence[np.ndarray], K: int, gamma: float, seed: int = 0,
                        max_rows: int = 2000) -> np.ndarray:
    """(n,) residual of the baseline spec: ``K`` rows drawn without replacement, uniform weights."""
    from ..spec.rkme import RKME

    rng = np.random.default_rng(seed)
    out = []
    for x in datasets:
        x = np.asarray(x)[:max_rows]
        pick = rng.choice(len(x), size=min(int(K), len(x)), replace=False)
        out.append(RKME(x[pick], np.full(len(pick), 1.0 / len(pick)), gamma, dtype="float64").residual(x))
    return np.asarray(out, dtype=np.float64)
