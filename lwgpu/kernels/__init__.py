"""Squared MMD between query specs and a spec bank: one front door over the torch, numba and CUDA backends.

``mmd2(queries, bank)`` returns the exact (Q, N) matrix ``<Q,Q> - 2<Q,B> + <B,B>`` (float64,
clamped at 0, since the squared MMD is a squared RKHS norm). The bank's self terms come from the bank
(computed once at insertion); only the cross terms are computed here, tile by tile over the bank, so a
memory-mapped bank larger than RAM is scanned without being loaded.

``backend="auto"``: on a CUDA device, ``cuda`` (CuPy RawKernel) when CuPy is available, else ``torch``;
on the CPU, ``numba`` when numba is available (and the bank is float32), else ``torch``.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..device import cupy_available, numba_available, resolve_device
from ..spec.validation import check_same_kernel

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "numba", "cuda")
_ALIASES = {"cupy": "cuda", "cuda": "cuda", "torch": "torch", "numba": "numba"}
#: Default bank tile (specs per kernel call) by backend.
TILE = {"torch": 4096, "numba": 16384, "cuda": 1 << 17}


def pick_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Resolve ``backend`` ("auto" | "torch" | "numba" | "cuda"/"cupy") for ``device``; ValueError if impossible."""
    name = str(backend).lower()
    if name == "auto":
        if device.type == "cuda":
            return "cuda" if cupy_available() and dtype == torch.float32 else "torch"
        return "numba" if numba_available() and dtype == torch.float32 else "torch"
    if name not in _ALIASES:
        raise ValueError(f"unknown backend {backend!r}: use 'auto', 'torch', 'numba' or 'cuda'")
    name = _ALIASES[name]
    if name == "numba":
        if device.type != "cpu":
            raise ValueError("backend='numba' runs on the CPU only: pass device='cpu' or backend='auto'")
        if not numba_available():
            raise ValueError("backend='numba' requested but numba is not installed (pip install numba)")
    if name == "cuda":
        if device.type != "cuda":
            raise ValueError("backend='cuda' needs a CUDA device: pass device='cuda' or use backend='torch'")
        if not cupy_available():
            raise ValueError("backend='cuda' requested but CuPy is not available (pip install cupy-cuda12x)")
    return name


def check_compatible(queries: Any, bank: Any) -> None:
    """ValueError unless queries and bank share d and gamma."""
    check_same_kernel(queries.d, queries.gamma, bank.d, bank.gamma, "the queries", "the bank")


def _backend_fn(name: str):
    if name == "torch":
        from .torch_mmd import cross_terms
    elif name == "numba":
        from .numba_mmd import cross_terms
    else:
        from .cupy_mmd import cross_terms
    return cross_terms


