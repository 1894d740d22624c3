"""A :class:`~lwgpu.market.Market` whose statistical search runs on a Dask cluster: :class:`DistributedMarket`.

The market stays what it is (the database, the files, its memory-mapped banks: the durable truth); the
wrapper keeps one :class:`~lwgpu.distributed.ShardedBank` per input dimension in step with the market's
banks and routes :meth:`search` to it: the semantic filter runs in the database as before, the admitted
ids go to the shards, and the single and mixture results are those of ``Market.search`` over the same
specs by exact scan. Writes made through the wrapper (:meth:`add_many`, :meth:`submit_many`,
:meth:`delete`) reach the shards at once; after writes made elsewhere, call :meth:`sync`. Everything
else (``get``, ``list``, ``close``, ...) is the market's own.

``distributed/`` sits above ``market/``: the market knows nothing of Dask.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from .. import settings
from ..search.results import SearchResult
from ..spec.validation import same_gamma
from .shard import Rows
from .sharded_bank import ShardedBank

logger = logging.getLogger(__name__)


class DistributedMarket:
    """``market`` with its banks sharded over the workers of ``client``.

    Parameters
    ----------
    market : lwgpu.market.Market
    client : distributed.Client
    **shard_options
        Passed to every :class:`ShardedBank` (``device``, ``backend``, ``n_shards``, ``index``, ...).
    """

    def __init__(self, market: Any, client: Any, **shard_options: Any) -> None:
        self.market = market
        self.client = client
        self.shard_options = dict(shard_options)
        self.banks: dict[int, ShardedBank] = {}
        self.sync()

    def __getattr__(self, name: str) -> Any:
        if name in ("market", "banks", "client", "shard_options"):
            raise AttributeError(name)
        return getattr(self.market, name)

    def __len__(self) -> int:
        return len(self.market)

    def __contains__(self, id: Any) -> bool:
        return id in self.market

    def __repr__(self) -> str:
        return f"DistributedMarket({self.market.root}, banks={ {d: len(b) for d, b in self.banks.items()} })"

    # ------------------------------------------------------------------ keeping the shards in step
    def sync(self) -> dict[int, tuple[int, int]]:
        """Bring every sharded bank to its market bank's ids; returns ``{d: (added, removed)}``."""
        changes = {}
        _, dims = self.market.store.ids_and_dims()
        for d in sorted(set(np.unique(dims).tolist()) | set(self.banks)):
            bank = self.market.bank(int(d))
            if bank is None or len(bank) == 0:
                old = self.banks.pop(int(d), None)
                if old is not None:
                    changes[int(d)] = (0, len(old))
                    old.close()
                continue
            sb = self.banks.get(int(d))
            if sb is None:
                self.banks[int(d)] = ShardedBank(self.client, bank, **self.shard_options)
                changes[int(d)] = (len(bank), 0)
                continue
            have, want = sb.ids, np.asarray(bank.ids, np.int64)
            new, gone = want[~np.isin(want, have)], have[~np.isin(have, want)]
            if gone.size:
                sb.remove(gone)
            if new.size:
                sb.add(Rows.of(bank, new))
            changes[int(d)] = (int(new.size), int(gone.size))
        return changes

    def add_many(self, models: Sequence[Any], semantic_specs: Sequence[Mapping[str, Any]], rkmes: Sequence[Any],
                 **kwargs: Any) -> list[Any]:
        """``Market.add_many``, then the stored specs go to the shards."""
        out = self.market.add_many(models, semantic_specs, rkmes, **kwargs)
        self._after_insert([i for i in out if isinstance(i, (int, np.integer))])
        return out

    def add(self, model: Any, semantic_spec: Mapping[str, Any], rkme: Any, output: str = "predict") -> int:
        """``Market.add``, then the spec goes to the smallest shard."""
        i = self.market.add(model, semantic_spec, rkme, output=output)
        self._after_insert([i])
        return i

    def submit_many(self, paths: Sequence[Any], *args: Any, **kwargs: Any) -> list[Any]:
        """``Market.submit_many``, then the stored specs go to the shards."""
        out = self.market.submit_many(paths, *args, **kwargs)
        self._after_insert([i for i in out if isinstance(i, (int, np.integer))])
        return out

    def submit(self, path: Any, semantic_spec: Mapping[str, Any] | None = None) -> int:
        """``Market.submit``, then the spec goes to the smallest shard."""
        i = self.market.submit(path, semantic_spec)
        self._after_insert([i])
        return i

    def _after_insert(self, ids: list[int]) -> None:
        if not ids:
            return
        ids_a = np.asarray(ids, np.int64)
        all_ids, dims = self.market.store.ids_and_dims()
        dim_of = dims[np.searchsorted(all_ids, ids_a)]
        for d in np.unique(dim_of).tolist():
            sb = self.banks.get(int(d))
            bank = self.market.bank(int(d))
            if sb is None:
                self.banks[int(d)] = ShardedBank(self.client, bank, **self.shard_options)
            else:
                sb.add(Rows.of(bank, ids_a[dim_of == d]))

    def delete(self, id: int) -> None:
        """``Market.delete``, then the spec leaves its shard (and the shards rebalance when needed)."""
        all_ids, dims = self.market.store.ids_and_dims()
        pos = np.searchsorted(all_ids, int(id))
        d = int(dims[pos]) if pos < all_ids.size and all_ids[pos] == int(id) else None
        self.market.delete(id)
        if d is not None and d in self.banks:
            self.banks[d].remove([int(id)])

    def close(self) -> None:
        """Release the shards, then close the market."""
        self.release()
        self.market.close()

    def release(self) -> None:
        """Release the shards (the market stays open)."""
        for sb in self.banks.values():
            sb.close()
        self.banks.clear()

    def __enter__(self) -> "DistributedMarket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ search
    def search(self, rkme: Any, semantic: Mapping[str, Any] | None = None, k: int = settings.SEARCH_K,
               mixture: bool = True, max_mixture: int = settings.MIXTURE_MAX,
               method: str = settings.MIXTURE_METHOD) -> SearchResult:
        """``Market.search`` with the statistical step on the shards (same parameters and result type)."""
        from ..market.ingest import as_semantic  # noqa: PLC0415

        if not same_gamma(rkme.gamma, self.market.gamma):
            raise ValueError(f"the user spec has gamma={rkme.gamma} but this market uses gamma={self.market.gamma}; "
                             "fit it with the market's gamma")
        sb = self.banks.get(int(rkme.d))
        if sb is None:
            return SearchResult()
        query = dict(as_semantic(semantic) or {})
        admitted = None
        if query:
            query.setdefault("input_dim", rkme.d)
            admitted = np.asarray(self.market.store.filter_ids(query), np.int64)
            if admitted.size == 0:
                return SearchResult()
        return sb.statistical_search(rkme, k=k, ids=admitted, mixture=mixture, max_mixture=max_mixture,
                                     method=method)


def distribute(market: Any, client: Any, **shard_options: Any) -> DistributedMarket:
    """``market`` with its banks sharded over ``client``'s workers (see :class:`DistributedMarket`)."""
    return DistributedMarket(market, client, **shard_options)
