"""An in-memory columnar copy of the structural semantic fields, kept in step with the database.

The class and integer fields of every learnware as int32 codes aligned with the sorted id array,
and one sorted id array per tag. A structural filter is then a few vectorised compares over
1,000,000 entries (about a millisecond) instead of index scans that return hundreds of thousands
of rows. The database stays the truth: every write transaction of the Store bumps the
``generation`` meta value; a query that sees a new generation first appends the rows with larger
ids (ids only grow) and, if the row count then disagrees, drops the deleted ones.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..bank.storage import IdMap
from ..idsets import sorted_unique
from ..search.semantic_filter import CLASS_FIELDS, INT_FIELDS

FIELDS = CLASS_FIELDS + INT_FIELDS
_EMPTY = np.zeros(0, np.int64)


def parse_ids(s: str | None) -> np.ndarray:
    """int64 array from a comma-separated id string (``group_concat``/``string_agg``), possibly None."""
    return np.fromstring(s, dtype=np.int64, sep=",") if s else _EMPTY.copy()


def agg_ids(dialect: str, col: str) -> str:
    """SQL aggregating ``col`` into one comma-separated string."""
    return f"group_concat({col})" if dialect == "sqlite" else f"string_agg(CAST({col} AS TEXT), ',')"


def read_generation(conn: Connection) -> str:
    return conn.execute(text("SELECT value FROM meta WHERE key = 'generation'")).scalar() or ""


@dataclass(frozen=True)
class _Snapshot:
    generation: str | None = None
    ids: np.ndarray = field(default_factory=lambda: _EMPTY.copy())
    codes: dict[str, np.ndarray] = field(default_factory=lambda: {f: np.zeros(0, np.int32) for f in FIELDS})
    vocab: dict[str, dict[Any, int]] = field(default_factory=lambda: {f: {} for f in FIELDS})
    tags: dict[str, np.ndarray] = field(default_factory=dict)
    _cache: dict[str, IdMap] = field(default_factory=dict, compare=False, repr=False)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions (int64) in :attr:`ids` of ``ids``, -1 for those not there, through an
        :class:`~lwgpu.bank.storage.IdMap` built on first use (a table indexed by id for the market's dense
        ids: 10**5 ids in about a millisecond, where a binary search over 10**6 ids took several)."""
        idmap = self._cache.get("idmap")
        if idmap is None:
            idmap = IdMap()
            idmap.rebuild(self.ids)
            self._cache["idmap"] = idmap
        return idmap.lookup(np.asarray(ids, np.int64), self.ids)

    def admitted(self, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The ids among ``ids`` that this snapshot holds and ``mask`` (over :attr:`ids`; None: all) admits,
        ascending and unique: ``ids`` intersected with ``self.ids[mask]``."""
        ids = sorted_unique(ids)
        pos = self.positions(ids)
        ok = pos >= 0
        if mask is not None:
            ok[ok] = mask[pos[ok]]
        return ids[ok]

    def mask(self, q: Mapping[str, Any]) -> np.ndarray | None:
        """Which of :attr:`ids` the class/int fields and tags of normalised query ``q`` admit (None: all)."""
        out: np.ndarray | None = None
        for f in FIELDS:
            if f in q:
                sel = _codes_in(self.codes[f], [self.vocab[f][v] for v in q[f] if v in self.vocab[f]])
                out = sel if out is None else out & sel
        if "tags" in q:
            sel = np.zeros(len(self.ids), bool)
            for t in q["tags"]:
                if t in self.tags:
                    sel[self.positions(self.tags[t])] = True  # a tag's ids are all in ids
            out = sel if out is None else out & sel
        return out


class FieldIndex:
    """The Store's cache of the structural fields; :meth:`current` returns an up-to-date snapshot."""

    def __init__(self) -> None:
        self._snap = _Snapshot()
        self._lock = threading.Lock()

    def current(self, conn: Connection) -> _Snapshot:
        gen = read_generation(conn)
        if self._snap.generation == gen:
            return self._snap
        with self._lock:
            if self._snap.generation != gen:
                self._snap = _refresh(conn, self._snap, gen)
            return self._snap


def _refresh(conn: Connection, old: _Snapshot, gen: str) -> _Snapshot:
    """``old`` plus the rows with larger ids, minus the deleted ones; tagged with generation ``gen``
    (read before the rows, so a write that lands meanwhile makes the next query refresh again)."""
    dialect = conn.dialect.name
    m = int(old.ids[-1]) if len(old.ids) else 0
    where = f" WHERE id > {m}" if m else ""
    new = np.sort(parse_ids(conn.execute(text(f"SELECT {agg_ids(dialect, 'id')} FROM learnwares{where}")).scalar()))
    codes, vocab = {}, {}
    for f in FIELDS:
        vocab[f] = dict(old.vocab[f])
        c = np.full(len(new), -1, np.int32)
        rows = conn.execute(text(f"SELECT {f}, {agg_ids(dialect, 'id')} FROM learnwares{where} GROUP BY {f}"))
        for value, s in rows:
            if value is not None:
                c[_positions(new, parse_ids(s))] = vocab[f].setdefault(value, len(vocab[f]))
        codes[f] = np.concatenate([old.codes[f], c])
    tags = dict(old.tags)
    twhere = f" WHERE learnware_id > {m}" if m else ""
    for tag, s in conn.execute(text(f"SELECT tag, {agg_ids(dialect, 'learnware_id')} FROM tags{twhere} GROUP BY tag")):
        got = parse_ids(s)
        got = np.sort(got[np.isin(got, new)])
        if len(got):
            tags[tag] = np.concatenate([tags[tag], got]) if tag in tags else got
    ids = np.concatenate([old.ids, new])
    if conn.execute(text("SELECT count(*) FROM learnwares")).scalar() != len(ids):  # some were deleted
        live = parse_ids(conn.execute(text(f"SELECT {agg_ids(dialect, 'id')} FROM learnwares")).scalar())
        keep = np.isin(ids, live)
        ids, codes = ids[keep], {f: c[keep] for f, c in codes.items()}
        tags = {t: p[np.isin(p, ids)] for t, p in tags.items()}
        tags = {t: p for t, p in tags.items() if len(p)}
    return _Snapshot(gen, ids, codes, vocab, tags)


def _codes_in(codes: np.ndarray, wanted: list[int]) -> np.ndarray:
    """``np.isin(codes, wanted)`` for a few small codes (equality compares; a lookup table past 8)."""
    if len(wanted) > 8:
        lut = np.zeros(max(int(codes.max(initial=0)), max(wanted)) + 2, bool)
        lut[wanted] = True
        return lut[codes]  # codes >= -1: -1 reads the last entry, False
    out = np.zeros(len(codes), bool)
    for c in wanted:
        out |= codes == c
    return out


def _positions(ids: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Positions in sorted ``ids`` of the entries of ``got`` that are there (others were added since)."""
    pos = np.minimum(np.searchsorted(ids, got), max(len(ids) - 1, 0))
    return pos[ids[pos] == got] if len(ids) else pos[:0]
