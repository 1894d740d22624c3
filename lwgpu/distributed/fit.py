"""Fitting the RKMEs of many datasets across a Dask cluster: :func:`fit_many`.

The datasets are cut into chunks, each chunk is fitted on one worker by
:meth:`lwgpu.spec.rkme.RKME.fit_many` (the fused numba kernel on a CPU worker, padded batches on a GPU
worker, ``device="auto"`` resolved there), and the specs come back to the client in input order.
Every dataset is fitted with its own seed (the same seeds :meth:`RKME.fit_many` would give it), and a
dataset's fit does not depend on the others in its batch, so the result equals ``RKME.fit_many`` over
the same data with the same seeds.

Datasets may be arrays on the client (scattered to the workers once), ``dask.delayed`` objects or
``distributed`` futures (computed or already held on the workers: the data never pass through the
client), or a ``dask.bag.Bag`` of arrays (one task per partition).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

from .. import settings
from ..spec.fit import per_dataset_seeds
from ..spec.rkme import RKME
from ._deps import require, worker_addresses

logger = logging.getLogger(__name__)


def _fit_chunk(seeds: list[int], options: dict[str, Any], *datasets: Any) -> list[RKME]:
    """Worker side: fit one chunk (a list of arrays, or one bag partition) with its own seeds; CPU specs back."""
    if len(datasets) == 1 and isinstance(datasets[0], list):  # a bag partition
        datasets = tuple(datasets[0])
    if len(datasets) != len(seeds):
        raise ValueError(f"a chunk of {len(datasets)} datasets got {len(seeds)} seeds")
    specs = RKME.fit_many(list(datasets), seed=list(seeds), progress=False, **options)
    return [s if s.device.type == "cpu" else s.to("cpu") for s in specs]


def _n_workers(client: Any) -> int:
    return max(1, len(worker_addresses(client)))


def _as_futures(client: Any, items: list[Any]) -> list[Any]:
    """Every item as a future on the cluster: futures as they are, delayed objects computed there, arrays scattered."""
    distributed = require("distributed", "lwgpu.distributed.fit_many")
    dask = require("dask", "lwgpu.distributed.fit_many")
    out: list[Any] = [None] * len(items)
    local, lazy = [], []
    for j, x in enumerate(items):
        if isinstance(x, distributed.Future):
            out[j] = x
        elif dask.is_dask_collection(x):
            lazy.append(j)
        else:
            local.append(j)
    if lazy:
        for j, f in zip(lazy, client.compute([items[j] for j in lazy])):
            out[j] = f
    if local:
        for j, f in zip(local, client.scatter([items[j] for j in local], hash=False)):
            out[j] = f
    return out


def fit_many(
    client: Any,
    datasets: Any,
    K: int = settings.K,
    gamma: float = settings.GAMMA,
    steps: int | None = None,
    seed: int | Sequence[int] = 0,
    device: str = "auto",
    dtype: Any = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> list[RKME]:
    """Fit one RKME per dataset on the workers of ``client``; the same specs as ``RKME.fit_many``.

    Parameters
    ----------
    client : distributed.Client
    datasets : list of arrays (n_i, d_i) | list of dask.delayed | list of futures | dask.bag.Bag of arrays
    K, gamma, steps, dtype, **options
        As in :meth:`lwgpu.spec.rkme.RKME.fit_many` (``nan_policy``, ``engine``, ``max_points``, ...).
    seed : int or one int per dataset
        Each dataset's seed (an int applies to each), so a dataset fits as it would alone.
    device : str
        Where each worker fits, resolved on the worker (``"auto"``: its GPU when it has one).
    chunk_size : int, optional
        Datasets per task (default: enough for about 4 tasks per worker). A bag uses its partitions.
    progress : bool, optional
        A tqdm bar over finished datasets (default: when fitting >= 8 datasets).

    Returns
    -------
    list of RKME, in input order, on the client's CPU, with ``num_points`` set.
    """
    require("distributed", "lwgpu.distributed.fit_many")
    from tqdm.auto import tqdm  # noqa: PLC0415

    distributed = require("distributed", "lwgpu.distributed.fit_many")
    opts = {"K": K, "gamma": gamma, "steps": steps, "device": device, "dtype": dtype, **options}
    try:
        bag = require("dask.bag", "lwgpu.distributed.fit_many")
        is_bag = isinstance(datasets, bag.Bag)
    except ImportError:
        is_bag = False
    if is_bag:
        parts = client.compute(datasets.to_delayed())
        sizes = client.gather([client.submit(len, p, pure=False) for p in parts])
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        n = int(bounds[-1])
        seeds = per_dataset_seeds(seed, n)
        chunks = [((int(bounds[j]), int(bounds[j + 1])), [p]) for j, p in enumerate(parts) if sizes[j]]
    else:
        if isinstance(datasets, np.ndarray) and datasets.ndim == 2:
            raise ValueError("fit_many expects a list of (n, d) datasets; for one dataset use RKME.fit(X)")
        items = list(datasets)
        n = len(items)
        if n == 0:
            raise ValueError("fit_many got no datasets; pass a non-empty list of (n, d) arrays")
        seeds = per_dataset_seeds(seed, n)
        size = int(chunk_size) if chunk_size else max(1, math.ceil(n / (4 * _n_workers(client))))
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        futs = _as_futures(client, items)
        chunks = [((s, min(s + size, n)), futs[s : s + size]) for s in range(0, n, size)]
    if n == 0:
        raise ValueError("fit_many got an empty bag; pass at least one dataset")
    tasks = {}
    for (s, e), args in chunks:
        f = client.submit(_fit_chunk, seeds[s:e], opts, *args, pure=False)
        tasks[f.key] = (s, e, f)
    out: list[Any] = [None] * n
    show = progress if progress is not None else n >= 8
    with tqdm(total=n, desc="fit RKME (dask)", unit="spec", disable=not show) as bar:
        for f in distributed.as_completed([t[2] for t in tasks.values()]):
            s, e, _ = tasks[f.key]
            out[s:e] = f.result()
            bar.update(e - s)
    logger.info("fitted %d RKME specs on %d workers in %d tasks", n, _n_workers(client), len(tasks))
    return out
