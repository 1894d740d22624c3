"""The market's database: one row per learnware plus a key/value ``meta`` table (SQLAlchemy 2).

The default is an embedded SQLite file in WAL mode (readers never block the writer); any SQLAlchemy
URL (e.g. ``postgresql+psycopg://...``) works for shared deployments. Ids come from an
autoincrement key that never reuses the id of a committed (even since deleted) learnware.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import Float, Integer, String, Text, create_engine, delete, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class _Base(DeclarativeBase):
    pass


class LearnwareRow(_Base):
    """One stored learnware. ``semantic_json``/``model_json`` hold the normalised spec and model section."""

    __tablename__ = "learnwares"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(512))
    data_type: Mapped[str] = mapped_column(String(32), index=True)
    task_type: Mapped[str] = mapped_column(String(32), index=True)
    library: Mapped[str] = mapped_column(String(32))
    license: Mapped[str] = mapped_column(String(32))
    input_dim: Mapped[int] = mapped_column(Integer, index=True)
    output_dim: Mapped[int] = mapped_column(Integer)
    semantic_json: Mapped[str] = mapped_column(Text)
    model_json: Mapped[str] = mapped_column(Text)
    spec_file: Mapped[str] = mapped_column(String(256))
    created: Mapped[float] = mapped_column(Float)


class MetaRow(_Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Store:
    """Thin data-access layer over the two tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)

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

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits when the block exits normally and rolls back otherwise."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @staticmethod
    def insert(s: Session, content_hash: str, semantic: dict[str, Any], model_cfg: dict[str, Any],
               spec_file: str) -> int:
        """Add a row inside transaction ``s`` and return its new id (not yet committed)."""
        row = LearnwareRow(
            content_hash=content_hash,
            name=semantic["name"],
            data_type=semantic["data_type"],
            task_type=semantic["task_type"],
            library=semantic["library"],
            license=semantic["license"],
            input_dim=int(semantic["input_dim"]),
            output_dim=int(semantic["output_dim"]),
            semantic_json=json.dumps(semantic, sort_keys=True),
            model_json=json.dumps(model_cfg, sort_keys=True),
            spec_file=spec_file,
            created=time.time(),
        )
        s.add(row)
        s.flush()
        return int(row.id)

    @staticmethod
    def remove(s: Session, id: int) -> bool:
        """Delete the row inside transaction ``s``; False if there was none."""
        return s.execute(delete(LearnwareRow).where(LearnwareRow.id == int(id))).rowcount > 0
