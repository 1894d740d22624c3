"""Device resolution, dtype policy and a report of what this machine can run.

One place decides where tensors live (``resolve_device``) and in which precision
(``resolve_dtype``); every other module asks here instead of probing CUDA itself.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch

logger = logging.getLogger(__name__)

#: Default floating dtype for specs and kernels: float32 on every device.
DEFAULT_DTYPE = torch.float32
_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "fp64": torch.float64,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:i"`` (or a ``torch.device``) into a ``torch.device``.

    ``"auto"`` (and ``None``) picks ``cuda`` when a GPU is visible, else ``cpu``. Asking for
    a GPU that is not present raises a ``ValueError`` that says so.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but no CUDA GPU is available; use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device type {dev.type!r}: use 'auto', 'cpu' or 'cuda[:i]'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """Return the floating dtype to use: ``None`` means :data:`DEFAULT_DTYPE` (float32)."""
    if dtype is None:
        return DEFAULT_DTYPE
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype {dtype} not supported: use torch.float32 or torch.float64")
        return dtype
    key = str(dtype).lower().replace("torch.", "").replace("np.", "").replace("numpy.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported: use 'float32' or 'float64'")
    return _DTYPES[key]


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@functools.lru_cache(maxsize=None)
def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if not _has_module("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any CuPy/driver failure means "not usable"
        return False


@functools.lru_cache(maxsize=None)
def numba_available() -> bool:
    """True when numba imports."""
    if not _has_module("numba"):
        return False
    try:
        import numba  # noqa: F401

        return True
    except Exception:  # noqa: BLE001
        return False


@functools.lru_cache(maxsize=None)
def faiss_info() -> tuple[bool, bool]:
    """``(faiss importable, faiss built with GPU support and a GPU visible)``."""
    if not _has_module("faiss"):
        return False, False
    try:
        import faiss

        gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        return True, bool(gpu)
    except Exception:  # noqa: BLE001
        return False, False


def available() -> dict[str, Any]:
    """What this machine offers: torch/CUDA, CuPy, numba, FAISS (CPU/GPU), thread count."""
    faiss_ok, faiss_gpu = faiss_info()
    return {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cupy": cupy_available(),
        "numba": numba_available(),
        "faiss": faiss_ok,
        "faiss_gpu": faiss_gpu,
        "torch_threads": torch.get_num_threads(),
    }


def describe(device: str | torch.device | None = "auto") -> str:
    """A short human-readable name of the device, for results rows and logs."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    import platform

    return f"cpu:{platform.processor() or platform.machine()}x{torch.get_num_threads()}threads"


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextmanager
def single_torch_thread(enabled: bool = True) -> Iterator[None]:
    """Run torch's CPU ops on one intra-op thread inside the block (``enabled=False``: no change).

    For work made of many tiny sequential ops (herding, small fits), where each op would otherwise
    pay a thread-pool round trip (up to 100x slower on a loaded 2-core machine) and idle workers spin
    against other kernels. Concurrent users share one saved setting, restored when the last leaves.
    """
    if not enabled:
        yield
        return
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)
