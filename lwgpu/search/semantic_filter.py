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

from typing import Any, Iterable, Mapping

from ..spec.semantic import validate_semantic_spec

CLASS_FIELDS = ("data_type", "task_type", "library", "license", "model_type")
INT_FIELDS = ("input_dim", "output_dim")
TEXT_FIELDS = ("name", "description")


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ca == cb else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def ratio(a: str, b: str) -> float:
    """Indel similarity ``2 * LCS / (len(a) + len(b))`` in [0, 1] (1 for equal strings)."""
    if not a and not b:
        return 1.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


def partial_ratio(query: str, text: str) -> float:
    """Similarity in [0, 1] of ``query`` to its best-matching window of ``text`` (case-insensitive).

    Every window of ``len(query)`` characters of ``text`` (or the whole text when it is shorter)
    is compared with :func:`ratio`; the best wins. An exact substring scores 1.
    """
    q, t = query.lower().strip(), text.lower()
    if not q:
        return 1.0
    if not t:
        return 0.0
    if q in t:
        return 1.0
    if len(t) <= len(q):
        return ratio(q, t)
    n = len(q)
    best = 0.0
    for start in range(0, len(t) - n + 1):
        best = max(best, ratio(q, t[start : start + n]))
    return best


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
        scored = []
        for i, s in kept:
            score = max(partial_ratio(text, s.get("name", "")), partial_ratio(text, s.get("description", "")))
            if score >= min_fuzzy:
                scored.append((score, i, s))
        scored.sort(key=lambda t: -t[0])
        kept = [(i, s) for _, i, s in scored]
    return [i for i, _ in kept]
