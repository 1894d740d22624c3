"""Learnware packages: a folder or zip with ``learnware.yaml``, the model files and the RKME JSON.

``learnware.yaml``::

    format: lwgpu-learnware
    version: 1
    semantic_spec: {data_type: table, task_type: classification, input_dim: 64, ...}
    model: {kind: sklearn, file: model.joblib}          # or python / pickle / torch, see learnware.py
    stat_specifications:
      - {type: RKMETableSpecification, file: rkme.json}
"""
from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..spec.semantic import validate_semantic_spec

YAML_NAME = "learnware.yaml"
FORMAT = "lwgpu-learnware"


@dataclass
class Manifest:
    """Parsed ``learnware.yaml``: raw ``semantic_spec``, ``model`` section and the RKME ``spec_file``."""

    semantic_spec: Any
    model: dict[str, Any]
    spec_file: str


def pack_learnware(
    model: Any,
    semantic_spec: Mapping[str, Any],
    rkme: Any,
    path: str | os.PathLike,
    output: str = "predict",
) -> Path:
    """Write a learnware package to ``path`` (a folder, or a zip file if ``path`` ends in ``.zip``).

    Parameters
    ----------
    model : a scikit-learn estimator (joblib), a ``torch.nn.Module`` (torch.save), any picklable object
        with ``predict`` (joblib), or ``{"module": "file.py", "class": "Model", "kwargs": {...},
        "files": [...]}`` naming a Python source file (copied with any extra ``files``).
    semantic_spec : a full semantic spec (validated by :func:`lwgpu.spec.semantic.validate_semantic_spec`).
    rkme : an :class:`~lwgpu.spec.rkme.RKME` or the path of its JSON.
    output : ``"predict"`` or ``"proba"`` (use ``predict_proba`` of a scikit-learn classifier).

    Returns
    -------
    The path written.
    """
    from ..spec.rkme import RKME

    path = Path(path)
    sem = validate_semantic_spec(semantic_spec)
    if path.suffix == ".zip":
        with tempfile.TemporaryDirectory() as tmp:
            pack_learnware(model, sem, rkme, tmp, output=output)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_zip(Path(tmp), path)
        return path
    path.mkdir(parents=True, exist_ok=True)
    model_cfg: dict[str, Any]
    if isinstance(model, Mapping):
        src = Path(model["module"])
        shutil.copy2(src, path / src.name)
        for extra in model.get("files", []):
            shutil.copy2(extra, path / Path(extra).name)
        model_cfg = {"kind": "python", "module": src.name, "class": model.get("class", "Model"),
                     "kwargs": dict(model.get("kwargs", {}))}
    elif _is_torch_module(model):
        import torch

        torch.save(model, path / "model.pt")
        model_cfg = {"kind": "torch", "file": "model.pt"}
    else:
        if not callable(getattr(model, "predict", None)):
            raise ValueError(f"model {type(model).__name__} has no predict method; a learnware model needs one")
        import joblib

        kind = "sklearn" if callable(getattr(model, "get_params", None)) else "pickle"
        if inspect.getmodule(type(model)) is not None and type(model).__module__ == "__main__":
            raise ValueError("a model class defined in __main__ cannot be unpickled elsewhere; "
                             "put it in a module or pass {'module': 'file.py', 'class': ...}")
        joblib.dump(model, path / "model.joblib")
        model_cfg = {"kind": kind, "file": "model.joblib"}
    if output != "predict":
        model_cfg["output"] = output
    spec = rkme if isinstance(rkme, RKME) else RKME.load(rkme)
    spec.save(path / "rkme.json")
    manifest = {
        "format": FORMAT,
        "version": 1,
        "semantic_spec": _plain(sem),
        "model": model_cfg,
        "stat_specifications": [{"type": "RKMETableSpecification", "file": "rkme.json"}],
    }
    with open(path / YAML_NAME, "w", encoding="utf-8") as fh:
        yaml.safe_dump(manifest, fh, sort_keys=False)
    return path


def _is_torch_module(model: Any) -> bool:
    try:
        import torch

        return isinstance(model, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


def _plain(sem: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(sem)
    if "feature_descriptions" in out:
        out["feature_descriptions"] = {int(k): v for k, v in out["feature_descriptions"].items()}
    return out


def write_zip(folder: Path, zip_path: Path) -> None:
    """Zip every file under ``folder`` (relative names, sorted, deterministic)."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(folder).as_posix())


def unpack_into(src: str | os.PathLike, dest: Path) -> Path:
    """Copy a learnware folder, or extract a zip (refusing paths that escape), into ``dest``.

    A zip whose files all sit in one top-level folder is unwrapped. Returns the folder holding
    ``learnware.yaml`` (``dest`` itself).
    """
    src = Path(src)
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
    elif src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            root = dest.resolve()
            for info in zf.infolist():
                target = (dest / info.filename).resolve()
                if root != target and root not in target.parents:
                    raise ValueError(f"zip entry {info.filename!r} escapes the package folder")
            zf.extractall(dest)
        entries = list(dest.iterdir())
        if not (dest / YAML_NAME).exists() and len(entries) == 1 and entries[0].is_dir():
            inner = entries[0]
            for p in list(inner.iterdir()):
                shutil.move(str(p), dest / p.name)
            inner.rmdir()
    elif src.exists():
        raise ValueError(f"{src} is neither a folder nor a zip file")
    else:
        raise FileNotFoundError(f"{src} does not exist")
    return dest


def read_manifest(folder: Path) -> Manifest:
    """Parse ``learnware.yaml``; raises ValueError/FileNotFoundError saying what is wrong."""
    ypath = folder / YAML_NAME
    if not ypath.is_file():
        raise FileNotFoundError(f"{YAML_NAME} not found in the package")
    try:
        with open(ypath, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ValueError(f"{YAML_NAME} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{YAML_NAME} must be a mapping, got {type(data).__name__}")
    if "semantic_spec" not in data:
        raise ValueError(f"{YAML_NAME} has no 'semantic_spec' section")
    model = data.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{YAML_NAME} needs a 'model' mapping (kind, file or module/class)")
    specs = data.get("stat_specifications")
    if not isinstance(specs, list) or not specs or not isinstance(specs[0], dict):
        raise ValueError(f"{YAML_NAME} needs 'stat_specifications': a list with the RKME entry")
    entry = specs[0]
    spec_file = entry.get("file", entry.get("file_name"))
    if not isinstance(spec_file, str) or not spec_file:
        raise ValueError(f"{YAML_NAME}: the stat specification entry lacks 'file'")
    return Manifest(data["semantic_spec"], model, spec_file)


def content_hash(folder: Path) -> str:
    """SHA-256 over the sorted relative paths and bytes of every file in ``folder``."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()
