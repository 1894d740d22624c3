"""The market's spec banks: one :class:`~lwgpu.bank.SpecBank` per input dimension, an optional
:class:`~lwgpu.index.SpecIndex` per bank above a size threshold, saved with temp-folder swaps and
repaired against the database's ids (reading only the spec files of missing ids).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from ..spec.validation import same_gamma

logger = logging.getLogger(__name__)


def swap_save(obj: Any, parent: Path, name: str) -> None:
    """``obj.save`` into a temp folder, then swap it in for ``parent/name`` (never a half-written one)."""
    parent.mkdir(exist_ok=True)
    final = parent / name
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    obj.save(tmp)
    old = parent / f".old.{name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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
        self._index_lock = threading.Lock()
        for p in (self.bank_dir, self.index_dir):
            p.mkdir(exist_ok=True)

    def get(self, d: int) -> Any:
        return self.banks.get(int(d))

    # ------------------------------------------------------------------ persistence
    def load(self) -> None:
        """Read the saved banks (unusable ones are dropped, to be rebuilt by :meth:`sync`)."""
        from ..bank import SpecBank

        self.banks, self.indexes = {}, {}
        for p in self.bank_dir.iterdir():
            if p.name.startswith(".") or not p.name.startswith("d"):
                shutil.rmtree(p, ignore_errors=True)
                continue
            try:
                bank = SpecBank.load(p, mmap=False, device=self.device)
                if not same_gamma(bank.gamma, self.gamma):
                    raise ValueError(f"bank gamma {bank.gamma} != market gamma {self.gamma}")
                self.banks[bank.d] = bank
            except (ValueError, OSError, KeyError) as exc:
                logger.warning("saved bank %s unusable (%s); rebuilding it from the spec files", p, exc)
                shutil.rmtree(p, ignore_errors=True)
        for p in self.index_dir.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)

    def save(self) -> None:
        """Save every bank, and every built index (synced first)."""
        for d, bank in self.banks.items():
            swap_save(bank, self.bank_dir, f"d{d}")
        with self._index_lock:
            for d, idx in self.indexes.items():
                if idx.bank is self.banks.get(d):
                    idx.sync()
                    swap_save(idx, self.index_dir, f"d{d}")

    # ------------------------------------------------------------------ mutation
    def sync(self, want: Mapping[int, set[int]], load_spec: Callable[[int], Any]) -> bool:
        """Make bank ``d`` hold exactly ``want[d]`` (ids), loading missing specs with ``load_spec(id)``.

        Returns whether anything changed.
        """
        from ..bank import SpecBank

        changed = False
        for d in set(self.banks) | set(want):
            bank = self.banks.get(d)
            have = set(bank.ids.tolist()) if bank is not None else set()
            target = set(want.get(d, ()))
            extra, missing = sorted(have - target), sorted(target - have)
            if not extra and not missing:
                continue
            changed = True
            logger.info("bank d=%d: removing %d, adding %d specs from the stored files", d, len(extra), len(missing))
            if extra:
                if len(extra) == len(bank):
                    self.drop(d)
                    bank = None
                else:
                    bank.remove(extra)
            if missing:
                specs = [load_spec(i) for i in missing]
                if bank is None:
                    bank = SpecBank.from_specs(specs, ids=missing, device=self.device)
                else:
                    bank.add(specs, ids=missing)
            if bank is not None:
                self.banks[d] = bank
        return changed

    def add(self, spec_id: int, rkme: Any) -> None:
        from ..bank import SpecBank

        bank = self.banks.get(rkme.d)
        if bank is None:
            self.banks[rkme.d] = SpecBank.from_specs([rkme], ids=[spec_id], device=self.device)
        else:
            bank.add([rkme], ids=[spec_id])

    def remove(self, spec_id: int, d: int) -> None:
        bank = self.banks[d]
        if len(bank) == 1:
            self.drop(d)
        else:
            bank.remove([spec_id])

    def drop(self, d: int) -> None:
        """Forget bank ``d`` and its index, on disk too."""
        self.banks.pop(d, None)
        with self._index_lock:
            self.indexes.pop(d, None)
        shutil.rmtree(self.bank_dir / f"d{d}", ignore_errors=True)
        shutil.rmtree(self.index_dir / f"d{d}", ignore_errors=True)

    # ------------------------------------------------------------------ index
    def index_for(self, d: int) -> Any:
        """The SpecIndex of bank ``d`` once it holds ``index_threshold`` specs (loaded, synced or built)."""
        bank = self.banks.get(d)
        if bank is None or len(bank) < self.index_threshold:
            return None
        with self._index_lock:
            idx = self.indexes.get(d)
            if idx is not None and idx.bank is not bank:
                idx = None
            if idx is None:
                try:
                    from ..index import SpecIndex
                except ImportError:
                    return None
                saved = self.index_dir / f"d{d}"
                try:
                    idx = SpecIndex.load(saved, bank, device=self.device) if saved.exists() else None
                except (ValueError, OSError, KeyError) as exc:
                    logger.warning("saved index %s unusable (%s); rebuilding", saved, exc)
                if idx is None:
                    idx = SpecIndex(bank, device=self.device)
                self.indexes[d] = idx
            idx.sync()  # the bank may have changed since (market ids are never reused)
            return idx
