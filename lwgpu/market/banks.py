"""The market's spec banks: one persistent, memory-mapped :class:`~lwgpu.bank.SpecBank` per input dimension
(``bank_dir/d<d>``), an optional :class:`~lwgpu.index.SpecIndex` per bank above a size threshold, and the
repair of the banks against the database's ids (reading only the spec files of missing ids).

The banks are written in place: an append or a delete touches only its rows, and :meth:`BankSet.flush`
makes the changes durable in O(changed rows) (see :mod:`lwgpu.bank.files`). A crash loses at most the
changes since the last flush: a reopened bank is its last flushed state, and :meth:`BankSet.sync`
brings it to the database's ids.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..bank.files import BankLockedError, current_umask
from ..spec.validation import same_gamma

logger = logging.getLogger(__name__)

_SYNC_BATCH = 10_000  # specs read from their files and appended per batch when repairing a bank


def swap_save(obj: Any, parent: Path, name: str) -> None:
    """``obj.save`` into a temp folder, then swap it in for ``parent/name`` (never a half-written one)."""
    parent.mkdir(exist_ok=True)
    final = parent / name
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0o700; the folder follows the umask
    obj.save(tmp)
    old = parent / f".old.{name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False).reshape(-1)
    return np.fromiter((int(i) for i in ids), np.int64)


class BankSet:
    """Banks keyed by input dimension ``d``, stored as ``bank_dir/d<d>`` and ``index_dir/d<d>``.

    Not thread-safe on its own: the market mutates it under its write lock; :meth:`index_for` (called
    by concurrent searches) guards the lazily built indexes with its own lock.
    """

    def __init__(self, bank_dir: Path, index_dir: Path, gamma: float, device: Any, index_threshold: int) -> None:
        self.bank_dir, self.index_dir = Path(bank_dir), Path(index_dir)
        self.gamma, self.device, self.index_threshold = float(gamma), device, int(index_threshold)
        self.banks: dict[int, Any] = {}
        self.indexes: dict[int, Any] = {}
        self.backend: Any = "auto"  # the market's kernel backend, passed to its indexes
        self._saved_version: dict[int, int] = {}
        self._no_faiss = False
        self._index_lock = threading.Lock()
        for p in (self.bank_dir, self.index_dir):
            p.mkdir(exist_ok=True)

    def get(self, d: int) -> Any:
        return self.banks.get(int(d))

    # ------------------------------------------------------------------ persistence
    def load(self) -> None:
        """Open the banks on disk (each at its last flushed state; unusable ones are dropped, to be rebuilt
        by :meth:`sync`; a bank saved in the earlier ``.npy`` layout is converted once)."""
        from ..bank import FORMAT, SpecBank
        from ..bank.files import read_meta

        self.close()
        for p in self.bank_dir.iterdir():
            if p.name.startswith(".") or not p.name.startswith("d"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                continue
            try:
                if read_meta(p).get("format") == FORMAT:
                    logger.info("converting bank %s from the .npy layout to memory-mapped files", p)
                    swap_save(SpecBank.load(p, mmap=True), self.bank_dir, p.name)
                try:
                    bank = SpecBank.open(p, mode="r+", device=self.device)
                except BankLockedError as exc:  # another market object holds it: work on a private copy
                    logger.warning("%s; this market keeps an in-memory copy of it (changes are not saved)", exc)
                    bank = SpecBank.load(p, mmap=False, device=self.device)
                if not same_gamma(bank.gamma, self.gamma):
                    raise ValueError(f"bank gamma {bank.gamma} != market gamma {self.gamma}")
                if p.name != f"d{bank.d}":
                    raise ValueError(f"holds specs of d={bank.d}")
                self.banks[bank.d] = bank
            except (ValueError, OSError, KeyError) as exc:
                logger.warning("saved bank %s unusable (%s); rebuilding it from the spec files", p, exc)
                shutil.rmtree(p, ignore_errors=True)
        for p in self.index_dir.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)

    def flush(self) -> None:
        """Make every bank's changes durable: O(changed rows) each, never a rewrite."""
        for bank in self.banks.values():
            bank.flush()

    def save(self) -> None:
        """Flush every bank, and save every index that changed since it was last saved or loaded."""
        self.flush()
        with self._index_lock:
            for d, idx in self.indexes.items():
                if idx.bank is self.banks.get(d) and self._saved_version.get(d) != idx.version:
                    swap_save(idx, self.index_dir, f"d{d}")
                    self._saved_version[d] = idx.version

    def close(self) -> None:
        """Flush and release every bank (the set is empty afterwards; :meth:`load` reopens them)."""
        for bank in self.banks.values():
            bank.close()
        self.banks, self.indexes, self._saved_version = {}, {}, {}

    # ------------------------------------------------------------------ mutation
    def _bank_for(self, d: int) -> Any:
        from ..bank import SpecBank

        d = int(d)
        bank = self.banks.get(d)
        if bank is None:
            path = self.bank_dir / f"d{d}"
            shutil.rmtree(path, ignore_errors=True)
            bank = self.banks[d] = SpecBank.create(path, self.gamma, d, device=self.device)
        return bank

    def sync(self, want: Mapping[int, Iterable[int]], load_spec: Callable[[int], Any]) -> bool:
        """Make bank ``d`` hold exactly the ids ``want[d]``, loading missing specs with ``load_spec(id)``
        (in batches, one append each; see :meth:`SpecBank.reconcile`). Returns whether anything changed;
        the caller flushes."""
        changed = False
        for d in sorted(set(self.banks) | {int(k) for k in want}):
            target = _id_array(want.get(d, ()))
            bank = self.banks.get(d)
            if not target.size:
                if bank is not None:
                    logger.info("bank d=%d: no specs left; dropping it", d)
                    self.drop(d)
                    changed = True
                continue
            bank = self._bank_for(d)
            extra, missing = bank.reconcile(target, lambda ids: [load_spec(int(i)) for i in ids], _SYNC_BATCH)
            changed |= bool(extra.size or missing.size)
            if d in self.indexes and (extra.size or missing.size):
                self._follow(d, added=missing, removed=extra)
        return changed

    def add(self, spec_id: int, rkme: Any) -> None:
        """Append one spec under ``spec_id`` to the bank of its dimension (and its index)."""
        self.add_many([spec_id], [rkme])

    def add_many(self, ids: Sequence[int] | np.ndarray, specs: Sequence[Any]) -> None:
        """Append specs (RKMEs, any mix of dimensions) under ``ids``: one append per dimension."""
        ids = _id_array(ids)
        specs = list(specs)
        if len(specs) != ids.size:
            raise ValueError(f"add_many got {ids.size} ids for {len(specs)} specs")
        dims = np.array([int(s.d) for s in specs], np.int64)
        for d in np.unique(dims).tolist():
            at = np.nonzero(dims == d)[0]
            self._bank_for(d).add([specs[i] for i in at], ids=ids[at])
            self._follow(d, added=ids[at])

    def add_arrays(self, d: int, ids: Sequence[int] | np.ndarray, z: Any, beta: Any, counts: Any = None) -> None:
        """Append packed specs of dimension ``d``: ``z`` (M, K, d), ``beta`` (M, K), ``counts`` (M,) (default
        K) under ``ids`` (M,), as one append."""
        ids = _id_array(ids)
        self._bank_for(d).add_arrays(z, beta, ids=ids, counts=counts)
        self._follow(int(d), added=ids)

    def remove(self, spec_id: int, d: int) -> None:
        self.remove_many(d, [spec_id])

    def remove_many(self, d: int, ids: Sequence[int] | np.ndarray) -> None:
        """Remove ``ids`` from bank ``d`` (KeyError if there is no such bank; ValueError for an absent id);
        an emptied bank is dropped."""
        d = int(d)
        bank = self.banks[d]
        ids = np.unique(_id_array(ids))
        if ids.size and ids.size == len(bank):
            bank.positions(ids)  # ValueError unless they are exactly the bank's ids
            self.drop(d)
        else:
            bank.remove(ids)
            self._follow(d, removed=ids)

    def drop(self, d: int) -> None:
        """Forget bank ``d`` and its index, on disk too."""
        bank = self.banks.pop(int(d), None)
        if bank is not None:
            bank.close()
        with self._index_lock:
            self.indexes.pop(int(d), None)
        shutil.rmtree(self.bank_dir / f"d{d}", ignore_errors=True)
        shutil.rmtree(self.index_dir / f"d{d}", ignore_errors=True)

    # ------------------------------------------------------------------ index
    def _follow(self, d: int, added: np.ndarray | None = None, removed: np.ndarray | None = None) -> None:
        """Keep bank ``d``'s index in step with a change of the bank (build it once the threshold is crossed)."""
        with self._index_lock:
            idx = self.indexes.get(d)
            if idx is None:
                self._open_index(d)  # a new or loaded index already holds the bank's current ids
                return
            if added is not None and added.size:
                idx.add(added)
            if removed is not None and removed.size:
                idx.remove(removed)

    def _open_index(self, d: int) -> Any:
        """Load (repairing against the bank) or build the index of bank ``d`` once it holds
        ``index_threshold`` specs; None below it or without FAISS. Call with ``_index_lock`` held."""
        bank = self.banks.get(d)
        idx = self.indexes.get(d)
        if idx is not None and idx.bank is bank:  # another thread opened it while this one waited
            return idx
        if bank is None or len(bank) < self.index_threshold or self._no_faiss:
            return None
        from ..device import faiss_info
        from ..index import SpecIndex

        if not faiss_info()[0]:
            logger.warning("FAISS is not installed: searches of %d specs scan them exactly "
                           "(pip install 'lwgpu[cpu]' for the index)", len(bank))
            self._no_faiss = True
            return None
        saved = self.index_dir / f"d{d}"
        idx = None
        if saved.exists():
            try:
                idx = SpecIndex.load(saved, bank, device=self.device, backend=self.backend)
            except (ValueError, OSError, KeyError) as exc:
                logger.warning("saved index %s unusable (%s); rebuilding", saved, exc)
        if idx is None:
            logger.info("bank d=%d holds %d specs: building its index", d, len(bank))
            idx = SpecIndex(bank, device=self.device, backend=self.backend)
        else:
            self._saved_version[d] = idx.version
        self.indexes[d] = idx
        return idx

    def index_for(self, d: int) -> Any:
        """The SpecIndex of bank ``d`` (None below ``index_threshold`` specs): loaded or built once, then
        kept in step by every add and remove; a search never re-syncs it."""
        idx = self.indexes.get(int(d))
        if idx is not None and idx.bank is self.banks.get(int(d)):
            return idx
        with self._index_lock:
            return self._open_index(int(d))
