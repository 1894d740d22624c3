"""SpecBank: many RKMEs packed as arrays (ids, z, beta, self terms) in growable, optionally memory-mapped storage.

Layout (N live specs, at most K points each, dimension d):

- ``ids``        np.int64 (N,)       unique spec ids, aligned with every other array (not insertion order)
- ``z``          torch (N, K, d)     float32 points; specs with fewer than K points are padded with zeros
- ``beta``       torch (N, K)        weights; padding points carry weight 0 (so they change no sum)
- ``counts``     np.int32 (N,)       each spec's own number of points (padding starts there)
- ``self_inner`` torch float64 (N,)  ``<B, B>``, computed once at insertion, in float64, from the stored z

The five are views of the live prefix of buffers that grow by doubling (:mod:`lwgpu.bank.storage`):
``add`` of a batch is one append (one self-terms call), ``remove`` moves the last rows into the holes;
both are amortised O(changed rows). A view taken from a bank reflects later changes to it until it grows.

Storage: in memory (the constructors, :meth:`~SpecBank.load`), or persistent: :meth:`~SpecBank.create` /
:meth:`~SpecBank.open` give a bank whose buffers are raw memory-mapped files (:mod:`lwgpu.bank.files`);
appends and deletes write only the rows they touch and :meth:`~SpecBank.flush` makes them durable
(msync + an atomic ``meta.json``). ``save``/``load`` write and read plain snapshots (the old ``.npy``
layout is still read). One bank holds one ``gamma`` and one ``d``; another is refused with a ValueError.
"""
from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..idsets import unique_ids
from .pack import as_ids, check_arrays, check_specs, pack_specs
from .persist import FORMAT, PersistentBank  # noqa: F401 - FORMAT re-exported
from .storage import IdMap, RowStore
from ..device import resolve_device, resolve_dtype
from ..spec.validation import check_gamma, same_gamma

logger = logging.getLogger(__name__)



def _self_terms(z: torch.Tensor, beta: torch.Tensor, gamma: float) -> torch.Tensor:
    from ..kernels import get_backend

    return get_backend("auto", z.device, z.dtype).self_terms(z, beta, gamma)


