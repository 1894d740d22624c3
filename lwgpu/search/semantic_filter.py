"""Semantic filter: which learnwares a user's (partial) semantic spec admits.

Rules, as the reference package's fuzzy semantic searcher applies them:

- class fields (``data_type``, ``task_type``, ``library``, ``license``, ``model_type``) and the integer
  fields (``input_dim``, ``output_dim``): exact match; the query may give one value or a list of
  acceptable values;
- ``tags``: the learnware must share at least one tag with the query;
- ``name`` / ``description`` (free text): if any learnware's name or description contains the query
  text (case-insensitive), only those are kept; otherwise learnwares whose best fuzzy match
  (:func:`partial_ratio`, in [0, 1]) reaches ``min_fuzzy`` are kept, best first.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from rapidfuzz import fuzz, process

from ..spec.semantic import validate_semantic_spec

CLASS_FIELDS = ("data_type", "task_type", "library", "license", "model_type")
INT_FIELDS = ("input_dim", "output_dim")
TEXT_FIELDS = ("name", "description")


def partial_ratio(query: str, text: str) -> float:
    """Similarity in [0, 1] of ``query`` to its best-matching window of ``text`` (case-insensitive).

    rapidfuzz's ``fuzz.partial_ratio`` / 100, as the reference package scores it: the shorter string
    is slid over the longer one and the best Indel ratio wins; an exact substring scores 1.
    """
    q, t = query.lower().strip(), text.lower()
    if not q:
        return 1.0
    return fuzz.partial_ratio(q, t) / 100.0


def fuzzy_scores(query: str, names: Sequence[str], descriptions: Sequence[str],
                 min_score: float = 0.0) -> np.ndarray:
    """``max(partial_ratio(query, names[i]), partial_ratio(query, descriptions[i]))`` for every ``i``.

    One vectorised rapidfuzz call per column (both threads for long lists); float64 in [0, 1].
    Scores below ``min_score`` may come back as 0 (rapidfuzz then skips work); the others are exact.
    """
    q = query.lower().strip()
    if not len(names):
        return np.zeros(0)
    if not q:
        return np.ones(len(names))
    workers = -1 if len(names) >= 20_000 else 1
    cutoff = max(0.0, 100.0 * min_score - 1e-6)
    out = np.zeros(len(names))
    for col in (names, descriptions):
        s = process.cdist([q], [t.lower() for t in col], scorer=fuzz.partial_ratio, processor=None,
                          dtype=np.float64, workers=workers, score_cutoff=cutoff)[0]
        np.maximum(out, s, out=out)
    return out / 100.0


def normalize_query(query: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a user's partial semantic spec; class/int fields may be lists of acceptable values.

    Returns a dict whose class/int fields are lists, ``tags`` a list and text fields strings.
    """
    if not query:
        return {}
    out: dict[str, Any] = {}
    for key, value in query.items():
        if key == "feature_descriptions":
            continue  # descriptive only; not a filter
        if key in CLASS_FIELDS + INT_FIELDS:
            values = list(value) if isinstance(value, (list, tuple, set)) else [value]
            if not values:
                continue
            out[key] = [validate_semantic_spec({key: v}, partial=True)[key] for v in values]
        elif key in TEXT_FIELDS:
            text = validate_semantic_spec({key: value}, partial=True)[key]
            if text:
                out[key] = text
        elif key == "tags":
            tags = validate_semantic_spec({key: value}, partial=True)[key] if value else []
            if tags:
                out[key] = tags
        else:
            validate_semantic_spec({key: value}, partial=True)  # raises on unknown fields
    return out


def _structured_match(query: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    for key in CLASS_FIELDS + INT_FIELDS:
        if key in query and spec.get(key) not in query[key]:
            return False
    if "tags" in query and not (set(query["tags"]) & set(spec.get("tags", ()))):
        return False
    return True


def filter_semantic(
    query: Mapping[str, Any] | None,
    specs: Mapping[int, Mapping[str, Any]] | Iterable[tuple[int, Mapping[str, Any]]],
    min_fuzzy: float = 0.75,
) -> list[int]:
    """Ids of the learnwares admitted by ``query`` (ordered by id, or by fuzzy score for fuzzy matches).

    Parameters
    ----------
    query : partial semantic spec (see module doc) or None (admits everything).
    specs : ``{id: semantic spec}`` or ``(id, spec)`` pairs of normalised market specs.
    min_fuzzy : threshold on :func:`partial_ratio` when no exact text match exists.
    """
    items = list(specs.items()) if isinstance(specs, Mapping) else list(specs)
    q = normalize_query(query)
    if not q:
        return [i for i, _ in items]
    kept = [(i, s) for i, s in items if _structured_match(q, s)]
    texts = [q[k] for k in TEXT_FIELDS if k in q]
    if not texts:
        return [i for i, _ in kept]
    for text in texts:
        low = text.lower()
        exact = [(i, s) for i, s in kept if low in s.get("name", "").lower() or low in s.get("description", "").lower()]
        if exact:
            kept = exact
            continue
        scores = fuzzy_scores(text, [s.get("name", "") for _, s in kept], [s.get("description", "") for _, s in kept],
                              min_fuzzy)
        order = [j for j in np.argsort(-scores, kind="stable").tolist() if scores[j] >= min_fuzzy]
        kept = [kept[j] for j in order]
    return [i for i, _ in kept]
