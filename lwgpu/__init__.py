"""lwgpu: fast learnware search. RKME specifications, exact and indexed MMD search, markets and reuse.

The public names are imported lazily so that ``import lwgpu`` stays fast and optional
backends (numba, CuPy, FAISS) load only when used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "RKME": "lwgpu.spec.rkme",
    "ImageRKME": "lwgpu.spec.image",
    "TextRKME": "lwgpu.spec.text",
    "load_spec": "lwgpu.spec.io",
    "SpecBank": "lwgpu.bank",
    "mmd2": "lwgpu.kernels",
    "mmd2_pairwise": "lwgpu.kernels",
    "get_backend": "lwgpu.kernels",
    "search_exact": "lwgpu.search",
    "Neighbors": "lwgpu.search",
    "recall_at_k": "lwgpu.eval",
    "SpecIndex": "lwgpu.index",
    "Market": "lwgpu.market",
    "resolve_device": "lwgpu.device",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lwgpu' has no attribute {name!r}")
