"""A learnware: a model behind a uniform ``predict`` (plus optional ``fit``/``finetune``) and its specs.

Models are loaded by small adapters chosen by the ``model.kind`` entry of ``learnware.yaml``:

- ``python``: ``module`` (a ``.py`` file in the learnware folder) defines ``class`` (default ``Model``),
  built with ``kwargs``; it must have ``predict`` and may have ``fit`` / ``finetune``;
- ``sklearn`` / ``pickle``: a joblib/pickle file (``file``); ``output: proba`` makes ``predict`` return
  ``predict_proba``; ``fit`` refits, ``finetune`` uses ``partial_fit`` when the estimator has it;
- ``torch``: a whole ``torch.nn.Module`` saved with ``torch.save`` (``file``); ``predict`` runs it in eval
  mode on float32 input and returns a numpy array.

Loading a model runs code from the package. :class:`Learnware` therefore runs ``predict`` in an
isolated worker process (:mod:`lwgpu.market.worker`) unless it is built with ``trust=True``;
:func:`load_model` and :class:`ModelAdapter` load in the calling process: use them only on packages
you trust. Isolated workers import this module alone (without ``lwgpu.market``'s ``__init__``): keep
its module-level imports to stdlib + numpy so that a worker starts fast.
"""
from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

if TYPE_CHECKING:
    from .sandbox import WorkerLimits

logger = logging.getLogger(__name__)

MODEL_KINDS = ("python", "sklearn", "pickle", "torch")
_module_counter = itertools.count()
_import_lock = threading.Lock()


def _to_numpy(out: Any) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; never import it just to check
    if torch is not None and isinstance(out, torch.Tensor):
        return out.detach().cpu().numpy()
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


class UntrustedModelError(AttributeError):
    """The model of an untrusted learnware is not loaded in this process (an AttributeError, so
    ``getattr(learnware, "model", None)`` is None)."""


class Learnware:
    """A market learnware: ``id``, normalised ``semantic_spec``, folder ``path``, lazy ``rkme`` and model.

    Parameters
    ----------
    trust : False (default): the model's code never runs in this process; ``predict`` and
        ``predict_proba`` run in an isolated worker kept for this package (see
        :func:`lwgpu.market.worker.predict_isolated`) and raise
        :class:`~lwgpu.market.sandbox.WorkerError` when the model fails; ``model``, ``fit`` and
        ``finetune`` are unavailable. True: the model loads here (``model``) and everything runs
        in-process.
    limits : the worker's :class:`~lwgpu.market.sandbox.WorkerLimits` (defaults when None).
    """

    def __init__(
        self,
        id: int | None,
        semantic_spec: Mapping[str, Any],
        path: str | Path,
        model_cfg: Mapping[str, Any],
        spec_file: str = "rkme.json",
        rkme: Any = None,
        trust: bool = False,
        limits: WorkerLimits | None = None,
    ) -> None:
        self.id = id
        self.semantic_spec = dict(semantic_spec)
        self.path = Path(path)
        self.model_cfg = dict(model_cfg)
        self.spec_file = spec_file
        self.trust = bool(trust)
        self.limits = limits
        self._rkme = rkme
        self._model: ModelAdapter | None = None
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Learnware(id={self.id}, name={self.semantic_spec.get('name')!r}, path={str(self.path)!r})"

    @property
    def rkme(self) -> Any:
        """The statistical spec, read from its JSON on first use as the type it records: an
        :class:`~lwgpu.spec.rkme.RKME` (table), ``ImageRKME`` or :class:`~lwgpu.spec.text.TextRKME`
        (:func:`lwgpu.spec.io.load_spec`)."""
        if self._rkme is None:
            from ..spec.io import load_spec

            self._rkme = load_spec(self.path / self.spec_file)
        return self._rkme

    @property
    def privacy(self) -> dict[str, Any] | None:
        """The differential-privacy record of the statistical spec (epsilon, delta, mechanism, ...;
        :mod:`lwgpu.spec.privacy`), or None for a plain spec."""
        return getattr(self.rkme, "privacy", None)

    @property
    def model(self) -> ModelAdapter:
        """The model adapter, loaded in this process on first use (``trust=True`` only)."""
        if not self.trust:
            raise UntrustedModelError(f"{self!r} is untrusted: its model runs only in an isolated worker; "
                                      "build it with trust=True to load the model in this process")
        with self._lock:
            if self._model is None:
                self._model = load_model(self.path, self.model_cfg)
            return self._model

    def _isolated(self, X: Any, method: str) -> np.ndarray:
        from .worker import predict_isolated

        return predict_isolated(self.path, self.model_cfg, X, self.limits, method=method, keep_alive=True)

    def _model_info(self) -> dict[str, Any]:
        if self._info is None:
            if self.trust:
                est = self.model.model
                classes = getattr(est, "classes_", None)
                proba = self.model.kind != "torch" and callable(getattr(est, "predict_proba", None))
                self._info = {"predict_proba": proba, "classes": classes}
            else:
                from .worker import model_info_isolated

                self._info = model_info_isolated(self.path, self.model_cfg, self.limits)
        return self._info

    def predict(self, X: Any) -> np.ndarray:
        """Model outputs for rows X (n, d) (in the isolated worker unless ``trust``)."""
        if self.trust:
            return self.model.predict(X)
        return self._isolated(X, "predict")

    @property
    def predict_proba(self) -> Callable[[Any], np.ndarray] | None:
        """``predict_proba(X)`` of the model (in the worker unless ``trust``), or None when it has none."""
        if not self._model_info()["predict_proba"]:
            return None
        if self.trust:
            return lambda X: _to_numpy(self.model.model.predict_proba(X))
        return lambda X: self._isolated(X, "predict_proba")

    @property
    def classes_(self) -> np.ndarray | None:
        """The model's ``classes_`` (when it has them, e.g. a scikit-learn classifier), else None."""
        classes = self._model_info()["classes"]
        return None if classes is None else np.asarray(classes)

    def fit(self, X: Any, y: Any) -> "Learnware":
        """Refit the model on (X, y) where it supports it (``trust=True`` only)."""
        self.model.fit(X, y)
        return self

    def finetune(self, X: Any, y: Any) -> "Learnware":
        """Continue training on (X, y) (``finetune`` or ``partial_fit``) where supported (``trust=True`` only)."""
        self.model.finetune(X, y)
        return self
