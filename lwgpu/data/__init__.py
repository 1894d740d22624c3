"""Market generators with ground truth: synthetic Gaussian-mixture tasks and tasks carved from real data."""
from __future__ import annotations

import importlib
from typing import Any

from .synthetic import SyntheticMarket, UserTasks

_REAL = ("RealMarketData", "RealTask", "RealUser", "TaskModel", "make_real_market", "make_digits_market",
         "make_mnist_market", "load_dataset")

__all__ = ["SyntheticMarket", "UserTasks", *_REAL]


def __getattr__(name: str) -> Any:  # real-data generators load scikit-learn: import them on first use
    if name in _REAL:
        return getattr(importlib.import_module(".real", __name__), name)
    raise AttributeError(f"module 'lwgpu.data' has no attribute {name!r}")
