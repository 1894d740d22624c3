"""The market's spec banks: one bank per spec type and shape, an optional :class:`~lwgpu.index.SpecIndex` per
Gaussian bank above a size threshold, and the repair of the banks against the database's ids (reading only
the spec files of missing ids).

Bank keys (also the folder names under ``bank_dir``/``index_dir``; :func:`bank_key` gives a spec's):

- ``d<d>``: table RKMEs of input dimension ``d`` (a memory-mapped :class:`~lwgpu.bank.SpecBank`);
- ``text-<encoder slug>-<hash>-d<d>``: text specs (:class:`~lwgpu.spec.text.TextRKME`) of one sentence
  encoder over ``d``-dimensional embeddings (a SpecBank too: Gaussian kernel), so that specs of two
  encoders never meet in one bank;
- ``image-<C>x<H>x<W>-depth<L>``: image specs (the NNGP kernel of a depth-L ConvNet) in an
  :class:`~lwgpu.market.image_bank.ImageBank` (written whole on flush; no index).

Integer keys mean table banks (``5`` is ``"d5"``), as before there were other types.

The banks are written in place: an append or a delete touches only its rows, and :meth:`BankSet.flush`
makes the changes durable in O(changed rows) (see :mod:`lwgpu.bank.files`). A crash loses at most the
changes since the last flush: a reopened bank is its last flushed state, and :meth:`BankSet.sync`
brings it to the database's ids.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..bank.files import BankLockedError
from ..fsutil import make_temp_dir
from ..idsets import unique_ids
from ..spec.io import IMAGE_TYPE, TEXT_TYPE, spec_type
from ..spec.validation import same_gamma
from .image_bank import ImageBank

logger = logging.getLogger(__name__)

_SYNC_BATCH = 10_000  # specs read from their files and appended per batch when repairing a bank


def swap_save(obj: Any, parent: Path, name: str) -> None:
    """``obj.save`` into a temp folder, then swap it in for ``parent/name`` (never a half-written one)."""
    parent.mkdir(exist_ok=True)
    final = parent / name
    tmp = make_temp_dir(parent, prefix=f".{name}.")  # 0o777 & ~umask, not mkdtemp's 0o700
    obj.save(tmp)
    old = parent / f".old.{name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


_KEY_RE = re.compile(r"^(d(?P<d>\d+)|text-[A-Za-z0-9_.]+-[0-9a-f]{8}-d(?P<td>\d+)"
                     r"|image-(?P<c>\d+)x(?P<h>\d+)x(?P<w>\d+)-depth(?P<depth>\d+))$")


def text_key(encoder: str, d: int) -> str:
    """Bank key of text specs by ``encoder`` over ``d``-dimensional embeddings (a slug plus a hash of the name)."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", encoder).strip("_.")[:60] or "encoder"
    return f"text-{slug}-{hashlib.sha1(encoder.encode()).hexdigest()[:8]}-d{int(d)}"


def bank_key(spec: Any) -> str:
    """The key of the bank that holds ``spec``: ``d<d>`` (table), ``text-...-d<d>`` (text), ``image-CxHxW``."""
    kind = spec_type(spec)
    if kind == TEXT_TYPE:
        return text_key(spec.encoder, spec.d)
    if kind == IMAGE_TYPE:
        depth = int((getattr(spec, "model_config", None) or {}).get("net_depth", 3))
        return "image-" + "x".join(str(int(s)) for s in tuple(spec.z.shape)[1:]) + f"-depth{depth}"
    return f"d{int(spec.d)}"


def spec_tag(spec: Any) -> tuple[str, str | None, str | None]:
    """What the database records of a spec: ``(type, bank key or None for table specs, encoder or None)``."""
    kind = spec_type(spec)
    if kind == TEXT_TYPE:
        return kind, bank_key(spec), spec.encoder
    if kind == IMAGE_TYPE:
        return kind, bank_key(spec), None
    return kind, None, None


