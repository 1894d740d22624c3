"""Input checks shared by every spec entry point: one place that turns user data into a clean tensor."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def as_matrix(
    X: Any,
    name: str = "X",
    nan_policy: str = "raise",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Convert numpy / torch / pandas / nested lists of shape (n, d) to a finite 2-D tensor.

    Parameters
    ----------
    X : array-like, (n, d)
        Data rows. Higher-rank arrays (e.g. images (n, h, w)) are refused: flatten them first.
    nan_policy : {"raise", "impute"}
        ``"raise"`` refuses NaN/Inf; ``"impute"`` replaces them with the column mean of the finite
        values, as the reference package does (a column with no finite value is still an error).

    Returns
    -------
    torch.Tensor, (n, d), of ``dtype`` on ``device``.
    """
    if nan_policy not in ("raise", "impute"):
        raise ValueError(f"nan_policy must be 'raise' or 'impute', got {nan_policy!r}")
    if hasattr(X, "to_numpy") and not isinstance(X, torch.Tensor):  # pandas DataFrame / Series
        X = X.to_numpy()
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        try:
            arr = np.asarray(X)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} could not be read as a numeric array: {exc}") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}; encode categorical columns first")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 2:
        raise ValueError(
            f"{name} must have shape (n, d), got rank {t.dim()} with shape {tuple(t.shape)}; "
            "reshape it (e.g. X.reshape(len(X), -1))"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): need at least one row and one column")
    t = t.to(device=device, dtype=dtype)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        if nan_policy == "raise":
            rows = int(bad.any(1).sum())
            raise ValueError(
                f"{name} has {int(bad.sum())} NaN/Inf values in {rows} rows; clean them or pass "
                "nan_policy='impute' to replace them with column means"
            )
        t = t.clone()
        t[bad] = float("nan")
        means = torch.nanmean(t, dim=0)
        empty = torch.isnan(means)
        if bool(empty.any()):
            cols = torch.nonzero(empty).flatten().tolist()
            raise ValueError(f"{name} columns {cols} have no finite value; drop them before fitting")
        t = torch.where(torch.isnan(t), means.expand_as(t), t)
    return t


def check_gamma(gamma: float) -> float:
    """A positive finite kernel bandwidth, as a Python float."""
    try:
        g = float(gamma)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gamma must be a positive number, got {gamma!r}") from exc
    if not np.isfinite(g) or g <= 0:
        raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
    return g


def check_K(K: int) -> int:
    """A positive integer number of reduced points."""
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K (number of reduced points) must be an integer >= 1, got {K!r}")
    return int(K)


#: Relative tolerance under which two kernel bandwidths count as the same kernel, everywhere in lwgpu.
GAMMA_RTOL = 1e-9


def same_gamma(a: float, b: float) -> bool:
    """True when two bandwidths define the same Gaussian kernel (equal to :data:`GAMMA_RTOL`)."""
    return math.isclose(float(a), float(b), rel_tol=GAMMA_RTOL, abs_tol=0.0)


def check_same_kernel(d_a: int, gamma_a: float, d_b: int, gamma_b: float,
                      a: str = "this spec", b: str = "the other") -> None:
    """ValueError unless two sets of specs share the input dimension and the kernel bandwidth.

    ``a`` and ``b`` name the two sides in the message (e.g. "the query", "the bank").
    """
    if int(d_a) != int(d_b):
        raise ValueError(f"dimension mismatch: {a} has d={d_a} but {b} has d={d_b}")
    if not same_gamma(gamma_a, gamma_b):
        raise ValueError(
            f"gamma mismatch: {a} has gamma={gamma_a} but {b} has gamma={gamma_b}; "
            "specs are only comparable under the same kernel: refit with one gamma"
        )
