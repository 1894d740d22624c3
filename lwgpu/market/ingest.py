"""Staging learnwares for a batch commit: in-memory objects (checked here) and packages (checked in workers).

A staged learnware is a complete package folder under the market's ``.staging/`` plus what the
checks established (normalised semantic spec, the RKME, the model section, the content hash). The
market then commits a whole batch in one transaction and one bank append (:mod:`lwgpu.market.market`).

- :func:`stage_objects` packs the caller's own model objects (which may be checked in the caller's
  process: they are already in it). Files are written straight from memory and hashed as written;
  one model object passed for many learnwares is pickled once.
- :func:`stage_packages` unpacks folders or zips (no code runs), then runs every model check in
  isolated worker processes, in parallel (:func:`lwgpu.market.checks.run_checks_many`).

Each item ends as a :class:`Staged` or as the :class:`~lwgpu.market.checks.SubmissionError` that
refused it; one bad item never stops the rest of its batch.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import yaml

from ..spec.semantic import as_lwgpu
from ..spec.io import spec_type
from .checks import SubmissionError, check_rkme_spec, check_semantic, run_checks_many
from .samples import sample_inputs
from .errors import check_output
from .learnware import ModelAdapter
from .archive import PackageLimits
from .package import FORMAT, YAML_NAME, _is_torch_module, _plain, read_yaml, unpack_into, write_yaml

logger = logging.getLogger(__name__)

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
SPEC_FILE = "rkme.json"


@dataclass
class Staged:
    """A checked learnware waiting in ``folder`` for its batch to commit."""

    folder: Path
    digest: str
    semantic: dict[str, Any]
    model_cfg: dict[str, Any]
    spec_file: str
    rkme: Any


def as_semantic(spec: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A semantic spec in lwgpu's layout: the reference's layout (``{"Data": {"Values": [...]}, ...}``) is
    converted, lwgpu's is returned as it is."""
    return as_lwgpu(spec)


# ---------------------------------------------------------------------- in-memory objects
def _model_blob(model: Any, output: str) -> tuple[str, bytes, dict[str, Any]]:
    """(file name, bytes, model section) of a model object, as :func:`~lwgpu.market.package.pack_learnware` writes it."""
    if isinstance(model, Mapping):
        raise SubmissionError("package", "add/add_many take model objects; pack a Python-source model with "
                                         "pack_learnware and submit the package instead")
    buf = io.BytesIO()
    if _is_torch_module(model):
        import torch

        torch.save(model, buf)
        name, cfg = "model.pt", {"kind": "torch", "file": "model.pt"}
    else:
        if not callable(getattr(model, "predict", None)):
            raise SubmissionError("model_load", f"model {type(model).__name__} has no predict method")
        if type(model).__module__ == "__main__":
            raise SubmissionError("package", "a model class defined in __main__ cannot be unpickled elsewhere; "
                                             "put it in a module")
        import joblib

        joblib.dump(model, buf)
        kind = "sklearn" if callable(getattr(model, "get_params", None)) else "pickle"
        name, cfg = "model.joblib", {"kind": kind, "file": "model.joblib"}
    if output != "predict":
        cfg["output"] = output
    return name, buf.getvalue(), cfg


def _spec_bytes(spec: Any) -> bytes:
    """The spec's JSON file content (its ``to_dict``, else what its ``save`` writes)."""
    if hasattr(spec, "to_dict"):
        return json.dumps(spec.to_dict(), separators=(",", ":")).encode()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec.save(os.path.join(tmp, SPEC_FILE))
        with open(os.path.join(tmp, SPEC_FILE), "rb") as fh:
            return fh.read()


def _check_rkme(rkme: Any, semantic: dict[str, Any], gamma: float) -> None:
    if not all(hasattr(rkme, a) for a in ("z", "beta")) or not (hasattr(rkme, "to_dict") or hasattr(rkme, "save")):
        raise SubmissionError("rkme", f"expected an RKME, got {type(rkme).__name__}")
    check_rkme_spec(rkme, semantic, gamma)


def _write_package(dest: Path, files: list[tuple[str, bytes]]) -> str:
    """Write ``files`` into ``dest`` and return their content hash (:func:`~lwgpu.market.package.content_hash`)."""
    dest.mkdir(parents=True)
    h = hashlib.sha256()
    for name, data in sorted(files):
        with open(dest / name, "wb") as fh:
            fh.write(data)
        h.update(name.encode() + b"\0")
        h.update(data)
        h.update(b"\0")
    return h.hexdigest()


def stage_objects(
    models: Sequence[Any], semantic_specs: Sequence[Mapping[str, Any]], rkmes: Sequence[Any], staging: Path,
    gamma: float, output: str = "predict", check_samples: int = 10, check: bool = True,
) -> list[Staged | SubmissionError]:
    """Check and pack in-memory learnwares into folders under ``staging`` (one per item).

    The model check runs ``predict`` here on ``check_samples`` rows of the spec's own points (the
    caller's objects are already in this process); ``check=False`` skips it.
    """
    if not len(models) == len(semantic_specs) == len(rkmes):
        raise ValueError(f"add_many needs as many models, semantic specs and RKMEs; got {len(models)}, "
                         f"{len(semantic_specs)} and {len(rkmes)}")
    blobs: dict[int, tuple[str, bytes, dict[str, Any]] | SubmissionError] = {}
    checked: set[tuple[int, int]] = set()
    out: list[Staged | SubmissionError] = []
    for i, (model, raw, rkme) in enumerate(zip(models, semantic_specs, rkmes)):
        try:
            sem = check_semantic(as_semantic(raw))
            _check_rkme(rkme, sem, gamma)
            blob = blobs.get(id(model))
            if blob is None:
                try:
                    blob = _model_blob(model, output)
                except SubmissionError as exc:
                    blob = exc
                blobs[id(model)] = blob
            if isinstance(blob, SubmissionError):
                raise blob
            name, data, cfg = blob
            if check and (id(model), int(sem["output_dim"])) not in checked:
                _check_in_process(model, cfg, sem, rkme, check_samples)
                checked.add((id(model), int(sem["output_dim"])))
            manifest = {"format": FORMAT, "version": 1, "semantic_spec": _plain(sem), "model": cfg,
                        "stat_specifications": [{"type": spec_type(rkme), "file": SPEC_FILE}]}
            files = [(name, data), (SPEC_FILE, _spec_bytes(rkme)),
                     (YAML_NAME, yaml.dump(manifest, Dumper=_Dumper, sort_keys=False).encode())]
            folder = staging / f"item{i}"
            digest = _write_package(folder, files)
            out.append(Staged(folder, digest, sem, cfg, SPEC_FILE, rkme))
        except SubmissionError as exc:
            out.append(exc)
    return out


