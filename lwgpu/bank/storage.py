"""Growable row storage behind a :class:`~lwgpu.bank.SpecBank`: amortised O(1) append and delete.

:class:`RowStore` keeps every column in a buffer of ``capacity`` rows whose prefix ``[0, n)`` is exactly
the live specs (dense: the kernels read ``z[s:e]`` slices and gather rows by position):

- append writes rows ``[n, n + m)``; a full buffer doubles (in memory: a new buffer and one copy of the
  live rows; on disk: the files are extended and re-mapped, nothing is copied);
- delete is swap-with-last: the last live rows move into the holes, so the storage stays dense without
  tombstones or compaction, at the price of row order (``ids`` is not insertion order).

Columns live as numpy buffers on the host (``ids``, ``counts`` always; ``z``, ``beta``, ``self_inner``
too on a CPU, where the torch tensors are views of them, or when the bank is persistent). On a CUDA
device ``z``, ``beta``, ``self_inner`` also have a device copy grown by doubling; every write goes to
both. :class:`IdMap` maps ids to rows.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .files import COLUMNS, DiskFiles, column_dtype, row_shape

logger = logging.getLogger(__name__)

TENSORS = ("z", "beta", "self_inner")


class IdMap:
    """id -> row position, updated incrementally.

    Dense mode (market ids: non-negative, increasing): an int64 table indexed by id, -1 for holes,
    grown by doubling; a lookup of 1M ids is one fancy index (milliseconds). An id outside
    ``[0, max(2**20, 4 N, table size))`` switches the map to sparse mode for good (until rebuilt): a dict
    for lookups of up to N/16 ids, and a sorted copy of the ids (rebuilt after a change, on the next bulk
    lookup) for more.
    """

    def __init__(self) -> None:
        self._table: np.ndarray | None = np.full(0, -1, np.int64)
        self._dict: dict[int, int] | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._count = 0

    @property
    def dense(self) -> bool:
        return self._table is not None

    def _fits(self, ids: np.ndarray, count: int) -> bool:
        size = self._table.size if self._table is not None else 0
        return not ids.size or (int(ids.min()) >= 0 and int(ids.max()) < max(1 << 20, 4 * count, size))

    def rebuild(self, ids: np.ndarray) -> None:
        """Map ``ids`` (N,) to 0..N-1; ValueError if they are not unique."""
        ids = np.asarray(ids, np.int64)
        self._sorted, self._count = None, int(ids.size)
        if self._fits(ids, ids.size):
            self._dict = None
            self._table = np.full(int(ids.max()) + 1 if ids.size else 0, -1, np.int64)
            self._table[ids] = np.arange(ids.size, dtype=np.int64)
            ok = bool((self._table[ids] == np.arange(ids.size)).all()) if ids.size else True
        else:
            self._table = None
            self._dict = dict(zip(ids.tolist(), range(ids.size)))
            ok = len(self._dict) == ids.size
        if not ok:
            raise ValueError("ids must be unique; the given ids contain duplicates")

    def _to_sparse(self) -> None:
        live = np.nonzero(self._table >= 0)[0]
        self._dict = dict(zip(live.tolist(), self._table[live].tolist()))
        self._table = None
        logger.info("IdMap: ids outside the dense range; switching to a dict over %d ids", len(live))

    def assign(self, ids: np.ndarray, positions: np.ndarray, new: int = 0) -> None:
        """Set ``ids`` -> ``positions`` (``new`` of them were not in the map before)."""
        self._sorted = None
        self._count += int(new)
        if self._table is not None and not self._fits(ids, self._count):
            self._to_sparse()
        if self._table is not None:
            top = int(ids.max()) + 1 if ids.size else 0
            if top > self._table.size:
                grown = np.full(max(top, 2 * self._table.size), -1, np.int64)
                grown[: self._table.size] = self._table
                self._table = grown
            self._table[ids] = positions
        else:
            self._dict.update(zip(ids.tolist(), np.asarray(positions).tolist()))

    def drop(self, ids: np.ndarray) -> None:
        self._sorted = None
        self._count -= int(ids.size)
        if self._table is not None:
            self._table[ids] = -1
        else:
            for i in ids.tolist():
                del self._dict[i]

    def lookup(self, want: np.ndarray, live_ids: np.ndarray) -> np.ndarray:
        """Positions (int64) of ``want``; -1 for ids not in the map. ``live_ids``: the bank's ids (N,)."""
        want = np.asarray(want, np.int64)
        if self._table is not None:
            if not want.size or (int(want.min()) >= 0 and int(want.max()) < self._table.size):
                return self._table[want]  # a fresh array (fancy indexing copies)
            out = np.full(want.shape, -1, np.int64)
            ok = (want >= 0) & (want < self._table.size)
            out[ok] = self._table[want[ok]]
            return out
        if want.size <= max(64, len(self._dict) // 16):  # few ids: dict lookups, no O(N log N) sort
            return np.fromiter((self._dict.get(i, -1) for i in want.tolist()), np.int64, want.size)
        if self._sorted is None:
            order = np.argsort(live_ids, kind="stable")
            self._sorted = (live_ids[order], order)
        sid, order = self._sorted
        if not sid.size:
            return np.full(want.shape, -1, np.int64)
        at = np.searchsorted(sid, want).clip(0, sid.size - 1)
        return np.where(sid[at] == want, order[at], -1).astype(np.int64)


class RowStore:
    """Columns ``ids`` (int64), ``counts`` (int32), ``self_inner`` (float64), ``z`` (K, d), ``beta`` (K,)
    of ``capacity`` rows, ``n`` of them live.

    Parameters
    ----------
    host : dict of (capacity, *row) numpy arrays (``z``/``beta``/``self_inner`` may be missing on a device
        bank without files).
    device, dtype : where and in which dtype the tensors ``z``, ``beta`` (``self_inner``: float64) live.
    files : the mapped files when persistent (then ``host`` is their maps).
    borrowed : the buffers belong to someone else (a caller's arrays, another bank's rows): the first
        mutation copies them into the store's own buffers.
    """

    def __init__(self, host: dict[str, np.ndarray], n: int, K: int, d: int, device: torch.device,
                 dtype: torch.dtype, dev: dict[str, torch.Tensor] | None = None, files: DiskFiles | None = None,
                 borrowed: bool = False, mirror: bool | None = None) -> None:
        self.host, self.n, self.K, self.d = host, int(n), int(K), int(d)
        self.device, self.dtype, self.files, self.borrowed = device, dtype, files, borrowed
        self.np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self.mirror = device.type != "cpu" if mirror is None else bool(mirror)
        self.capacity = int(host["ids"].shape[0])
        self.dev: dict[str, torch.Tensor] = dev if dev is not None else self._tensors_from_host()
        self.unflushed = False  # rows changed since the last flush (persistent stores)

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, K: int, d: int, device: torch.device, dtype: torch.dtype, capacity: int = 0,
              mirror: bool | None = None) -> "RowStore":
        np_dt = torch.empty(0, dtype=dtype).numpy().dtype
        host = {c: np.zeros((capacity, *row_shape(c, K, d)), column_dtype(c, np_dt)) for c in COLUMNS}
        return cls(host, 0, K, d, device, dtype, mirror=mirror)

    def _tensors_from_host(self) -> dict[str, torch.Tensor]:
        """CPU: torch views of the host buffers; device: copies of the live rows in buffers of capacity rows."""
        if not self.mirror:
            return {c: torch.from_numpy(self.host[c]) for c in TENSORS}
        out = {}
        for c in TENSORS:
            dt = torch.float64 if c == "self_inner" else self.dtype
            t = torch.zeros((self.capacity, *row_shape(c, self.K, self.d)), dtype=dt, device=self.device)
            t[: self.n] = torch.from_numpy(np.ascontiguousarray(self.host[c][: self.n])).to(self.device)
            out[c] = t
        return out

    @property
    def persistent(self) -> bool:
        return self.files is not None and self.files.mode == "r+"

    def live(self, name: str) -> Any:
        """The live prefix [0, n) of column ``name`` (numpy for ids/counts, torch for the rest)."""
        return self.dev[name][: self.n] if name in TENSORS else self.host[name][: self.n]

    # ------------------------------------------------------------------ capacity
    def _own(self, capacity: int = 0) -> None:
        """Stop sharing borrowed buffers / copy-on-write maps: copy the live rows into own buffers."""
        if self.borrowed or (self.files is not None and not self.persistent):
            self.files, self.borrowed = None, False
            self._reallocate(max(self.n, int(capacity), 1), self.K)

    def _reallocate(self, capacity: int, K: int) -> None:
        n, k0 = self.n, min(self.K, K)
        host: dict[str, np.ndarray] = {}
        for c in COLUMNS:
            if c not in self.host or (self.mirror and c in TENSORS):
                continue  # an in-memory device bank keeps its tensors on the device only
            new = np.zeros((capacity, *row_shape(c, K, self.d)), column_dtype(c, self.np_dtype))
            if c in ("z", "beta"):
                new[:n, :k0] = self.host[c][:n, :k0]
            else:
                new[:n] = self.host[c][:n]
            host[c] = new
        self.host, self.capacity, self.K = host, int(capacity), int(K)
        if self.mirror:
            self.dev = self._grow_dev(self.dev, capacity, k0)
        else:
            self.dev = self._tensors_from_host()

    def _grow_dev(self, dev: dict[str, torch.Tensor], capacity: int, k0: int) -> dict[str, torch.Tensor]:
        out = {}
        for c in TENSORS:
            dt = torch.float64 if c == "self_inner" else self.dtype
            t = torch.zeros((capacity, *row_shape(c, self.K, self.d)), dtype=dt, device=self.device)
            if c in ("z", "beta"):
                t[: self.n, :k0] = dev[c][: self.n, :k0]
            else:
                t[: self.n] = dev[c][: self.n]
            out[c] = t
        return out

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` live rows (capacity doubles: amortised O(1) per appended row)."""
        self._own(max(int(rows), 2 * self.n))
        if rows <= self.capacity:
            return
        cap = max(int(rows), 2 * self.capacity, 16)
        logger.debug("RowStore: capacity %d -> %d rows", self.capacity, cap)
        if self.persistent:
            self.files.grow(cap)
            self.host, self.capacity = self.files.maps, cap
            self.dev = self._grow_dev(self.dev, cap, self.K) if self.mirror else self._tensors_from_host()
        else:
            self._reallocate(cap, self.K)

    def widen(self, K: int) -> None:
        """Re-pad every row to ``K`` points (O(N), rare)."""
        logger.log(logging.INFO if self.n else logging.DEBUG, "SpecBank: widening K %d -> %d (re-padding %d specs)",
                   self.K, K, self.n)
        self._own()
        if self.persistent:
            k0 = self.K
            self.files.widen(K, self.n)  # a checkpoint of every change so far
            self.unflushed = False
            self.host, self.K = self.files.maps, int(K)
            self.dev = self._grow_dev(self.dev, self.capacity, k0) if self.mirror else self._tensors_from_host()
        else:
            self._reallocate(max(self.capacity, self.n), K)

    # ------------------------------------------------------------------ rows
    def _write(self, at: Any, cols: dict[str, Any]) -> None:
        """Write rows ``at`` (slice or int64 positions) of every column from ``cols`` (numpy or torch)."""
        for c in COLUMNS:
            v = cols[c]
            if c in self.host:
                self.host[c][at] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            if self.mirror and c in TENSORS:
                t = torch.as_tensor(v).to(self.device, self.dev[c].dtype)
                idx = at if isinstance(at, slice) else torch.as_tensor(at, device=self.device)
                self.dev[c][idx] = t

    def append(self, cols: dict[str, Any]) -> None:
        """Append m rows: ``cols`` maps each column to (m, *row) values (z/beta already at width K)."""
        m = int(cols["ids"].shape[0])
        self.reserve(self.n + m)
        if self.files is not None:
            self.files.before_overwrite(np.arange(self.n, self.n + m))
        self._write(slice(self.n, self.n + m), cols)
        self.n += m
        self.unflushed = True

    def delete(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Delete rows ``positions`` (unique) by moving the last live rows into the holes.

        Returns ``(src, dst)``: row ``src[i]`` now lives at ``dst[i]`` (O(m) work for m deleted rows).
        """
        self._own()
        pos = np.unique(np.asarray(positions, np.int64))
        n2 = self.n - pos.size
        holes = pos[pos < n2]
        tail = np.arange(n2, self.n, dtype=np.int64)
        src = tail[~np.isin(tail, pos[pos >= n2])]
        if holes.size:
            if self.files is not None:
                self.files.before_overwrite(holes)
            moved = {c: (self.dev[c][torch.as_tensor(src, device=self.device)] if self.mirror and c in TENSORS
                         else self.host[c][src]) for c in COLUMNS if c in self.host or c in TENSORS}
            self._write(holes, moved)
        self.n = n2
        self.unflushed = True
        return src, holes

    def flush(self) -> None:
        """Persistent stores: make the live rows durable (see :mod:`lwgpu.bank.files`)."""
        if self.persistent and self.unflushed:
            self.files.checkpoint(self.n)
        self.unflushed = False

    def nbytes(self) -> int:
        """Bytes of the live rows of every column."""
        return int(sum(self.n * int(np.prod(row_shape(c, self.K, self.d), dtype=np.int64)) *
                       column_dtype(c, self.np_dtype).itemsize for c in COLUMNS))
