"""On-disk layout of a persistent :class:`~lwgpu.bank.SpecBank`: raw memory-mapped column files, an
atomically replaced ``meta.json`` and an undo journal.

A bank directory holds, for ``capacity`` rows (row ``i`` of every file is the same spec)::

    ids.bin           int64   (capacity,)
    counts.bin        int32   (capacity,)
    self_inner.bin    float64 (capacity,)
    z.k<K>.bin        dtype   (capacity, K, d)
    beta.k<K>.bin     dtype   (capacity, K)
    journal.bin       undo records of the current epoch (usually empty)
    meta.json         {"format", "version", "N", "capacity", "K", "d", "gamma", "dtype", "epoch", "files"}

Only rows ``[0, N)`` are live; rows past ``N`` are ignored on open. Growing extends the files
(``ftruncate``, no copy) and re-maps them. ``flush`` msyncs the maps, then replaces ``meta.json``
(temp + ``os.replace`` + fsync), so N only ever counts rows already on disk.

Crash safety. Appends past the flushed N need no protection. A write into a row below the flushed N
(a swap-delete filling a hole, an append after deletes) first appends the row's old content to
``journal.bin`` as one record per batch (tagged with the epoch of the meta it undoes to, CRC32
checked, fsync'd before the rows change). ``open`` replays the records of the current epoch
backwards onto the maps, so a reopened bank always holds exactly the last flushed state; records of
older epochs (a crash between meta replace and journal truncation) and a torn last record (written
before any row changed) are ignored. Widening K writes new ``z``/``beta`` files under new names and
is itself a flush, so meta never points at half-written files.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .. import fsutil

try:
    import fcntl
except ImportError:  # not on Windows: banks are then not guarded against a second writer
    fcntl = None

logger = logging.getLogger(__name__)

FORMAT_RAW = "lwgpu.SpecBank.raw"
VERSION = 2
COLUMNS = ("ids", "counts", "self_inner", "z", "beta")
_HEAD = struct.Struct("<8sqqqI")  # magic, epoch, rows, payload bytes, crc32(payload)
_MAGIC = b"LWJRNL02"


def column_dtype(name: str, dtype: Any) -> np.dtype:
    """numpy dtype of column ``name`` in a bank of point dtype ``dtype``."""
    return {"ids": np.dtype(np.int64), "counts": np.dtype(np.int32), "self_inner": np.dtype(np.float64)}.get(
        name, np.dtype(dtype))


def row_shape(name: str, K: int, d: int) -> tuple[int, ...]:
    """Shape of one row of column ``name``."""
    return {"z": (K, d), "beta": (K,)}.get(name, ())


def file_names(K: int) -> dict[str, str]:
    return {"ids": "ids.bin", "counts": "counts.bin", "self_inner": "self_inner.bin",
            "z": f"z.k{K}.bin", "beta": f"beta.k{K}.bin"}


def write_atomic(path: Path, data: bytes | np.ndarray) -> None:
    """Write ``data`` (bytes, or an array's raw bytes) to ``path`` durably through a ``.lwbank.*.tmp`` file and
    ``os.replace`` (:func:`lwgpu.fsutil.write_atomic`; leftovers of a crash are swept on open)."""
    fsutil.write_atomic(path, np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data,
                        fsync=True, tmp_prefix=".lwbank.")


class BankLockedError(ValueError):
    """The bank directory is open for writing by another :class:`DiskFiles` (this or another process)."""


def _lock(root: Path) -> Any:
    """An exclusive advisory lock on ``root/lock`` held while the returned file stays open."""
    f = open(root / "lock", "a+b")  # noqa: SIM115 - kept open: closing it releases the lock
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            raise BankLockedError(f"bank {root} is already open for writing (mode='r+') elsewhere; "
                                  "open it with mode='r' or close the other one") from exc
    return f


def read_meta(root: Path) -> dict[str, Any]:
    """``meta.json`` of a bank directory (ValueError when missing or unreadable)."""
    path = root / "meta.json"
    if not path.exists():
        raise ValueError(f"{root} holds no saved SpecBank (meta.json missing)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable ({exc})") from exc


class DiskFiles:
    """The column files of one bank directory, mapped.

    ``maps[name]`` is a (capacity, *row) array over the file (``np.memmap``; a plain zero array when a
    row has no bytes). ``mode``: ``"r+"`` (shared, written through) or ``"c"`` (private copy-on-write:
    a read-only bank, or a snapshot loaded with ``mmap=True``).
    """

    def __init__(self, root: Path, meta: dict[str, Any], mode: str, lock: Any = None) -> None:
        self.root, self.meta, self.mode, self._lockfile = Path(root), dict(meta), mode, lock
        self.K, self.d = int(meta["K"]), int(meta["d"])
        self.dtype = np.dtype(meta["dtype"])
        self.flushed_n, self.epoch = int(meta["N"]), int(meta.get("epoch", 0))
        self.files = dict(meta.get("files") or file_names(self.K))
        self._journaled: np.ndarray | None = None  # rows below flushed_n already journaled this epoch
        self.capacity = self._capacity_on_disk()
        if self.capacity < self.flushed_n:
            raise ValueError(f"{self.root}: the files hold {self.capacity} rows but meta.json counts "
                             f"N={self.flushed_n}; the bank files are inconsistent")
        self.maps: dict[str, np.ndarray] = {n: self._map(n, self.capacity) for n in COLUMNS}

    # ------------------------------------------------------------------ layout
    def rowbytes(self, name: str) -> int:
        return int(np.prod(row_shape(name, self.K, self.d), dtype=np.int64)) * column_dtype(name, self.dtype).itemsize

    def path(self, name: str) -> Path:
        return self.root / self.files[name]

    def _capacity_on_disk(self) -> int:
        caps = []
        for n in COLUMNS:
            p = self.path(n)
            if not p.exists():
                raise ValueError(f"{self.root}: bank file {p.name} is missing")
            if self.rowbytes(n):
                caps.append(p.stat().st_size // self.rowbytes(n))
        return int(min(caps)) if caps else int(self.meta.get("capacity", 0))

    def _map(self, name: str, capacity: int) -> np.ndarray:
        shape = (capacity, *row_shape(name, self.K, self.d))
        dt = column_dtype(name, self.dtype)
        if capacity == 0 or self.rowbytes(name) == 0:
            return np.zeros(shape, dt)
        return np.memmap(self.path(name), dtype=dt, mode=self.mode, shape=shape)

    @classmethod
    def create(cls, root: Path, meta: dict[str, Any], capacity: int) -> "DiskFiles":
        """Make the directory's files for ``capacity`` rows (zero-filled, sparse) and write meta."""
        root.mkdir(parents=True, exist_ok=True)
        lock = _lock(root)
        meta = dict(meta, format=FORMAT_RAW, version=VERSION, N=0, capacity=int(capacity), epoch=0,
                    files=file_names(int(meta["K"])))
        probe = cls.__new__(cls)
        probe.K, probe.d, probe.dtype = int(meta["K"]), int(meta["d"]), np.dtype(meta["dtype"])
        for n in COLUMNS:
            fd = os.open(root / meta["files"][n], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                os.ftruncate(fd, int(capacity) * probe.rowbytes(n))
            finally:
                os.close(fd)
        (root / "journal.bin").unlink(missing_ok=True)
        write_atomic(root / "meta.json", json.dumps(meta, indent=1).encode())
        return cls(root, meta, "r+", lock)

    @classmethod
    def open(cls, root: Path, mode: str) -> "DiskFiles":
        """Map an existing directory; ``mode="r+"`` rolls back an unfinished epoch and tidies stale files."""
        meta = read_meta(root)
        if meta.get("format") != FORMAT_RAW or int(meta.get("version", 0)) != VERSION:
            raise ValueError(f"{root / 'meta.json'} has format {meta.get('format')!r} version "
                             f"{meta.get('version')!r}; expected {FORMAT_RAW!r} version {VERSION}")
        lock = _lock(root) if mode == "r+" else None
        try:
            files = cls(root, meta, "r+" if mode == "r+" else "c", lock)
        except (KeyError, TypeError) as exc:
            if lock is not None:
                lock.close()
            raise ValueError(f"{root / 'meta.json'} is incomplete ({exc!r})") from exc
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        files._rollback()
        if mode == "r+":
            files._tidy()
        return files

    def _tidy(self) -> None:
        keep = set(self.files.values()) | {"meta.json", "journal.bin", "lock"}
        for p in self.root.iterdir():
            stale_col = p.name.startswith(("z.k", "beta.k")) and p.name.endswith(".bin") and p.name not in keep
            if stale_col or (p.name.startswith(".lwbank.") and p.name.endswith(".tmp")):
                logger.info("removing stale bank file %s", p)
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ growth
    def grow(self, capacity: int) -> None:
        """Extend every file to ``capacity`` rows (no copy of existing rows) and re-map."""
        for n in COLUMNS:
            if self.rowbytes(n):
                os.truncate(self.path(n), int(capacity) * self.rowbytes(n))
        self.capacity = int(capacity)
        self.maps = {n: self._map(n, self.capacity) for n in COLUMNS}

    def widen(self, K: int, n: int) -> None:
        """Rewrite ``z``/``beta`` with ``K`` points per row under new names (rows [0, n) copied, zero padded),
        then checkpoint: meta points at the new files only once they are complete."""
        old = {c: (self.maps[c], self.path(c)) for c in ("z", "beta")}
        k0 = self.K
        self.K = int(K)
        self.files.update({c: file_names(self.K)[c] for c in ("z", "beta")})
        for c in ("z", "beta"):
            fd = os.open(self.path(c), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                os.ftruncate(fd, self.capacity * self.rowbytes(c))
            finally:
                os.close(fd)
            new = self._map(c, self.capacity)
            step = max(1, (1 << 24) // max(1, self.rowbytes(c)))
            for s in range(0, n, step):
                new[s : min(s + step, n), :k0] = old[c][0][s : min(s + step, n)]
            self.maps[c] = new
        self.checkpoint(n)
        for c in ("z", "beta"):
            if old[c][1] != self.path(c):
                old[c][1].unlink(missing_ok=True)

    # ------------------------------------------------------------------ journal + flush
    def before_overwrite(self, positions: np.ndarray) -> None:
        """Journal the flushed content of ``positions`` (rows about to be overwritten) not journaled yet."""
        pos = np.asarray(positions, np.int64)
        pos = pos[pos < self.flushed_n]
        if self.mode != "r+" or not pos.size:
            return
        if self._journaled is None:
            self._journaled = np.zeros(self.flushed_n, bool)
        pos = np.unique(pos[~self._journaled[pos]])
        if not pos.size:
            return
        payload = pos.tobytes() + b"".join(np.ascontiguousarray(self.maps[c][pos]).tobytes() for c in COLUMNS)
        head = _HEAD.pack(_MAGIC, self.epoch, pos.size, len(payload), zlib.crc32(payload))
        fd = os.open(self.root / "journal.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, head + payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._journaled[pos] = True

    def _records(self) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        path = self.root / "journal.bin"
        data = path.read_bytes() if path.exists() else b""
        out, at = [], 0
        while at + _HEAD.size <= len(data):
            magic, epoch, m, size, crc = _HEAD.unpack_from(data, at)
            body = data[at + _HEAD.size : at + _HEAD.size + size]
            if magic != _MAGIC or len(body) != size or zlib.crc32(body) != crc:
                break  # a torn last record: written before any row changed
            at += _HEAD.size + size
            if epoch != self.epoch:
                continue  # undoes to an older meta: that flush completed
            pos = np.frombuffer(body, np.int64, m)
            rows, off = {}, 8 * m
            for c in COLUMNS:
                nb = m * self.rowbytes(c)
                rows[c] = np.frombuffer(body, column_dtype(c, self.dtype), offset=off,
                                        count=nb // column_dtype(c, self.dtype).itemsize).reshape(
                    (m, *row_shape(c, self.K, self.d)))
                off += nb
            out.append((pos, rows))
        return out

    def _rollback(self) -> None:
        records = self._records()
        if not records:
            if self.mode == "r+":
                self._truncate_journal()  # stale records of a completed flush, or a torn one
            return
        logger.warning("bank %s: rolling back %d unflushed row writes to the last flush (N=%d)",
                       self.root, sum(len(p) for p, _ in records), self.flushed_n)
        for pos, rows in reversed(records):
            for c in COLUMNS:
                if self.rowbytes(c):
                    self.maps[c][pos] = rows[c]
        if self.mode == "r+":
            self.sync_maps()
            self._truncate_journal()

    def _truncate_journal(self) -> None:
        path = self.root / "journal.bin"
        if path.exists() and path.stat().st_size:
            os.truncate(path, 0)

    def sync_maps(self) -> None:
        for a in self.maps.values():
            if isinstance(a, np.memmap):
                a.flush()

    def checkpoint(self, n: int) -> None:
        """Make rows [0, n) the durable state: msync, replace meta (epoch + 1), clear the journal."""
        if self.mode != "r+":
            raise ValueError(f"bank {self.root} was opened read-only; open it with mode='r+' to write")
        self.sync_maps()
        self.meta.update(N=int(n), capacity=self.capacity, K=self.K, epoch=self.epoch + 1, files=dict(self.files))
        write_atomic(self.root / "meta.json", json.dumps(self.meta, indent=1).encode())
        self.epoch, self.flushed_n, self._journaled = self.epoch + 1, int(n), None
        self._truncate_journal()

    def close(self) -> None:
        """Drop the maps (views handed out keep theirs alive) and release the write lock."""
        self.maps = {}
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None