def cross_matrix(
    qbank: Any, bank: Any, backend: str = "auto", device: Any = "auto", tile: int | None = None,
    start: int = 0, stop: int | None = None, **options: Any,
) -> torch.Tensor:
    """float64 (Q, stop-start) cross terms ``<Q_q, B_n>`` for bank rows [start, stop), tiled over the bank."""
    dev = resolve_device(device)
    name = pick_backend(backend, dev, bank.dtype)
    fn = _backend_fn(name)
    stop = len(bank) if stop is None else stop
    tile = int(tile or TILE[name])
    cdt = torch.float32 if name != "torch" else bank.dtype
    qz = qbank.z.to(dev, cdt)
    qb = qbank.beta.to(dev, cdt)
    out = torch.empty(len(qbank), stop - start, dtype=torch.float64, device=dev)
    # torch makes (query points x bank points) blocks: cap the query rows so a block holds >= 16 specs
    qstep = len(qbank) or 1
    if name == "torch":
        if "max_block_elems" not in options:  # keep the kernel block below the bank's own size
            options = dict(options, max_block_elems=int(min(1 << 22, max(1 << 16, bank.nbytes // 16))))
        cap = int(options["max_block_elems"])
        qstep = max(1, cap // max(1, 16 * qbank.K * max(bank.K, 1)))
    for s in range(start, stop, tile):
        e = min(s + tile, stop)
        for q0 in range(0, len(qbank), qstep):
            q1 = min(q0 + qstep, len(qbank))
            out[q0:q1, s - start : e - start] = fn(
                qz[q0:q1], qb[q0:q1], bank.z[s:e], bank.beta[s:e], bank.gamma, **options
            )
    return out


def mmd2(
    queries: Any, bank: Any, backend: str = "auto", device: Any = "auto", tile: int | None = None,
    **options: Any,
) -> torch.Tensor:
    """Exact squared MMD between every query and every bank spec.

    Parameters
    ----------
    queries : RKME | list[RKME] | SpecBank
        Q query specs (ragged K allowed).
    bank : SpecBank
        N specs (in memory, on a device, or memory-mapped).
    backend : {"auto", "torch", "numba", "cuda"}
    device : "auto" | "cpu" | "cuda[:i]"
        Where the work runs; bank tiles are moved there as they are scanned.
    tile : int, optional
        Bank specs per kernel call (default per backend).
    **options
        Passed to the backend: ``max_block_elems`` (torch), ``accumulate="float32"|"float64"`` (cuda).

    Returns
    -------
    torch.Tensor float64 (Q, N) on the compute device.
    """
    from ..bank import as_bank

    qbank = as_bank(queries)
    check_compatible(qbank, bank)
    dev = resolve_device(device)
    cross = cross_matrix(qbank, bank, backend=backend, device=dev, tile=tile, **options)
    sq = qbank.self_inner.to(dev)
    sb = bank.self_inner.to(dev)
    return cross.mul_(-2.0).add_(sq[:, None]).add_(sb[None, :]).clamp_min_(0.0)


def mmd2_rows(
    queries: Any, bank: Any, positions: Any, backend: str = "auto", device: Any = "auto", **options: Any,
) -> np.ndarray:
    """Squared MMD of each query to its own bank rows (re-ranking of index candidates).

    positions: int (Q, C) bank row positions per query; -1 marks an empty slot (distance ``inf``).
    Returns float64 numpy (Q, C). Each query's rows are gathered (numpy row copies on a CPU) and
    scanned by the chosen backend, so the cost is that of Q small exact scans.
    """
    from ..bank import as_bank

    qbank = as_bank(queries)
    check_compatible(qbank, bank)
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim != 2 or pos.shape[0] != len(qbank):
        raise ValueError(f"positions must have shape (Q={len(qbank)}, C), got {pos.shape}")
    if pos.size and (pos.max() >= len(bank) or pos.min() < -1):
        raise ValueError(f"positions must lie in [-1, N={len(bank)}); -1 marks an empty slot")
    dev = resolve_device(device)
    out = np.full(pos.shape, np.inf)
    on_cpu = bank.device.type == "cpu"
    for q in range(len(qbank)):
        ok = pos[q] >= 0
        rows = pos[q, ok]
        if rows.size == 0:
            continue
        if on_cpu:
            z = torch.from_numpy(np.take(bank.z.numpy(), rows, axis=0))
            b = torch.from_numpy(np.take(bank.beta.numpy(), rows, axis=0))
        else:
            idx = torch.as_tensor(rows, device=bank.device)
            z, b = bank.z.index_select(0, idx), bank.beta.index_select(0, idx)
        name = pick_backend(backend, dev, bank.dtype)
        cdt = torch.float32 if name != "torch" else bank.dtype
        cross = _backend_fn(name)(qbank.z[q : q + 1].to(dev, cdt), qbank.beta[q : q + 1].to(dev, cdt), z, b,
                                  bank.gamma, **options)[0]
        sb = bank.self_inner[torch.as_tensor(rows, device=bank.device)].to(dev)
        dist = (cross.mul_(-2.0).add_(sb).add_(float(qbank.self_inner[q]))).clamp_min_(0.0)
        out[q, ok] = dist.cpu().numpy()
    return out


def mmd2_pairwise(
    bank_a: Any, bank_b: Any = None, backend: str = "auto", device: Any = "auto", tile: int = 2048,
    **options: Any,
) -> torch.Tensor:
    """The float64 (N, M) squared-MMD matrix between two banks (or within ``bank_a``), in tiles.

    With ``bank_b=None`` only the upper block triangle is computed and mirrored; the diagonal is 0.
    """
    from ..bank import as_bank

    a = as_bank(bank_a)
    b = a if bank_b is None else as_bank(bank_b)
    check_compatible(a, b)
    dev = resolve_device(device)
    out = torch.empty(len(a), len(b), dtype=torch.float64, device=dev)
    for s in range(0, len(a), tile):
        e = min(s + tile, len(a))
        qa = a.rows(s, e)
        first = s if bank_b is None else 0
        cross = cross_matrix(qa, b, backend=backend, device=dev, start=first, **options)
        sq = qa.self_inner.to(dev)
        sb = b.self_inner[first:].to(dev)
        out[s:e, first:] = cross.mul_(-2.0).add_(sq[:, None]).add_(sb[None, :]).clamp_min_(0.0)
        if bank_b is None:
            blk = out[s:e, s:e]
            blk.copy_((blk + blk.T) * 0.5)
            out[e:, s:e] = out[s:e, e:].T
    if bank_b is None:
        out.fill_diagonal_(0.0)
    return out


__all__ = ["mmd2", "mmd2_pairwise", "mmd2_rows", "cross_matrix", "pick_backend", "check_compatible", "BACKENDS"]
