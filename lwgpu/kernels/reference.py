"""Float64 brute-force ground truth for Gaussian-kernel sums and squared MMD (numpy only).

Every numerical test compares against these functions; they favour clarity over speed.
"""
from __future__ import annotations

import numpy as np


def gaussian_gram(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """``k(a_i, b_j) = exp(-gamma ||a_i - b_j||^2)`` in float64.

    a: (n, d), b: (m, d) -> (n, m), from explicit differences (no expansion trick).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    diff = a[:, None, :] - b[None, :, :]
    return np.exp(-gamma * np.einsum("nmd,nmd->nm", diff, diff))


def inner(z1: np.ndarray, beta1: np.ndarray, z2: np.ndarray, beta2: np.ndarray, gamma: float) -> float:
    """RKHS inner product ``sum_ij beta1_i beta2_j k(z1_i, z2_j)``; z: (K, d), beta: (K,)."""
    return float(np.asarray(beta1, np.float64) @ gaussian_gram(z1, z2, gamma) @ np.asarray(beta2, np.float64))


def mmd2(z1: np.ndarray, beta1: np.ndarray, z2: np.ndarray, beta2: np.ndarray, gamma: float) -> float:
    """Squared MMD ``<A,A> - 2<A,B> + <B,B>`` between two weighted point sets."""
    return (
        inner(z1, beta1, z1, beta1, gamma)
        - 2.0 * inner(z1, beta1, z2, beta2, gamma)
        + inner(z2, beta2, z2, beta2, gamma)
    )


def mmd2_matrix(
    zq: list[np.ndarray], bq: list[np.ndarray], zb: list[np.ndarray], bb: list[np.ndarray], gamma: float
) -> np.ndarray:
    """(Q, N) squared MMD between every query set and every bank set (lists of (K_i, d) / (K_i,))."""
    out = np.empty((len(zq), len(zb)), dtype=np.float64)
    for i, (z1, b1) in enumerate(zip(zq, bq)):
        for j, (z2, b2) in enumerate(zip(zb, bb)):
            out[i, j] = mmd2(z1, b1, z2, b2, gamma)
    return out


def residual(z: np.ndarray, beta: np.ndarray, x: np.ndarray, gamma: float) -> float:
    """MMD^2 between the weighted set (z, beta) and the uniform empirical embedding of x (n, d)."""
    n = len(x)
    return mmd2(z, beta, x, np.full(n, 1.0 / n), gamma)
