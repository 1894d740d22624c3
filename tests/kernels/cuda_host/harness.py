"""Build and run lwgpu/kernels/cuda/mmd.cu on the CPU (host emulation, see ``cuda_host_emu.h``).

``build(source_dir, out_dir)`` compiles ``mmd_host.cpp`` (which ``#include``s ``mmd.cu`` from ``source_dir``)
into a shared library with the C++ compiler; ``cross_terms(lib, qz, qb, bz, bb, gamma, accumulate)`` then
does what :func:`lwgpu.kernels.cupy_mmd.cross_terms` does on a GPU, with the same host preparation
(``prepare_queries``), the same launch plan (``launch_plan``) and the same launches (``launch_grid``).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from lwgpu.kernels import cupy_mmd

HERE = Path(__file__).resolve().parent
CXXFLAGS = ["-O1", "-std=c++17", "-pthread", "-fPIC", "-shared", "-fno-strict-aliasing", "-Wall",
            "-Wno-unknown-pragmas"]

_f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_f64p = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
_ll, _u32 = ctypes.c_longlong, ctypes.c_uint
_ARGTYPES = [ctypes.c_void_p, _u32, _u32, _u32, ctypes.c_ulonglong] + [_f32p, _ll] * 6 + [ctypes.c_int] * 7 + [
    ctypes.c_float, _f64p, _ll, ctypes.c_char_p, ctypes.c_int]


class EmulationError(RuntimeError):
    """The kernel did not run as CUDA would (bad launch, broken barrier, out-of-bounds write)."""


def compiler() -> str | None:
    """Path of the C++ compiler: ``$CXX``, else g++, c++ or clang++ on the PATH; None when there is none."""
    for name in ([os.environ["CXX"]] if os.environ.get("CXX") else []) + ["g++", "c++", "clang++"]:
        path = shutil.which(name)
        if path:
            return path
    return None


def build_many(jobs: list[tuple[Path, Path]]) -> list[ctypes.CDLL]:
    """Compile the harness once per (source_dir, out_dir), all at once, and load each library.

    ``source_dir`` holds the ``mmd.cu`` to include (the real one, or a mutated copy). Raises RuntimeError
    with the compiler's output when a build fails, or when there is no C++ compiler.
    """
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found: install g++ or set CXX")
    procs = []
    for source_dir, out_dir in jobs:
        lib = Path(out_dir) / "libmmd_host.so"
        cmd = [cxx, *CXXFLAGS, f"-I{source_dir}", f"-I{HERE}", str(HERE / "mmd_host.cpp"), "-o", str(lib)]
        procs.append((lib, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    handles = []
    for lib, cmd, proc in procs:
        _, stderr = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"building the host harness failed: {' '.join(cmd)}\n{stderr}")
        handle = ctypes.CDLL(str(lib))
        handle.lwgpu_emu_launch_mmd_cross.argtypes = _ARGTYPES
        handle.lwgpu_emu_launch_mmd_cross.restype = ctypes.c_int
        handles.append(handle)
    return handles


def build(source_dir: Path, out_dir: Path) -> ctypes.CDLL:
    """Compile the harness against ``source_dir/mmd.cu`` into ``out_dir`` and load it (see :func:`build_many`)."""
    return build_many([(source_dir, out_dir)])[0]


def _flat(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32).reshape(-1)


def launch(lib: ctypes.CDLL, plan: dict, la: cupy_mmd.Launch, shared_mem: int, qp: torch.Tensor,
           qn: torch.Tensor, qw: torch.Tensor, bz: torch.Tensor, bb: torch.Tensor, center: torch.Tensor,
           gamma: float) -> np.ndarray:
    """One launch ``la`` of ``plan["kernel"]`` with ``shared_mem`` dynamic bytes; float64 (q1 - q0, T) output.

    The arguments are the prepared arrays of :func:`cupy_mmd.prepare_queries` for all queries (sliced to
    ``la.q0:la.q1`` here, as the launcher does) and the bank tile bz (T, K, d), bb (T, K).
    Raises EmulationError when the launch fails (see ``cuda_host_emu.h``).
    """
    q0, q1 = la.q0, la.q1
    kq, d = int(qw.shape[1]), int(center.shape[1])
    t, k = int(bz.shape[0]), int(bz.shape[1])
    fn = ctypes.cast(getattr(lib, plan["kernel"]), ctypes.c_void_p)
    g2 = float(np.float32(float(gamma) * cupy_mmd.LOG2E))
    out = np.zeros((q1 - q0) * t, dtype=np.float64)
    ins = [_flat(x[q0:q1]) for x in (qp, qn, qw)] + [_flat(bz), _flat(bb), _flat(center[q0:q1])]
    sized = [v for a in ins for v in (a, a.size)]
    err = ctypes.create_string_buffer(1024)
    (block,) = la.block
    rc = lib.lwgpu_emu_launch_mmd_cross(fn, la.grid[0], la.grid[1], block, shared_mem, *sized, q1 - q0, kq, d, t,
                                        k, plan["spb"], plan["qtile"], g2, out, out.size, err, len(err))
    if rc != 0:
        raise EmulationError(f"{plan['kernel']} grid={la.grid} block={la.block} smem={shared_mem}: "
                             f"{err.value.decode(errors='replace')}")
    return out.reshape(q1 - q0, t)


def cross_terms(lib: ctypes.CDLL, qz: torch.Tensor, qb: torch.Tensor, bz: torch.Tensor, bb: torch.Tensor,
                gamma: float, accumulate: str = "float32") -> np.ndarray:
    """float64 (Q, T) cross terms computed by the kernel on the CPU; qz (Q,Kq,d), qb (Q,Kq), bz (T,K,d), bb (T,K).

    The same steps as :func:`lwgpu.kernels.cupy_mmd.cross_terms`: plan, host preparation, launches.
    """
    q, kq, d = qz.shape
    t, k = int(bz.shape[0]), int(bz.shape[1])
    out = np.zeros((q, t), dtype=np.float64)
    if q == 0 or t == 0 or k == 0:
        return out
    plan = cupy_mmd.launch_plan(kq, k, d, accumulate)
    qp, qn, qw, center = cupy_mmd.prepare_queries(qz.to(torch.float32), qb.to(torch.float32), gamma, plan["ds"])
    for la in cupy_mmd.launch_grid(q, t, plan):
        out[la.q0:la.q1] = launch(lib, plan, la, la.shared_mem, qp, qn, qw, bz, bb, center, gamma)
    return out
