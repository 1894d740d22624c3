"""Gaussian kernel blocks in torch, batched over leading dimensions, on CPU or GPU.

The torch primitive of the fit engines and of the data-side sums (``RKME.residual``/``herd``, which pair
spec points with raw data rows). Sums between specs go through a :class:`~lwgpu.kernels.KernelBackend`.
"""
from __future__ import annotations

import torch


def sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, batched: a (..., n, d), b (..., m, d) -> (..., n, m).

    Uses ``|a|^2 + |b|^2 - 2 a.b`` (one GEMM) and clamps the rounding error below zero.
    """
    a2 = (a * a).sum(-1, keepdim=True)
    b2 = (b * b).sum(-1, keepdim=True).transpose(-1, -2)
    d2 = torch.baddbmm(a2 + b2, a, b.transpose(-1, -2), alpha=-2.0) if a.dim() == 3 else (
        a2 + b2 - 2.0 * a @ b.transpose(-1, -2)
    )
    return d2.clamp_min_(0.0)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    """``exp(-gamma ||a_i - b_j||^2)``: a (..., n, d), b (..., m, d) -> (..., n, m)."""
    return torch.exp(sqdist(a, b).mul_(-gamma))
