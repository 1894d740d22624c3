"""Read any statistical spec from its JSON by the ``type`` it records, and name a spec's type.

=========================  =======================================  ==============================
JSON ``type``              lwgpu class                              module
=========================  =======================================  ==============================
``RKMETableSpecification``  :class:`~lwgpu.spec.rkme.RKME`           :mod:`lwgpu.spec.rkme`
``RKMEStatSpecification``   :class:`~lwgpu.spec.rkme.RKME` (old name) :mod:`lwgpu.spec.rkme`
``RKMEImageSpecification``  ``ImageRKME``                            :mod:`lwgpu.spec.image`
``RKMETextSpecification``   :class:`~lwgpu.spec.text.TextRKME`       :mod:`lwgpu.spec.text`
=========================  =======================================  ==============================

A JSON without ``type`` is a table spec (as the reference's readers assume).
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any, Mapping

__all__ = ["SPEC_TYPES", "TABLE_TYPE", "IMAGE_TYPE", "TEXT_TYPE", "load_spec", "spec_from_dict", "spec_type",
           "spec_class"]

TABLE_TYPE = "RKMETableSpecification"
IMAGE_TYPE = "RKMEImageSpecification"
TEXT_TYPE = "RKMETextSpecification"

#: JSON ``type`` -> (module, class name)
SPEC_TYPES: dict[str, tuple[str, str]] = {
    TABLE_TYPE: ("lwgpu.spec.rkme", "RKME"),
    "RKMEStatSpecification": ("lwgpu.spec.rkme", "RKME"),
    IMAGE_TYPE: ("lwgpu.spec.image", "ImageRKME"),
    TEXT_TYPE: ("lwgpu.spec.text", "TextRKME"),
}


def spec_class(kind: str) -> type:
    """The lwgpu class that reads specs of JSON ``type`` ``kind`` (ValueError for an unknown type)."""
    if kind not in SPEC_TYPES:
        raise ValueError(f"unknown spec type {kind!r}; lwgpu reads {sorted(SPEC_TYPES)}")
    module, name = SPEC_TYPES[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"spec type {kind!r} needs {module}.{name}, which is not available: {exc}") from exc


def spec_type(spec: Any) -> str:
    """The JSON ``type`` of a spec object: its ``type`` attribute (image, text), else a table spec."""
    kind = getattr(spec, "type", None)
    if isinstance(kind, str) and kind in SPEC_TYPES:
        return TABLE_TYPE if kind == "RKMEStatSpecification" else kind
    return TABLE_TYPE


def spec_from_dict(obj: Mapping[str, Any], **kwargs: Any) -> Any:
    """The spec in a parsed JSON object, as the class its ``type`` names (``kwargs`` go to ``from_dict``)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"a spec JSON must be an object, got {type(obj).__name__}")
    kind = obj.get("type", TABLE_TYPE)
    return spec_class(kind).from_dict(dict(obj), **kwargs)


def load_spec(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Read the spec JSON at ``path`` (lwgpu's or the reference's) as RKME, ImageRKME or TextRKME by its
    ``type``; ``kwargs`` (e.g. ``device``) go to the class's ``from_dict``."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: a spec JSON must be an object, got {type(obj).__name__}")
    cls = spec_class(obj.get("type", TABLE_TYPE))
    if not hasattr(cls, "from_dict"):  # a class that reads only files
        return cls.load(path, **kwargs)
    return cls.from_dict(obj, **kwargs)
