"""Locks of a market: a reader/writer lock between the threads of one process, an exclusive file lock
between the processes that share a market folder, and locked staging folders.

- :class:`RWLock`: many concurrent searches, one writer at a time, writers not starved. Given a lock
  file, :meth:`RWLock.write` also holds an exclusive ``flock`` on it, so the commit steps of different
  processes (database transaction + folder renames + bank append), deletions and the repair on open
  never interleave. The file lock is taken first, then the thread lock: one order everywhere, no deadlock.
- :func:`staging_dir`: a temporary folder under ``.staging`` that holds an ``flock`` on itself while in
  use, so that :func:`reap_staging` (run when a market is opened) removes only the leftovers of crashed
  submissions, never the folder of a submission in flight in another process.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one process per market, the thread locks still hold
    fcntl = None  # type: ignore[assignment]


def _staging_lock(parent: Path) -> Path:
    """``<root>/.staging.lock`` beside ``<root>/.staging``: guards creating (shared) and reaping (exclusive)."""
    return parent.with_name(parent.name + ".lock")


@contextmanager
def file_lock(path: str | os.PathLike, shared: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if missing) for the block; released when the block exits or
    the process dies. Each call opens its own file description, so threads of one process exclude each other too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class RWLock:
    """Readers share the lock; a writer waits for running readers and blocks new ones while waiting.

    Parameters
    ----------
    path : optional lock file; writers also hold an exclusive ``flock`` on it (across processes).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self.path = None if path is None else Path(path)

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        if self.path is None:
            with self._write():
                yield
        else:
            with file_lock(self.path), self._write():
                yield

    @contextmanager
    def _write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@contextmanager
def staging_dir(parent: str | os.PathLike) -> Iterator[Path]:
    """A new temporary folder under ``parent`` (``.staging``), locked while the block runs, removed after."""
    parent = Path(parent)
    with file_lock(_staging_lock(parent), shared=True):  # reap_staging holds it exclusively
        path = Path(tempfile.mkdtemp(dir=parent))
        fd = os.open(path, os.O_RDONLY)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def reap_staging(parent: str | os.PathLike) -> list[str]:
    """Remove what crashed submissions left under ``parent``; folders in use by a live process stay.
    Returns the names removed."""
    parent = Path(parent)
    removed = []
    with file_lock(_staging_lock(parent)):
        for p in parent.iterdir():
            if p.is_dir() and not p.is_symlink():
                fd = os.open(p, os.O_RDONLY)
                try:
                    try:
                        if fcntl is not None:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:  # a submission in flight in another process
                        continue
                    shutil.rmtree(p, ignore_errors=True)
                finally:
                    os.close(fd)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed
