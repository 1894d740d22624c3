"""lwgpu on Dask: banks sharded over workers (one shard per worker / GPU), fitting many datasets across a
cluster, and the cluster factory behind the ``cluster/`` Hydra configs. See docs/distributed.md.

Dask is optional (``pip install 'lwgpu[dist]'``): these modules import it only when used, and say what to
install when it is missing.
"""
from __future__ import annotations

from .balance import balance_moves, water_fill
from .cluster import connect, make_client, make_cluster
from .fit import fit_many
from .market import DistributedMarket, distribute
from ..search.scores import scores_from_stats
from .merge import merge_neighbors, merge_pools
from .shard import Rows, Shard
from .sharded_bank import ShardedBank

__all__ = [
    "ShardedBank", "Shard", "Rows", "DistributedMarket", "distribute", "fit_many", "make_client", "make_cluster",
    "connect", "merge_neighbors", "merge_pools", "scores_from_stats", "water_fill", "balance_moves",
]
