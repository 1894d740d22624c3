"""The semantic filter run against the market database (see :mod:`lwgpu.search.semantic_filter`).

Gives exactly the ids that :func:`~lwgpu.search.semantic_filter.filter_semantic` gives over the
same specs, in the same order:

- class/int fields and tags: vectorised compares over the :class:`~.field_index.FieldIndex`
  snapshot of the indexed columns and the ``tags`` table;
- a free text first looks for a case-insensitive substring in the text index of
  :mod:`.schema` (Python-lower-cased texts: on SQLite, a text of one word through the word index and
  its vocabulary (:func:`_word_ids`), other texts of >= 3 characters through the trigram FTS5 table,
  shorter ones checked in Python; ``LIKE`` elsewhere). If nothing matches, the
  fuzzy fallback scores the admitted learnwares' names and descriptions with
  :func:`~lwgpu.search.semantic_filter.fuzzy_scores` (rapidfuzz), best first.

Ids come back as one aggregated string per query, parsed by numpy: no Python object per row.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..search.semantic_filter import TEXT_FIELDS, fuzzy_scores, normalize_query
from .field_index import FieldIndex, agg_ids, parse_ids
from .schema import FTS_TABLE, TEXT_TABLE, VOCAB_FTS, VOCAB_TABLE, WORDS_TABLE, is_word

#: a word contained in more vocabulary terms than this is looked up by the trigram index instead
WORD_TERMS_MAX = 256


def _agg_json(dialect: str, col: str) -> str:
    return f"json_group_array({col})" if dialect == "sqlite" else f"CAST(json_agg({col}) AS TEXT)"


def _in_ids(dialect: str, param: str) -> str:
    """``id`` is one of the ids of the JSON array bound to ``param``."""
    if dialect == "sqlite":
        return f"id IN (SELECT value FROM json_each(:{param}))"
    return f"id IN (SELECT CAST(jsonb_array_elements_text(CAST(:{param} AS JSONB)) AS BIGINT))"


def _texts(conn: Connection, ids: np.ndarray, whole: bool) -> tuple[np.ndarray, list[str], list[str]]:
    """Names and descriptions of the learnwares ``ids`` that still exist, in that order.

    ``whole``: ``ids`` is every learnware, so no id condition is sent.
    """
    d = conn.dialect.name
    sql = (f"SELECT {_agg_json(d, 'id')}, {_agg_json(d, 'name')}, {_agg_json(d, 'description')} FROM learnwares"
           + ("" if whole else " WHERE " + _in_ids(d, "ids")))
    row = conn.execute(text(sql), {} if whole else {"ids": json.dumps(ids.tolist())}).one()
    got = np.asarray(json.loads(row[0] or "[]"), np.int64)
    if not len(got):
        return ids[:0], [], []
    names, descs = json.loads(row[1]), json.loads(row[2])
    order = np.argsort(got, kind="stable")
    pos = np.minimum(np.searchsorted(got[order], ids), len(got) - 1)
    found = got[order][pos] == ids
    take = order[pos[found]].tolist()
    return ids[found], [names[j] for j in take], [descs[j] for j in take]


def _select(kept: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The entries of ``kept`` that are in ``ids``, in ``kept``'s order (fast when ``kept`` is ascending)."""
    if len(kept) > 1 and kept[0] < kept[-1] and bool((kept[1:] > kept[:-1]).all()):
        ids = np.sort(ids)
        pos = np.searchsorted(kept, ids)
        ok = pos < len(kept)
        pos = pos[ok]
        return kept[np.sort(pos[kept[pos] == ids[ok]])]
    return kept[np.isin(kept, ids)]


def _word_ids(conn: Connection, low: str) -> np.ndarray | None:
    """SQLite: the ids (ascending) of the learnwares whose name or description contains the word ``low``
    (lower-cased, >= 3 characters): the union of the word index's postings of every vocabulary term that
    contains ``low``. None when ``low`` is not one run of token characters or is inside more than
    :data:`WORD_TERMS_MAX` terms (the trigram index is then the cheaper lookup)."""
    if not is_word(low):
        return None
    terms = conn.exec_driver_sql(
        f"SELECT term FROM {VOCAB_TABLE} WHERE rowid IN (SELECT rowid FROM {VOCAB_FTS} WHERE {VOCAB_FTS} "
        f"MATCH ? LIMIT {WORD_TERMS_MAX + 1})", ('"' + low + '"',)).scalars().all()
    if len(terms) > WORD_TERMS_MAX:
        return None
    if not terms:
        return parse_ids(None)
    match = " OR ".join('"' + t + '"' for t in terms)  # token characters only: nothing to escape
    return parse_ids(conn.exec_driver_sql(
        f"SELECT {agg_ids('sqlite', 'rowid')} FROM {WORDS_TABLE} WHERE {WORDS_TABLE} MATCH ?", (match,)).scalar())


def _substring_ids(conn: Connection, low: str) -> np.ndarray | None:
    """Ids of every learnware whose name or description contains ``low`` (lower-cased), from the text
    indexes; None on SQLite for 1-2 characters (no trigram to look up: see :func:`_scan_texts`)."""
    d = conn.dialect.name
    if d == "sqlite" and len(low) >= 3:
        ids = _word_ids(conn, low)
        if ids is not None:
            return ids
        phrase = '"' + low.replace('"', '""') + '"'
        return parse_ids(conn.execute(text(f"SELECT {agg_ids(d, 'rowid')} FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :p"),
                                      {"p": phrase}).scalar())
    if d != "sqlite":
        pattern = "%" + low.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return parse_ids(conn.execute(text(f"SELECT {agg_ids(d, 'id')} FROM {TEXT_TABLE} "
                                           "WHERE name LIKE :p OR description LIKE :p"), {"p": pattern}).scalar())
    return None


def _scan_texts(conn: Connection, kept: np.ndarray, whole: bool, low: str) -> np.ndarray:
    """The ids of ``kept`` (in its order) whose name or description contains ``low``, checked in Python."""
    ids, names, descs = _texts(conn, kept, whole)
    return ids[[j for j, (n, x) in enumerate(zip(names, descs)) if low in n.lower() or low in x.lower()]]


def filter_ids(conn: Connection, fields: FieldIndex, query: Mapping[str, Any] | None,
               min_fuzzy: float = 0.75) -> np.ndarray:
    """Ids admitted by ``query`` (ascending, or best fuzzy score first); see the module doc.

    Raises
    ------
    ValueError
        For an unknown field or an invalid value (from :func:`normalize_query`).
    """
    q = normalize_query(query)
    snap = fields.current(conn)
    mask = snap.mask(q)
    if mask is not None and mask.all():
        mask = None
    kept = snap.ids if mask is None else snap.ids[mask]
    whole, first = mask is None, True
    for t in (q[k] for k in TEXT_FIELDS if k in q):
        if not len(kept):
            break
        low = t.lower()
        found = _substring_ids(conn, low)
        if found is None:
            exact = _scan_texts(conn, kept, whole, low)
        elif first:  # kept is the snapshot's ids under mask: a table lookup, no search over 10**6 ids
            exact = snap.admitted(found, mask)
        else:
            exact = _select(kept, found)
        if len(exact):
            kept = exact
        else:
            ids, names, descs = _texts(conn, kept, whole)
            scores = fuzzy_scores(t, names, descs, min_fuzzy)
            hit = scores >= min_fuzzy
            kept = ids[hit][np.argsort(-scores[hit], kind="stable")]
        whole = first = False
    return kept.copy() if kept is snap.ids else kept
