"""Persistence of a :class:`~lwgpu.bank.SpecBank`: persistent banks (:meth:`~PersistentBank.create`,
:meth:`~PersistentBank.open`, :meth:`~PersistentBank.flush`) whose storage is the memory-mapped files of
:mod:`lwgpu.bank.files`, plain snapshots (:meth:`~PersistentBank.save` / :meth:`~PersistentBank.load`),
and :meth:`~PersistentBank.reconcile` against the ids the caller knows to be true (the market's database).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from .files import COLUMNS, FORMAT_RAW, VERSION, DiskFiles, file_names, read_meta, write_atomic
from .storage import IdMap, RowStore
from ..device import resolve_device
from ..idsets import setdiff_ids, unique_ids

if TYPE_CHECKING:
    from . import SpecBank

logger = logging.getLogger(__name__)

FORMAT_NPY = "lwgpu.SpecBank/1"  # one .npy file per array (earlier versions' save; still read)
FORMAT = FORMAT_NPY
_NPY = ("ids", "z", "beta", "counts", "self_inner")


def write_snapshot(root: Path, cols: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write a raw-layout bank of ``meta["N"]`` rows (``capacity == N``, epoch 0) into ``root``; each file
    temp + replace, meta last. Files of an earlier snapshot there that this one does not use are removed."""
    root.mkdir(parents=True, exist_ok=True)
    names = file_names(int(meta["K"]))
    for c in COLUMNS:
        write_atomic(root / names[c], np.ascontiguousarray(cols[c]))
    (root / "journal.bin").unlink(missing_ok=True)  # its records would belong to another bank
    meta = dict(meta, format=FORMAT_RAW, version=VERSION, capacity=int(meta["N"]), epoch=0, files=names)
    write_atomic(root / "meta.json", json.dumps(meta, indent=1).encode())
    for p in root.iterdir():
        old_col = p.name.startswith(("z.k", "beta.k")) and p.name.endswith(".bin") and p.name not in names.values()
        if old_col or p.name in {f"{a}.npy" for a in _NPY}:
            p.unlink(missing_ok=True)


def read_npy_snapshot(root: Path, meta: dict[str, Any], mmap: bool) -> dict[str, np.ndarray]:
    """The arrays of a :data:`FORMAT_NPY` snapshot (``mmap``: copy-on-write maps)."""
    arr = {n: np.load(root / f"{n}.npy", mmap_mode="c" if mmap else None) for n in _NPY}
    n = int(meta["N"])
    if any(a.shape[0] != n for a in arr.values()):
        raise ValueError(f"{root}: array lengths disagree with meta N={n}; the bank files are inconsistent")
    return arr


