"""Semantic specification: the structured metadata of a learnware, as a validated plain dict.

A full spec (what a developer submits) has the keys in :data:`REQUIRED`; a user requirement may
give any subset (``partial=True``). Values are normalised (lower-case class names, canonical
licence spelling, tags as a sorted list of strings) so that filters compare like with like.
:func:`to_reference` / :func:`from_reference` translate to and from the reference package's
``{"Data": {"Values": [...], "Type": "Class"}, ...}`` layout.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

DATA_TYPES = ("table", "image", "text")
TASK_TYPES = (
    "classification", "regression", "feature_extraction", "segmentation",
    "object_detection", "text_generation", "other",
)
LIBRARIES = ("sklearn", "pytorch", "tensorflow", "other")
LICENSES = (
    "MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "GPL-2.0", "GPL-3.0", "LGPL-2.1", "LGPL-3.0",
    "AGPL-3.0", "ECL-2.0", "AFL-3.0", "CC-BY-4.0", "CC-BY-SA-4.0", "Others",
)
REQUIRED = (
    "data_type", "task_type", "input_dim", "output_dim", "name", "description", "tags", "library", "license",
)
OPTIONAL = ("feature_descriptions", "output_description", "classes", "model_type")

_ALIASES = {
    "library": {"scikit-learn": "sklearn", "scikit_learn": "sklearn", "torch": "pytorch", "tf": "tensorflow",
                "others": "other", "keras": "tensorflow"},
    "task_type": {"others": "other", "feature extraction": "feature_extraction",
                  "object detection": "object_detection", "text generation": "text_generation"},
    "data_type": {"tabular": "table"},
}
_REF_KEYS = {"data_type": "Data", "task_type": "Task", "library": "Library", "license": "License",
             "tags": "Scenario", "name": "Name", "description": "Description"}
_REF_NAMES = {
    "data_type": {v: v.capitalize() for v in DATA_TYPES},
    "task_type": {**{v: v.replace("_", " ").title() for v in TASK_TYPES}, "other": "Others"},
    "library": {"sklearn": "Scikit-learn", "pytorch": "PyTorch", "tensorflow": "TensorFlow", "other": "Others"},
}


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"semantic spec field {key!r} must be one of {list(allowed)}, got {value!r}")
    v = value.strip().lower()
    v = _ALIASES.get(key, {}).get(v, v).replace(" ", "_").replace("-", "_") if key != "license" else v
    if key == "license":
        canon = {lic.lower(): lic for lic in allowed}
        if v in canon:
            return canon[v]
    elif v in allowed:
        return v
    raise ValueError(f"semantic spec field {key!r} must be one of {list(allowed)}, got {value!r}")


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        if isinstance(value, float) and value.is_integer() and value >= 1:
            return int(value)
        raise ValueError(f"semantic spec field {key!r} must be a positive integer, got {value!r}")
    return int(value)


def _tags(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(t, str) and t.strip() for t in value):
        raise ValueError(f"semantic spec field 'tags' must be a list of non-empty strings, got {value!r}")
    return sorted({t.strip() for t in value})


def _feature_descriptions(value: Any, input_dim: int | None) -> dict[int, str]:
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, Mapping):
        raise ValueError("semantic spec field 'feature_descriptions' must be a dict {index: text} or a list of texts")
    out: dict[int, str] = {}
    for k, text in value.items():
        try:
            idx = int(k)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"feature_descriptions key {k!r} is not a feature index") from exc
        if idx < 0 or (input_dim is not None and idx >= input_dim):
            raise ValueError(f"feature_descriptions index {idx} is outside 0..{(input_dim or 0) - 1} (input_dim)")
        if not isinstance(text, str):
            raise ValueError(f"feature_descriptions[{idx}] must be a string, got {type(text).__name__}")
        out[idx] = text
    return out


def validate_semantic_spec(spec: Mapping[str, Any], partial: bool = False) -> dict[str, Any]:
    """Check a semantic spec and return a normalised copy.

    Parameters
    ----------
    spec : mapping
        Keys from :data:`REQUIRED` and :data:`OPTIONAL`.
    partial : bool
        ``True`` for a user requirement: any subset of the keys is accepted.

    Raises
    ------
    ValueError
        Naming the first field that is missing, unknown or invalid, and what it should be.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a semantic spec must be a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"semantic spec has unknown fields {unknown}; allowed: {list(REQUIRED + OPTIONAL)}")
    if not partial:
        missing = [k for k in REQUIRED if k not in spec]
        if missing:
            raise ValueError(f"semantic spec lacks required fields {missing}")
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "data_type":
            out[key] = _choice(key, value, DATA_TYPES)
        elif key == "task_type":
            out[key] = _choice(key, value, TASK_TYPES)
        elif key == "library":
            out[key] = _choice(key, value, LIBRARIES)
        elif key == "license":
            out[key] = _choice(key, value, LICENSES)
        elif key in ("input_dim", "output_dim"):
            out[key] = _positive_int(key, value)
        elif key == "tags":
            out[key] = _tags(value)
        elif key in ("name", "description", "output_description", "model_type"):
            if not isinstance(value, str):
                raise ValueError(f"semantic spec field {key!r} must be a string, got {type(value).__name__}")
            if key == "name" and not value.strip() and not partial:
                raise ValueError("semantic spec field 'name' must not be empty")
            out[key] = value.strip()
        elif key == "classes":
            if not isinstance(value, (list, tuple)) or len(value) == 0:
                raise ValueError("semantic spec field 'classes' must be a non-empty list of class labels")
            out[key] = list(value)
    if "feature_descriptions" in spec:
        out["feature_descriptions"] = _feature_descriptions(spec["feature_descriptions"], out.get("input_dim"))
    if "classes" in out and "output_dim" in out and out.get("task_type") == "classification":
        if len(out["classes"]) != out["output_dim"]:
            raise ValueError(
                f"semantic spec lists {len(out['classes'])} classes but output_dim is {out['output_dim']}"
            )
    return out


