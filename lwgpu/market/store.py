"""The market's database: learnwares with their semantic fields, tags, full-text index, meta (SQLAlchemy 2).

The default is an embedded SQLite file in WAL mode (readers never block the writer); any SQLAlchemy
URL (e.g. ``postgresql+psycopg://...``) works for shared deployments. Ids come from an
autoincrement key that never reuses the id of a committed (even since deleted) learnware. The
tables and their upgrades live in :mod:`.schema`; the semantic filter in :mod:`.store_filter`.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .field_index import FieldIndex
from .schema import (LEARNWARES, SEMANTIC_COLUMNS, TABLE_SPEC_TYPE, TAGS, LearnwareRow, MetaRow, TagRow,
                     bump_generation, create_or_upgrade, fts_delete, fts_insert, row_values)
from .store_filter import filter_ids as _filter_ids

__all__ = ["Store", "LearnwareRow", "MetaRow", "TagRow"]

#: one learnware to insert: content hash, normalised semantic spec, model config, spec file name and, optionally,
#: the spec's ``(spec_type, spec_key, encoder)`` (:func:`lwgpu.market.banks.spec_tag`; default: a table spec)
Item = Sequence[Any]
_TABLE_TAG = (TABLE_SPEC_TYPE, None, None)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


_ROW_COLUMNS = ("content_hash",) + SEMANTIC_COLUMNS + ("semantic_json", "model_json", "spec_file", "created",
                                                       "spec_type", "spec_key", "encoder")
_JSON = json.JSONEncoder(sort_keys=True)  # the same text as json.dumps(..., sort_keys=True)


def _insert_rows(conn: Connection, rows: list[tuple]) -> list[int]:
    """Insert learnware rows (in :data:`_ROW_COLUMNS` order) and return their ids in order."""
    if conn.dialect.name != "sqlite":  # INSERT .. RETURNING, ordered like the parameters
        stmt = LEARNWARES.insert().returning(LEARNWARES.c.id, sort_by_parameter_order=True)
        return [int(i) for i in conn.execute(stmt, [dict(zip(_ROW_COLUMNS, r)) for r in rows]).scalars()]
    # SQLite: one driver-level executemany (SQLAlchemy would send ordered RETURNING row by row). The
    # transaction holds the write lock and the key is AUTOINCREMENT, so the batch gets consecutive
    # ids ending at last_insert_rowid(); checked by counting them.
    conn.exec_driver_sql(f"INSERT INTO learnwares ({', '.join(_ROW_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(_ROW_COLUMNS))})", rows)
    last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar())
    first = last - len(rows) + 1
    n = conn.exec_driver_sql("SELECT count(*) FROM learnwares WHERE id BETWEEN ? AND ?", (first, last)).scalar()
    if n != len(rows):  # cannot happen with AUTOINCREMENT under the write lock
        raise RuntimeError(f"bulk insert got non-consecutive ids ({n} of {len(rows)} in {first}..{last})")
    return list(range(first, last + 1))


class Store:
    """Thin data-access layer over the market's tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        create_or_upgrade(self.engine)
        self._fields = FieldIndex()

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> str | None:
        with Session(self.engine) as s:
            row = s.get(MetaRow, key)
            return None if row is None else row.value

    def set_meta(self, key: str, value: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.merge(MetaRow(key=key, value=value))

    # ------------------------------------------------------------------ learnwares
    def rows(self) -> list[LearnwareRow]:
        """Every row (detached), ordered by id."""
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(LearnwareRow).order_by(LearnwareRow.id)))

    def get(self, id: int) -> LearnwareRow | None:
        with Session(self.engine, expire_on_commit=False) as s:
            return s.get(LearnwareRow, int(id))

    def has_hash(self, content_hash: str) -> int | None:
        """Id of the learnware with this content hash, or None."""
        with Session(self.engine) as s:
            return s.scalar(select(LearnwareRow.id).where(LearnwareRow.content_hash == content_hash))

    def ids_by_hash(self, hashes: Iterable[str]) -> dict[str, int]:
        """``{content_hash: id}`` for those of ``hashes`` that are stored."""
        hashes = list(dict.fromkeys(hashes))
        out: dict[str, int] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(hashes), 500):
                part = hashes[start:start + 500]
                if conn.dialect.name == "sqlite":  # driver level: a third of the time of a compiled select
                    rows = conn.exec_driver_sql("SELECT content_hash, id FROM learnwares WHERE content_hash IN "
                                                f"({', '.join('?' * len(part))})", tuple(part))
                else:
                    rows = conn.execute(select(LEARNWARES.c.content_hash, LEARNWARES.c.id)
                                        .where(LEARNWARES.c.content_hash.in_(part)))
                out.update((h, int(i)) for h, i in rows)
        return out

    def ids_and_dims(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored id (ascending, int64) and its ``input_dim``, from the filter's up-to-date field copy."""
        with self.engine.connect() as conn:
            snap = self._fields.current(conn)
        codes = snap.codes["input_dim"]
        values = np.zeros(len(snap.vocab["input_dim"]), np.int64)
        for value, code in snap.vocab["input_dim"].items():
            values[code] = value
        there = codes >= 0  # -1: a row deleted while the copy was being read (dropped at the next refresh)
        return snap.ids[there], values[codes[there]]

    def bank_groups(self, ids: np.ndarray, dims: np.ndarray) -> dict[str, np.ndarray]:
        """The ids of each bank key (``d<d>`` for table specs, the stored ``spec_key`` of the others), for the
        rows ``ids`` with ``input_dim`` ``dims`` (as :meth:`ids_and_dims` returns them). Only the rows with a
        ``spec_key`` (image and text specs) are read from the database."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(LEARNWARES.c.id, LEARNWARES.c.spec_key)
                                .where(LEARNWARES.c.spec_key.is_not(None))).fetchall()
        other = np.array([int(i) for i, _ in rows], np.int64)
        keys = np.array([k for _, k in rows], dtype=object)
        table = ~np.isin(ids, other)
        groups = {f"d{int(d)}": ids[table & (dims == d)] for d in np.unique(dims[table]).tolist()}
        live = np.isin(other, ids)
        for key in sorted(set(keys[live].tolist())):
            groups[key] = np.sort(other[live & (keys == key)])
        return groups

    def bank_key_of(self, id: int) -> str | None:
        """The bank key of learnware ``id`` (``d<input_dim>`` for a table spec), None if there is no such row."""
        row = self.get(id)
        if row is None:
            return None
        return row.spec_key or f"d{int(row.input_dim)}"

    def encoders(self) -> dict[str, str]:
        """``{bank key: encoder}`` of the stored text specs."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(LEARNWARES.c.spec_key, LEARNWARES.c.encoder).distinct()
                                .where(LEARNWARES.c.encoder.is_not(None))).fetchall()
        return {k: e for k, e in rows}

    def count(self) -> int:
        """The number of stored learnwares."""
        return len(self.ids_and_dims()[0])

    def tags(self, id: int) -> list[str]:
        """The tags stored for learnware ``id`` (sorted)."""
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(TAGS.c.tag).where(TAGS.c.learnware_id == int(id))).scalars())

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits when the block exits normally and rolls back otherwise."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @staticmethod
    def insert(s: Session, content_hash: str, semantic: Mapping[str, Any], model_cfg: Mapping[str, Any],
               spec_file: str) -> int:
        """Add a learnware inside transaction ``s`` and return its new id (not yet committed)."""
        return Store.insert_many(s, [(content_hash, semantic, model_cfg, spec_file)])[0]

    @staticmethod
    def insert_many(s: Session, items: Iterable[Item]) -> list[int]:
        """Add many learnwares inside transaction ``s``; returns their new ids in the order given.

        Parameters
        ----------
        s : the caller's session (see :meth:`transaction`); nothing is committed here.
        items : ``(content_hash, semantic, model_cfg, spec_file[, (spec_type, spec_key, encoder)])`` per
            learnware, ``semantic`` normalised (:func:`~lwgpu.spec.semantic.validate_semantic_spec`); without
            the spec tag, a table spec.

        Rows, tags and full-text entries go in with one ``executemany`` each. A content hash already
        stored (or repeated in ``items``) raises ``sqlalchemy.exc.IntegrityError``.
        """
        items = list(items)
        if not items:
            return []
        now = time.time()
        rows = [(h, *row_values(sem), _JSON.encode(sem), _JSON.encode(cfg), spec_file, now,
                 *(tuple(rest[0]) if rest else _TABLE_TAG))
                for h, sem, cfg, spec_file, *rest in items]
        conn = s.connection()
        ids = _insert_rows(conn, rows)
        tags = [(i, t) for i, item in zip(ids, items) for t in sorted(set(item[1].get("tags", ())))]
        if tags and conn.dialect.name == "sqlite":
            conn.exec_driver_sql("INSERT INTO tags (learnware_id, tag) VALUES (?, ?)", tags)
        elif tags:
            conn.execute(TAGS.insert(), [{"learnware_id": i, "tag": t} for i, t in tags])
        fts_insert(conn, [(i, r[1], r[2]) for i, r in zip(ids, rows)])
        bump_generation(conn)
        return ids

    @staticmethod
    def remove(s: Session, id: int) -> bool:
        """Delete learnware ``id`` with its tags and full-text entry inside transaction ``s``; False if none."""
        conn = s.connection()
        row = conn.execute(select(LEARNWARES.c.id, LEARNWARES.c.name, LEARNWARES.c.description)
                           .where(LEARNWARES.c.id == int(id))).first()
        if row is None:
            return False
        conn.execute(TAGS.delete().where(TAGS.c.learnware_id == int(id)))
        fts_delete(conn, [tuple(row)])
        conn.execute(LEARNWARES.delete().where(LEARNWARES.c.id == int(id)))
        bump_generation(conn)
        return True

    # ------------------------------------------------------------------ semantic filter
    def warm_filter(self) -> None:
        """Load (or bring up to date) the in-memory copy of the semantic fields that :meth:`filter_ids` uses.

        The first filter after opening a market otherwise pays for it (about 2-3 s at 1,000,000 rows).
        """
        with self.engine.connect() as conn:
            self._fields.current(conn)

    def filter_ids(self, query: Mapping[str, Any] | None, min_fuzzy: float = 0.75) -> np.ndarray:
        """Ids of the learnwares admitted by a partial semantic spec ``query`` (int64).

        Exactly the rules of :func:`~lwgpu.search.semantic_filter.filter_semantic`: ascending ids,
        except after a fuzzy text match (best score first). ``None``/``{}`` admits every learnware.

        Raises
        ------
        ValueError
            For an unknown field or an invalid value.
        """
        with self.engine.connect() as conn:
            return _filter_ids(conn, self._fields, query, min_fuzzy)