class PersistentBank:
    """The persistence half of :class:`~lwgpu.bank.SpecBank` (a mixin: it uses the bank's storage)."""

    _store: RowStore
    _idmap: IdMap
    _readonly: bool

    @classmethod
    def create(cls, directory: str | os.PathLike, gamma: float, d: int, K: int = 0, dtype: Any = None,
               device: Any = "cpu", capacity: int = 1024) -> "SpecBank":
        """A new empty persistent bank in ``directory`` (its storage is memory-mapped files there).

        ValueError if the directory already holds a bank (use :meth:`open`).
        """
        root = Path(directory)
        if (root / "meta.json").exists():
            raise ValueError(f"{root} already holds a SpecBank; use SpecBank.open")
        bank = cls(gamma, d, K, dtype=dtype, device=device)
        meta = {"gamma": bank.gamma, "d": bank.d, "K": int(K), "dtype": str(bank.dtype).replace("torch.", "")}
        files = DiskFiles.create(root, meta, max(1, int(capacity)))
        bank._store = RowStore(files.maps, 0, int(K), bank.d, bank.device, bank.dtype, files=files,
                               mirror=bank._store.mirror)
        return bank

    @classmethod
    def open(cls, directory: str | os.PathLike, mode: str = "r+", device: Any = "cpu") -> "SpecBank":
        """Open a persistent bank (or a snapshot from :meth:`save`) without reading its arrays.

        ``mode="r+"``: changes are written to the files (durable at :meth:`flush`); ``"r"``: read-only.
        The bank is the last flushed state (rows written since are rolled back, see
        :mod:`lwgpu.bank.files`). ValueError when the files are missing or inconsistent (e.g. duplicate ids).
        """
        if mode not in ("r+", "r"):
            raise ValueError(f"mode must be 'r+' or 'r', got {mode!r}")
        files = DiskFiles.open(Path(directory), mode)
        meta = files.meta
        bank = cls(meta["gamma"], meta["d"], files.K, dtype=meta["dtype"], device=device)
        bank._store = RowStore(files.maps, files.flushed_n, files.K, bank.d, bank.device, bank.dtype, files=files,
                               mirror=bank._store.mirror)
        bank._idmap.rebuild(bank.ids)
        bank._readonly = mode == "r"
        return bank

    def flush(self) -> None:
        """Persistent banks: make every change so far durable (msync of the touched rows + meta.json);
        O(changed rows), never a rewrite. No-op for an in-memory bank."""
        self._store.flush()

    def close(self) -> None:
        """Flush a persistent bank and release its maps; the object holds an empty bank afterwards."""
        self.flush()
        st = self._store
        if st.files is not None:
            st.files.close()
        self._store = RowStore.empty(st.K, self.d, st.device, st.dtype, mirror=st.mirror)
        self._idmap = IdMap()
        self.version += 1

    # ------------------------------------------------------------------ snapshots
    def save(self, directory: str | os.PathLike) -> None:
        """Write a snapshot into ``directory``: the raw column files of N rows + ``meta.json`` (each file
        temp + replace). A persistent bank saved onto its own directory is just flushed."""
        root = Path(directory)
        if self.path is not None and root.resolve() == self.path.resolve():
            self.flush()
            return
        cols = {"ids": self.ids, "counts": self.counts}
        cols.update({c: getattr(self, c).detach().cpu().numpy() for c in ("z", "beta", "self_inner")})
        write_snapshot(root, cols, {"N": len(self), "K": self.K, "d": self.d, "gamma": self.gamma,
                                    "dtype": str(self.dtype).replace("torch.", "")})

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True, device: Any = "cpu") -> "SpecBank":
        """Open a snapshot (or a persistent bank's last flushed state) as an in-memory bank; ``mmap=True``
        maps the files copy-on-write instead of reading them (the first change copies into memory)."""
        root = Path(directory)
        meta = read_meta(root)
        if meta.get("format") == FORMAT:
            return cls._load_npy(root, meta, mmap, device)
        bank = cls.open(root, mode="r", device=device)
        bank._readonly = False
        if not mmap:
            st = bank._store
            bank._set_arrays(np.array(bank.ids), bank.z.clone(), bank.beta.clone(), np.array(bank.counts),
                             bank.self_inner.clone(), borrowed=False)
            st.files.close()
        return bank

    @classmethod
    def _load_npy(cls, root: Path, meta: dict[str, Any], mmap: bool, device: Any) -> "SpecBank":
        arr = read_npy_snapshot(root, meta, mmap)
        dev = resolve_device(device)
        bank = cls(meta["gamma"], meta["d"], meta["K"], dtype=meta["dtype"], device=dev)
        bank._set_arrays(arr["ids"], torch.from_numpy(arr["z"]).to(dev), torch.from_numpy(arr["beta"]).to(dev),
                         arr["counts"], torch.from_numpy(arr["self_inner"]).to(dev), borrowed=True)
        return bank

    def reconcile(self, want_ids: Any, load_specs: Callable[[np.ndarray], Sequence[Any]],
                  batch: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
        """Make the bank hold exactly ``want_ids``: remove the other ids, append the missing ones, loaded by
        ``load_specs(ids)`` (a list of RKMEs for an int64 array of ids) ``batch`` at a time, one append each.

        Returns ``(removed, added)`` ids. The caller flushes. Use it after :meth:`open` against the ids the
        database holds: a reopened bank is its last flushed state, so the changes since then come back here.
        """
        want = unique_ids(want_ids)
        have = np.array(self.ids)
        extra, missing = setdiff_ids(have, want), setdiff_ids(want, have)
        if extra.size:
            self.remove(extra)
        for s in range(0, missing.size, int(batch)):
            part = missing[s : s + int(batch)]
            self.add(list(load_specs(part)), ids=part)
        if extra.size or missing.size:
            logger.info("reconciled bank %s: removed %d, added %d", self, extra.size, missing.size)
        return extra, missing
