"""A learnware: a model behind a uniform ``predict`` (plus optional ``fit``/``finetune``) and its specs.

Models are loaded by small adapters chosen by the ``model.kind`` entry of ``learnware.yaml``:

- ``python``: ``module`` (a ``.py`` file in the learnware folder) defines ``class`` (default ``Model``),
  built with ``kwargs``; it must have ``predict`` and may have ``fit`` / ``finetune``;
- ``sklearn`` / ``pickle``: a joblib/pickle file (``file``); ``output: proba`` makes ``predict`` return
  ``predict_proba``; ``fit`` refits, ``finetune`` uses ``partial_fit`` when the estimator has it;
- ``torch``: a whole ``torch.nn.Module`` saved with ``torch.save`` (``file``); ``predict`` runs it in eval
  mode on float32 input and returns a numpy array.

Unpickling runs code from the file: only load learnwares you trust (the market runs its checks
on submission, not a sandbox).
"""
from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

logger = logging.getLogger(__name__)

MODEL_KINDS = ("python", "sklearn", "pickle", "torch")
_module_counter = itertools.count()
_import_lock = threading.Lock()


def _to_numpy(out: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(out, torch.Tensor):
            return out.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return np.asarray(out)


class ModelAdapter:
    """Uniform wrapper: ``predict(X) -> np.ndarray``; ``fit``/``finetune`` when the model offers them."""

    def __init__(self, model: Any, kind: str, output: str = "predict") -> None:
        self.model = model
        self.kind = kind
        self.output = output
        if kind == "torch":
            model.eval()
        elif not callable(getattr(model, "predict", None)):
            raise ValueError(f"the {kind} model {type(model).__name__} has no predict method")
        if output == "proba" and not callable(getattr(model, "predict_proba", None)):
            raise ValueError(f"model output 'proba' requested but {type(model).__name__} has no predict_proba")

    @property
    def has_fit(self) -> bool:
        return self.kind != "torch" and callable(getattr(self.model, "fit", None))

    @property
    def has_finetune(self) -> bool:
        return callable(getattr(self.model, "finetune", None)) or callable(getattr(self.model, "partial_fit", None))

    def predict(self, X: Any) -> np.ndarray:
        """Model outputs for rows X (n, d): labels (n,), scores/probabilities (n, c) or values (n, o)."""
        if self.kind == "torch":
            import torch

            with torch.no_grad():
                x = torch.as_tensor(np.asarray(X, dtype=np.float32))
                return _to_numpy(self.model(x))
        if self.output == "proba":
            return _to_numpy(self.model.predict_proba(X))
        return _to_numpy(self.model.predict(X))

    def fit(self, X: Any, y: Any) -> "ModelAdapter":
        if not self.has_fit:
            raise NotImplementedError(f"this {self.kind} model has no fit method")
        self.model.fit(X, y)
        return self

    def finetune(self, X: Any, y: Any) -> "ModelAdapter":
        if callable(getattr(self.model, "finetune", None)):
            self.model.finetune(X, y)
        elif callable(getattr(self.model, "partial_fit", None)):
            self.model.partial_fit(X, y)
        else:
            raise NotImplementedError(f"this {self.kind} model has neither finetune nor partial_fit")
        return self


def _import_python_model(folder: Path, module: str, cls: str, kwargs: Mapping[str, Any]) -> Any:
    path = (folder / module).resolve()
    if folder.resolve() not in path.parents:
        raise ValueError(f"model module {module!r} lies outside the learnware folder")
    if not path.is_file():
        raise FileNotFoundError(f"model module {module!r} not found in {folder}")
    name = f"_lwgpu_learnware_{next(_module_counter)}"
    with _import_lock:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(folder))
        old_flag, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # keep the package folder unchanged
        try:
            spec.loader.exec_module(mod)
        finally:
            sys.dont_write_bytecode = old_flag
            sys.path.remove(str(folder))
    if not hasattr(mod, cls):
        raise AttributeError(f"module {module!r} defines no class {cls!r}")
    return getattr(mod, cls)(**dict(kwargs))


def load_model(folder: str | Path, model_cfg: Mapping[str, Any]) -> ModelAdapter:
    """Build the adapter for the ``model`` section of a ``learnware.yaml`` in ``folder``."""
    folder = Path(folder)
    kind = model_cfg.get("kind", "python")
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r} unknown; use one of {MODEL_KINDS}")
    output = model_cfg.get("output", "predict")
    if output not in ("predict", "proba"):
        raise ValueError(f"model output must be 'predict' or 'proba', got {output!r}")
    if kind == "python":
        module = model_cfg.get("module", model_cfg.get("module_path", "__init__.py"))
        cls = model_cfg.get("class", model_cfg.get("class_name", "Model"))
        obj = _import_python_model(folder, module, cls, model_cfg.get("kwargs", {}) or {})
        return ModelAdapter(obj, kind, output)
    file = model_cfg.get("file")
    if not file:
        raise ValueError(f"model kind {kind!r} needs a 'file' entry")
    path = folder / file
    if not path.is_file():
        raise FileNotFoundError(f"model file {file!r} not found in {folder}")
    if kind in ("sklearn", "pickle"):
        import joblib

        return ModelAdapter(joblib.load(path), kind, output)
    import torch

    return ModelAdapter(torch.load(path, map_location="cpu", weights_only=False), kind, output)


class Learnware:
    """A market learnware: ``id``, normalised ``semantic_spec``, folder ``path``, lazy ``rkme`` and model."""

    def __init__(
        self,
        id: int | None,
        semantic_spec: Mapping[str, Any],
        path: str | Path,
        model_cfg: Mapping[str, Any],
        spec_file: str = "rkme.json",
        rkme: Any = None,
    ) -> None:
        self.id = id
        self.semantic_spec = dict(semantic_spec)
        self.path = Path(path)
        self.model_cfg = dict(model_cfg)
        self.spec_file = spec_file
        self._rkme = rkme
        self._model: ModelAdapter | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Learnware(id={self.id}, name={self.semantic_spec.get('name')!r}, path={str(self.path)!r})"

    @property
    def rkme(self) -> Any:
        """The statistical spec (an :class:`~lwgpu.spec.rkme.RKME`), read from its JSON on first use."""
        if self._rkme is None:
            from ..spec.rkme import RKME

            self._rkme = RKME.load(self.path / self.spec_file)
        return self._rkme

    @property
    def model(self) -> ModelAdapter:
        """The loaded model adapter (loaded on first use, once)."""
        with self._lock:
            if self._model is None:
                self._model = load_model(self.path, self.model_cfg)
            return self._model

    def predict(self, X: Any) -> np.ndarray:
        """Model outputs for rows X (n, d)."""
        return self.model.predict(X)

    def fit(self, X: Any, y: Any) -> "Learnware":
        """Refit the model on (X, y) where it supports it."""
        self.model.fit(X, y)
        return self

    def finetune(self, X: Any, y: Any) -> "Learnware":
        """Continue training on (X, y) (``finetune`` or ``partial_fit``) where the model supports it."""
        self.model.finetune(X, y)
        return self
