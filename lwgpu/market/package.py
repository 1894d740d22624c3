"""Learnware packages: a folder or zip with ``learnware.yaml``, the model files and the RKME JSON.

``learnware.yaml``::

    format: lwgpu-learnware
    version: 1
    semantic_spec: {data_type: table, task_type: classification, input_dim: 64, ...}
    model: {kind: sklearn, file: model.joblib}          # or python / pickle / torch, see learnware.py
    stat_specifications:
      - {type: RKMETableSpecification, file: rkme.json}

Packages written for the reference system (its ``LearnwareTemplate``) are read as they are: no
``semantic_spec`` (the reference keeps it outside the package; give it to ``Market.submit``), a
``model`` section ``{class_name, kwargs}`` naming a class of ``__init__.py`` (kind ``python``), and
``stat_specifications`` entries with ``file_name``. ``learnware.yaml`` is read with a safe loader
(:class:`ManifestLoader`): the reference's ``!!python/tuple`` becomes a tuple, every other
``!!python/...`` tag is refused. Unpacking (:func:`unpack_into`) goes through
:mod:`lwgpu.market.archive` under :class:`~lwgpu.market.archive.PackageLimits`.
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
from .archive import PackageLimits, PackageRefused, copy_folder, extract_zip

YAML_NAME = "learnware.yaml"
FORMAT = "lwgpu-learnware"


PYTHON_TAG = "tag:yaml.org,2002:python/"


class ManifestLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's where built) plus the reference's ``!!python/tuple`` (a tuple);
    every other python tag refused."""


