"""Validation and packing of specs for a :class:`~lwgpu.bank.SpecBank` (no storage here)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..spec.validation import same_gamma


def as_ids(ids: Any, n: int) -> np.ndarray:
    """``ids`` as a fresh int64 (n,) array (never an alias of the caller's); ValueError unless unique integers."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"ids must be a 1-D sequence of {n} integers, got shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)  # a copy: a caller's array (even bank.ids) is never aliased
    if len(np.unique(arr)) != n:
        raise ValueError("ids must be unique; the given ids contain duplicates")
    return arr


def check_arrays(z: Any, beta: Any, counts: Any, dt: torch.dtype,
                 dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``z`` (N, K, d), ``beta`` (N, K) as tensors on ``dev`` in ``dt`` (no copy when already so), and
    int32 counts (N,) (default K); weights past each spec's count are zeroed. ValueError on bad input."""
    z_t = torch.as_tensor(z).detach().to(device=dev, dtype=dt)
    b_t = torch.as_tensor(beta).detach().to(device=dev, dtype=dt)
    if z_t.dim() != 3:
        raise ValueError(f"z must have shape (N, K, d), got {tuple(z_t.shape)}")
    n, k, d = z_t.shape
    if tuple(b_t.shape) != (n, k):
        raise ValueError(f"beta must have shape (N, K) = {(n, k)} to match z, got {tuple(b_t.shape)}")
    if d < 1:
        raise ValueError("z has d=0 columns; specs need at least one dimension")
    if not (bool(torch.isfinite(z_t).all()) and bool(torch.isfinite(b_t).all())):
        raise ValueError("z or beta contains NaN/Inf; every value must be finite")
    cnt = np.full(n, k, np.int32) if counts is None else np.asarray(counts, np.int32).reshape(n)
    if n and (cnt.min() < 0 or cnt.max() > k):
        raise ValueError(f"counts must lie in [0, K={k}]")
    if counts is not None and k:  # padding must carry zero weight
        pad = torch.as_tensor(np.arange(k)[None, :] >= cnt[:, None], device=dev)
        b_t = b_t.masked_fill(pad, 0.0)
    return z_t, b_t, cnt


def check_specs(specs: Sequence[Any], gamma: float, d: int | None) -> tuple[float, int]:
    """``(gamma, d)`` shared by every spec; ValueError naming the first spec that differs."""
    for i, s in enumerate(specs):
        if not all(hasattr(s, a) for a in ("z", "beta", "gamma")):
            raise ValueError(f"spec {i} is a {type(s).__name__}, not an RKME (needs z, beta, gamma)")
        if not same_gamma(s.gamma, gamma):
            raise ValueError(
                f"spec {i} has gamma={s.gamma} but the bank uses gamma={gamma}; a bank holds one kernel, "
                "refit the spec with the bank's gamma"
            )
        sd = int(s.z.shape[1])
        if d is None:
            d = sd
        elif sd != d:
            raise ValueError(f"spec {i} has dimension d={sd} but the bank holds d={d}")
    return float(gamma), int(d)


def pack_specs(specs: Sequence[Any], d: int, K: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z (M, K', d), beta (M, K'), counts (M,)) float32, padded with zeros to K' = max(K, largest spec)."""
    cnt = np.array([int(s.z.shape[0]) for s in specs], np.int32)
    k = max(int(cnt.max()), int(K))
    z = np.zeros((len(specs), k, d), np.float32)
    beta = np.zeros((len(specs), k), np.float32)
    for i, s in enumerate(specs):
        zi, bi = (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in (s.z, s.beta))
        z[i, : cnt[i]] = zi
        beta[i, : cnt[i]] = bi
    return z, beta, cnt
