"""SpecIndex: FAISS over spec embeddings for candidates, exact squared MMD to re-rank them.

Each spec ``B`` of a :class:`~lwgpu.bank.SpecBank` is embedded as ``psi(B)`` (``lwgpu.index.embed``);
FAISS (any ``index_factory`` string: ``Flat``, ``IVFn,Flat``, ``HNSWm``, ``IVFn,PQm``) returns the
``candidates`` specs nearest to ``psi(query)`` in L2, and their exact ``dist(query, B)`` (squared MMD,
DESIGN.md section 2) decides the returned top-k. FAISS ids are the bank's int64 ids (``IDMap2``).

The index follows the bank: :meth:`SpecIndex.add` / :meth:`SpecIndex.remove` change the bank *and*
the index; if the bank was changed directly, :meth:`SpecIndex.sync` (run automatically when a
search meets an id the bank no longer holds) brings the index back in line.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import faiss_info, resolve_device
from ..search.exact import merge_topk
from ..spec.validation import same_gamma
from .embed import SpecEmbedder, make_embedder
from .tuning import DEFAULTS, default_nprobe, effective_factory

logger = logging.getLogger(__name__)

FORMAT = "lwgpu.SpecIndex/1"
#: Elements of the largest (queries x Kq x candidates*K) kernel tile of the re-ranking step.
RERANK_TILE = 1 << 24
#: Rebuild a graph index (no remove_ids) once this fraction of its entries are removed ids.
TOMBSTONE_REBUILD = 0.1
_TRAIN_PER_LIST = 64


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is an install requirement of the cpu/gpu extras
        raise ImportError("SpecIndex needs FAISS: pip install 'lwgpu[cpu]' (faiss-cpu) or 'lwgpu[gpu]'") from exc
    return faiss


class SpecIndex:
    """Approximate candidates from FAISS, exact re-ranking by squared MMD.

    Parameters
    ----------
    bank : SpecBank
        The market's specs; the index stores ids, not copies of the specs.
    factory : str
        FAISS ``index_factory`` string over the embeddings, e.g. ``"Flat"``, ``"IVF1024,Flat"``,
        ``"HNSW32"``, ``"IVF1024,PQ32"``. IVF list counts are clipped for small banks (logged).
    D : int
        Embedding dimension (default ``DEFAULTS["D"]``).
    candidates : int
        Specs re-ranked exactly per query (default ``DEFAULTS["candidates"]``).
    embedder : str or SpecEmbedder
        ``"orf"`` (default), ``"rff"``, ``"nystroem"`` (landmarks from the bank), or a ready embedder.
    probe : int, optional
        IVF ``nprobe`` / HNSW ``efSearch`` (defaults from ``DEFAULTS``; efSearch is raised to at
        least ``candidates``).
    device : "auto" | "cpu" | "cuda[:i]"
        Where embeddings and re-ranking run; FAISS goes to the GPU only when FAISS has GPU support
        and the device is CUDA.
    seed : int
        Seeds the embedder, the IVF training sample and k-means.
    embeddings : np.ndarray (N, D) float32, optional
        ``embedder.embed_specs`` of the bank's rows, already computed (needs a ready ``embedder``):
        several indexes over one bank then share one embedding pass.
    """

    def __init__(
        self,
        bank: Any,
        factory: str = "IVF1024,Flat",
        D: int | None = None,
        candidates: int | None = None,
        device: str | torch.device | None = "auto",
        seed: int = 0,
        embedder: str | SpecEmbedder | None = None,
        probe: int | None = None,
        *,
        embeddings: np.ndarray | None = None,
    ) -> None:
        self.bank = bank
        self.factory = str(factory)
        self.candidates = int(candidates or DEFAULTS["candidates"])
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1; got {candidates}")
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.probe = probe
        self._kind = embedder if isinstance(embedder, str) else DEFAULTS["embedder"]
        self._D = int(D or (embedder.D if isinstance(embedder, SpecEmbedder) else DEFAULTS["D"]))
        self.embedder: SpecEmbedder | None = embedder if isinstance(embedder, SpecEmbedder) else None
        if self.embedder is not None and (self.embedder.d != bank.d or abs(self.embedder.gamma - bank.gamma) > 1e-12):
            raise ValueError("the given embedder's d/gamma differ from the bank's; build it for this bank")
        self._cpu: Any = None  # faiss IndexIDMap2 on CPU: the master copy (saved, mutated)
        self._gpu: Any = None  # lazy GPU clone of _cpu
        self._gpu_res: Any = None
        self._tomb: set[int] = set()
        self.built_factory: str | None = None
        if embeddings is not None and (self.embedder is None or np.shape(embeddings) != (len(bank), self.D)):
            raise ValueError(f"embeddings must be ({len(bank)}, D) from a given SpecEmbedder; got {np.shape(embeddings)}")
        if len(bank):
            self.rebuild(embeddings)
        else:
            logger.info("SpecIndex: the bank is empty; the index is built at the first add")

    # ------------------------------------------------------------------ properties
    @property
    def D(self) -> int:
        return self.embedder.D if self.embedder is not None else self._D

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
        z, beta = self.bank.z, self.bank.beta
        if pos is not None:
            idx = torch.as_tensor(pos, device=z.device)
            z, beta = z.index_select(0, idx), beta.index_select(0, idx)
        return self.embedder.embed_specs(z, beta, device=self.device)

    def rebuild(self, embeddings: np.ndarray | None = None) -> None:
        """(Re)build from the bank's current specs: embedder (if not given), training, all entries.

        ``embeddings`` (N, D): the bank rows' embeddings by this index's embedder, if already computed.
        """
        faiss = _faiss()
        n = len(self.bank)
        if self.embedder is None:
            self.embedder = make_embedder(self._kind, self.bank.d, self._D, self.bank.gamma, seed=self.seed, bank=self.bank)
        emb = self._embed_rows() if embeddings is None else np.ascontiguousarray(embeddings, dtype=np.float32)
        self.built_factory = effective_factory(self.factory, n)
        index = faiss.index_factory(self.D, "IDMap2," + self.built_factory)
        if not index.is_trained:
            ivf = faiss.try_extract_index_ivf(index)
            nlist = ivf.nlist if ivf is not None else 256
            rng = np.random.default_rng(self.seed)
            m = min(n, max(nlist * _TRAIN_PER_LIST, 10_000))
            sample = emb if m == n else emb[np.sort(rng.choice(n, size=m, replace=False))]
            if ivf is not None:
                ivf.cp.seed = self.seed
            index.train(sample)
        index.add_with_ids(emb, self.bank.ids.astype(np.int64))
        self._cpu, self._gpu, self._tomb = index, None, set()
        self._built_n = n
        logger.info("SpecIndex: built %s over %d specs (D=%d, %s)", self.built_factory, n, self.D, self.embedder.kind)

    def _index(self) -> Any:
        """The FAISS index to search: a GPU clone when FAISS has GPU support and the device is CUDA."""
        if self.device.type != "cuda" or not faiss_info()[1]:
            return self._cpu
        if self._gpu is None:
            faiss = _faiss()
            try:
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, self.device.index or 0, self._cpu)
            except Exception as exc:  # noqa: BLE001 - e.g. HNSW has no GPU version
                logger.warning("SpecIndex: %s stays on CPU (%s)", self.built_factory, exc)
                self._gpu = self._cpu
        return self._gpu

    def _set_probe(self, index: Any, probe: int | None, n_cand: int) -> None:
        faiss, name = _faiss(), self.built_factory or ""
        gpu = index is not self._cpu and hasattr(faiss, "GpuParameterSpace")
        space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
        if "IVF" in name:
            nlist = faiss.extract_index_ivf(self._cpu).nlist
            space.set_index_parameter(index, "nprobe", int(probe or default_nprobe(self.ntotal, nlist)))
        elif "HNSW" in name:
            space.set_index_parameter(index, "efSearch", max(int(probe or DEFAULTS["ef_search"]), n_cand))

    # ------------------------------------------------------------------ search
    def search(self, query: Any, k: int = 10, candidates: int | None = None,
               probe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k market specs by exact squared MMD among FAISS's candidates.

        Parameters
        ----------
        query : RKME, list of RKMEs, or SpecBank
            Q user specs (same gamma and d as the bank).
        k : int
            Results per query.
        candidates, probe : int, optional
            Override the index's candidate count and nprobe/efSearch for this call.

        Returns
        -------
        dists : np.ndarray float64 (Q, k)
            Exact squared MMD, ascending (``inf`` where fewer than k specs were found).
        ids : np.ndarray int64 (Q, k)
            Bank ids (``-1`` where fewer than k specs were found).
        """
        from ..bank import as_bank

        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        qb = as_bank(query)
        if qb.d != self.bank.d or not same_gamma(qb.gamma, self.bank.gamma):
            raise ValueError(
                f"queries have d={qb.d}, gamma={qb.gamma} but the bank holds d={self.bank.d}, gamma={self.bank.gamma}"
            )
        nq = len(qb)
        if self._cpu is None or self.ntotal == 0:
            return np.full((nq, k), np.inf), np.full((nq, k), -1, np.int64)
        n_cand = max(k, int(candidates or self.candidates))
        n_search = min(n_cand + len(self._tomb), int(self._cpu.ntotal))
        emb = self.embedder.embed_specs(qb.z, qb.beta, device=self.device)
        index = self._index()
        self._set_probe(index, probe if probe is not None else self.probe, n_search)
        _, cand = index.search(emb, n_search)
        if self._tomb:
            cand = np.where(np.isin(cand, np.fromiter(self._tomb, np.int64)), -1, cand)
        try:
            pos = self._positions(cand)
        except ValueError:
            logger.warning("SpecIndex: the bank changed outside the index; syncing")
            self.sync()
            return self.search(query, k, candidates, probe)
        dists = self._rerank(qb, pos)
        out_d, out_i = merge_topk(dists, np.where(pos >= 0, cand, -1), k)  # ascending, ties by smaller id
        out_i = np.where(np.isfinite(out_d), out_i, -1)
        kk = out_d.shape[1]
        if kk < k:
            out_d = np.concatenate([out_d, np.full((nq, k - kk), np.inf)], 1)
            out_i = np.concatenate([out_i, np.full((nq, k - kk), -1, np.int64)], 1)
        return out_d, out_i.astype(np.int64)

    def _positions(self, cand: np.ndarray) -> np.ndarray:
        """Bank rows of candidate ids (Q, C); ``-1`` stays ``-1``. ValueError if an id left the bank."""
        pos, ok = np.full(cand.shape, -1, np.int64), cand >= 0
        pos[ok] = self.bank.positions(cand[ok]) if ok.any() else pos[ok]
        return pos

    def _rerank(self, qb: Any, pos: np.ndarray) -> np.ndarray:
        """Exact dist(query_q, bank[pos[q, c]]) as float64 (Q, C); ``inf`` where ``pos`` is -1."""
        dev = self.device
        nq, nc = pos.shape
        kq, kb, d = qb.K, self.bank.K, self.bank.d
        out = np.full((nq, nc), np.inf)
        step = max(1, RERANK_TILE // max(1, kq * nc * kb))
        bz, bb, bs = self.bank.z, self.bank.beta, self.bank.self_inner
        gamma = float(self.bank.gamma)
        with torch.no_grad():
            for s in range(0, nq, step):
                p = pos[s : s + step]
                valid = torch.as_tensor(p >= 0, device=dev)
                flat = torch.as_tensor(np.maximum(p, 0).reshape(-1), device=bz.device)
                zc = bz.index_select(0, flat).to(dev, torch.float32).reshape(len(p), nc * kb, d)
                bc = bb.index_select(0, flat).to(dev, torch.float32).reshape(len(p), nc, kb)
                sc = bs.index_select(0, flat).to(dev, torch.float64).reshape(len(p), nc)
                qz = qb.z[s : s + step].to(dev, torch.float32)
                qw = qb.beta[s : s + step].to(dev, torch.float32)
                real = (qw != 0).to(torch.float32).unsqueeze(-1)  # centre on real points (MMD is shift invariant)
                centre = (qz * real).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp_min(1.0)
                qz = qz - centre
                zc = zc.sub_(centre)  # index_select made a fresh copy
                # exponent -gamma (|a|^2 + |b|^2 - 2 a.b) from one batched GEMM, clamped at 0, exp in place
                base = (qz * qz).sum(-1, keepdim=True) + (zc * zc).sum(-1).unsqueeze(1)  # (q, Kq, C*K)
                kmat = base.baddbmm_(qz, zc.transpose(1, 2), beta=-gamma, alpha=2.0 * gamma).clamp_max_(0.0).exp_()
                cross = torch.bmm(qw.unsqueeze(1), kmat).reshape(len(p), nc, kb).mul_(bc).sum(-1)
                sq = qb.self_inner[s : s + step].to(dev, torch.float64)
                dist = (sq[:, None] - 2.0 * cross.double() + sc).clamp_min_(0.0)
                out[s : s + step] = dist.masked_fill(~valid, math.inf).cpu().numpy()
        return out

    # ------------------------------------------------------------------ mutation
    def add(self, specs: Any, ids: Any = None) -> np.ndarray:
        """Add specs to the bank (``bank.add``) and to the index; returns their ids (int64)."""
        new_ids = self.bank.add(specs, ids)
        self._add_ids(new_ids)
        return new_ids

    def remove(self, ids: Any) -> None:
        """Remove ids from the bank (``bank.remove``) and from the index."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        self.bank.remove(ids)
        self._remove_ids(ids)

    def sync(self) -> None:
        """Make the index hold exactly the bank's ids (after the bank was changed directly).

        Specs replaced under the same id are not detected: remove and add through the index for that.
        """
        live = self.indexed_ids()
        gone = np.setdiff1d(live, self.bank.ids)
        new = np.setdiff1d(self.bank.ids, live)
        if gone.size:
            self._remove_ids(gone)
        if new.size:
            self._add_ids(new)
        logger.info("SpecIndex.sync: %d removed, %d added", gone.size, new.size)

    def indexed_ids(self) -> np.ndarray:
        """Sorted ids the index currently answers with."""
        ids = np.empty(0, np.int64) if self._cpu is None else _faiss().vector_to_array(self._cpu.id_map).astype(np.int64)
        if self._tomb:
            ids = ids[~np.isin(ids, np.fromiter(self._tomb, np.int64))]
        return np.sort(ids)

    def _add_ids(self, new_ids: np.ndarray) -> None:
        if len(new_ids) == 0:
            return
        revived = self._tomb.intersection(int(i) for i in new_ids)
        if self._cpu is None or revived:
            self.rebuild()  # first specs of an empty bank, or ids re-used while still in a graph index
            return
        n = self.ntotal + len(new_ids)
        if n >= 2 * self._built_n and effective_factory(self.factory, n, quiet=True) != self.built_factory:
            logger.info("SpecIndex: the bank grew from %d to %d specs; rebuilding with more IVF lists", self._built_n, n)
            self.rebuild()
            return
        emb = self._embed_rows(self.bank.positions(new_ids))
        self._cpu.add_with_ids(emb, np.asarray(new_ids, np.int64))
        self._gpu = None

    def _remove_ids(self, ids: np.ndarray) -> None:
        if self._cpu is None or len(ids) == 0:
            return
        faiss = _faiss()
        try:
            removed = self._cpu.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, np.int64)))
            if removed != len(ids):
                logger.warning("SpecIndex.remove: %d of %d ids were not in the index", len(ids) - removed, len(ids))
        except RuntimeError:  # graph indexes (HNSW) cannot delete: hide the ids, rebuild when many
            self._tomb.update(int(i) for i in ids)
            if len(self._tomb) > TOMBSTONE_REBUILD * self._cpu.ntotal:
                self.rebuild()
        self._gpu = None

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``index.faiss``, ``index_embedder.npz`` and ``index_meta.json`` into ``directory``.

        The names do not clash with a SpecBank's files, so the index can live beside its bank.
        """
        if self._cpu is None:
            raise ValueError("the index is empty (nothing was built yet); add specs before saving")
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self._cpu, str(root / "index.faiss"))
        self.embedder.save(root / "index_embedder.npz")
        meta = {
            "format": FORMAT, "factory": self.factory, "built_factory": self.built_factory, "D": self.D,
            "candidates": self.candidates, "probe": self.probe, "seed": self.seed, "embedder": self.embedder.kind,
            "gamma": self.bank.gamma, "d": self.bank.d, "N": self.ntotal, "built_n": self._built_n, "tombstones": sorted(self._tomb),
        }
        (root / "index_meta.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path, bank: Any, device: str | torch.device | None = "auto") -> "SpecIndex":
        """Open an index written by :meth:`save` over ``bank`` (syncs if the bank's ids differ)."""
        root = Path(directory)
        meta_path = root / "index_meta.json"
        if not meta_path.exists():
            raise ValueError(f"{root} holds no saved SpecIndex (index_meta.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta["d"] != bank.d or not same_gamma(meta["gamma"], bank.gamma):
            raise ValueError(f"index was built for d={meta['d']}, gamma={meta['gamma']}; the bank has d={bank.d}, "
                             f"gamma={bank.gamma}")
        obj = cls.__new__(cls)
        obj.bank, obj.factory, obj.built_factory = bank, meta["factory"], meta["built_factory"]
        obj.candidates, obj.probe, obj.seed = int(meta["candidates"]), meta["probe"], int(meta["seed"])
        obj.device = resolve_device(device)
        obj.embedder = SpecEmbedder.load(root / "index_embedder.npz")
        obj._kind, obj._D = obj.embedder.kind, obj.embedder.D
        obj._cpu = _faiss().read_index(str(root / "index.faiss"))
        obj._gpu = obj._gpu_res = None
        obj._tomb = set(int(i) for i in meta["tombstones"])
        obj._built_n = int(meta.get("built_n", meta["N"]))
        if not np.array_equal(obj.indexed_ids(), np.sort(bank.ids)):
            logger.warning("SpecIndex.load: the bank's ids differ from the saved index's; syncing")
            obj.sync()
        return obj
