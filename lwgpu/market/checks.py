"""Submission checks: each failure raises :class:`SubmissionError` naming the check and the reason.

Checks, in order:

``package``   the folder/zip holds ``learnware.yaml`` (valid YAML, with semantic_spec, model and
              stat_specifications) and the files it names;
``semantic``  the semantic spec passes :func:`lwgpu.spec.semantic.validate_semantic_spec`;
``rkme``      the RKME JSON loads, is finite, has the declared ``input_dim`` and the market's gamma;
``model_load``    the model loads through its adapter;
``model_predict`` ``predict`` runs on samples herded from the learnware's own RKME and returns one
              output per row of the declared shape (labels in ``[0, output_dim)`` or
              ``(n, output_dim)`` scores for classification; ``(n,)``/``(n, output_dim)`` otherwise);
``duplicate`` (checked by the market) no stored learnware has the same content hash.

The model checks run submitted code: by default (``isolate=True``) only in an isolated worker
process (:mod:`lwgpu.market.worker`), never in this one; ``isolate=False`` loads the model here, for
packages the caller built from its own objects.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..device import single_torch_thread
from ..spec.semantic import validate_semantic_spec
from ..spec.validation import same_gamma
from .errors import CHECKS, SubmissionError, check_output
from .learnware import ModelAdapter, load_model
from .package import Manifest, read_manifest

if TYPE_CHECKING:
    from .sandbox import WorkerLimits

logger = logging.getLogger(__name__)

__all__ = ["CHECKS", "SubmissionError", "CheckedPackage", "check_package", "check_semantic", "check_rkme",
           "check_model", "run_checks", "run_checks_many"]


@dataclass
class CheckedPackage:
    """What the checks established: the manifest, normalised semantic spec, the RKME and the model.

    ``model`` is the loaded adapter for in-process checks, None when the model ran in a worker.
    """

    manifest: Manifest
    semantic_spec: dict[str, Any]
    rkme: Any
    model: ModelAdapter | None = None


def check_package(folder: Path) -> Manifest:
    """The ``package`` check: manifest readable and the files it names present."""
    try:
        man = read_manifest(folder)
    except (ValueError, FileNotFoundError) as exc:
        raise SubmissionError("package", str(exc)) from exc
    if not (folder / man.spec_file).is_file():
        raise SubmissionError("package", f"the RKME file {man.spec_file!r} named in learnware.yaml is missing")
    for key in ("file", "module", "module_path"):
        name = man.model.get(key)
        if isinstance(name, str) and not (folder / name).is_file():
            raise SubmissionError("package", f"the model {key} {name!r} named in learnware.yaml is missing")
    return man


def check_semantic(raw: Any) -> dict[str, Any]:
    """The ``semantic`` check; returns the normalised spec."""
    try:
        return validate_semantic_spec(raw)
    except ValueError as exc:
        raise SubmissionError("semantic", str(exc)) from exc


def check_rkme(path: Path, semantic: dict[str, Any], gamma: float) -> Any:
    """The ``rkme`` check; returns the loaded RKME (float32, CPU)."""
    from ..spec.rkme import RKME

    try:
        spec = RKME.load(path)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise SubmissionError("rkme", f"the RKME file does not load: {exc}") from exc
    z, beta = spec.numpy()
    if not (np.isfinite(z).all() and np.isfinite(beta).all()) or not math.isfinite(spec.self_inner):
        raise SubmissionError("rkme", "the RKME has NaN/Inf values or a non-finite self inner product")
    return check_rkme_spec(spec, semantic, gamma)


def check_rkme_spec(spec: Any, semantic: dict[str, Any], gamma: float) -> Any:
    """The ``rkme`` check of an RKME object (its constructor already refused NaN/Inf): the declared
    ``input_dim``, the market's gamma and some positive weight; returns ``spec``."""
    if spec.d != semantic["input_dim"]:
        raise SubmissionError("rkme", f"the RKME has dimension {spec.d} but the semantic spec declares input_dim="
                                      f"{semantic['input_dim']}")
    if not same_gamma(spec.gamma, gamma):
        raise SubmissionError("rkme", f"the RKME uses gamma={spec.gamma} but this market uses gamma={gamma}; "
                                      "refit the spec with the market's gamma")
    if float(spec.beta.clamp_min(0).sum()) <= 0:
        raise SubmissionError("rkme", "the RKME has no positive weight")
    return spec


def check_model(folder: Path, manifest: Manifest, semantic: dict[str, Any], rkme: Any,
                n_samples: int = 10, seed: int = 0) -> ModelAdapter:
    """The ``model_load`` and ``model_predict`` checks on ``n_samples`` rows herded from ``rkme``."""
    try:
        model = load_model(folder, manifest.model)
    except Exception as exc:  # noqa: BLE001 - report any loading failure as the check's reason
        raise SubmissionError("model_load", f"{type(exc).__name__}: {exc}") from exc
    try:
        with single_torch_thread():
            X = rkme.herd(n_samples, seed=seed).astype(np.float32)
    except ValueError as exc:
        raise SubmissionError("rkme", f"cannot draw samples from the RKME: {exc}") from exc
    try:
        out = model.predict(X)
    except Exception as exc:  # noqa: BLE001
        raise SubmissionError("model_predict", f"predict raised {type(exc).__name__}: {exc}") from exc
    check_output(out, n_samples, semantic)
    return model


def run_checks(folder: Path, gamma: float, n_samples: int = 10, seed: int = 0, isolate: bool = True,
               limits: WorkerLimits | None = None) -> CheckedPackage:
    """All checks but ``duplicate`` on an unpacked package ``folder``; raises :class:`SubmissionError`.

    ``isolate=True`` runs the model checks in an isolated worker under ``limits`` (see
    :class:`~lwgpu.market.sandbox.WorkerLimits`); ``isolate=False`` in this process.
    """
    man = check_package(folder)
    sem = check_semantic(man.semantic_spec)
    rkme = check_rkme(folder / man.spec_file, sem, gamma)
    if not isolate:
        return CheckedPackage(man, sem, rkme, check_model(folder, man, sem, rkme, n_samples=n_samples, seed=seed))
    from .worker import check_model_isolated

    check_model_isolated(folder, man, sem, rkme, n_samples=n_samples, seed=seed, limits=limits)
    return CheckedPackage(man, sem, rkme, None)


def run_checks_many(folders: Sequence[Path], gamma: float, n_samples: int = 10, seed: int = 0,
                    limits: WorkerLimits | None = None,
                    max_workers: int | None = None) -> list[CheckedPackage | SubmissionError]:
    """:func:`run_checks` (isolated) for many packages; model checks run in parallel, one worker each.

    Returns, in the order of ``folders``, a :class:`CheckedPackage` or the :class:`SubmissionError`
    that refused the package.
    """
    from .worker import ModelCheckJob, check_many

    out: list[Any] = []
    jobs: list[ModelCheckJob] = []
    for folder in folders:
        try:
            man = check_package(folder)
            sem = check_semantic(man.semantic_spec)
            rkme = check_rkme(folder / man.spec_file, sem, gamma)
        except SubmissionError as exc:
            out.append(exc)
            continue
        out.append(CheckedPackage(man, sem, rkme, None))
        jobs.append(ModelCheckJob(folder, man, sem, rkme, n_samples, seed))
    errors = iter(check_many(jobs, max_workers=max_workers, limits=limits))
    return [item if isinstance(item, SubmissionError) else (next(errors) or item) for item in out]
