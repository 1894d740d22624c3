"""The Market facade: add / submit learnwares (one or a batch), delete, get, list and search them.

Layout of an embedded market folder ``root``::

    market.db            SQLite database (unless db_url points elsewhere): the source of truth
    learnwares/<id>/     each stored package (learnware.yaml, model files, RKME JSON)
    banks/<key>/         one bank per spec type and shape: d<d> (table), text-..., image-... (derived;
                         repaired on open; lwgpu.market.banks)
    indexes/d<d>/        its SpecIndex once the bank is large enough (derived)
    .staging/ .trash/    in-flight submissions / deletions (cleaned up on open)

Writes go in batches: each item is staged and checked in ``.staging`` (model code of a package only
in an isolated worker, :mod:`lwgpu.market.worker`), then one database transaction inserts the batch's
rows while their folders are renamed into ``learnwares/``, then one bank append (and index update)
follows. A crash loses at most the batch in flight: on open, folders without a row and rows without
a folder are removed and the banks are reconciled with the database. Searches hold a shared lock,
writers an exclusive one only for the commit step.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import settings
from ..device import resolve_device
from ..kernels import get_backend
from ..search.results import SearchResult
from ..search.statistical import statistical_search
from ..spec.validation import same_gamma
from .archive import PackageLimits
from .banks import BankSet, bank_key, spec_tag
from .checks import SubmissionError
from .ingest import Staged, as_semantic, chunks, progress_bar, serial_kernels, stage_objects, stage_packages
from .learnware import Learnware
from .locks import RWLock, staging_dir
from .reconcile import reconcile_files
from .store import Store
from .worker import WorkerLimits, close_workers, isolation, prepare_spare

logger = logging.getLogger(__name__)



class Market:
    """A learnware market stored under ``root``.

    Parameters
    ----------
    root : folder for the learnware files and banks (created if missing).
    db_url : SQLAlchemy URL; default ``sqlite:///<root>/market.db``.
    gamma : the market's kernel bandwidth; fixed when the market is created (default
        ``settings.GAMMA``); opening an existing market with another gamma is an error.
    device : where banks live and searches run (``"auto"``, ``"cpu"``, ``"cuda[:i]"``).
    backend : kernel backend of every search (``"auto"``, ``"numba"``, ``"torch"``, ``"cuda"``), resolved once.
    index_threshold : from this many specs of one dimension on, searches go through a SpecIndex.
    check_samples : rows drawn from a learnware's RKME to test its model's ``predict``.
    limits : :class:`~lwgpu.market.sandbox.WorkerLimits` of the isolated workers that run package
        code (default: 60 s per check, 4 GiB, no network, read-only file system; the market's own
        folder hidden from the model). :attr:`isolation` says which isolation is in force.
    autosave_every : flush the banks after this many changes (close() and flush() always do).
    package_limits : :class:`~lwgpu.market.archive.PackageLimits` a submitted zip or folder must meet
        before anything is unpacked (sizes, entry count, compression ratio, YAML size; defaults
        ``settings.PACKAGE_*``); links, special files and escaping paths are always refused.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        db_url: str | None = None,
        gamma: float | None = None,
        device: Any = "auto",
        backend: Any = "auto",
        index_threshold: int = settings.MARKET_INDEX_THRESHOLD,
        check_samples: int = settings.MARKET_CHECK_SAMPLES,
        limits: WorkerLimits | None = None,
        autosave_every: int = settings.MARKET_FLUSH_EVERY,
        package_limits: PackageLimits | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lw_dir, self._staging, self._trash = self.root / "learnwares", self.root / ".staging", self.root / ".trash"
        for p in (self._lw_dir, self._staging, self._trash):
            p.mkdir(exist_ok=True)
        if db_url is None:  # SQLite would make its file 0o644 & ~umask: an empty file (a valid empty db) gets
            # 0o666 & ~umask like every other file here, and SQLite gives its -wal/-shm files the db's mode
            try:
                os.close(os.open(self.root / "market.db", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                pass
        self.store = Store(db_url or f"sqlite:///{(self.root / 'market.db').resolve()}")
        stored = self.store.get_meta("gamma")
        if stored is None:
            self.gamma = float(settings.GAMMA if gamma is None else gamma)
            self.store.set_meta("gamma", repr(self.gamma))
        else:
            self.gamma = float(stored)
            if gamma is not None and not same_gamma(gamma, self.gamma):
                raise ValueError(f"this market was created with gamma={self.gamma}; it cannot be opened with "
                                 f"gamma={gamma} (omit gamma to use the stored one)")
        self.device = resolve_device(device)
        self.backend = get_backend(backend, self.device)
        self.check_samples = int(check_samples)
        self.autosave_every = int(autosave_every)
        self.limits = limits or WorkerLimits(hidden_paths=("/run", str(self.root.resolve())))
        self.package_limits = package_limits or PackageLimits()
        self.isolation = isolation(self.limits)
        logger.info("market %s: package code runs in %s workers", self.root, self.isolation)
        self._lock = RWLock(self.root / ".write.lock")  # also excludes the writers of other processes
        self._banks = BankSet(self.root / "banks", self.root / "indexes", self.gamma, self.device, int(index_threshold))
        self._banks.backend = self.backend
        self._learnwares: dict[int, Learnware] = {}
        self._dirty = 0
        with self._lock.write():
            self._reconcile()
        self.store.warm_filter()  # the first search would otherwise load the filter's column copy

    # ------------------------------------------------------------------ housekeeping
    def _reconcile(self) -> None:
        """Make files and banks agree with the database (the source of truth), in O(N) array operations."""
        ids, dims = reconcile_files(self.store, self._lw_dir, self._staging, self._trash)
        self._banks.load()
        self._sync_banks(ids, dims)

    def _sync_banks(self, ids: np.ndarray, dims: np.ndarray) -> None:
        want = self.store.bank_groups(ids, dims)  # {bank key: ids}: table d<d>, text and image banks
        if self._banks.sync(want, self._load_spec):
            self._banks.flush()

    def _load_spec(self, i: int) -> Any:
        row = self.store.get(int(i))
        return Learnware(int(i), {}, self._lw_dir / str(i), {}, row.spec_file).rkme

    def refresh(self) -> None:
        """Re-read the database (another process may have written to a shared one) and repair the banks."""
        with self._lock.write():
            self._learnwares.clear()
            self._sync_banks(*self.store.ids_and_dims())

    def flush(self) -> None:
        """Make the banks and indexes durable now (O(changed rows) for the banks)."""
        with self._lock.read():
            self._banks.save()
            self._dirty = 0

    def close(self) -> None:
        """Flush, release the banks' files, the isolated workers and the database connection."""
        with self._lock.write():
            self._banks.save()
            self._banks.close()
        close_workers()
        self.store.dispose()

    def __enter__(self) -> "Market":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def add(self, model: Any, semantic_spec: Mapping[str, Any], rkme: Any, output: str = "predict") -> int:
        """Store one in-memory learnware (see :meth:`add_many`); returns its id or raises SubmissionError."""
        out = self.add_many([model], [semantic_spec], [rkme], output=output, progress=False)[0]
        if isinstance(out, SubmissionError):
            raise out
        return out

    def add_many(
        self, models: Sequence[Any], semantic_specs: Sequence[Mapping[str, Any]], rkmes: Sequence[Any],
        output: str = "predict", check: bool = True, batch: int = settings.MARKET_BATCH, progress: bool = True,
    ) -> list[int | SubmissionError]:
        """Store many in-memory learnwares: ``models[i]`` with ``semantic_specs[i]`` (lwgpu's or the
        reference's layout) and its RKME ``rkmes[i]``.

        The objects are the caller's own, so their checks run in this process (``check=False`` skips
        the predict check). Each batch of ``batch`` items is one transaction and one bank append.

        Returns
        -------
        list, per item: its new id, or the :class:`SubmissionError` that refused it (the rest are stored).
        """
        n = len(models)
        if not n == len(semantic_specs) == len(rkmes):
            raise ValueError(f"add_many needs as many models, semantic specs and RKMEs; got {n}, "
                             f"{len(semantic_specs)} and {len(rkmes)}")
        out: list[int | SubmissionError] = []
        with progress_bar(n, "add_many", progress) as bar:
            for s, e in chunks(n, batch):
                with staging_dir(self._staging) as tmp:  # locked: a market opened meanwhile leaves it
                    staged = stage_objects(models[s:e], semantic_specs[s:e], rkmes[s:e], Path(tmp), self.gamma,
                                           output=output, check_samples=self.check_samples, check=check)
                    out.extend(self._commit(staged))
                bar.update(e - s)
        return out

    def submit(self, path: str | os.PathLike, semantic_spec: Mapping[str, Any] | None = None) -> int:
        """Check and store the learnware folder or zip at ``path`` (its model code runs only in an
        isolated worker); ``semantic_spec`` (lwgpu's or the reference's layout) replaces the package's.

        Raises
        ------
        SubmissionError
            Naming the failed check (package, semantic, rkme, model_load, model_predict, duplicate);
            the market is left exactly as it was.
        """
        out = self.submit_many([path], None if semantic_spec is None else [semantic_spec], progress=False)[0]
        if isinstance(out, SubmissionError):
            raise out
        return out

    def submit_many(
        self, paths: Sequence[str | os.PathLike], semantic_specs: Sequence[Mapping[str, Any] | None] | None = None,
        max_workers: int | None = None, batch: int = settings.MARKET_BATCH, progress: bool = True,
    ) -> list[int | SubmissionError]:
        """Check and store many packages: model checks in parallel isolated workers (``max_workers``,
        default the CPU count), one transaction and one bank append per batch.

        Returns
        -------
        list, per package: its new id, or the :class:`SubmissionError` that refused it.
        """
        paths = list(paths)
        sems = list(semantic_specs) if semantic_specs is not None else [None] * len(paths)
        out: list[int | SubmissionError] = []
        with progress_bar(len(paths), "submit_many", progress) as bar:
            for s, e in chunks(len(paths), batch):
                with staging_dir(self._staging) as tmp:
                    staged = stage_packages(paths[s:e], sems[s:e], Path(tmp), self.gamma, self.check_samples,
                                            self.limits, max_workers=max_workers, package_limits=self.package_limits)
                    out.extend(self._commit(staged))
                prepare_spare(self.limits)  # the next package's worker, set up once this batch is stored
                bar.update(e - s)
        return out

    def _commit(self, staged: list[Staged | SubmissionError]) -> list[int | SubmissionError]:
        """Store the staged items of one batch: one transaction (rows + folder renames), one bank append."""
        out: list[int | SubmissionError] = list(staged)
        ok = [i for i, st in enumerate(staged) if isinstance(st, Staged)]
        seen: dict[str, int] = {}
        for i in ok:  # the same package twice within the batch
            st = staged[i]
            if st.digest in seen:
                out[i] = SubmissionError("duplicate", f"the same package is item {seen[st.digest]} of this batch")
            seen.setdefault(st.digest, i)
        with self._lock.write():
            stored = self.store.ids_by_hash([staged[i].digest for i in ok])
            keep = []
            for i in ok:
                if not isinstance(out[i], Staged):
                    continue
                if staged[i].digest in stored:
                    out[i] = SubmissionError("duplicate", f"the same package is already stored as learnware "
                                                          f"{stored[staged[i].digest]}")
                else:
                    keep.append(i)
            if not keep:
                return out
            items = [staged[i] for i in keep]
            ids = self._insert(items)
            with serial_kernels(len(items)):  # a small batch: no thread-pool wake-up for microseconds of work
                self._banks.add_many(ids, [st.rkme for st in items])
            for i, new in zip(keep, ids):
                out[i] = int(new)
            self._count_change(len(ids))
        logger.info("stored %d learnwares (ids %d..%d)", len(ids), ids[0], ids[-1])
        return out

    def _insert(self, items: list[Staged]) -> list[int]:
        """One transaction: insert the rows and move each folder into ``learnwares/<id>``; undone on failure."""
        from sqlalchemy.exc import IntegrityError

        moved: list[Path] = []
        try:
            with self.store.transaction() as s:
                ids = Store.insert_many(s, [(st.digest, st.semantic, st.model_cfg, st.spec_file, spec_tag(st.rkme))
                                           for st in items])
                for st, new in zip(items, ids):
                    final = self._lw_dir / str(new)
                    if final.exists():  # left by a crash before the row existed; the database is the truth
                        shutil.rmtree(final)
                    os.replace(st.folder, final)
                    moved.append(final)
        except BaseException as exc:
            for final in moved:
                shutil.rmtree(final, ignore_errors=True)
            if isinstance(exc, IntegrityError):  # another process stored one of these packages meanwhile
                raise SubmissionError("duplicate", "a package of this batch was stored concurrently; "
                                                   "submit the batch again to store the rest") from exc
            raise
        return [int(i) for i in ids]

    def _count_change(self, n: int = 1) -> None:
        self._dirty += n
        if self._dirty >= self.autosave_every:
            self._banks.flush()
            self._dirty = 0

    def delete(self, id: int) -> None:
        """Remove learnware ``id`` (KeyError if there is none)."""
        id = int(id)
        with self._lock.write():
            row = self.store.get(id)
            if row is None:
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
            self._learnwares.pop(id, None)
            self._banks.remove(id, row.spec_key or int(row.input_dim))
            shutil.rmtree(trash, ignore_errors=True)
            self._count_change()

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return self.store.count()

    def __contains__(self, id: Any) -> bool:
        return self.store.get(int(id)) is not None

    @property
    def ids(self) -> list[int]:
        """Stored ids, ascending."""
        return self.store.ids_and_dims()[0].tolist()

    def get(self, id: int, trust: bool = False) -> Learnware:
        """The learnware ``id``. Its ``predict`` runs the model in an isolated worker; ``trust=True`` loads it
        into this process instead (only for learnwares you trust: unpickling runs their code)."""
        id = int(id)
        lw = None if trust else self._learnwares.get(id)
        if lw is None:
            row = self.store.get(id)
            if row is None:
                raise KeyError(f"no learnware with id {id}")
            lw = Learnware(id, json.loads(row.semantic_json), self._lw_dir / str(id), json.loads(row.model_json),
                           row.spec_file, trust=trust, limits=self.limits)
            if not trust and len(self._learnwares) < 4096:
                self._learnwares[id] = lw
        return lw

    def list(self, filter: Mapping[str, Any] | None = None) -> list[Learnware]:
        """Learnwares admitted by a partial semantic spec ``filter`` (all when None), see semantic_filter.

        Under the read lock: a concurrent ``delete`` cannot remove an id between the filter and its ``get``."""
        with self._lock.read():
            return [self.get(i) for i in self.store.filter_ids(as_semantic(filter)).tolist()]

    def bank(self, d: int | str) -> Any:
        """The SpecBank of the table specs of input dimension ``d``, or the bank of a bank key (``text-...``,
        ``image-...``, see :func:`lwgpu.market.banks.bank_key`); None if there is none."""
        return self._banks.get(d)

    def search(
        self,
        rkme: Any,
        semantic: Mapping[str, Any] | None = None,
        k: int = settings.SEARCH_K,
        mixture: bool = True,
        max_mixture: int = settings.MIXTURE_MAX,
        method: str = settings.MIXTURE_METHOD,
    ) -> SearchResult:
        """Semantic filter (in the database), then single and mixture search by MMD for the user spec ``rkme``.

        Parameters
        ----------
        rkme : the user's spec: a table RKME (the market's gamma; its dimension selects the bank), a
            :class:`~lwgpu.spec.text.TextRKME` (its encoder and dimension select the bank; a market with text
            specs only of other encoders raises :class:`~lwgpu.spec.text.EncoderMismatchError`) or an
            ``ImageRKME`` (the image bank of its shape, searched exactly: single results, no mixture).
            Only specs of the user spec's type are ever returned.
        semantic : a partial semantic spec, lwgpu's or the reference's layout (see
            :mod:`lwgpu.search.semantic_filter`), or None.
        k : number of single results.
        mixture, max_mixture, method : mixture search on/off, at most ``max_mixture`` learnwares chosen
            among the ``max_mixture**2`` nearest, ``"greedy"`` or ``"auto"`` (one-shot QP).

        Returns
        -------
        SearchResult whose ``method`` names the planner's path (exact, exact-rows, index, index-filtered).
        """
        # ---- by spec type (table / text / image): the bank of the user spec's bank key ----
        from ..spec.io import IMAGE_TYPE, TABLE_TYPE, spec_type
        from .typed_search import check_text_encoder, search_image

        kind, key = spec_type(rkme), bank_key(rkme)
        if kind != IMAGE_TYPE and not same_gamma(rkme.gamma, self.gamma):
            raise ValueError(f"the user spec has gamma={rkme.gamma} but this market uses gamma={self.gamma}; "
                             "fit it with the market's gamma")
        query = dict(as_semantic(semantic) or {})
        with self._lock.read():
            bank = self._banks.get(key)
            if bank is None:
                check_text_encoder(rkme, self.store.encoders())
                return SearchResult()
            admitted = None
            if query and kind == IMAGE_TYPE:
                admitted = self.store.filter_ids(query)
                admitted = admitted[np.isin(admitted, bank.ids)]
            if kind == IMAGE_TYPE:
                return search_image(bank, rkme, admitted, k)
            # ---- end of the dispatch by spec type ----
            if query:
                if kind == TABLE_TYPE:
                    query.setdefault("input_dim", rkme.d)
                admitted = self.store.filter_ids(query)
                admitted = admitted[bank.holds(admitted)]  # input_dim may list other dimensions
                if admitted.size == len(bank):
                    admitted = None  # everything of this dimension: the unfiltered path
            return statistical_search(bank, rkme, k=k, ids=admitted, mixture=mixture, max_mixture=max_mixture,
                                      method=method, index=self._banks.index_for(key), backend=self.backend)

