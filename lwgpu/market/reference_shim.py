"""What a reference package's model code imports from the ``learnware`` package, inside the worker only.

Packages written for the reference system (the Beimingwu market) subclass
``learnware.model.BaseModel`` / ``learnware.model.base.BaseModel``. An isolated worker installs these
small modules under those names before it loads a package (:func:`install`), so such packages run
without the reference package installed and without importing it (importing the real one pulls in
torch and transformers: about a second per worker). ``BaseModel`` here has the reference's
constructor and methods. The market's own process never installs them.
"""
from __future__ import annotations

import sys
import types
from typing import Any


class BaseModel:
    """The reference's model interface: ``input_shape``, ``output_shape``; ``predict``/``fit``/``finetune``."""

    def __init__(self, input_shape: tuple, output_shape: tuple) -> None:
        # the manifest's !!python/tuple shapes reach the worker through JSON as lists: tuples again
        self.input_shape = tuple(input_shape) if isinstance(input_shape, list) else input_shape
        self.output_shape = tuple(output_shape) if isinstance(output_shape, list) else output_shape

    def predict(self, X: Any) -> Any:
        """Predictions for X (n, d); a subclass must override it."""
        raise NotImplementedError("a learnware model must implement predict")

    def fit(self, X: Any, y: Any) -> None:
        pass

    def finetune(self, X: Any, y: Any) -> None:
        pass

    def get_model(self) -> Any:
        return None


def install() -> None:
    """Register ``learnware``, ``learnware.model`` and ``learnware.model.base`` (with :class:`BaseModel`)."""
    base = types.ModuleType("learnware.model.base", "lwgpu stand-in for the reference's learnware.model.base")
    base.BaseModel = BaseModel
    model = types.ModuleType("learnware.model", "lwgpu stand-in for the reference's learnware.model")
    model.BaseModel, model.TorchModel, model.base = BaseModel, None, base
    pkg = types.ModuleType("learnware", "lwgpu stand-in for the reference package (isolated workers only)")
    pkg.__path__ = []  # a package, so `import learnware.model` resolves through sys.modules
    pkg.model = model
    sys.modules.update({"learnware": pkg, "learnware.model": model, "learnware.model.base": base})