class SpecBank(PersistentBank):
    """An empty bank for specs of dimension ``d`` under kernel bandwidth ``gamma``.

    Use :meth:`from_specs` / :meth:`from_arrays` / :meth:`load` / :meth:`open` for a filled one, then
    :meth:`add` / :meth:`add_arrays` / :meth:`remove`. All arrays stay aligned with ``ids``.
    """

    #: keep a separate device copy of z/beta/self_inner: None = on a GPU only (tests force it on a CPU)
    _mirror: bool | None = None

    def __init__(self, gamma: float, d: int, K: int = 0, dtype: Any = None, device: Any = "cpu") -> None:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"d must be an integer >= 1, got {d!r}")
        self.gamma: float = check_gamma(gamma)
        self.d: int = int(d)
        self._store = RowStore.empty(int(K), self.d, resolve_device(device), resolve_dtype(dtype),
                                     mirror=self._mirror)
        self._idmap = IdMap()
        self._readonly = False
        #: incremented by every change (add, remove): followers (an index) compare it instead of the ids
        self.version = 0

    # ------------------------------------------------------------------ row watchers
    def watch(self, watcher: Any) -> None:
        """Tell ``watcher`` about row changes (held weakly): ``rows_appended(start, count, version)`` after an
        append and ``rows_moved(src, dst, n, version)`` after a delete moved rows ``src`` into ``dst`` and left
        ``n`` rows. Any other change only bumps :attr:`version`; a watcher that sees a version it was not
        told about rebuilds what it derived (see :class:`lwgpu.search.bounds.BallBounds`)."""
        if getattr(self, "_watchers", None) is None:
            self._watchers = weakref.WeakSet()
        self._watchers.add(watcher)

    def _notify(self, method: str, *args: Any) -> None:
        for w in list(getattr(self, "_watchers", None) or ()):
            getattr(w, method)(*args, self.version)

    # ------------------------------------------------------------------ live views
    @property
    def ids(self) -> np.ndarray:
        """int64 (N,) ids, a read-only view (copy it to keep it across changes)."""
        v = self._store.live("ids")
        v.flags.writeable = False
        return v

    @property
    def counts(self) -> np.ndarray:
        """int32 (N,) each spec's own number of points (read-only view)."""
        v = self._store.live("counts")
        v.flags.writeable = False
        return v

    @property
    def z(self) -> torch.Tensor:
        """(N, K, d) points (a view of the storage)."""
        return self._store.live("z")

    @property
    def beta(self) -> torch.Tensor:
        """(N, K) weights (a view of the storage)."""
        return self._store.live("beta")

    @property
    def self_inner(self) -> torch.Tensor:
        """float64 (N,) self terms ``<B, B>`` (a view of the storage)."""
        return self._store.live("self_inner")

    def _set_arrays(self, ids, z, beta, counts, self_inner, borrowed: bool = True) -> None:
        """Adopt ready arrays as the bank's storage without copying them (``borrowed``: the first change
        copies them into the bank's own buffers, so a caller's arrays are never written)."""
        ids = np.asarray(ids, np.int64)
        host = {"ids": ids, "counts": np.asarray(counts, np.int32)}
        st = self._store
        dev = {"z": z.detach(), "beta": beta.detach(), "self_inner": self_inner.detach()}
        if not st.mirror:
            host.update({c: t.numpy() for c, t in dev.items()})
            dev = None
        self._store = RowStore(host, len(ids), int(z.shape[1]), self.d, st.device, z.dtype, dev=dev,
                               borrowed=borrowed, mirror=st.mirror)
        self._idmap.rebuild(ids)
        self.version += 1

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls, z: Any, beta: Any, gamma: float, ids: Any = None, counts: Any = None, dtype: Any = None,
        device: Any = "cpu",
    ) -> "SpecBank":
        """Pack ``z`` (N, K, d) and ``beta`` (N, K) without making N Python objects.

        A float32 contiguous numpy/torch ``z`` on the target device is used without a copy (the bank
        copies it on its first change). ``counts`` (N,) gives each spec's own number of points
        (default K). ``ids`` default to 0..N-1.
        """
        dt, dev = resolve_dtype(dtype), resolve_device(device)
        z_t, b_t, cnt = check_arrays(z, beta, counts, dt, dev)
        n, k, d = z_t.shape
        bank = cls(gamma, d, k, dtype=dt, device=dev)
        ids_a = np.arange(n, dtype=np.int64) if ids is None else as_ids(ids, n)
        bank._set_arrays(ids_a, z_t, b_t, cnt, _self_terms(z_t, b_t, bank.gamma))
        return bank

    @classmethod
    def from_specs(cls, specs: Sequence[Any], ids: Any = None, gamma: float | None = None,
                   dtype: Any = None, device: Any = "cpu") -> "SpecBank":
        """Pack a list of RKMEs (ragged K allowed: shorter specs are padded with zero weights)."""
        specs = list(specs)
        if not specs:
            if gamma is None:
                raise ValueError("from_specs got no specs: pass gamma= (and use SpecBank(gamma, d)) for an empty bank")
            raise ValueError("from_specs got no specs; build an empty bank with SpecBank(gamma, d)")
        g, d = check_specs(specs, gamma if gamma is not None else specs[0].gamma, None)
        z, beta, cnt = pack_specs(specs, d)
        return cls.from_arrays(z, beta, g, ids=ids, counts=cnt, dtype=dtype, device=device)

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return self._store.n

    @property
    def K(self) -> int:
        """Padded number of points per spec."""
        return self._store.K

    @property
    def dtype(self) -> torch.dtype:
        return self._store.dtype

    @property
    def device(self) -> torch.device:
        return self._store.device

    @property
    def capacity(self) -> int:
        """Rows the storage holds before it grows again."""
        return self._store.capacity

    @property
    def path(self) -> Path | None:
        """The directory of a bank from :meth:`create` / :meth:`open` (None for an in-memory bank)."""
        f = self._store.files
        return f.root if f is not None and (f.mode == "r+" or self._readonly) else None

    @property
    def nbytes(self) -> int:
        """Bytes of the live specs' arrays (z, beta, self terms, ids, counts)."""
        return self._store.nbytes()

    def __repr__(self) -> str:
        where = f", path={self.path}" if self.path is not None else ""
        return (f"SpecBank(N={len(self)}, K={self.K}, d={self.d}, gamma={self.gamma}, "
                f"dtype={str(self.dtype).replace('torch.', '')}, device={self.device}{where})")

    def tiles(self, size: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` row ranges of at most ``size`` specs covering the bank."""
        size = max(1, int(size))
        for s in range(0, len(self), size):
            yield s, min(s + size, len(self))

    # ------------------------------------------------------------------ ids
    def positions(self, ids: Any) -> np.ndarray:
        """Row positions (int64) of the given ids; a ValueError names the ids not in the bank."""
        want = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        pos = self._idmap.lookup(want, self.ids)
        if (pos < 0).any():
            raise ValueError(f"ids {want[pos < 0][:10].tolist()} are not in the bank")
        return pos

    def holds(self, ids: Any) -> np.ndarray:
        """Boolean mask (n,): which of ``ids`` (n,) the bank holds (one table lookup, no sort)."""
        return self._idmap.lookup(np.atleast_1d(np.asarray(ids, dtype=np.int64)), self.ids) >= 0

    def __contains__(self, spec_id: Any) -> bool:
        try:
            return bool(self.holds([int(spec_id)])[0])
        except (TypeError, ValueError, OverflowError):
            return False

    def get(self, spec_id: int) -> Any:
        """The RKME stored under ``spec_id`` (a copy of its own K points, padding dropped)."""
        from ..spec.rkme import RKME

        p = int(self.positions([spec_id])[0])
        k = int(self.counts[p])
        return RKME(self.z[p, :k].clone(), self.beta[p, :k].clone(), self.gamma, dtype=self.dtype, device=self.device)

    def rows(self, start: int, stop: int) -> "SpecBank":
        """A view of rows [start, stop) sharing memory with this bank (no copy; valid until this bank
        changes; changing the view copies it first)."""
        out = SpecBank(self.gamma, self.d, self.K, dtype=self.dtype, device=self.device)
        out._set_arrays(self.ids[start:stop], self.z[start:stop], self.beta[start:stop],
                        self.counts[start:stop], self.self_inner[start:stop])
        return out

    def subset(self, ids: Any) -> "SpecBank":
        """A new in-memory bank with the given ids, in the given order (copies the rows)."""
        pos = self.positions(ids)
        idx = torch.as_tensor(pos, device=self.device)
        out = SpecBank(self.gamma, self.d, self.K, dtype=self.dtype, device=self.device)
        out._set_arrays(self.ids[pos], self.z.index_select(0, idx), self.beta.index_select(0, idx),
                        self.counts[pos], self.self_inner.index_select(0, idx), borrowed=False)
        return out

    # ------------------------------------------------------------------ mutation
    def _writable(self) -> None:
        if self._readonly:
            raise ValueError(f"this bank was opened read-only ({self._store.files.root}); open it with mode='r+'")

    def add(self, specs: Any, ids: Any = None) -> np.ndarray:
        """Append specs (a list of RKMEs, one RKME, or a SpecBank) as one batch; returns their ids (int64).

        Self terms are computed here, once per batch. Default ids continue after the largest id in the
        bank. A spec with more points than the bank's K widens the bank (every spec re-padded: O(N)).
        """
        if isinstance(specs, SpecBank):
            other = specs
            if other.d != self.d:
                raise ValueError(f"the added bank has dimension d={other.d} but this bank holds d={self.d}")
            if not same_gamma(other.gamma, self.gamma):
                raise ValueError(f"the added bank has gamma={other.gamma} but this bank uses gamma={self.gamma}")
            if ids is None and len(other) and not np.isin(other.ids, self.ids).any():
                ids = other.ids
            return self._append(other.z, other.beta, np.array(other.counts), ids, other.self_inner)
        specs = [specs] if hasattr(specs, "z") else list(specs)
        if not specs:
            return np.empty(0, np.int64)
        check_specs(specs, self.gamma, self.d)
        z_np, b_np, cnt = pack_specs(specs, self.d, self.K)
        return self._append(torch.from_numpy(z_np), torch.from_numpy(b_np), cnt, ids, None)

    def add_arrays(self, z: Any, beta: Any, ids: Any = None, counts: Any = None) -> np.ndarray:
        """Append specs packed as ``z`` (M, K', d), ``beta`` (M, K') (``counts`` (M,) as in
        :meth:`from_arrays`) as one batch, without Python objects per spec; returns their ids."""
        z_t, b_t, cnt = check_arrays(z, beta, counts, self.dtype, self.device)
        if z_t.shape[0] and int(z_t.shape[2]) != self.d:
            raise ValueError(f"z has dimension d={int(z_t.shape[2])} but the bank holds d={self.d}")
        return self._append(z_t, b_t, cnt, ids, None)

    def _append(self, z: torch.Tensor, beta: torch.Tensor, counts: np.ndarray, ids: Any,
                self_inner: torch.Tensor | None) -> np.ndarray:
        self._writable()
        m = int(z.shape[0])
        if m == 0:
            return np.empty(0, np.int64)
        start = int(self.ids.max()) + 1 if len(self) else 0
        new_ids = np.arange(start, start + m, dtype=np.int64) if ids is None else as_ids(ids, m)
        clash = self._idmap.lookup(new_ids, self.ids) >= 0
        if clash.any():
            raise ValueError(f"ids {new_ids[clash][:10].tolist()} are already in the bank; remove them first "
                             "or pass new ids")
        z = z.to(self.device, self.dtype)
        beta = beta.to(self.device, self.dtype)
        s = _self_terms(z, beta, self.gamma) if self_inner is None else self_inner.to(self.device, torch.float64)
        k = int(z.shape[1])
        if k > self.K:
            self._store.widen(k)
        elif k < self.K:
            z = torch.nn.functional.pad(z, (0, 0, 0, self.K - k))
            beta = torch.nn.functional.pad(beta, (0, self.K - k))
        n0 = len(self)
        self._store.append({"ids": new_ids, "counts": np.asarray(counts, np.int32), "z": z, "beta": beta,
                            "self_inner": s})
        self._idmap.assign(new_ids, np.arange(n0, n0 + m, dtype=np.int64), new=m)
        self.version += 1
        self._notify("rows_appended", n0, m)
        return new_ids

    def remove(self, ids: Any) -> None:
        """Drop the given ids (ValueError if any is absent): the last rows move into the holes (O(removed))."""
        self._writable()
        want = unique_ids(np.array(np.atleast_1d(np.asarray(ids)), dtype=np.int64))
        pos = self.positions(want)
        if not pos.size:
            return
        src, dst = self._store.delete(pos)
        self._idmap.drop(want)
        if dst.size:
            self._idmap.assign(self._store.host["ids"][dst], dst)
        self.version += 1
        self._notify("rows_moved", src, dst, len(self))

    def to(self, device: Any = None, dtype: Any = None) -> "SpecBank":
        """An in-memory copy on ``device`` in ``dtype`` (self terms stay float64)."""
        dev = self.device if device is None else resolve_device(device)
        dt = self.dtype if dtype is None else resolve_dtype(dtype)
        out = SpecBank(self.gamma, self.d, self.K, dtype=dt, device=dev)
        out._set_arrays(self.ids.copy(), self.z.to(dev, dt, copy=True), self.beta.to(dev, dt, copy=True),
                        self.counts.copy(), self.self_inner.to(dev, copy=True), borrowed=False)
        return out


def as_bank(queries: Any, gamma: float | None = None) -> SpecBank:
    """Queries (RKME, list of RKMEs, or SpecBank) as a SpecBank (no copy for a bank)."""
    if isinstance(queries, SpecBank):
        return queries
    if hasattr(queries, "z") and hasattr(queries, "beta"):
        queries = [queries]
    if isinstance(queries, Iterable):
        queries = list(queries)
        if not queries:
            raise ValueError("no queries given: pass an RKME, a non-empty list of RKMEs, or a SpecBank")
        return SpecBank.from_specs(queries)
    raise ValueError(f"queries must be an RKME, a list of RKMEs or a SpecBank, got {type(queries).__name__}")
