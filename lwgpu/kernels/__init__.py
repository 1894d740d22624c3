"""Gaussian-kernel sums between specs: the one owner of cross terms, self terms, Gram matrices and distances.

Pick a backend once and pass it down (as POT's backends are)::

    from lwgpu.kernels import get_backend
    be = get_backend("auto", device="cpu")      # NumbaBackend on a CPU, CupyBackend on a GPU (float32)
    d2 = be.mmd2(queries, bank)                 # float64 (Q, N) torch tensor on be.device
    d2 = be.mmd2(queries, bank, rows=pos)       # only bank rows ``pos`` (gathered tile by tile, in place)
    d2 = be.mmd2_rows(queries, bank, pos_qc)    # (Q, C): each query to its own rows (-1 -> inf)
    G = be.gram(z, beta, gamma)                 # (M, M) Gram matrix of candidates
    be.precise                                  # the float64 torch sibling on the same device

The functions below are the same calls for one-off use (``backend=`` a name or a backend object; with a
name, the backend is chosen for the bank by :func:`backend_for` and ``**options`` go to its constructor,
e.g. ``accumulate="float64"`` for cuda or ``max_block_elems`` for torch).
Every result is a float64 torch tensor on the backend's device; the squared MMD is clamped at 0.
Backends: ``torch`` (CPU/GPU, float32/float64), ``numba`` (CPU, float32), ``cuda`` (CUDA C via CuPy).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from .. import settings
from .backend import (
    KernelBackend, Packed, auto_backend_name, available_backends, backend_class, backend_for, get_backend, pack,
    register, take_rows, to_distance,
)

logger = logging.getLogger(__name__)


def mmd2(queries: Any, bank: Any, backend: "str | KernelBackend" = settings.BACKEND, device: Any = "auto",
         rows: Any = None, tile: int | None = None, **options: Any) -> torch.Tensor:
    """Exact squared MMD between queries (RKME, list of RKMEs or a bank) and every bank spec (or ``rows``).

    Returns float64 (Q, N) (or (Q, len(rows))) on the backend's device; ``tile`` bank specs per kernel call.
    """
    return backend_for(bank, backend, device, **options).mmd2(queries, bank, rows=rows, tile=tile)


def mmd2_rows(queries: Any, bank: Any, positions: Any, backend: "str | KernelBackend" = settings.BACKEND,
              device: Any = "auto", **options: Any) -> torch.Tensor:
    """Squared MMD of each query to its own bank rows: positions int (Q, C), -1 -> ``inf``; float64 (Q, C)."""
    return backend_for(bank, backend, device, **options).mmd2_rows(queries, bank, positions)


def mmd2_pairwise(bank_a: Any, bank_b: Any = None, backend: "str | KernelBackend" = settings.BACKEND,
                  device: Any = "auto", tile: int = settings.PAIRWISE_TILE, **options: Any) -> torch.Tensor:
    """The float64 (N, M) squared-MMD matrix between two banks (or within ``bank_a``, diagonal 0), in tiles
    of ``tile`` specs of ``bank_a``; with ``bank_b=None`` only the upper block triangle is computed."""
    a = Packed.of(bank_a)
    b = a if bank_b is None else pack(bank_b)
    be = backend_for(a, backend, device, **options)
    out = torch.empty(len(a), len(b), dtype=torch.float64, device=be.device)
    for s in range(0, len(a), tile):
        e = min(s + tile, len(a))
        first = s if bank_b is None else 0
        out[s:e, first:] = be.mmd2(a.rows(s, e), b, start=first)
        if bank_b is None:
            blk = out[s:e, s:e]
            blk.copy_((blk + blk.T) * 0.5)
            out[e:, s:e] = out[s:e, e:].T
    if bank_b is None:
        out.fill_diagonal_(0.0)
    return out


__all__ = [
    "KernelBackend", "Packed", "get_backend", "backend_for", "backend_class", "register", "available_backends",
    "auto_backend_name", "pack", "take_rows", "to_distance", "mmd2", "mmd2_rows", "mmd2_pairwise",
]
