"""One shard of a :class:`~lwgpu.distributed.ShardedBank`: a SpecBank living on one Dask worker (a Dask actor).

The shard holds its specs on the worker's device (``device="auto"``: the worker's GPU when it has one;
under ``dask-cuda`` each worker sees exactly one GPU) and answers the two questions a sharded search
asks: the exact top-k of a batch of queries (:meth:`Shard.search`), and, for the statistical search of
one query, the nearest ``n_top`` admitted specs with the summary of every distance it computed
(:meth:`Shard.pool`: count, sum, min and max, which is all the reference's score rule needs). Spec rows
travel between client and workers as :class:`Rows`: plain arrays of exactly the rows sent, with the
self terms computed at insertion (a pickled SpecBank would also carry its id map, sized by the largest id).

Nothing here imports Dask: the class is plain Python, so it can be tested in-process as well.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import settings
from ..bank import SpecBank
from ..device import numba_available, resolve_device
from ..kernels.backend import take_rows
from ..search.exact import search_exact
from ..search.planner import plan_search

logger = logging.getLogger(__name__)


@dataclass
class Rows:
    """Spec rows in transit between the client and the shards.

    Attributes
    ----------
    ids : int64 (m,); counts : int32 (m,) points per spec; z : (m, K, d) float32/float64; beta : (m, K);
    self_inner : float64 (m,) the self terms computed when the specs entered the bank; gamma : float.
    """

    ids: np.ndarray
    counts: np.ndarray
    z: np.ndarray
    beta: np.ndarray
    self_inner: np.ndarray
    gamma: float

    def __len__(self) -> int:
        return int(self.ids.size)

    @property
    def d(self) -> int:
        return int(self.z.shape[2])

    @property
    def K(self) -> int:
        return int(self.z.shape[1])

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.ids, self.counts, self.z, self.beta, self.self_inner))

    @classmethod
    def of(cls, bank: SpecBank, ids: Any = None) -> "Rows":
        """Copies of ``bank``'s rows for ``ids`` (all when None), in the order of ``ids``, on the CPU."""
        if ids is None:
            pos = np.arange(len(bank), dtype=np.int64)
        else:
            pos = bank.positions(np.asarray(ids, np.int64)) if np.size(ids) else np.empty(0, np.int64)

        def take(t: torch.Tensor) -> np.ndarray:
            return take_rows(t, pos).cpu().numpy()

        return cls(np.asarray(bank.ids, np.int64)[pos], np.asarray(bank.counts, np.int32)[pos], take(bank.z),
                   take(bank.beta), take(bank.self_inner).astype(np.float64), float(bank.gamma))

    @classmethod
    def empty(cls, gamma: float, d: int, K: int, dtype: torch.dtype = torch.float32) -> "Rows":
        dt = np.float64 if dtype == torch.float64 else np.float32
        return cls(np.empty(0, np.int64), np.empty(0, np.int32), np.empty((0, K, d), dt), np.empty((0, K), dt),
                   np.empty(0, np.float64), float(gamma))

    def slice(self, start: int, stop: int) -> "Rows":
        """Rows ``start:stop``."""
        return Rows(self.ids[start:stop], self.counts[start:stop], self.z[start:stop], self.beta[start:stop],
                    self.self_inner[start:stop], self.gamma)

    def padded(self, K: int) -> "Rows":
        """These rows with every spec padded to ``K`` points (zero weights), as a wider bank pads them."""
        if self.K >= K:
            return self
        extra = K - self.K
        return Rows(self.ids, self.counts, np.pad(self.z, ((0, 0), (0, extra), (0, 0))),
                    np.pad(self.beta, ((0, 0), (0, extra))), self.self_inner, self.gamma)

    def bank(self, device: Any = "cpu") -> SpecBank:
        """A new in-memory SpecBank of these rows on ``device``, keeping their ids and self terms."""
        dtype = torch.float64 if self.z.dtype == np.float64 else torch.float32
        out = SpecBank(self.gamma, self.d, self.K, dtype=dtype, device=device)
        dev = out.device
        # adopt the arrays as they are: the self terms were computed once, when the specs entered the market
        out._set_arrays(self.ids.copy(), torch.from_numpy(self.z).to(dev), torch.from_numpy(self.beta).to(dev),
                        self.counts.copy(), torch.from_numpy(self.self_inner).to(dev), borrowed=False)
        return out


def empty_pool(n_admitted: int = 0, method: str = "exact") -> dict[str, Any]:
    """What :meth:`Shard.pool` returns when it has nothing to offer."""
    return {"dists": np.empty(0), "ids": np.empty(0, np.int64), "count": 0, "sum": 0.0,
            "lo": np.inf, "hi": -np.inf, "n_admitted": int(n_admitted), "method": method}