def to_reference(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The reference package's layout (``{"Data": {"Values": ["Table"], "Type": "Class"}, ...}``)."""
    s = validate_semantic_spec(spec, partial=True)
    ref: dict[str, Any] = {}
    for key, ref_key in _REF_KEYS.items():
        if key not in s:
            continue
        if key in _REF_NAMES:
            ref[ref_key] = {"Values": [_REF_NAMES[key][s[key]]], "Type": "Class"}
        elif key == "license":
            ref[ref_key] = {"Values": [s[key]], "Type": "Class"}
        elif key == "tags":
            ref[ref_key] = {"Values": list(s[key]), "Type": "Tag"}
        else:
            ref[ref_key] = {"Values": s[key], "Type": "String"}
    if "model_type" in s:
        ref["Model"] = {"Values": [s["model_type"]], "Type": "Optional"}
    if "input_dim" in s:
        descr = s.get("feature_descriptions", {})
        ref["Input"] = {"Dimension": s["input_dim"], "Description": {str(k): v for k, v in descr.items()}}
    if "output_dim" in s:
        ref["Output"] = {"Dimension": s["output_dim"], "Description": {}}
    return ref


def is_reference_layout(spec: Any) -> bool:
    """Whether ``spec`` is in the reference's layout (``{"Data": {"Values": [...], "Type": "Class"}, ...}``)."""
    return isinstance(spec, Mapping) and any(
        isinstance(k, str) and k[:1].isupper() and isinstance(v, Mapping) and ("Values" in v or "Dimension" in v)
        for k, v in spec.items())


def as_lwgpu(spec: Any) -> Any:
    """A semantic spec or requirement in lwgpu's layout: the reference's layout is converted with
    :func:`from_reference`, anything else is returned as it is (None stays None)."""
    return from_reference(spec) if is_reference_layout(spec) else spec


def _ref_values(ref_key: str, entry: Any) -> list[Any] | Any:
    if not isinstance(entry, Mapping):
        raise ValueError(f"reference semantic field {ref_key!r} must be a mapping {{'Values': ..., 'Type': ...}}, "
                         f"got {type(entry).__name__}")
    return entry.get("Values")


def from_reference(ref: Mapping[str, Any]) -> dict[str, Any]:
    """Translate the reference's layout into lwgpu's; returns a partial spec (or requirement).

    The reference's conventions: an empty ``Values`` (``[]`` or ``""``) leaves the field unset;
    a class field listing several values (a user requirement: any of them) becomes a list of
    acceptable values; ``Model`` becomes ``model_type`` unless it is just ``["Others"]`` (the
    reference's default, which its searcher treats like an absent field). Unknown top-level keys
    of the reference (e.g. ``learnware_id``) are ignored.
    """
    if not isinstance(ref, Mapping):
        raise ValueError(f"a reference semantic spec must be a dict, got {type(ref).__name__}")
    spec: dict[str, Any] = {}
    for key, ref_key in list(_REF_KEYS.items()) + [("model_type", "Model")]:
        if ref_key not in ref:
            continue
        values = _ref_values(ref_key, ref[ref_key])
        if key == "tags":
            spec[key] = [values] if isinstance(values, str) else list(values or [])
        elif isinstance(values, (list, tuple)):
            vals = [v for v in values if v not in (None, "")]
            if key == "model_type" and vals == ["Others"]:
                continue
            if len(vals) == 1:
                spec[key] = vals[0]
            elif vals:
                spec[key] = vals  # alternatives (a requirement); a learnware's full spec refuses a list
        elif values not in (None, ""):
            spec[key] = values
    for key, ref_key in (("input_dim", "Input"), ("output_dim", "Output")):
        entry = ref.get(ref_key)
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"reference semantic field {ref_key!r} must be a mapping {{'Dimension': ..., "
                             f"'Description': ...}}, got {type(entry).__name__}")
        if entry.get("Dimension") is not None:
            spec[key] = entry["Dimension"]
        if key == "input_dim" and entry.get("Description"):
            spec["feature_descriptions"] = dict(entry["Description"])
    spec = copy.deepcopy(spec)
    alternatives = {k: spec.pop(k) for k in list(spec) if k != "tags" and isinstance(spec[k], list)}
    out = validate_semantic_spec(spec, partial=True)
    for key, vals in alternatives.items():
        out[key] = [validate_semantic_spec({key: v}, partial=True)[key] for v in vals]
    return out
