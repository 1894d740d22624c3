"""The market database's tables, full-text index and schema upgrades (SQLAlchemy 2).

Tables: ``learnwares`` (one row per learnware; the semantic fields as indexed columns, the whole
normalised spec in ``semantic_json``), ``tags`` (learnware_id, tag) and ``meta`` (key/value; holds
``schema_version`` and ``generation``, bumped by every write). Substring search over name and
description runs on the *Python-lower-cased* texts, so that it is exactly Python's
``text.lower() in name.lower()`` whatever the database's own case folding:

- SQLite: a contentless FTS5 table :data:`FTS_TABLE` with the ``trigram`` tokenizer
  (``case_sensitive 1``); a phrase query of a lower-cased text of >= 3 characters is then exact.
  Beside it, a word index (version 4) for the common query of one word: :data:`WORDS_TABLE`, FTS5
  with the ``ascii`` tokenizer and no positions (``detail=none``), and the vocabulary of its terms
  (:data:`VOCAB_TABLE`, kept distinct, with its own trigram index :data:`VOCAB_FTS`). A text made of
  token characters only (:func:`is_word`) occurs in a learnware's texts exactly when one of their terms
  contains it, so its ids are the union of the postings of the vocabulary terms that contain it: at
  1,000,000 learnwares 5 ms instead of the 25-30 ms of the trigram phrase query, whose six position
  lists it does not decode. :func:`word_terms` is the ``ascii`` tokenizer restated in Python (ASCII
  letters and digits and every non-ASCII character are token characters), which lets the vocabulary
  hold exactly the index's terms. Terms of deleted learnwares stay in the vocabulary (they only cost
  a lookup).
- PostgreSQL (and any other database): a table :data:`TEXT_TABLE` (id, name, description) of the
  lower-cased texts, searched with ``LIKE``, which GIN trigram indexes (``pg_trgm``) serve when the
  extension can be created.

The Store keeps the text indexes in step in ``insert``/``insert_many``/``remove``.

Version 1 (no ``schema_version`` key) had only the learnwares table with ``semantic_json`` and a
few columns; :func:`create_or_upgrade` adds what is missing and fills it from ``semantic_json``.
Version 3 adds the spec columns ``spec_type``, ``spec_key`` and ``encoder`` (markets of table, image and
text specs side by side); older rows are table specs. Version 4 adds the SQLite word index, filled from
the learnwares' names and descriptions.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterable, Mapping

from sqlalchemy import (BigInteger, Engine, Float, ForeignKey, Index, Integer, String, Text, bindparam, cast, inspect,
                        select, text)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
#: ``spec_type`` of rows that predate version 3 (every one of them holds a table spec)
TABLE_SPEC_TYPE = "RKMETableSpecification"
FTS_TABLE = "learnwares_fts"  # SQLite
TEXT_TABLE = "learnwares_text"  # other databases
WORDS_TABLE = "learnwares_words"  # SQLite, version 4
VOCAB_TABLE = "learnwares_vocab"
VOCAB_FTS = "learnwares_vocab_fts"
#: runs of the ``ascii`` tokenizer's token characters: ASCII letters and digits, every non-ASCII character
_WORD = re.compile("[0-9A-Za-z\u0080-\U0010ffff]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class _Base(DeclarativeBase):
    pass


class LearnwareRow(_Base):
    """One stored learnware. ``semantic_json``/``model_json`` hold the normalised spec and model section."""

    __tablename__ = "learnwares"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(512))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    data_type: Mapped[str] = mapped_column(String(32), index=True)
    task_type: Mapped[str] = mapped_column(String(32), index=True)
    library: Mapped[str] = mapped_column(String(32), index=True)
    license: Mapped[str] = mapped_column(String(32), index=True)
    model_type: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    input_dim: Mapped[int] = mapped_column(Integer, index=True)
    output_dim: Mapped[int] = mapped_column(Integer, index=True)
    semantic_json: Mapped[str] = mapped_column(Text)
    model_json: Mapped[str] = mapped_column(Text)
    spec_file: Mapped[str] = mapped_column(String(256))
    # version 3: the statistical spec's type, its bank key (NULL for table specs: bank ``d<input_dim>``) and,
    # for text specs, the sentence encoder
    spec_type: Mapped[str] = mapped_column(String(32), index=True, default=TABLE_SPEC_TYPE,
                                           server_default=TABLE_SPEC_TYPE)
    spec_key: Mapped[str | None] = mapped_column(String(160), index=True, nullable=True)
    encoder: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created: Mapped[float] = mapped_column(Float)


class TagRow(_Base):
    """One (learnware, tag) pair; deleted with its learnware."""

    __tablename__ = "tags"
    __table_args__ = (Index("ix_tags_tag", "tag", "learnware_id"),)

    learnware_id: Mapped[int] = mapped_column(ForeignKey("learnwares.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(256), primary_key=True)


class MetaRow(_Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


LEARNWARES = LearnwareRow.__table__
TAGS = TagRow.__table__
META = MetaRow.__table__


SEMANTIC_COLUMNS = ("name", "description", "data_type", "task_type", "library", "license", "model_type",
                    "input_dim", "output_dim")


def row_values(semantic: Mapping[str, Any]) -> tuple:
    """The values of :data:`SEMANTIC_COLUMNS` for a normalised semantic spec."""
    return (semantic["name"], semantic.get("description", ""), semantic["data_type"], semantic["task_type"],
            semantic["library"], semantic["license"], semantic.get("model_type"), int(semantic["input_dim"]),
            int(semantic["output_dim"]))


def fts_values(id: int, name: str, description: str) -> tuple[int, str, str]:
    """The text-index row of a learnware: its id and the Python-lower-cased texts."""
    return int(id), name.lower(), description.lower()


def is_word(low: str) -> bool:
    """True when the lower-cased text ``low`` is one run of token characters (see :data:`WORDS_TABLE`)."""
    return _WORD.fullmatch(low) is not None


def word_terms(low: str) -> list[str]:
    """The terms the ``ascii`` tokenizer makes of the lower-cased text ``low`` (ASCII case folded)."""
    return [w.translate(_ASCII_LOWER) for w in _WORD.findall(low)]


def _words_text(name: str, description: str) -> str:
    return name + "\n" + description  # a separator: no term spans the two


def fts_insert(conn: Connection, rows: Iterable[tuple[int, str, str]]) -> None:
    """Add ``(id, name, description)`` rows to the text indexes (:data:`FTS_TABLE` and the word index /
    :data:`TEXT_TABLE`)."""
    rows = [fts_values(*r) for r in rows]
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"INSERT INTO {FTS_TABLE}(rowid, name, description) VALUES (?, ?, ?)", rows)
        words = [(i, _words_text(n, d)) for i, n, d in rows]
        conn.exec_driver_sql(f"INSERT INTO {WORDS_TABLE}(rowid, words) VALUES (?, ?)", words)
        vocab = {t for _, w in words for t in word_terms(w)}
        if vocab:  # new terms reach the vocabulary's trigram index through its insert trigger
            conn.exec_driver_sql(f"INSERT OR IGNORE INTO {VOCAB_TABLE}(term) VALUES (?)", [(t,) for t in vocab])
    else:
        conn.execute(text(f"INSERT INTO {TEXT_TABLE} (id, name, description) VALUES (:i, :n, :d)"),
                     [{"i": i, "n": n, "d": d} for i, n, d in rows])


def fts_delete(conn: Connection, rows: Iterable[tuple[int, str, str]]) -> None:
    """Remove rows given to :func:`fts_insert` (with the same values) from the text index."""
    rows = [fts_values(*r) for r in rows]
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, name, description) VALUES ('delete', ?, ?, ?)", rows)
        conn.exec_driver_sql(f"INSERT INTO {WORDS_TABLE}({WORDS_TABLE}, rowid, words) VALUES ('delete', ?, ?)",
                             [(i, _words_text(n, d)) for i, n, d in rows])
    else:
        conn.execute(text(f"DELETE FROM {TEXT_TABLE} WHERE id = :i"), [{"i": r[0]} for r in rows])


def _create_text_index(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
                             "name, description, content='', columnsize=0, tokenize='trigram case_sensitive 1')")
        # merge segments 16 at a time (default 4): bulk inserts of 1M rows spend ~30% less time
        # merging, and phrase queries stay in milliseconds
        conn.exec_driver_sql(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES ('automerge', 16)")
        _create_word_index(conn)
        return
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {TEXT_TABLE} (id INTEGER PRIMARY KEY REFERENCES "
                         "learnwares (id) ON DELETE CASCADE, name TEXT NOT NULL, description TEXT NOT NULL)")
    if conn.dialect.name != "postgresql":
        return
    try:
        with conn.begin_nested():
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            for col in ("name", "description"):
                conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS ix_{TEXT_TABLE}_{col} ON {TEXT_TABLE} "
                                     f"USING gin ({col} gin_trgm_ops)")
    except Exception as exc:  # no pg_trgm: substring filters scan the table, still exact
        logger.warning("no trigram index on learnware names/descriptions (%s); text filters will scan", exc)


def _create_word_index(conn: Connection) -> None:
    """SQLite: the word index, its vocabulary and the vocabulary's trigram index (see the module doc)."""
    conn.exec_driver_sql(f"CREATE VIRTUAL TABLE IF NOT EXISTS {WORDS_TABLE} USING fts5(words, content='', "
                         "columnsize=0, detail=none, tokenize='ascii')")
    conn.exec_driver_sql(f"INSERT INTO {WORDS_TABLE}({WORDS_TABLE}, rank) VALUES ('automerge', 16)")
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {VOCAB_TABLE} (term TEXT NOT NULL UNIQUE)")
    conn.exec_driver_sql(f"CREATE VIRTUAL TABLE IF NOT EXISTS {VOCAB_FTS} USING fts5(term, content='{VOCAB_TABLE}', "
                         "content_rowid='rowid', columnsize=0, tokenize='trigram case_sensitive 1')")
    conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS {VOCAB_TABLE}_added AFTER INSERT ON {VOCAB_TABLE} BEGIN "
                         f"INSERT INTO {VOCAB_FTS}(rowid, term) VALUES (new.rowid, new.term); END")