class Shard:
    """A bank shard on one worker.

    Parameters
    ----------
    rows : Rows
        The shard's initial specs (may be empty), placed on ``device``.
    device : ``"auto" | "cpu" | "cuda[:i]"``
        Resolved on the worker: ``"auto"`` is the worker's GPU when it has one.
    backend : str
        Kernel backend name, resolved on the worker for the shard's device (``"auto"``: numba on a CPU,
        CUDA C on a GPU).
    index : dict, optional
        Build a :class:`~lwgpu.index.SpecIndex` over the shard with these keyword options once the
        shard holds ``index_threshold`` specs; it follows every add and remove. None: exact scans only.
    index_threshold : int
        Shard size from which the index is built (when ``index`` is given).
    threads : int, optional
        Threads of torch and numba on the worker (None leaves them).
    """

    def __init__(self, rows: Rows, device: Any = "auto", backend: str = "auto", index: dict | None = None,
                 index_threshold: int = settings.MARKET_INDEX_THRESHOLD, threads: int | None = None) -> None:
        if threads:  # the worker's share of the cores, for torch and numba alike
            torch.set_num_threads(int(threads))
            if numba_available():
                import numba  # noqa: PLC0415

                numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
        self.device = resolve_device(device)
        self.backend = str(backend)
        self.bank: SpecBank = rows.bank(self.device)
        self._index_opts = None if index is None else dict(index)
        self._index_threshold = int(index_threshold)
        self.index: Any = None
        self._follow()
        logger.info("shard on %s (pid %d, %s): %d specs", socket.gethostname(), os.getpid(), self.device, len(self.bank))

    # ------------------------------------------------------------------ state
    def info(self) -> dict[str, Any]:
        """Size, bytes, device, backend, host and process of this shard."""
        return {"n": len(self.bank), "nbytes": int(self.bank.nbytes), "device": str(self.device),
                "backend": self.backend, "K": int(self.bank.K), "host": socket.gethostname(), "pid": os.getpid(),
                "index": self.index is not None}

    def size(self) -> int:
        return len(self.bank)

    def ids(self) -> np.ndarray:
        """int64 (n,) the shard's ids (a copy)."""
        return np.array(self.bank.ids, copy=True)

    def held(self, ids: Any) -> np.ndarray:
        """Those of ``ids`` (int64) this shard holds, sorted."""
        want = np.unique(np.asarray(ids, np.int64).reshape(-1))
        return want[np.isin(want, self.bank.ids)]

    def rows_held(self, ids: Any) -> Rows:
        """The rows of those of ``ids`` this shard holds (possibly none), sorted by id."""
        return Rows.of(self.bank, self.held(ids))

    def rows(self, ids: Any = None) -> Rows:
        """The rows of the given ids (all when None), in that order, to send back to the client."""
        return Rows.of(self.bank, ids)

    # ------------------------------------------------------------------ changes
    def add(self, rows: Rows) -> int:
        """Append ``rows`` (ids and self terms as they are); returns the new size."""
        if len(rows):
            new = self.bank.add(rows.bank(self.device), ids=rows.ids)
            if self.index is not None:
                self.index.add(new)
            else:
                self._follow()
        return len(self.bank)

    def remove(self, ids: Any) -> tuple[int, int]:
        """Remove those of ``ids`` this shard holds (others are ignored); returns (removed, new size)."""
        want = np.unique(np.asarray(ids, np.int64).reshape(-1))
        mine = want[np.isin(want, self.bank.ids)]
        if mine.size:
            self.bank.remove(mine)
            if self.index is not None:
                self.index.remove(mine)
        return int(mine.size), len(self.bank)

    def take(self, n: int) -> Rows:
        """Remove and return the last ``n`` rows (the cheapest to remove: nothing moves into holes)."""
        n = max(0, min(int(n), len(self.bank)))
        ids = np.array(self.bank.ids[len(self.bank) - n:], copy=True)
        out = self.rows(ids)
        self.remove(ids)
        return out

    def _follow(self) -> None:
        """Build the shard's index once it is large enough (when one was asked for)."""
        if self._index_opts is None or self.index is not None or len(self.bank) < self._index_threshold:
            return
        from ..index import SpecIndex  # noqa: PLC0415 - FAISS only where an index is asked for

        self.index = SpecIndex(self.bank, device=self.device, backend=self.backend, **self._index_opts)

    # ------------------------------------------------------------------ search
    def search(self, query: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of the shard for Q queries: (dists float64 (Q, k'), ids int64 (Q, k')), ``inf``/``-1`` pad."""
        nb = search_exact(self.bank, query, k=int(k), backend=self.backend, device=self.device)
        return nb.dists, nb.ids

    def pool(self, query: Any, n_top: int, allowed: Any = None) -> dict[str, Any]:
        """Statistical-search pool of one query: the ``n_top`` nearest admitted specs and distance summary.

        ``allowed`` (int64 ids, any of them possibly on other shards) restricts the admitted specs; None
        admits all. Returns ``dists`` (m,) ascending (ties by id), ``ids`` (m,), and over every finite
        distance the planner computed: ``count``, ``sum``, ``lo``, ``hi``; plus ``n_admitted`` and the
        planner's ``method``.
        """
        if allowed is not None:
            allowed = np.asarray(allowed, np.int64)
            allowed = allowed[np.isin(allowed, self.bank.ids)]
            if allowed.size == len(self.bank):
                allowed = None  # everything of this shard: the unfiltered path, as a single bank would take
            elif allowed.size == 0:
                return empty_pool(0, "exact-rows")
        if len(self.bank) == 0:
            return empty_pool(0)
        idx = self.index if self.index is not None and len(self.index) > 0 else None
        planned = plan_search(self.bank, query, k=int(n_top), allowed=allowed, index=idx, backend=self.backend,
                              device=self.device, keep_all=True)
        d, i = planned.pool_dists[0], planned.pool_ids[0]
        keep = (i >= 0) & ~np.isnan(d)
        d, i = d[keep], i[keep]
        return {"dists": d[:n_top].copy(), "ids": i[:n_top].copy(), "count": int(d.size), "sum": float(d.sum()),
                "lo": float(d.min()) if d.size else np.inf, "hi": float(d.max()) if d.size else -np.inf,
                "n_admitted": int(planned.n_admitted), "method": planned.method}