def _check_in_process(model: Any, cfg: Mapping[str, Any], sem: Mapping[str, Any], rkme: Any, n: int) -> None:
    """``predict`` of the caller's own model on ``n`` inputs from the spec (:func:`~.checks.sample_inputs`:
    a table spec's points cycled, an image spec's points as images, probe sentences for a text model)."""
    X = sample_inputs(rkme, n, herd=False)
    try:
        pred = ModelAdapter(model, cfg["kind"], cfg.get("output", "predict")).predict(X)
    except Exception as exc:  # noqa: BLE001 - the check reports any failure of the model
        raise SubmissionError("model_predict", f"predict raised {type(exc).__name__}: {exc}") from exc
    check_output(pred, len(X), dict(sem))


# ---------------------------------------------------------------------- packages
def _override_semantic(folder: Path, semantic: Mapping[str, Any], limits: PackageLimits | None = None) -> None:
    """Replace (or, for a reference package, add) the package's ``semantic_spec`` with ``semantic``
    (given at submission); the rest of ``learnware.yaml`` is kept, tuples included."""
    try:
        data = read_yaml(folder, limits)
    except FileNotFoundError:
        data = None
    if not isinstance(data, dict):
        raise SubmissionError("package", f"{YAML_NAME} is missing or not a mapping")
    data["semantic_spec"] = _plain(check_semantic(semantic))
    write_yaml(folder, data)


def stage_packages(
    paths: Sequence[str | os.PathLike], semantic_specs: Sequence[Mapping[str, Any] | None] | None, staging: Path,
    gamma: float, check_samples: int, limits: Any, max_workers: int | None = None,
    package_limits: PackageLimits | None = None,
) -> list[Staged | SubmissionError]:
    """Unpack (safely, under ``package_limits``) and check packages (folders or zips); model checks in
    isolated workers (under ``limits``), in parallel."""
    sems = list(semantic_specs) if semantic_specs is not None else [None] * len(paths)
    if len(sems) != len(paths):
        raise ValueError(f"submit_many got {len(paths)} packages but {len(sems)} semantic specs")
    out: list[Staged | SubmissionError | None] = [None] * len(paths)
    folders: list[Path] = []
    where: list[int] = []
    for i, (path, sem) in enumerate(zip(paths, sems)):
        folder = staging / f"pkg{i}"
        try:
            try:
                unpack_into(path, folder, package_limits)
            except SubmissionError:
                raise
            except (ValueError, FileNotFoundError, zipfile.BadZipFile, OSError) as exc:
                raise SubmissionError("package", f"cannot read the package at {path}: {exc}") from exc
            if sem is not None:
                _override_semantic(folder, sem, package_limits)
        except SubmissionError as exc:
            out[i] = exc
            continue
        folders.append(folder)
        where.append(i)
    checked = run_checks_many(folders, gamma, n_samples=check_samples, limits=limits, max_workers=max_workers,
                              package_limits=package_limits)
    for i, folder, res in zip(where, folders, checked):
        if isinstance(res, SubmissionError):
            out[i] = res
        else:
            out[i] = Staged(folder, res.digest, res.semantic_spec, dict(res.manifest.model),
                            res.manifest.spec_file, res.rkme)
    return out  # type: ignore[return-value]


#: batches of at most this many specs are appended to the banks on the calling thread only
SERIAL_APPEND_MAX = 16


@contextlib.contextmanager
def serial_kernels(n: int) -> Iterator[None]:
    """Numba kernels on the calling thread only inside the block when ``n`` (specs in a commit) is at
    most :data:`SERIAL_APPEND_MAX`: a single spec's self term is microseconds of work, but waking numba's
    idle OpenMP team for it took a median 9-10 ms (max 50) on a loaded 2-core machine, 0.4 ms serially.
    ``numba.set_num_threads`` is per thread, so concurrent searches keep their threads."""
    numba = sys.modules.get("numba")  # not imported yet: no numba kernel has run, nothing to set
    if n > SERIAL_APPEND_MAX or numba is None:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def chunks(n: int, size: int) -> Iterable[tuple[int, int]]:
    """``(start, stop)`` ranges of at most ``size`` covering ``range(n)``."""
    size = max(1, int(size))
    for s in range(0, n, size):
        yield s, min(s + size, n)


class progress_bar:
    """A tqdm bar over ``n`` items when ``show`` (and tqdm is installed), else a no-op with ``update``."""

    def __init__(self, n: int, desc: str, show: bool) -> None:
        self.bar = None
        if show and n > 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n, desc=desc, unit="lw", leave=False)

    def __enter__(self) -> "progress_bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