def _fill_word_index(conn: Connection) -> int:
    """SQLite: (re)build the word index from the learnwares' names and descriptions; returns the rows."""
    conn.exec_driver_sql(f"INSERT INTO {WORDS_TABLE}({WORDS_TABLE}) VALUES ('delete-all')")
    conn.exec_driver_sql(f"DELETE FROM {VOCAB_TABLE}")
    conn.exec_driver_sql(f"INSERT INTO {VOCAB_FTS}({VOCAB_FTS}) VALUES ('delete-all')")
    rows = conn.execute(select(LEARNWARES.c.id, LEARNWARES.c.name, LEARNWARES.c.description)).fetchall()
    for start in range(0, len(rows), 10_000):
        chunk = [fts_values(*r) for r in rows[start:start + 10_000]]
        words = [(i, _words_text(n, d)) for i, n, d in chunk]
        conn.exec_driver_sql(f"INSERT INTO {WORDS_TABLE}(rowid, words) VALUES (?, ?)", words)
        vocab = {t for _, w in words for t in word_terms(w)}
        if vocab:
            conn.exec_driver_sql(f"INSERT OR IGNORE INTO {VOCAB_TABLE}(term) VALUES (?)", [(t,) for t in vocab])
    return len(rows)


def _clear_text_index(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('delete-all')")
        conn.exec_driver_sql(f"INSERT INTO {WORDS_TABLE}({WORDS_TABLE}) VALUES ('delete-all')")
        conn.exec_driver_sql(f"DELETE FROM {VOCAB_TABLE}")
        conn.exec_driver_sql(f"INSERT INTO {VOCAB_FTS}({VOCAB_FTS}) VALUES ('delete-all')")
    else:
        conn.exec_driver_sql(f"DELETE FROM {TEXT_TABLE}")


def _version(conn: Connection) -> int | None:
    value = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
    return None if value is None else int(value)


def _set_version(conn: Connection) -> None:
    conn.execute(META.delete().where(META.c.key == "schema_version"))
    conn.execute(META.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
    if conn.execute(select(META.c.value).where(META.c.key == "generation")).scalar() is None:
        conn.execute(META.insert().values(key="generation", value="0"))


def bump_generation(conn: Connection) -> None:
    """Mark a change of the learnwares (read by :class:`~.field_index.FieldIndex` to refresh its copy)."""
    if conn.dialect.name == "sqlite":  # driver level: no statement to compile per commit
        conn.exec_driver_sql(f"UPDATE {META.name} SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
                             "WHERE key = 'generation'")
        return
    conn.execute(META.update().where(META.c.key == "generation")
                 .values(value=cast(cast(META.c.value, BigInteger) + 1, Text)))


def create_or_upgrade(engine: Engine) -> None:
    """Create the tables of a new database, or bring an older one up to :data:`SCHEMA_VERSION`."""
    existed = inspect(engine).has_table(LEARNWARES.name)
    _Base.metadata.create_all(engine)
    with engine.begin() as conn:
        version = _version(conn)
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise RuntimeError(f"the market database has schema version {version}; this lwgpu knows up to "
                               f"{SCHEMA_VERSION}: upgrade lwgpu")
        if not existed:
            _create_text_index(conn)
            _set_version(conn)
            return
    _upgrade(engine, version or 1)


def _upgrade(engine: Engine, version: int) -> None:
    """Version 1 -> 2: add the semantic columns, tags and text index, filled from ``semantic_json``.
    Version 2 -> 3: add ``spec_type`` (every older row holds a table spec), ``spec_key`` and ``encoder`` (NULL).
    Version 3 -> 4: add and fill the SQLite word index.

    Every step is idempotent, and the version is written last, so an interrupted upgrade reruns.
    """
    logger.info("upgrading the market database from schema version %d to %d", version, SCHEMA_VERSION)
    have = {c["name"] for c in inspect(engine).get_columns(LEARNWARES.name)}
    with engine.begin() as conn:
        for col in LEARNWARES.columns:
            if col.name not in have:
                ddl = f"{col.type.compile(engine.dialect)}"
                default = " NOT NULL DEFAULT ''" if col.name == "description" else ""
                if col.name == "spec_type":
                    default = f" NOT NULL DEFAULT '{TABLE_SPEC_TYPE}'"
                conn.exec_driver_sql(f"ALTER TABLE {LEARNWARES.name} ADD COLUMN {col.name} {ddl}{default}")
        for table in (LEARNWARES, TAGS):
            for index in table.indexes:
                index.create(conn, checkfirst=True)
        if version >= 2:  # the semantic columns, tags and text index are there already
            if version < 4 and conn.dialect.name == "sqlite":
                _create_word_index(conn)
                logger.info("filled the word index with %d learnwares", _fill_word_index(conn))
            _set_version(conn)
            logger.info("upgraded the market database from schema version %d to %d", version, SCHEMA_VERSION)
            return
        _create_text_index(conn)
    with engine.begin() as conn:
        _clear_text_index(conn)
        conn.execute(TAGS.delete())
        n = 0
        result = conn.execute(select(LEARNWARES.c.id, LEARNWARES.c.semantic_json)).fetchall()
        for start in range(0, len(result), 10_000):
            chunk = result[start:start + 10_000]
            specs = [(int(i), json.loads(js)) for i, js in chunk]
            updates = [{"_id": i, **dict(zip(SEMANTIC_COLUMNS, row_values(s)))} for i, s in specs]
            conn.execute(LEARNWARES.update().where(LEARNWARES.c.id == bindparam("_id")), updates)
            tags = [{"learnware_id": i, "tag": t} for i, s in specs for t in sorted(set(s.get("tags", ())))]
            if tags:
                conn.execute(TAGS.insert(), tags)
            fts_insert(conn, [(i, u["name"], u["description"]) for (i, _), u in zip(specs, updates)])
            n += len(chunk)
        _set_version(conn)
    logger.info("upgraded %d learnware rows to schema version %d", n, SCHEMA_VERSION)

