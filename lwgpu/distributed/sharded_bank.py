"""ShardedBank: a SpecBank split over Dask workers, one shard per worker, searched by fan-out and exact merge.

Each shard is a :class:`~lwgpu.distributed.shard.Shard` Dask actor pinned to one worker (its initial rows
are scattered to that worker first as plain arrays, so they never pass through the scheduler). The shard keeps its specs
on the worker's device (``device="auto"``: the worker's GPU under ``dask-cuda``, one GPU per worker).

- :meth:`ShardedBank.search` sends the queries to every shard, each computes its exact top-k, and the
  client merges them (:func:`~lwgpu.distributed.merge.merge_neighbors`): the same
  :class:`~lwgpu.search.results.Neighbors` as :func:`lwgpu.search.exact.search_exact` over the whole bank.
- :meth:`ShardedBank.statistical_search` is :func:`lwgpu.search.statistical.statistical_search` over
  shards: each shard returns its ``max(k, max_mixture**2)`` nearest admitted specs and the summary of
  every distance it computed; the client merges them, fetches the specs of the global candidates from
  their shards (a second, small round trip), and runs the same mixture QP and score rule on them. The
  result equals the single-process search over the same specs (float tolerance).
- :meth:`add` puts new specs on the smallest shards (a batch is water-filled), :meth:`remove` removes
  them wherever they are and then :meth:`rebalance` moves specs from the largest to the smallest shards
  once ``max - min`` exceeds ``max_imbalance`` times the mean shard size.

The client keeps only the shard sizes: ids are looked up on the shards, so the client's memory does not
grow with the bank. Actors are not resilient: if a worker dies, its shard is lost; rebuild the
ShardedBank from the market's banks (which are the durable copy).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

import numpy as np
import torch

from .. import settings
from ..bank import SpecBank
from ..kernels.backend import get_backend, pack
from ..search.mixture import mixture_auto, mixture_greedy
from ..search.results import MixtureItem, Neighbors, SearchResult, SingleItem
from ..search.statistical import METHODS, cross_from_dists
from ._deps import require, worker_addresses
from .balance import balance_moves, water_fill
from ..search.scores import scores_from_stats
from .merge import Pool, merge_neighbors, merge_pools
from .shard import Rows, Shard

logger = logging.getLogger(__name__)


def _cpu_query(query: Any) -> Any:
    """The query as it is, with RKMEs / banks on a GPU moved to the CPU (workers may have other devices)."""
    def one(q: Any) -> Any:
        return q.to("cpu") if getattr(q, "device", torch.device("cpu")).type != "cpu" else q
    if isinstance(query, (list, tuple)):
        return [one(q) for q in query]
    return one(query)


class ShardedBank:
    """A spec bank sharded over the workers of a Dask ``client``, one shard per worker.

    Parameters
    ----------
    client : distributed.Client
    bank : SpecBank
        The specs to distribute (copied; the bank itself is not changed). May be empty.
    workers : list of worker addresses, optional
        Where the shards go (default: every worker of the client, sorted by address).
    n_shards : int, optional
        Number of shards (default ``len(workers)``); shards are assigned to workers round robin.
    device, backend : str
        Where each shard computes and with which kernel backend, resolved on its worker (``"auto"``:
        the worker's GPU when it has one, numba on a CPU).
    index : dict, optional
        Give each shard its own :class:`~lwgpu.index.SpecIndex` (these keyword options) once it holds
        ``index_threshold`` specs. Searches then take the index path per shard (approximate candidates,
        re-ranked exactly), as a single bank with an index does.
    max_imbalance : float
        :meth:`remove` rebalances when ``max - min`` shard size exceeds this fraction of the mean size.
    mixture_device : str
        Where the client solves the mixture QP (a few float64 candidates): ``"cpu"`` by default.
    """

    def __init__(self, client: Any, bank: SpecBank, workers: Sequence[str] | None = None, n_shards: int | None = None,
                 device: str = "auto", backend: str = "auto", index: dict | None = None,
                 index_threshold: int = settings.MARKET_INDEX_THRESHOLD, max_imbalance: float = 0.1,
                 mixture_device: str = "cpu", threads: int | None = None) -> None:
        require("distributed", "ShardedBank")
        if not isinstance(bank, SpecBank):
            raise ValueError(f"bank must be a SpecBank, got {type(bank).__name__}")
        if not max_imbalance >= 0:
            raise ValueError(f"max_imbalance must be >= 0, got {max_imbalance}")
        self.client = client
        self.gamma, self.d, self.dtype = bank.gamma, bank.d, bank.dtype
        self.max_imbalance = float(max_imbalance)
        self.mixture_device = mixture_device
        self._lock = threading.RLock()
        live = worker_addresses(client) if workers is None else list(workers)
        if not live:
            raise ValueError("the Dask client has no workers; start a cluster with workers (e.g. LocalCluster(n_workers=2))")
        n = len(live) if n_shards is None else int(n_shards)
        if n < 1:
            raise ValueError(f"n_shards must be >= 1, got {n_shards}")
        self.workers = [live[j % len(live)] for j in range(n)]
        bounds = np.linspace(0, len(bank), n + 1).round().astype(np.int64)
        ids = np.array(bank.ids, copy=True)
        futures = []
        for j, w in enumerate(self.workers):
            part = ids[bounds[j] : bounds[j + 1]]
            rows = Rows.of(bank, part) if part.size else Rows.empty(bank.gamma, bank.d, bank.K, bank.dtype)
            rows_f = client.scatter(rows, workers=[w])
            futures.append(client.submit(Shard, rows_f, device=device, backend=backend, index=index,
                                         index_threshold=index_threshold, threads=threads, actor=True,
                                         workers=[w], allow_other_workers=False, pure=False))
            del rows
        self._actor_futures = futures
        self.shards = [f.result() for f in futures]
        self._sizes = np.diff(bounds).astype(np.int64)
        self._next_id = int(ids.max()) + 1 if ids.size else 0
        logger.info("ShardedBank: %d specs in %d shards on %d workers, sizes %s", len(bank), n, len(set(self.workers)),
                    self._sizes.tolist())

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return int(self._sizes.sum())

    def __repr__(self) -> str:
        return (f"ShardedBank(N={len(self)}, shards={len(self.shards)}, d={self.d}, gamma={self.gamma}, "
                f"sizes={self._sizes.tolist()})")

    @property
    def sizes(self) -> np.ndarray:
        """int64 (S,) specs per shard (as the client last heard from the shards)."""
        return self._sizes.copy()

    def _call(self, method: str, args_per_shard: Sequence[tuple] | None = None, shards: Sequence[int] | None = None,
              **kwargs: Any) -> list[Any]:
        """Call ``method`` on the given shards at once (fan-out) and wait for every answer, in order."""
        which = range(len(self.shards)) if shards is None else shards
        futs = []
        for n, j in enumerate(which):
            args = () if args_per_shard is None else args_per_shard[n]
            futs.append(getattr(self.shards[j], method)(*args, **kwargs))
        return [f.result() for f in futs]

    def info(self) -> list[dict[str, Any]]:
        """Per shard: size, bytes, device, backend, host, pid."""
        return self._call("info")

    def refresh_sizes(self) -> np.ndarray:
        """Ask every shard for its size (the client's copy is updated too)."""
        with self._lock:
            self._sizes = np.asarray(self._call("size"), np.int64)
            return self.sizes

    def shard_ids(self) -> list[np.ndarray]:
        """The ids held by each shard (int64 arrays)."""
        return self._call("ids")

    @property
    def ids(self) -> np.ndarray:
        """int64 (N,) every id, sorted ascending (gathered from the shards)."""
        parts = self.shard_ids()
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def gather(self) -> SpecBank:
        """Every spec back in one in-memory SpecBank on the client (for checks and small banks)."""
        out = None
        for rows in self._call("rows"):
            if out is None:
                out = rows.bank()
            elif len(rows):
                out.add(rows.bank(), ids=rows.ids)
        return out

    # ------------------------------------------------------------------ changes
    def add(self, specs: Any, ids: Any = None) -> np.ndarray:
        """Add specs (an RKME, a list of RKMEs, a SpecBank or :class:`Rows`), the smallest shards first; returns
        their ids.

        Default ids continue after the largest id this object has seen. Self terms are computed here,
        once per batch, as :meth:`lwgpu.bank.SpecBank.add` computes them.
        """
        with self._lock:
            if isinstance(specs, Rows) and ids is None:
                rows = specs
            elif isinstance(specs, SpecBank):
                if specs.d != self.d:
                    raise ValueError(f"the added specs have dimension d={specs.d} but this bank holds d={self.d}")
                rows = Rows.of(specs)
                if ids is not None:
                    rows.ids = np.asarray(ids, np.int64).reshape(-1)
                    if rows.ids.size != len(specs) or np.unique(rows.ids).size != rows.ids.size:
                        raise ValueError(f"ids must be {len(specs)} unique integers, one per added spec")
            else:
                specs = [specs] if hasattr(specs, "z") else list(specs)
                if not specs:
                    return np.empty(0, np.int64)
                tmp = SpecBank(self.gamma, self.d, dtype=self.dtype)  # self terms computed as SpecBank.add does
                new_ids = (np.arange(self._next_id, self._next_id + len(specs), dtype=np.int64) if ids is None
                           else np.asarray(ids, np.int64))
                tmp.add([s.to("cpu") if s.device.type != "cpu" else s for s in specs], ids=new_ids)
                rows = Rows.of(tmp)
            m = len(rows)
            if m == 0:
                return np.empty(0, np.int64)
            new_ids = np.array(rows.ids, copy=True)
            clash = np.concatenate(self._call("held", [(new_ids,)] * len(self.shards)))
            if clash.size:
                raise ValueError(f"ids {clash[:10].tolist()} are already in the sharded bank; remove them first "
                                 "or pass new ids")
            give = water_fill(self._sizes, m)
            bounds = np.concatenate([[0], np.cumsum(give)])
            which = [j for j in range(len(self.shards)) if give[j]]
            parts = [(rows.slice(int(bounds[j]), int(bounds[j + 1])),) for j in which]
            for j, size in zip(which, self._call("add", parts, shards=which)):
                self._sizes[j] = size
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
            logger.debug("ShardedBank.add: %d specs as %s; sizes %s", m, give.tolist(), self._sizes.tolist())
            return new_ids

    def remove(self, ids: Any, rebalance: bool = True) -> None:
        """Remove ``ids`` (ValueError naming the ones no shard holds; then nothing is removed), then rebalance
        when the shards' sizes differ by more than ``max_imbalance`` of the mean."""
        want = np.unique(np.asarray(ids, np.int64).reshape(-1))
        if want.size == 0:
            return
        with self._lock:
            held = np.concatenate(self._call("held", [(want,)] * len(self.shards)))
            missing = want[~np.isin(want, held)]
            if missing.size:
                raise ValueError(f"ids {missing[:10].tolist()} are not in the sharded bank")
            out = self._call("remove", [(want,)] * len(self.shards))
            self._sizes = np.asarray([size for _, size in out], np.int64)
            if rebalance:
                self.rebalance()

    def imbalance(self) -> float:
        """``(max - min) / mean`` of the shard sizes (0 for an empty bank)."""
        mean = float(self._sizes.mean()) if self._sizes.size else 0.0
        return float(self._sizes.max() - self._sizes.min()) / mean if mean > 0 else 0.0

    def rebalance(self, force: bool = False) -> list[tuple[int, int, int]]:
        """Move specs from the largest to the smallest shards when the imbalance exceeds ``max_imbalance``
        (always with ``force``), so that sizes then differ by at most one; returns the moves made."""
        with self._lock:
            if len(self.shards) < 2 or not (force or self.imbalance() > self.max_imbalance):
                return []
            moves = balance_moves(self._sizes)
            for src, dst, n in moves:
                rows = self.shards[src].take(n).result()
                self._sizes[src] -= len(rows)
                self._sizes[dst] = self.shards[dst].add(rows).result()
            logger.info("ShardedBank.rebalance: %d moves, sizes %s", len(moves), self._sizes.tolist())
            return moves

    def close(self) -> None:
        """Release the shards (their actors and data on the workers)."""
        with self._lock:
            self.shards = []
            for f in self._actor_futures:
                f.release()
            self._actor_futures = []
            self._sizes = np.zeros(0, np.int64)

    def __enter__(self) -> "ShardedBank":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ search
    def search(self, query: Any, k: int = settings.EXACT_K) -> Neighbors:
        """Exact k nearest specs of each query over every shard (squared MMD).

        Parameters
        ----------
        query : RKME | list[RKME] | SpecBank
            Q queries with the bank's d and gamma.
        k : int

        Returns
        -------
        Neighbors
            ``dists`` float64 (Q, k), ``ids`` int64 (Q, k), as :func:`lwgpu.search.exact.search_exact` returns
            over the unsharded bank (ties by the smaller id; ``inf`` / ``-1`` when N < k).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if not self.shards:
            raise ValueError("this ShardedBank was closed")
        q = _cpu_query(query)
        parts = self._call("search", [(q, int(k))] * len(self.shards))
        return merge_neighbors(parts, int(k), "exact")

    def pool(self, query: Any, n_top: int, ids: Any = None) -> Pool:
        """The merged statistical-search pool of one query: global ``n_top`` nearest admitted + distance summary."""
        q = _cpu_query(query)
        allowed = None if ids is None else np.unique(np.asarray(ids, np.int64).reshape(-1))
        return merge_pools(self._call("pool", [(q, int(n_top), allowed)] * len(self.shards)), n_top)

    def fetch(self, ids: np.ndarray) -> Rows:
        """The specs ``ids`` from the shards holding them (one round trip), as :class:`Rows` in the order of ``ids``."""
        ids = np.asarray(ids, np.int64)
        parts = [p for p in self._call("rows_held", [(ids,)] * len(self.shards)) if len(p)]
        if sum(len(p) for p in parts) != np.unique(ids).size:
            raise ValueError("some of the requested ids are on no shard (the bank changed during the search?)")
        K = max(p.K for p in parts)
        pad = [p.padded(K) for p in parts]
        all_ids = np.concatenate([p.ids for p in pad])
        order = np.argsort(all_ids)[np.searchsorted(all_ids, ids, sorter=np.argsort(all_ids))]
        cat = {f: np.concatenate([getattr(p, f) for p in pad])[order] for f in ("ids", "counts", "z", "beta", "self_inner")}
        return Rows(gamma=self.gamma, **cat)

    def statistical_search(self, query: Any, k: int = settings.SEARCH_K, ids: Any = None, mixture: bool = True,
                           max_mixture: int = settings.MIXTURE_MAX, method: str = settings.MIXTURE_METHOD,
                           decay_rate: float = settings.MIXTURE_DECAY_RATE,
                           weight_cutoff: float = settings.MIXTURE_WEIGHT_CUTOFF) -> SearchResult:
        """Single and mixture search of one user RKME ``query`` over the shards.

        The same parameters and result as :func:`lwgpu.search.statistical.statistical_search` (``ids``: the
        admitted market ids, None = all): the shards compute the distances, the client merges them, fetches
        the candidates' specs and solves the mixture QP on ``mixture_device``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if max_mixture < 1:
            raise ValueError(f"max_mixture must be >= 1, got {max_mixture}")
        if len(self) == 0 or (ids is not None and np.asarray(ids).size == 0):
            return SearchResult()
        t0 = time.perf_counter()
        n_top = max(k, max_mixture * max_mixture) if mixture else k
        pool = self.pool(query, n_top, ids)
        timings = {"scan": time.perf_counter() - t0}
        dists, found = pool.dists, pool.ids
        if dists.size == 0:
            return SearchResult(n_candidates=pool.n_admitted, method=pool.method, timings=timings)
        t1 = time.perf_counter()
        n_top = min(n_top, dists.size)
        mix = None
        if mixture and max_mixture > 1 and n_top > 1 and dists[0] > 0:
            top_ids = found[:n_top]
            cand = self.fetch(top_ids)
            timings["fetch"] = time.perf_counter() - t1
            uu = float(pack(query).self_inner[0])
            be = get_backend("torch", self.mixture_device, torch.float64)  # as statistical_search's mixture_gram
            G = be.gram(torch.from_numpy(cand.z), torch.from_numpy(cand.beta), self.gamma)
            c = torch.as_tensor(cross_from_dists(dists[:n_top], uu, cand.self_inner), device=G.device)
            fn = mixture_greedy if method == "greedy" else mixture_auto
            kw = {"decay_rate": decay_rate} if method == "greedy" else {"weight_cutoff": weight_cutoff}
            m = fn(G, c, uu, max_mixture, **kw)
            if len(m.members) > 1:
                mix = m
        single_d = dists[: min(k, dists.size)]
        if mix is None:
            scores = scores_from_stats(single_d, pool.lo, pool.hi, pool.mean)
            mix_item = None
        else:
            mm = float(mix.mmd2)
            lo, hi = min(pool.lo, mm), max(pool.hi, mm)
            mean = (pool.total + mm) / (pool.count + 1)
            scores = scores_from_stats(single_d, lo, hi, mean)
            mix_score = float(scores_from_stats(np.array([mm]), lo, hi, mean)[0])
            mix_item = MixtureItem(ids=tuple(int(found[j]) for j in mix.members), weights=mix.weights, mmd2=mm,
                                   score=mix_score)
            if int(mix_score * 100) == int(scores[0] * 100):
                mix_item = None
        single = [SingleItem(id=int(found[j]), score=float(scores[j]), mmd2=float(dists[j]))
                  for j in range(single_d.size)]
        timings["mixture"] = time.perf_counter() - t1
        timings["total"] = time.perf_counter() - t0
        return SearchResult(single=single, mixture=mix_item, n_candidates=pool.n_admitted, method=pool.method,
                            timings=timings)
