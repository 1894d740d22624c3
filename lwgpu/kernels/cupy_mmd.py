"""CuPy launcher for the fused CUDA kernel in ``cuda/mmd.cu`` (cross terms ``<Q_q, B_n>`` on a GPU).

CuPy is imported lazily: this module only runs when :func:`lwgpu.device.cupy_available` is true. The
prepared query arrays and the bank tile are torch CUDA tensors, handed to the kernel without copies
(``__cuda_array_interface__``) and launched on torch's current stream.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import settings
from .backend import KernelBackend

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "cuda" / "mmd.cu"
LOG2E = 1.4426950408889634
THREADS = 256  # threads per block: fixed by ``__launch_bounds__(256, ...)`` in mmd.cu
SMEM_BYTES = 48 * 1024  # default dynamic shared-memory limit per block
MAX_GRID_Y = 65535
#: NVRTC options of the run-time compile (cupy.RawModule); CI compiles with exactly these
#: (tests/kernels/test_kernels_cuda.py, through libnvrtc) and `make nvcc` with nvcc's equivalent.
NVRTC_OPTIONS = ("--std=c++14",)


@functools.lru_cache(maxsize=None)
def _module() -> Any:
    import cupy

    return cupy.RawModule(code=SOURCE.read_text(), options=NVRTC_OPTIONS)


def register_width(d: int) -> int:
    """Dimensions held in registers per thread: 16, 32 or 64, or 0 (generic kernel) for d > 64."""
    for w in (16, 32, 64):
        if d <= w:
            return w
    return 0


def launch_plan(kq: int, k: int, d: int, accumulate: str) -> dict[str, int]:
    """Block geometry: specs per block, query points per shared-memory tile, shared bytes, kernel name.

    ValueError when one query point plus the per-block sums cannot fit in shared memory (d > ~12,000).
    """
    if accumulate not in ("float32", "float64"):
        raise ValueError(f"accumulate must be 'float32' or 'float64', got {accumulate!r}")
    acc_bytes = 4 if accumulate == "float32" else 8
    dr = register_width(d)
    ds = dr if dr else d
    spb = max(1, (2 * THREADS) // max(k, 1))  # ~512 bank points per block: two rounds of 256 threads
    part = spb * k * acc_bytes
    extra = 0 if dr else 4 * d  # the centre, for the generic kernel
    per_point = 4 * (ds + 2)
    qtile = min(kq, (SMEM_BYTES - part - extra - 16) // per_point)
    if qtile < 1:
        raise ValueError(f"d={d} is too large for the CUDA kernel's shared memory; use backend='torch'")
    q_bytes = -(-(per_point * qtile) // 16) * 16
    name = f"mmd_cross_{'f32' if acc_bytes == 4 else 'f64'}_{f'd{dr}' if dr else 'dgen'}"
    return {"dr": dr, "ds": ds, "spb": spb, "qtile": qtile, "smem": q_bytes + part + extra, "kernel": name}


@dataclass(frozen=True)
class Launch:
    """One kernel launch: queries ``q0:q1`` against the whole bank tile.

    grid (x, y) = (groups of ``spb`` bank specs, queries); block (x,) threads; ``shared_mem`` dynamic bytes.
    """

    q0: int
    q1: int
    grid: tuple[int, int]
    block: tuple[int]
    shared_mem: int


def launch_grid(q: int, t: int, plan: dict[str, int]) -> list[Launch]:
    """The launches :func:`cross_terms` makes for ``q`` queries and a tile of ``t`` bank specs (pure Python).

    The query axis is split into chunks of at most ``MAX_GRID_Y`` (CUDA's grid.y limit); the host
    emulation harness (tests/kernels/cuda_host) runs the kernel with exactly these launches.
    """
    if q <= 0 or t <= 0:
        return []
    grid_x = math.ceil(t / plan["spb"])
    return [
        Launch(q0, min(q0 + MAX_GRID_Y, q), (grid_x, min(q0 + MAX_GRID_Y, q) - q0), (THREADS,), plan["smem"])
        for q0 in range(0, q, MAX_GRID_Y)
    ]


def prepare_queries(qz: torch.Tensor, qb: torch.Tensor, gamma: float, ds: int):
    """Kernel inputs: (qp (Q,Kq,ds), qn (Q,Kq), qw (Q,Kq), center (Q,d)), each query about its own centre."""
    q, kq, d = qz.shape
    real = (qb != 0).to(qz.dtype)  # centre on real query points (MMD is shift invariant)
    center = torch.einsum("qi,qid->qd", real, qz) / real.sum(1).clamp_min(1.0)[:, None]
    qc = (qz - center[:, None, :]).to(torch.float32)
    g2 = float(gamma) * LOG2E  # the kernel works in base 2: exp(x) = 2^(x log2 e)
    qp = torch.zeros(q, kq, ds, dtype=torch.float32, device=qz.device)
    qp[:, :, :d] = qc * (2.0 * g2)
    qn = ((qc * qc).sum(-1) * g2).contiguous()
    return qp.contiguous(), qn, qb.to(torch.float32).contiguous(), center.to(torch.float32).contiguous()


def cross_terms(
    qz: torch.Tensor, qb: torch.Tensor, bz: torch.Tensor, bb: torch.Tensor, gamma: float,
    accumulate: str = "float32", **_: Any,
) -> torch.Tensor:
    """float64 (Q, T) cross terms on the GPU; qz (Q,Kq,d)/qb (Q,Kq) CUDA float32, bank tile anywhere."""
    import cupy
    import numpy as np

    dev = qz.device
    q, kq, d = qz.shape
    t, k = int(bz.shape[0]), int(bz.shape[1])
    out = torch.zeros(q, t, dtype=torch.float64, device=dev)
    if q == 0 or t == 0 or k == 0:
        return out
    plan = launch_plan(kq, k, d, accumulate)
    qp, qn, qw, center = prepare_queries(qz, qb, gamma, plan["ds"])
    bz_d = bz.to(dev, torch.float32, non_blocking=True).contiguous()
    bb_d = bb.to(dev, torch.float32, non_blocking=True).contiguous()
    fn = _module().get_function(plan["kernel"])
    g2 = np.float32(float(gamma) * LOG2E)
    stream = torch.cuda.current_stream(dev)
    with cupy.cuda.Device(dev.index or 0), cupy.cuda.ExternalStream(stream.cuda_stream):
        for la in launch_grid(q, t, plan):
            q0, q1 = la.q0, la.q1
            args = (
                cupy.asarray(qp[q0:q1]), cupy.asarray(qn[q0:q1]), cupy.asarray(qw[q0:q1]),
                cupy.asarray(bz_d), cupy.asarray(bb_d), cupy.asarray(center[q0:q1]),
                np.int32(q1 - q0), np.int32(kq), np.int32(d), np.int32(t), np.int32(k),
                np.int32(plan["spb"]), np.int32(plan["qtile"]), g2, cupy.asarray(out[q0:q1]),
            )
            fn(la.grid, la.block, args, shared_mem=la.shared_mem)
    return out


class CupyBackend(KernelBackend):
    """The CUDA C kernel of ``cuda/mmd.cu`` through CuPy (float32 points; ``accumulate`` float32 or float64)."""

    name = "cuda"
    tile = settings.TILE_CUDA

    def __init__(self, device: Any = "cuda", dtype: Any = None, accumulate: str = "float32") -> None:
        super().__init__(device, dtype)
        if accumulate not in ("float32", "float64"):
            raise ValueError(f"accumulate must be 'float32' or 'float64', got {accumulate!r}")
        self.accumulate = accumulate

    def cross(self, qz, qb, bz, bb, gamma) -> torch.Tensor:
        qz, qb = qz.to(self.device, torch.float32), qb.to(self.device, torch.float32)
        return cross_terms(qz, qb, bz, bb, gamma, accumulate=self.accumulate)