def as_key(key: int | str) -> str:
    """A bank key: an int (or numpy integer) ``d`` is the table bank ``"d<d>"``; ValueError for a malformed key."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return f"d{int(key)}"
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"{key!r} is not a bank key (d<d>, text-<encoder>-<hash>-d<d> or "
                         "image-<C>x<H>x<W>-depth<L>)")
    return key


def key_kind(key: str) -> str:
    """``"table"``, ``"text"`` or ``"image"`` for a bank key."""
    return "image" if key.startswith("image-") else "text" if key.startswith("text-") else "table"


def _key_dim(key: str) -> int | None:
    m = _KEY_RE.match(key)
    return None if m is None or key_kind(key) == "image" else int(m.group("d") or m.group("td"))


def _id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False).reshape(-1)
    return np.fromiter((int(i) for i in ids), np.int64)


class BankSet:
    """Banks keyed by :func:`bank_key` (``d<d>``, ``text-...-d<d>``, ``image-CxHxW``), stored as
    ``bank_dir/<key>`` and ``index_dir/<key>``. An int key ``d`` means the table bank ``d<d>``.

    Not thread-safe on its own: the market mutates it under its write lock; :meth:`index_for` (called
    by concurrent searches) guards the lazily built indexes with its own lock.
    """

    def __init__(self, bank_dir: Path, index_dir: Path, gamma: float, device: Any, index_threshold: int) -> None:
        self.bank_dir, self.index_dir = Path(bank_dir), Path(index_dir)
        self.gamma, self.device, self.index_threshold = float(gamma), device, int(index_threshold)
        self.banks: dict[str, Any] = {}
        self.indexes: dict[str, Any] = {}
        self.backend: Any = "auto"  # the market's kernel backend, passed to its indexes
        self._saved_version: dict[str, int] = {}
        self._no_faiss = False
        self._index_lock = threading.Lock()
        for p in (self.bank_dir, self.index_dir):
            p.mkdir(exist_ok=True)

    def get(self, key: int | str) -> Any:
        """The bank of ``key`` (an int ``d``: the table bank ``d<d>``), or None."""
        return self.banks.get(as_key(key))

    def keys(self, kind: str | None = None) -> list[str]:
        """The keys of the open banks (only ``"table"``, ``"text"`` or ``"image"`` ones when ``kind`` is given)."""
        return sorted(k for k in self.banks if kind is None or key_kind(k) == kind)

    # ------------------------------------------------------------------ persistence
    def load(self) -> None:
        """Open the banks on disk (each at its last flushed state; unusable ones are dropped, to be rebuilt
        by :meth:`sync`; a bank saved in the earlier ``.npy`` layout is converted once)."""
        from ..bank import FORMAT, SpecBank
        from ..bank.files import read_meta

        self.close()
        for p in self.bank_dir.iterdir():
            if p.name.startswith(".") or not _KEY_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                continue
            try:
                if key_kind(p.name) == "image":
                    bank = ImageBank.load(p, device=self.device)
                    if not p.name.startswith("image-" + "x".join(map(str, bank.shape)) + "-"):
                        raise ValueError(f"holds image specs of shape {bank.shape}")
                else:
                    if read_meta(p).get("format") == FORMAT:
                        logger.info("converting bank %s from the .npy layout to memory-mapped files", p)
                        swap_save(SpecBank.load(p, mmap=True), self.bank_dir, p.name)
                    try:
                        bank = SpecBank.open(p, mode="r+", device=self.device)
                    except BankLockedError as exc:  # another market object holds it: work on a private copy
                        logger.warning("%s; this market keeps an in-memory copy of it (changes are not saved)", exc)
                        bank = SpecBank.load(p, mmap=False, device=self.device)
                    if _key_dim(p.name) != bank.d:
                        raise ValueError(f"holds specs of d={bank.d}")
                if not same_gamma(bank.gamma, self.gamma):
                    raise ValueError(f"bank gamma {bank.gamma} != market gamma {self.gamma}")
                self.banks[p.name] = bank
            except (ValueError, OSError, KeyError) as exc:
                logger.warning("saved bank %s unusable (%s); rebuilding it from the spec files", p, exc)
                shutil.rmtree(p, ignore_errors=True)
        for p in self.index_dir.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)

    def flush(self) -> None:
        """Make every bank's changes durable: O(changed rows) each for SpecBanks (image banks are rewritten)."""
        for bank in self.banks.values():
            bank.flush()

    def save(self) -> None:
        """Flush every bank, and save every index that changed since it was last saved or loaded."""
        self.flush()
        with self._index_lock:
            for key, idx in self.indexes.items():
                if idx.bank is self.banks.get(key) and self._saved_version.get(key) != idx.version:
                    swap_save(idx, self.index_dir, key)
                    self._saved_version[key] = idx.version

    def close(self) -> None:
        """Flush and release every bank (the set is empty afterwards; :meth:`load` reopens them)."""
        for bank in self.banks.values():
            bank.close()
        self.banks, self.indexes, self._saved_version = {}, {}, {}

    # ------------------------------------------------------------------ mutation
    def _bank_for(self, key: int | str) -> Any:
        from ..bank import SpecBank

        key = as_key(key)
        bank = self.banks.get(key)
        if bank is None and key_kind(key) != "image" and (self.bank_dir / key / "meta.json").exists():
            bank = self._share_saved(key)  # made by another market object (another process) since load()
        if bank is None:
            path = self.bank_dir / key
            shutil.rmtree(path, ignore_errors=True)
            if key_kind(key) == "image":
                m = _KEY_RE.match(key)
                bank = ImageBank(path, self.gamma, (int(m.group("c")), int(m.group("h")), int(m.group("w"))),
                                 device=self.device)
            else:
                bank = SpecBank.create(path, self.gamma, _key_dim(key), device=self.device)
            self.banks[key] = bank
        return bank

    def _share_saved(self, key: str) -> Any:
        """The saved Gaussian bank ``key``: opened for writing, or an in-memory copy of its last flushed
        state when another market object holds it (its rows beyond that are added by :meth:`sync`); None
        (and a warning) when it is unusable. Call under the market's write lock (which spans processes)."""
        from ..bank import SpecBank

        path = self.bank_dir / key
        bank = None
        try:
            try:
                bank = SpecBank.open(path, mode="r+", device=self.device)
            except BankLockedError:
                bank = SpecBank.load(path, mmap=False, device=self.device)
            if _key_dim(key) != bank.d or not same_gamma(bank.gamma, self.gamma):
                raise ValueError(f"holds specs of d={bank.d}, gamma={bank.gamma}")
        except (ValueError, OSError, KeyError) as exc:
            logger.warning("saved bank %s unusable (%s); making a new one", path, exc)
            if bank is not None:
                bank.close()
            return None
        self.banks[key] = bank
        return bank

    def sync(self, want: Mapping[int | str, Iterable[int]], load_spec: Callable[[int], Any]) -> bool:
        """Make bank ``key`` hold exactly the ids ``want[key]``, loading missing specs with ``load_spec(id)``
        (in batches, one append each; see :meth:`SpecBank.reconcile`). Returns whether anything changed;
        the caller flushes."""
        changed = False
        want = {as_key(k): v for k, v in want.items()}
        for key in sorted(set(self.banks) | set(want)):
            target = _id_array(want.get(key, ()))
            bank = self.banks.get(key)
            if not target.size:
                if bank is not None:
                    logger.info("bank %s: no specs left; dropping it", key)
                    self.drop(key)
                    changed = True
                continue
            bank = self._bank_for(key)
            extra, missing = bank.reconcile(target, lambda ids: [load_spec(int(i)) for i in ids], _SYNC_BATCH)
            changed |= bool(extra.size or missing.size)
            if key in self.indexes and (extra.size or missing.size):
                self._follow(key, added=missing, removed=extra)
        return changed

    def add(self, spec_id: int, rkme: Any) -> None:
        """Append one spec under ``spec_id`` to the bank of its key (and its index)."""
        self.add_many([spec_id], [rkme])

    def add_many(self, ids: Sequence[int] | np.ndarray, specs: Sequence[Any]) -> None:
        """Append specs (any mix of types and dimensions) under ``ids``: one append per bank."""
        ids = _id_array(ids)
        specs = list(specs)
        if len(specs) != ids.size:
            raise ValueError(f"add_many got {ids.size} ids for {len(specs)} specs")
        keys = np.array([bank_key(s) for s in specs], dtype=object)
        for key in sorted(set(keys.tolist())):
            at = np.nonzero(keys == key)[0]
            self._bank_for(key).add([specs[i] for i in at], ids=ids[at])
            self._follow(key, added=ids[at])

    def add_arrays(self, d: int | str, ids: Sequence[int] | np.ndarray, z: Any, beta: Any, counts: Any = None) -> None:
        """Append packed specs to the Gaussian bank ``d`` (an int: table specs of dimension ``d``): ``z``
        (M, K, d), ``beta`` (M, K), ``counts`` (M,) (default K) under ``ids`` (M,), as one append."""
        key = as_key(d)
        if key_kind(key) == "image":
            raise ValueError("add_arrays takes Gaussian (table/text) specs; add image specs with add_many")
        ids = _id_array(ids)
        self._bank_for(key).add_arrays(z, beta, ids=ids, counts=counts)
        self._follow(key, added=ids)

    def remove(self, spec_id: int, key: int | str) -> None:
        self.remove_many(key, [spec_id])

    def remove_many(self, key: int | str, ids: Sequence[int] | np.ndarray) -> None:
        """Remove ``ids`` from bank ``key`` (KeyError if there is no such bank; ValueError for an absent id);
        an emptied bank is dropped."""
        key = as_key(key)
        bank = self.banks[key]
        ids = unique_ids(_id_array(ids))
        if ids.size and ids.size == len(bank):
            bank.positions(ids)  # ValueError unless they are exactly the bank's ids
            self.drop(key)
        else:
            bank.remove(ids)
            self._follow(key, removed=ids)

    def drop(self, key: int | str) -> None:
        """Forget bank ``key`` and its index, on disk too."""
        key = as_key(key)
        bank = self.banks.pop(key, None)
        # an in-memory copy of a bank another market object holds open: its files are not this one's to remove
        copy = bank is not None and key_kind(key) != "image" and bank.path is None
        if bank is not None:
            bank.close()
        with self._index_lock:
            self.indexes.pop(key, None)
        if not copy:
            shutil.rmtree(self.bank_dir / key, ignore_errors=True)
            shutil.rmtree(self.index_dir / key, ignore_errors=True)

    # ------------------------------------------------------------------ index
    def _follow(self, key: str, added: np.ndarray | None = None, removed: np.ndarray | None = None) -> None:
        """Keep bank ``key``'s index in step with a change of the bank (build it once the threshold is crossed)."""
        if key_kind(key) == "image":
            return
        with self._index_lock:
            idx = self.indexes.get(key)
            if idx is None:
                self._open_index(key)  # a new or loaded index already holds the bank's current ids
                return
            if added is not None and added.size:
                idx.add(added)
            if removed is not None and removed.size:
                idx.remove(removed)

    def _open_index(self, key: str) -> Any:
        """Load (repairing against the bank) or build the index of the Gaussian bank ``key`` once it holds
        ``index_threshold`` specs; None below it, for image banks or without FAISS. Call with ``_index_lock`` held."""
        bank = self.banks.get(key)
        idx = self.indexes.get(key)
        if idx is not None and idx.bank is bank:  # another thread opened it while this one waited
            return idx
        if bank is None or key_kind(key) == "image" or len(bank) < self.index_threshold or self._no_faiss:
            return None
        from ..device import faiss_info
        from ..index import SpecIndex

        if not faiss_info()[0]:
            logger.warning("FAISS is not installed: searches of %d specs scan them exactly "
                           "(pip install 'lwgpu[cpu]' for the index)", len(bank))
            self._no_faiss = True
            return None
        saved = self.index_dir / key
        idx = None
        if saved.exists():
            try:
                idx = SpecIndex.load(saved, bank, device=self.device, backend=self.backend)
            except (ValueError, OSError, KeyError) as exc:
                logger.warning("saved index %s unusable (%s); rebuilding", saved, exc)
        if idx is None:
            logger.info("bank %s holds %d specs: building its index", key, len(bank))
            idx = SpecIndex(bank, device=self.device, backend=self.backend)
        else:
            self._saved_version[key] = idx.version
        self.indexes[key] = idx
        return idx

    def index_for(self, key: int | str) -> Any:
        """The SpecIndex of bank ``key`` (None below ``index_threshold`` specs and for image banks): loaded or
        built once, then kept in step by every add and remove; a search never re-syncs it."""
        key = as_key(key)
        idx = self.indexes.get(key)
        if idx is not None and idx.bank is self.banks.get(key):
            return idx
        with self._index_lock:
            return self._open_index(key)