def _construct_tuple(loader: ManifestLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


def _refuse_python_tag(loader: ManifestLoader, suffix: str, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"the tag !!python/{suffix} would run or import Python code and is not allowed in "
                    f"{YAML_NAME}; only !!python/tuple is understood (write plain lists, mappings and scalars)",
        node.start_mark)


ManifestLoader.add_constructor(PYTHON_TAG + "tuple", _construct_tuple)
ManifestLoader.add_multi_constructor(PYTHON_TAG, _refuse_python_tag)


class ManifestDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Safe dumper that writes tuples back as ``!!python/tuple`` (as the reference does)."""


ManifestDumper.add_representer(tuple, lambda d, data: d.represent_sequence(PYTHON_TAG + "tuple", data))


def _count_nodes(node: yaml.Node, budget: int) -> None:
    """Refuse a document with more than ``budget`` nodes once aliases are expanded ("billion laughs")."""
    stack, n = [node], 0
    while stack:
        cur = stack.pop()
        n += 1
        if n > budget:
            raise PackageRefused("yaml", f"{YAML_NAME} expands to more than {budget} nodes (aliases counted each "
                                         "time they are used)", "write the manifest without nested aliases")
        if isinstance(cur, yaml.SequenceNode):
            stack.extend(cur.value)
        elif isinstance(cur, yaml.MappingNode):
            for k, v in cur.value:
                stack.extend((k, v))


def load_yaml(text: str, limits: PackageLimits | None = None) -> Any:
    """Parse a ``learnware.yaml`` text with :class:`ManifestLoader` under ``limits`` (size, expanded nodes).

    Raises
    ------
    PackageRefused
        Rule ``yaml``: too large, too many nodes, a refused tag or invalid YAML.
    """
    limits = limits or PackageLimits()
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_yaml_bytes:
        raise PackageRefused("yaml", f"{YAML_NAME} is larger than {limits.max_yaml_bytes} bytes",
                             "keep the manifest small (model files hold the data)")
    loader = ManifestLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node, limits.max_yaml_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise PackageRefused("yaml", f"{YAML_NAME} cannot be read safely: {exc}",
                             "fix the YAML; only plain mappings, lists, scalars and !!python/tuple are allowed"
                             ) from exc
    finally:
        loader.dispose()


def read_yaml(folder: Path, limits: PackageLimits | None = None) -> Any:
    """The parsed ``learnware.yaml`` of ``folder`` (FileNotFoundError if missing; see :func:`load_yaml`)."""
    path = Path(folder) / YAML_NAME
    if not path.is_file() or path.is_symlink():
        raise FileNotFoundError(f"{YAML_NAME} not found in the package")
    limits = limits or PackageLimits()
    if path.stat().st_size > limits.max_yaml_bytes:
        raise PackageRefused("yaml", f"{YAML_NAME} is larger than {limits.max_yaml_bytes} bytes",
                             "keep the manifest small (model files hold the data)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PackageRefused("yaml", f"{YAML_NAME} is not UTF-8 text: {exc}", "save it as UTF-8") from exc
    return load_yaml(text, limits)


def write_yaml(folder: Path, data: Any) -> None:
    """Write ``data`` as ``folder/learnware.yaml`` (tuples as ``!!python/tuple``)."""
    with open(Path(folder) / YAML_NAME, "w", encoding="utf-8") as fh:
        yaml.dump(data, fh, Dumper=ManifestDumper, sort_keys=False, allow_unicode=True)


@dataclass
class Manifest:
    """Parsed ``learnware.yaml``: raw ``semantic_spec`` (None when the package has none, as the
    reference's packages), ``model`` section and the RKME ``spec_file``."""

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
    write_yaml(path, manifest)
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


def unpack_into(src: str | os.PathLike, dest: Path, limits: PackageLimits | None = None) -> Path:
    """Copy a learnware folder, or extract a zip, into ``dest`` (created) under ``limits``.

    No link is followed or created and nothing is written outside ``dest`` (see
    :mod:`lwgpu.market.archive`). A zip whose files all sit in one top-level folder is unwrapped.
    Returns the folder holding ``learnware.yaml`` (``dest`` itself).

    Raises
    ------
    PackageRefused
        A limit or safety rule refused the package (``dest`` may hold part of it: discard it).
    ValueError, FileNotFoundError, zipfile.BadZipFile
        ``src`` is not a readable folder or zip.
    """
    src, dest = Path(src), Path(dest)
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        copy_folder(src, dest, limits)
    elif src.is_file() and zipfile.is_zipfile(src):
        dest.mkdir(parents=True, exist_ok=True)
        extract_zip(src, dest, limits)
        entries = list(os.scandir(dest))
        if not (dest / YAML_NAME).exists() and len(entries) == 1 and entries[0].is_dir(follow_symlinks=False):
            tmp = dest.with_name(f"{dest.name}.unwrap.{os.getpid()}")
            os.rename(dest, tmp)
            os.rename(tmp / entries[0].name, dest)
            tmp.rmdir()
    elif src.exists():
        raise ValueError(f"{src} is neither a folder nor a zip file")
    else:
        raise FileNotFoundError(f"{src} does not exist")
    return dest


def read_manifest(folder: Path, limits: PackageLimits | None = None) -> Manifest:
    """Parse ``learnware.yaml`` (lwgpu's or the reference's layout) with :func:`read_yaml`.

    Raises
    ------
    PackageRefused
        The YAML is unsafe or over the limits.
    ValueError, FileNotFoundError
        Saying which section is missing or malformed.
    """
    data = read_yaml(folder, limits)
    if not isinstance(data, dict):
        raise ValueError(f"{YAML_NAME} must be a mapping, got {type(data).__name__}")
    model = data.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{YAML_NAME} needs a 'model' mapping (kind, file or module/class; or the reference's "
                         "class_name and kwargs)")
    specs = data.get("stat_specifications")
    if not isinstance(specs, list) or not specs or not isinstance(specs[0], dict):
        raise ValueError(f"{YAML_NAME} needs 'stat_specifications': a list with the RKME entry")
    entry = specs[0]
    spec_file = entry.get("file", entry.get("file_name"))
    if not isinstance(spec_file, str) or not spec_file:
        raise ValueError(f"{YAML_NAME}: the stat specification entry lacks 'file' (or the reference's 'file_name')")
    return Manifest(data.get("semantic_spec"), model, spec_file)


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
