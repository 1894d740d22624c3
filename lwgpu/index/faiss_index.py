"""SpecIndex: FAISS over spec embeddings for candidates, exact squared MMD (through a kernel backend) to re-rank.

Each spec ``B`` of a :class:`~lwgpu.bank.SpecBank` is embedded as ``psi(B)`` (``lwgpu.index.embed``);
FAISS returns the ``candidates`` specs nearest to ``psi(query)`` in L2 (among admitted ids when a
selector is given), and their exact ``dist(query, B)`` (squared MMD, docs/kernels.md), computed
by ``backend.mmd2_rows`` on the bank's rows in place, decides the returned top-k.

The index stores ids, never positions (bank rows move when specs are deleted). It follows the
bank through two hooks the owner calls after changing the bank: :meth:`SpecIndex.add` (embeds only
the new rows) and :meth:`SpecIndex.remove`; :attr:`SpecIndex.version` counts those changes. Searches
never sync; :meth:`SpecIndex.sync` is an explicit repair (run by :meth:`SpecIndex.load` when the
saved id count/checksum does not match the bank). With ``factory="auto"`` (the default) the layout
and probe counts come from the bank's size (:func:`lwgpu.index.layout.auto_layout`), and the index is
re-trained when the bank outgrows its layout.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import settings
from ..device import faiss_info, resolve_device
from ..idsets import setdiff_ids, sorted_unique, unique_ids
from ..kernels.backend import KernelBackend, pack, take_rows
from ..search.exact import merge_topk
from ..search.results import Neighbors
from ..spec.validation import check_same_kernel
from .embed import SpecEmbedder, make_embedder
from .ids import (
    Selector, faiss_module, faiss_search, gpu_clone, id_checksum, indexed_ids, remove_ids, search_params,
)
from .layout import Layout, filtered_candidates, layout_for, needs_rebuild, probe_for
from .rerank import grow_pool, row_of, stack_rows
from .store import load_index, resolve_backend, save_index

logger = logging.getLogger(__name__)


class SpecIndex:
    """Approximate candidates from FAISS, exact re-ranking by squared MMD.

    Parameters
    ----------
    bank : SpecBank
        The market's specs; the index stores their ids, not copies of the specs.
    factory : str
        ``"auto"`` (layout and probes from the bank's size), or a FAISS ``index_factory`` string
        (``"Flat"``, ``"IVF1024,SQ8"``, ``"HNSW32"``, ``"IVF1024,PQ32"``; IVF list counts are clipped
        for small banks).
    D : int
        Embedding dimension (default ``settings.INDEX_D``).
    candidates : int
        Specs re-ranked exactly per query (default ``settings.INDEX_CANDIDATES``).
    device : "auto" | "cpu" | "cuda[:i]"
        Where embeddings and re-ranking run; FAISS goes to the GPU for unfiltered searches only
        when FAISS has GPU support and the device is CUDA.
    seed : int
        Seeds the embedder, the IVF training sample and k-means.
    embedder : str or SpecEmbedder
        ``"orf"`` (default), ``"rff"``, ``"nystroem"`` (landmarks from the bank), or a ready embedder.
    probe : int, optional
        IVF nprobe / HNSW efSearch for unfiltered searches (default: the layout's, by bank size).
    backend : str or KernelBackend
        Kernel backend of the exact re-ranking (``get_backend(backend, device)``, resolved once).
    embeddings : np.ndarray (N, D) float32, optional
        ``embedder.embed_specs`` of the bank's rows, already computed (needs a ready ``embedder``).
    """

    def __init__(self, bank: Any, factory: str = "auto", D: int | None = None, candidates: int | None = None,
                 device: str | torch.device | None = "auto", seed: int = 0, embedder: str | SpecEmbedder | None = None,
                 probe: int | None = None, *, backend: str | KernelBackend = "auto",
                 embeddings: np.ndarray | None = None) -> None:
        self.bank = bank
        self.factory = str(factory)
        self.candidates = int(candidates or settings.INDEX_CANDIDATES)
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1; got {candidates}")
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.probe = None if probe is None else int(probe)
        self.backend = resolve_backend(backend, self.device, bank)
        self._kind = embedder if isinstance(embedder, str) else settings.INDEX_EMBEDDER
        self._D = int(D or (embedder.D if isinstance(embedder, SpecEmbedder) else settings.INDEX_D))
        self.embedder: SpecEmbedder | None = embedder if isinstance(embedder, SpecEmbedder) else None
        if self.embedder is not None and (self.embedder.d != bank.d or abs(self.embedder.gamma - bank.gamma) > 1e-12):
            raise ValueError("the given embedder's d/gamma differ from the bank's; build it for this bank")
        self._cpu: Any = None  # the FAISS index on CPU: the master copy (saved, mutated)
        self._gpu: Any = None  # lazy GPU clone of _cpu
        self._gpu_res: Any = None
        self._tomb: set[int] = set()
        self.layout: Layout | None = None
        self.built_n = 0
        #: changes (add/remove/rebuild) since construction
        self.version = 0
        #: ``bank.version`` when the index last heard of the bank (build or hook); see :meth:`in_step`
        self.bank_version: int | None = None
        if embeddings is not None and (self.embedder is None or np.shape(embeddings) != (len(bank), self.D)):
            raise ValueError(f"embeddings must be ({len(bank)}, D) from a given SpecEmbedder; "
                             f"got {np.shape(embeddings)}")
        if len(bank):
            self.rebuild(embeddings)
        else:
            logger.info("SpecIndex: the bank is empty; the index is built at the first add")

    # ------------------------------------------------------------------ properties
    @property
    def D(self) -> int:
        return self.embedder.D if self.embedder is not None else self._D

    @property
    def built_factory(self) -> str | None:
        """The FAISS factory string actually built (None before the first build)."""
        return None if self.layout is None else self.layout.factory

    @property
    def ntotal(self) -> int:
        """Live (not removed) entries."""
        return 0 if self._cpu is None else int(self._cpu.ntotal) - len(self._tomb)

    __len__ = ntotal.fget  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"SpecIndex(N={self.ntotal}, factory={self.built_factory or self.factory!r}, D={self.D}, "
                f"embedder={self.embedder.kind if self.embedder else self._kind!r}, candidates={self.candidates})")

    # ------------------------------------------------------------------ building
    def _embed_rows(self, pos: np.ndarray | None = None) -> np.ndarray:
        """Embeddings (M, D) float32 of bank rows ``pos`` (all rows when None)."""
        z, beta = self.bank.z, self.bank.beta
        if pos is not None:
            z, beta = take_rows(z, pos), take_rows(beta, pos)
        return self.embedder.embed_specs(z, beta, device=self.device)

    def rebuild(self, embeddings: np.ndarray | None = None) -> None:
        """(Re)build from the bank's current specs: embedder (if not given), layout, training, all entries.

        ``embeddings`` (N, D): the bank rows' embeddings by this index's embedder, if already computed.
        """
        faiss = faiss_module()
        n = len(self.bank)
        if self.embedder is None:
            self.embedder = make_embedder(self._kind, self.bank.d, self._D, self.bank.gamma, seed=self.seed,
                                          bank=self.bank)
        emb = self._embed_rows() if embeddings is None else np.ascontiguousarray(embeddings, dtype=np.float32)
        layout = layout_for(self.factory, n, self.D)
        if layout.kind == "ivf":
            index = faiss.index_factory(self.D, layout.factory)  # IVF stores ids itself: selectors see them as is
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = self.seed
            m = min(n, max(int(ivf.nlist) * settings.INDEX_TRAIN_PER_LIST, settings.INDEX_TRAIN_MIN))
            rng = np.random.default_rng(self.seed)
            index.train(emb if m == n else emb[np.sort(rng.choice(n, size=m, replace=False))])
            if not isinstance(ivf, faiss.IndexIVFFastScan):  # fast-scan lists (blocks) remove by a scan
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # O(1) remove_ids by id
        else:
            index = faiss.index_factory(self.D, "IDMap2," + layout.factory)
            if not index.is_trained:
                index.train(emb)
        index.add_with_ids(emb, np.asarray(self.bank.ids, dtype=np.int64))
        self._cpu, self._gpu, self._tomb = index, None, set()
        self._maxid = int(self.bank.ids.max()) if len(self.bank) else -1
        self.layout, self.built_n = layout, n
        self._heard()
        logger.info("SpecIndex: built %s over %d specs (D=%d, %s)", layout.factory, n, self.D, self.embedder.kind)

    def _index(self, filtered: bool) -> Any:
        """The FAISS index to search: a GPU clone for unfiltered searches when FAISS has GPU support and
        the device is CUDA (FAISS's GPU indexes take no id selector)."""
        if filtered or self.device.type != "cuda" or not faiss_info()[1]:
            return self._cpu
        if self._gpu is None:
            self._gpu, self._gpu_res = gpu_clone(self._cpu, self.device, self._gpu_res)
        return self._gpu

    # ------------------------------------------------------------------ search
    def search(self, query: Any, k: int = 10, allowed: Any = None, candidates: int | None = None,
               probe: int | None = None) -> Neighbors:
        """Top-k specs by exact squared MMD among FAISS's candidates (admitted ids only, if given).

        Parameters
        ----------
        query : RKME, list of RKMEs, or SpecBank
            Q user specs (same gamma and d as the bank).
        k : int
            Results per query.
        allowed : array-like of int64, optional
            Admitted ids (e.g. the semantic filter's); passed to FAISS as an id selector, with the
            probe count and first pool raised as the admitted fraction falls
            (:func:`~lwgpu.index.layout.filtered_probe`, :func:`~lwgpu.index.layout.filtered_candidates`).
        candidates, probe : int, optional
            Override the first pool's size and nprobe/efSearch for this call.

        Returns
        -------
        Neighbors
            dists float64 (Q, k) exact and ascending, ids int64 (Q, k); ``inf``/``-1`` pad missing hits.
            ``method`` is ``"index"`` or ``"index-filtered"``. Each query's pool of exactly re-ranked
            candidates grows until certified (:mod:`lwgpu.index.rerank`); :meth:`search_certified` also
            says which queries certified.
        """
        return self.search_certified(query, k, allowed, candidates, probe)[0]

    def search_certified(self, query: Any, k: int = 10, allowed: Any = None, candidates: int | None = None,
                         probe: int | None = None, max_candidates: int | None = None,
                         certify_k: int | None = None) -> tuple[Neighbors, np.ndarray]:
        """:meth:`search`, and bool (Q,): whether each query's pool was certified within ``max_candidates``
        (default ``settings.INDEX_MAX_CANDIDATES``) for its ``certify_k`` (default k) nearest."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1; got {k!r}")
        q = pack(query)
        check_same_kernel(q.d, q.gamma, self.bank.d, self.bank.gamma, "the queries", "the bank")
        method = "index" if allowed is None else "index-filtered"
        nq = len(q)
        live, sel, fraction = self.ntotal, None, 1.0
        if allowed is not None:
            allowed = sorted_unique(allowed)
            if self._tomb:
                allowed = np.setdiff1d(allowed, np.fromiter(self._tomb, np.int64), assume_unique=True)
            live = min(live, int(allowed.size))
            if live:
                sel, fraction = Selector(allowed, self.ntotal), min(1.0, allowed.size / max(1, self.ntotal))
        if self._cpu is None or live == 0:
            return Neighbors.padded(np.empty((nq, 0)), np.empty((nq, 0), np.int64), k, method), np.ones(nq, bool)
        first = min(filtered_candidates(max(k, int(candidates or self.candidates)), fraction), live)
        most = min(live, max(first, int(max_candidates or settings.INDEX_MAX_CANDIDATES)))
        emb = self.embedder.embed_specs(q.z, q.beta, device=self.device)
        index = self._index(sel is not None)
        base = probe if probe is not None else self.probe
        base = probe_for(self.layout, self.ntotal) if base is None else base  # nprobe / efSearch
        params = search_params(self.layout, base, first, sel, fraction, self.ntotal)

        def fetch(rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
            n_search = min(m + len(self._tomb), int(self._cpu.ntotal))
            e, cand = faiss_search(index, emb[rows], n_search, params)
            nlist = int(self.layout.nlist or 0)
            short = (cand >= 0).sum(1) < min(m, live)
            if sel is not None and nlist and settings.INDEX_FILTER_FULL_FALLBACK and short.any() \
                    and params.nprobe < nlist:  # too few admitted specs in the probed lists: every list
                full = faiss_module().SearchParametersIVF(nprobe=nlist, sel=sel.sel)
                e[short], cand[short] = faiss_search(index, emb[rows][short], n_search, full)
            if self._tomb:  # hidden entries out, the rest moved up
                cand = np.where(np.isin(cand, np.fromiter(self._tomb, np.int64)), -1, cand)
                up = np.argsort(cand < 0, axis=1, kind="stable")
                e, cand = np.take_along_axis(e, up, 1), np.take_along_axis(cand, up, 1)
            return np.where(cand >= 0, e, np.inf), cand

        e, cand = fetch(np.arange(nq), min(most, first * settings.INDEX_PREFETCH))
        d = np.full(cand.shape, np.inf)
        d[:, :first] = self._exact(q, cand[:, :first])
        out_d, out_i, ok = [], [], np.ones(nq, bool)
        for i in range(nq):
            one = q if nq == 1 else row_of(q, i)
            more = lambda m, i=i: tuple(a[0] for a in fetch(np.array([i]), m))  # noqa: E731
            exact = lambda c, one=one: self._exact(one, c[None])[0]  # noqa: E731
            ids_i, d_i, ok[i] = grow_pool(min(k, certify_k or k), first, most, more, exact, e[i], cand[i], d[i])
            top_d, top_i = merge_topk(d_i[None], np.where(np.isfinite(d_i), ids_i, -1)[None], k)
            out_d.append(top_d[0])
            out_i.append(top_i[0])
        nb = Neighbors.padded(stack_rows(out_d, k), stack_rows(out_i, k, -1), k, method)
        return nb, ok

    def _exact(self, q: Any, cand: np.ndarray) -> np.ndarray:
        """Exact squared MMD (Q, C) of queries to candidate ids (Q, C) by the backend (``inf`` for -1), rows
        gathered in storage order."""
        pos = self._positions(cand)
        order = np.argsort(pos, axis=1, kind="stable")  # sequential gathers
        out = np.empty(pos.shape)
        got = self.backend.mmd2_rows(q, self.bank, np.take_along_axis(pos, order, 1)).cpu().numpy()
        np.put_along_axis(out, order, got, 1)
        return out

    def _positions(self, cand: np.ndarray) -> np.ndarray:
        """Bank rows of candidate ids (Q, C); ``-1`` stays ``-1``, and so do ids the bank no longer holds
        (an index out of step with its bank: logged; :meth:`sync` repairs it)."""
        pos, ok = np.full(cand.shape, -1, np.int64), cand >= 0
        if not ok.any():
            return pos
        try:
            pos[ok] = self.bank.positions(cand[ok])
        except ValueError:
            known = ok & np.isin(cand, np.asarray(self.bank.ids, np.int64))
            logger.warning("SpecIndex: %d candidate ids are no longer in the bank (call the index's remove() "
                           "hook when specs leave the bank, or sync())", int((ok & ~known).sum()))
            if known.any():
                pos[known] = self.bank.positions(cand[known])
        return pos

    # ------------------------------------------------------------------ following the bank
    def add(self, ids: Any) -> None:
        """Hook: the bank now holds specs ``ids`` (new, or replaced under the same id); embed and add only those.

        Builds the index on the first specs, and re-trains it (logged) once the bank grew
        ``INDEX_REBUILD_GROWTH`` times past the size it was built for and the layout for the new size differs.
        """
        if hasattr(ids, "z") or (isinstance(ids, (list, tuple)) and ids and hasattr(ids[0], "z")):
            raise TypeError("SpecIndex.add takes ids of specs in the bank: bank.add(specs), then index.add(ids)")
        ids = unique_ids(ids)
        if ids.size == 0:
            return
        revived = self._tomb.intersection(ids.tolist())
        n = len(self.bank)
        if self._cpu is None or revived or needs_rebuild(self.factory, self.layout, self.built_n, n, self.D):
            if self._cpu is not None and not revived:
                logger.info("SpecIndex: the bank grew from %d to %d specs; re-training as %s", self.built_n, n,
                            layout_for(self.factory, n, self.D, quiet=True).factory)
            self.rebuild()
            return
        emb = self._embed_rows(self.bank.positions(ids))
        old = ids[ids <= self._max_id()]  # ids above every indexed one are new (market ids only grow)
        if old.size and self.layout.kind != "hnsw":
            self._drop(old)  # replaced specs: no duplicate entries
        self._cpu.add_with_ids(emb, ids)
        self._maxid = max(self._max_id(), int(ids[-1]))
        self._gpu = None
        self._heard()

    def remove(self, ids: Any) -> None:
        """Hook: specs ``ids`` left the bank (before or after ``bank.remove``); drop them from the index."""
        ids = unique_ids(ids)
        if self._cpu is None or ids.size == 0:
            return
        self._drop(ids)
        self._heard()

    def _heard(self) -> None:
        self.version += 1
        self.bank_version = getattr(self.bank, "version", None)

    def in_step(self) -> bool:
        """O(1): whether the bank has not changed since the index last heard of it (build or hook), by
        ``bank.version``; False when the bank keeps no version. :meth:`matches` is the full check."""
        return self.bank_version is not None and self.bank_version == getattr(self.bank, "version", None)

    def _max_id(self) -> int:
        """The largest id added since the last build (-1 if none); read from FAISS once after a load."""
        if getattr(self, "_maxid", None) is None:
            ids = indexed_ids(self._cpu) if self._cpu is not None and self._cpu.ntotal else np.empty(0, np.int64)
            self._maxid = int(ids.max()) if ids.size else -1
        return self._maxid

    def _hide(self, ids: np.ndarray) -> int:
        """Tombstones: the ids stay in FAISS but are never answered; re-train once they are many."""
        self._tomb.update(ids.tolist())
        if len(self._tomb) > settings.INDEX_TOMBSTONE_REBUILD * self._cpu.ntotal:
            self.rebuild()
        return len(ids)

    def _drop(self, ids: np.ndarray) -> int:
        removed = None if self.layout.kind == "hnsw" else remove_ids(self._cpu, ids)
        if removed is None:  # graphs and fast-scan PQ lists cannot delete: hide the ids, rebuild when many
            return self._hide(ids)
        self._gpu = None
        return removed

    def indexed_ids(self) -> np.ndarray:
        """Sorted ids the index currently answers with (reads FAISS's lists: for checks and repair)."""
        ids = np.empty(0, np.int64) if self._cpu is None else indexed_ids(self._cpu)
        if self._tomb:
            ids = ids[~np.isin(ids, np.fromiter(self._tomb, np.int64))]
        return np.sort(ids)

    def checksum(self) -> int:
        """:func:`~lwgpu.index.ids.id_checksum` of the indexed ids."""
        return id_checksum(self.indexed_ids())

    def matches(self, bank: Any = None) -> bool:
        """Whether the index holds exactly the bank's ids (count, then an order-free checksum)."""
        bank = self.bank if bank is None else bank
        return self.ntotal == len(bank) and self.checksum() == id_checksum(bank.ids)

    def sync(self) -> tuple[int, int]:
        """Repair: make the index hold exactly the bank's ids; returns (removed, added).

        Specs replaced under the same id are not detected: call :meth:`add` for those ids.
        """
        live = self.indexed_ids()
        gone = setdiff_ids(live, self.bank.ids)
        new = setdiff_ids(self.bank.ids, live)
        if gone.size:
            self.remove(gone)
        if new.size:
            self.add(new)
        logger.info("SpecIndex.sync: %d removed, %d added", gone.size, new.size)
        return int(gone.size), int(new.size)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``index.faiss``, ``index_embedder.npz`` and ``index_meta.json`` into ``directory``.

        The names do not clash with a SpecBank's files, so the index can live beside its bank. The meta
        records the id count and checksum, so :meth:`load` can tell whether a bank matches without
        reading FAISS's lists.
        """
        save_index(self, directory)

    @classmethod
    def load(cls, directory: str | Path, bank: Any, device: str | torch.device | None = "auto",
             backend: str | KernelBackend = "auto", repair: bool = True) -> "SpecIndex":
        """Open an index written by :meth:`save` over ``bank``.

        When the saved id count and checksum differ from the bank's, the index is repaired with
        :meth:`sync` (``repair=True``, logged) or a ValueError is raised.
        """
        return load_index(cls, directory, bank, device=device, backend=backend, repair=repair)
