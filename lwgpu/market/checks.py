"""Submission checks: each failure raises :class:`SubmissionError` naming the check and the reason.

Checks, in order:

``package``   the folder/zip is within :class:`~lwgpu.market.archive.PackageLimits` and safe to unpack
              (no links, special files or escaping paths), and holds ``learnware.yaml`` (safe YAML,
              with model and stat_specifications) and the files it names;
``semantic``  the semantic spec (the package's, or the one given at submission; lwgpu's or the
              reference's layout) passes :func:`lwgpu.spec.semantic.validate_semantic_spec`;
``rkme``      the spec JSON loads as its ``type`` says (table, image or text spec, :func:`lwgpu.spec.io.load_spec`),
              is finite, has the market's gamma (Gaussian specs) and fits the semantic spec: a table
              spec the declared ``input_dim``, an image or text spec the ``data_type`` image / text;
``model_load``    the model loads through its adapter;
``model_predict`` ``predict`` runs on samples each spec type can feed its model (:func:`sample_inputs`:
              rows herded from a table RKME, an image spec's own points as images, fixed probe
              sentences for text models) and returns one output per row of the declared shape (labels in ``[0, output_dim)`` or
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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..spec.semantic import as_lwgpu, validate_semantic_spec
from ..spec.validation import same_gamma
from .errors import CHECKS, SubmissionError, check_output
from .samples import PROBE_TEXTS, _as_numpy, sample_inputs
from .learnware import ModelAdapter, load_model
from .package import Manifest, content_hash, read_manifest

if TYPE_CHECKING:
    from .archive import PackageLimits
    from .sandbox import WorkerLimits

logger = logging.getLogger(__name__)

__all__ = ["CHECKS", "SubmissionError", "CheckedPackage", "check_package", "check_semantic", "check_rkme",
           "check_model", "run_checks", "run_checks_many", "sample_inputs", "PROBE_TEXTS"]


@dataclass
class CheckedPackage:
    """What the checks established: the manifest, normalised semantic spec, the RKME and the model.

    ``model`` is the loaded adapter for in-process checks, None when the model ran in a worker;
    ``digest`` the package's content hash where the checks computed it (:func:`run_checks_many`).
    """

    manifest: Manifest
    semantic_spec: dict[str, Any]
    rkme: Any
    model: ModelAdapter | None = None
    digest: str | None = None


def _inside(folder: Path, name: Any) -> bool:
    """``name`` is a regular file of ``folder`` reached without leaving it."""
    if not isinstance(name, str) or not name:
        return False
    path = (folder / name).resolve()
    return folder.resolve() in path.parents and path.is_file()


def check_package(folder: Path, limits: PackageLimits | None = None) -> Manifest:
    """The ``package`` check: manifest readable (safely, within ``limits``), a semantic spec present
    and the files the manifest names inside the package."""
    try:
        man = read_manifest(folder, limits)
    except SubmissionError:
        raise
    except (ValueError, FileNotFoundError) as exc:
        raise SubmissionError("package", str(exc)) from exc
    if man.semantic_spec is None:
        raise SubmissionError("semantic", "learnware.yaml has no semantic_spec (packages made for the reference "
                                          "system keep it outside the package); pass it as Market.submit(path, "
                                          "semantic_spec=...) in lwgpu's or the reference's layout")
    if not _inside(folder, man.spec_file):
        raise SubmissionError("package", f"the RKME file {man.spec_file!r} named in learnware.yaml is missing")
    names = {key: man.model.get(key) for key in ("file", "module", "module_path") if key in man.model}
    if man.model.get("kind", "python") == "python" and not {"module", "module_path"} & set(names):
        names["module_path"] = "__init__.py"  # the reference's default model module
    for key, name in names.items():
        if not _inside(folder, name):
            raise SubmissionError("package", f"the model {key} {name!r} named in learnware.yaml is missing")
    return man


def check_semantic(raw: Any) -> dict[str, Any]:
    """The ``semantic`` check; returns the normalised spec."""
    try:
        return validate_semantic_spec(as_lwgpu(raw))
    except ValueError as exc:
        raise SubmissionError("semantic", str(exc)) from exc


def check_rkme(path: Path, semantic: dict[str, Any], gamma: float) -> Any:
    """The ``rkme`` check; returns the loaded spec (RKME, ImageRKME or TextRKME by its JSON ``type``)."""
    from ..spec.io import load_spec

    try:
        spec = load_spec(path)
    except (ValueError, TypeError, KeyError, OSError) as exc:  # ImportError: a type this install cannot read
        raise SubmissionError("rkme", f"the spec file does not load: {exc}") from exc
    except ImportError as exc:
        raise SubmissionError("rkme", f"the spec file's type needs a missing component: {exc}") from exc
    z, beta = _as_numpy(spec.z), _as_numpy(spec.beta)
    if not (np.isfinite(z).all() and np.isfinite(beta).all()) or not _finite_self_inner(spec, beta):
        raise SubmissionError("rkme", "the RKME has NaN/Inf values or a non-finite self inner product")
    return check_rkme_spec(spec, semantic, gamma)


def _finite_self_inner(spec: Any, beta: np.ndarray) -> bool:
    """``<A, A>`` is finite. For a Gaussian spec (``0 < k <= 1``) ``|<A, A>| <= (sum_i |beta_i|)^2``, so a
    finite bound settles it without the O(K^2 d) kernel sum (the market's bank computes the self term
    once, at insertion); otherwise (another kernel, or a bound that overflows) the term is computed."""
    from ..spec.io import IMAGE_TYPE, spec_type

    if spec_type(spec) != IMAGE_TYPE:
        total = float(np.abs(beta.astype(np.float64)).sum())
        bound = total * total  # inf on overflow (``**`` would raise)
        if math.isfinite(bound):
            return True
    self_inner = spec.self_inner if hasattr(spec, "self_inner") else spec.inner(spec)
    return math.isfinite(float(self_inner))


def check_rkme_spec(spec: Any, semantic: dict[str, Any], gamma: float) -> Any:
    """The ``rkme`` check of a spec object (its constructor already refused NaN/Inf): for a table RKME the
    declared ``input_dim``; for an image/text spec the declared ``data_type``; the market's gamma (Gaussian
    specs: table and text) and some positive weight; returns ``spec``."""
    from ..spec.io import IMAGE_TYPE, TEXT_TYPE, spec_type

    kind = spec_type(spec)
    if kind in (IMAGE_TYPE, TEXT_TYPE):
        want = "image" if kind == IMAGE_TYPE else "text"
        if semantic["data_type"] != want:
            raise SubmissionError("rkme", f"a {kind} belongs to a learnware of data_type {want!r}, but the "
                                          f"semantic spec declares {semantic['data_type']!r}")
    elif spec.d != semantic["input_dim"]:
        raise SubmissionError("rkme", f"the RKME has dimension {spec.d} but the semantic spec declares input_dim="
                                      f"{semantic['input_dim']}")
    if kind != IMAGE_TYPE and not same_gamma(spec.gamma, gamma):  # the NNGP kernel of image specs has no gamma
        raise SubmissionError("rkme", f"the RKME uses gamma={spec.gamma} but this market uses gamma={gamma}; "
                                      "refit the spec with the market's gamma")
    if float(np.clip(_as_numpy(spec.beta), 0, None).sum()) <= 0:
        raise SubmissionError("rkme", "the RKME has no positive weight")
    return spec


def check_model(folder: Path, manifest: Manifest, semantic: dict[str, Any], rkme: Any,
                n_samples: int = 10, seed: int = 0) -> ModelAdapter:
    """The ``model_load`` and ``model_predict`` checks on ``n_samples`` inputs drawn from ``rkme``
    (:func:`sample_inputs`)."""
    try:
        model = load_model(folder, manifest.model)
    except Exception as exc:  # noqa: BLE001 - report any loading failure as the check's reason
        raise SubmissionError("model_load", f"{type(exc).__name__}: {exc}") from exc
    try:
        X = sample_inputs(rkme, n_samples, seed=seed)
    except ValueError as exc:
        raise SubmissionError("rkme", f"cannot draw samples from the RKME: {exc}") from exc
    try:
        out = model.predict(X)
    except Exception as exc:  # noqa: BLE001
        raise SubmissionError("model_predict", f"predict raised {type(exc).__name__}: {exc}") from exc
    check_output(out, n_samples, semantic)
    return model


def run_checks(folder: Path, gamma: float, n_samples: int = 10, seed: int = 0, isolate: bool = True,
               limits: WorkerLimits | None = None, package_limits: PackageLimits | None = None) -> CheckedPackage:
    """All checks but ``duplicate`` on an unpacked package ``folder``; raises :class:`SubmissionError`.

    ``isolate=True`` runs the model checks in an isolated worker under ``limits`` (see
    :class:`~lwgpu.market.sandbox.WorkerLimits`); ``isolate=False`` in this process.
    """
    man = check_package(folder, package_limits)
    sem = check_semantic(man.semantic_spec)
    rkme = check_rkme(folder / man.spec_file, sem, gamma)
    if not isolate:
        return CheckedPackage(man, sem, rkme, check_model(folder, man, sem, rkme, n_samples=n_samples, seed=seed))
    from .worker import check_model_isolated

    check_model_isolated(folder, man, sem, rkme, n_samples=n_samples, seed=seed, limits=limits)
    return CheckedPackage(man, sem, rkme, None)


def run_checks_many(folders: Sequence[Path], gamma: float, n_samples: int = 10, seed: int = 0,
                    limits: WorkerLimits | None = None, max_workers: int | None = None,
                    package_limits: PackageLimits | None = None) -> list[CheckedPackage | SubmissionError]:
    """:func:`run_checks` (isolated) for many packages; model checks run in parallel, one worker each.

    Each package's worker starts loading its model once the ``package`` check has passed: the
    ``semantic`` and ``rkme`` checks run here meanwhile (a failure of theirs is what the package is
    refused for, as in :func:`run_checks`), and the content hash while the worker predicts.

    Returns, in the order of ``folders``, a :class:`CheckedPackage` (with ``digest``) or the
    :class:`SubmissionError` that refused the package.
    """
    from .worker import ModelCheckJob, check_many

    out: list[Any] = []
    jobs: list[ModelCheckJob] = []
    for folder in folders:
        try:
            man = check_package(folder, package_limits)
        except SubmissionError as exc:
            out.append(exc)
            continue
        item = CheckedPackage(man, {}, None, None)
        out.append(item)
        jobs.append(ModelCheckJob(folder, man, None, None, n_samples, seed, static=partial(_static_checks, item, folder, gamma),
                                  meanwhile=lambda f=folder: content_hash(f)))
    results = iter(check_many(jobs, max_workers=max_workers, limits=limits))
    for i, item in enumerate(out):
        if isinstance(item, CheckedPackage):
            res = next(results)
            if isinstance(res, SubmissionError):
                out[i] = res
            else:
                item.digest = res
    return out


def _static_checks(item: CheckedPackage, folder: Path, gamma: float) -> tuple[dict[str, Any], Any]:
    """The ``semantic`` and ``rkme`` checks of a package whose ``package`` check passed; fills ``item``."""
    item.semantic_spec = check_semantic(item.manifest.semantic_spec)
    item.rkme = check_rkme(folder / item.manifest.spec_file, item.semantic_spec, gamma)
    return item.semantic_spec, item.rkme
