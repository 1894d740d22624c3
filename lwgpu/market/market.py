"""The Market facade: submit / delete / get / list learnwares and search them.

Layout of an embedded market folder ``root``::

    market.db            SQLite database (unless db_url points elsewhere); the source of truth
    learnwares/<id>/     each stored package (learnware.yaml, model files, RKME JSON)
    banks/d<d>/          one SpecBank per input dimension (saved by flush(); repaired on open)
    .staging/ .trash/    in-flight submissions / deletions (cleaned up on open)

Writes are atomic: a submission is unpacked and checked in ``.staging``, then a single database
transaction inserts the row, the folder is renamed into ``learnwares/`` and the transaction commits.
A deletion moves the folder to ``.trash`` inside its transaction. On open, the folder tree and the
banks are reconciled with the database, so a crash at any point loses nothing committed and
leaves no half-added learnware. Searches hold a shared lock, writers an exclusive one only for the
commit step (checks run outside it), so readers always see one consistent set of ids.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..device import resolve_device
from ..search.results import SearchResult
from ..search.semantic_filter import filter_semantic
from ..search.statistical import statistical_search
from ..spec.semantic import validate_semantic_spec
from ..spec.validation import same_gamma
from .checks import SubmissionError, run_checks
from .learnware import Learnware
from .banks import BankSet
from .locks import RWLock
from .package import content_hash, unpack_into
from .store import LearnwareRow, Store

logger = logging.getLogger(__name__)

DEFAULT_GAMMA = 0.1


class Market:
    """A learnware market stored under ``root``.

    Parameters
    ----------
    root : folder for the learnware files and banks (created if missing).
    db_url : SQLAlchemy URL; default ``sqlite:///<root>/market.db``.
    gamma : the market's kernel bandwidth; fixed when the market is created (default 0.1); opening
        an existing market with another gamma is an error.
    device : where banks live and searches run (``"auto"``, ``"cpu"``, ``"cuda[:i]"``).
    index_threshold : from this many specs of one dimension on, unfiltered searches go through a
        :class:`~lwgpu.index.SpecIndex` (when available) and re-rank its candidates exactly.
    check_samples : rows herded from a submitted RKME to test the model's ``predict``.
    autosave_every : save the banks after this many changes (flush() and close() always save).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        db_url: str | None = None,
        gamma: float | None = None,
        device: Any = "auto",
        index_threshold: int = 50_000,
        check_samples: int = 10,
        autosave_every: int = 256,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lw_dir = self.root / "learnwares"
        self._bank_dir = self.root / "banks"
        self._staging = self.root / ".staging"
        self._trash = self.root / ".trash"
        for p in (self._lw_dir, self._bank_dir, self._staging, self._trash):
            p.mkdir(exist_ok=True)
        self.store = Store(db_url or f"sqlite:///{(self.root / 'market.db').resolve()}")
        stored = self.store.get_meta("gamma")
        if stored is None:
            self.gamma = float(DEFAULT_GAMMA if gamma is None else gamma)
            self.store.set_meta("gamma", repr(self.gamma))
        else:
            self.gamma = float(stored)
            if gamma is not None and not same_gamma(gamma, self.gamma):
                raise ValueError(f"this market was created with gamma={self.gamma}; it cannot be opened with "
                                 f"gamma={gamma} (omit gamma to use the stored one)")
        self.device = resolve_device(device)
        self.index_threshold = int(index_threshold)
        self.check_samples = int(check_samples)
        self.autosave_every = int(autosave_every)
        self._lock = RWLock()
        self._banks = BankSet(self._bank_dir, self.root / "indexes", self.gamma, self.device, self.index_threshold)
        self._semantic: dict[int, dict[str, Any]] = {}
        self._rows: dict[int, LearnwareRow] = {}
        self._learnwares: dict[int, Learnware] = {}
        self._dirty = 0
        with self._lock.write():
            self._reconcile()

    # ------------------------------------------------------------------ housekeeping
    def _reconcile(self) -> None:
        """Make files and banks agree with the database (the source of truth)."""
        for p in self._staging.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        rows = {r.id: r for r in self.store.rows()}
        for p in self._trash.iterdir():
            if p.name.isdigit() and int(p.name) in rows and not (self._lw_dir / p.name).exists():
                os.replace(p, self._lw_dir / p.name)  # a deletion that never committed
            else:
                shutil.rmtree(p, ignore_errors=True)
        for p in self._lw_dir.iterdir():
            if not (p.name.isdigit() and int(p.name) in rows):
                logger.warning("removing %s: no database row (an interrupted submission)", p)
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        broken = [i for i, r in rows.items() if not (self._lw_dir / str(i) / r.spec_file).is_file()]
        if broken:
            logger.error("learnwares %s have lost their files; removing their rows", broken)
            with self.store.transaction() as s:
                for i in broken:
                    Store.remove(s, i)
                    rows.pop(i)
        self._rows = rows
        self._semantic = {i: validate_semantic_spec(json.loads(r.semantic_json)) for i, r in rows.items()}
        self._learnwares = {}
        self._sync_banks(load=True)

    def _sync_banks(self, load: bool = False) -> None:
        """Load saved banks (if ``load``), then add/remove specs so each bank matches the rows."""
        if load:
            self._banks.load()
        want: dict[int, set[int]] = {}
        for i, r in self._rows.items():
            want.setdefault(int(r.input_dim), set()).add(i)

        def load_spec(i: int) -> Any:
            return Learnware(i, {}, self._lw_dir / str(i), {}, self._rows[i].spec_file).rkme

        if self._banks.sync(want, load_spec):
            self._save_banks()

    def _save_banks(self) -> None:
        self._banks.save()
        self._dirty = 0

    def refresh(self) -> None:
        """Re-read the database (another process may have written to a shared one) and repair the banks."""
        with self._lock.write():
            self._rows = {r.id: r for r in self.store.rows()}
            self._semantic = {i: validate_semantic_spec(json.loads(r.semantic_json)) for i, r in self._rows.items()}
            self._learnwares = {i: lw for i, lw in self._learnwares.items() if i in self._rows}
            self._sync_banks()

    def flush(self) -> None:
        """Save the banks now (they are also repaired from the spec files on open if a save was missed)."""
        with self._lock.read():
            self._save_banks()

    def close(self) -> None:
        """Save the banks and release the database connection."""
        self.flush()
        self.store.dispose()

    def __enter__(self) -> "Market":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def submit(self, path: str | os.PathLike) -> int:
        """Check and store the learnware folder or zip at ``path``; returns its new id.

        Raises
        ------
        SubmissionError
            Naming the failed check (package, semantic, rkme, model_load, model_predict, duplicate);
            the market is left exactly as it was.
        """
        staged = Path(tempfile.mkdtemp(dir=self._staging))
        try:
            pkg = staged / "pkg"
            try:
                unpack_into(path, pkg)
            except (ValueError, FileNotFoundError, zipfile.BadZipFile, OSError) as exc:
                raise SubmissionError("package", f"cannot read the package at {path}: {exc}") from exc
            digest = content_hash(pkg)
            dup = self.store.has_hash(digest)
            if dup is not None:
                raise SubmissionError("duplicate", f"the same package is already stored as learnware {dup}")
            checked = run_checks(pkg, self.gamma, n_samples=self.check_samples)
            rkme = checked.rkme
            with self._lock.write():
                dup = self.store.has_hash(digest)
                if dup is not None:
                    raise SubmissionError("duplicate", f"the same package is already stored as learnware {dup}")
                new_id = self._commit_add(pkg, digest, checked.semantic_spec, checked.manifest.model,
                                          checked.manifest.spec_file)
                self._after_add(new_id, rkme)
            logger.info("stored learnware %d (%s)", new_id, checked.semantic_spec["name"])
            return new_id
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def add(self, model: Any, semantic_spec: Mapping[str, Any], rkme: Any, output: str = "predict") -> int:
        """Pack ``model`` with its specs (see :func:`~lwgpu.market.package.pack_learnware`) and submit it."""
        from .package import pack_learnware

        tmp = Path(tempfile.mkdtemp(dir=self._staging, prefix="add."))
        try:
            try:
                pack_learnware(model, semantic_spec, rkme, tmp / "pkg", output=output)
            except ValueError as exc:
                raise SubmissionError("semantic" if "semantic" in str(exc) else "package", str(exc)) from exc
            return self.submit(tmp / "pkg")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _commit_add(self, pkg: Path, digest: str, semantic: dict[str, Any], model_cfg: dict[str, Any],
                    spec_file: str) -> int:
        from sqlalchemy.exc import IntegrityError

        final: Path | None = None
        try:
            with self.store.transaction() as s:
                new_id = Store.insert(s, digest, semantic, model_cfg, spec_file)
                final = self._lw_dir / str(new_id)
                if final.exists():  # left by a crash before the row existed; the db is the truth
                    shutil.rmtree(final)
                os.replace(pkg, final)
        except BaseException as exc:
            if final is not None and final.exists():
                shutil.rmtree(final, ignore_errors=True)
            if isinstance(exc, IntegrityError):  # another process stored the same package meanwhile
                raise SubmissionError("duplicate", "the same package was stored concurrently") from exc
            raise
        row = self.store.get(new_id)
        assert row is not None
        self._rows[new_id] = row
        self._semantic[new_id] = semantic
        return new_id

    def _after_add(self, new_id: int, rkme: Any) -> None:
        self._banks.add(new_id, rkme)
        self._count_change()

    def _count_change(self) -> None:
        self._dirty += 1
        if self._dirty >= self.autosave_every:
            self._save_banks()

    def delete(self, id: int) -> None:
        """Remove learnware ``id`` (KeyError if there is none)."""
        id = int(id)
        with self._lock.write():
            if id not in self._rows:
                raise KeyError(f"no learnware with id {id}")
            src, trash = self._lw_dir / str(id), self._trash / str(id)
            moved = False
            try:
                with self.store.transaction() as s:
                    Store.remove(s, id)
                    os.replace(src, trash)
                    moved = True
            except BaseException:
                if moved:
                    os.replace(trash, src)
                raise
            d = int(self._rows.pop(id).input_dim)
            self._semantic.pop(id, None)
            self._learnwares.pop(id, None)
            self._banks.remove(id, d)
            shutil.rmtree(trash, ignore_errors=True)
            self._count_change()

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, id: Any) -> bool:
        return int(id) in self._rows

    @property
    def ids(self) -> list[int]:
        """Stored ids, ascending."""
        with self._lock.read():
            return sorted(self._rows)

    def get(self, id: int) -> Learnware:
        """The learnware ``id`` (its model loads on first ``predict``)."""
        id = int(id)
        with self._lock.read():
            lw = self._learnwares.get(id)
            if lw is None:
                row = self._rows.get(id)
                if row is None:
                    raise KeyError(f"no learnware with id {id}")
                lw = Learnware(id, self._semantic[id], self._lw_dir / str(id), json.loads(row.model_json),
                               row.spec_file)
                self._learnwares[id] = lw
            return lw

    def list(self, filter: Mapping[str, Any] | None = None) -> list[Learnware]:
        """Learnwares admitted by a partial semantic spec ``filter`` (all when None), see semantic_filter."""
        with self._lock.read():
            ids = filter_semantic(filter, self._semantic)
        return [self.get(i) for i in ids if i in self._rows]

    def bank(self, d: int) -> Any:
        """The SpecBank of the specs of input dimension ``d`` (None if there is none)."""
        return self._banks.get(int(d))

    def search(
        self,
        rkme: Any,
        semantic: Mapping[str, Any] | None = None,
        k: int = 5,
        mixture: bool = True,
        max_mixture: int = 5,
        method: str = "greedy",
    ) -> SearchResult:
        """Semantic filter, then single and mixture search by MMD for the user spec ``rkme``.

        Parameters
        ----------
        rkme : the user's RKME (the market's gamma; dimension selects the bank).
        semantic : a partial semantic spec (see :mod:`lwgpu.search.semantic_filter`) or None.
        k : number of single results.
        mixture, max_mixture, method : mixture search on/off, at most ``max_mixture`` learnwares chosen
            among the ``max_mixture**2`` nearest, ``"greedy"`` or ``"auto"`` (one-shot QP).
        """
        if not same_gamma(rkme.gamma, self.gamma):
            raise ValueError(f"the user spec has gamma={rkme.gamma} but this market uses gamma={self.gamma}; "
                             "fit it with the market's gamma")
        with self._lock.read():
            bank = self._banks.get(rkme.d)
            if bank is None:
                return SearchResult()
            ids = None
            if semantic:
                allowed = filter_semantic(semantic, self._semantic)
                ids = np.asarray([i for i in allowed if int(self._rows[i].input_dim) == rkme.d], np.int64)
            index = self._banks.index_for(rkme.d) if ids is None else None
            return statistical_search(bank, rkme, k=k, ids=ids, mixture=mixture, max_mixture=max_mixture,
                                      method=method, index=index, device=self.device)
