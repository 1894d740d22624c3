"""A clustered spec market made directly as arrays (no fitting): the market the index defaults are tuned on.

Unlike :mod:`lwgpu.data.synthetic` (tasks as data distributions, specs fitted or sampled from them),
this builds spec arrays straight away, vectorised in chunks, so 1,000,000 specs take seconds.
"""
from __future__ import annotations

import numpy as np


def synthetic_spec_arrays(
    n_specs: int,
    n_queries: int = 0,
    K: int = 16,
    d: int = 8,
    n_clusters: int | None = None,
    cluster_scale: float = 4.0,
    task_scale: float = 1.0,
    point_scale: float = 1.0,
    alpha: float = 1.0,
    seed: int = 0,
    gamma: float = 0.1,
    chunk: int = 65536,
) -> dict[str, np.ndarray]:
    """A spec market as arrays: clusters of tasks, one spec per task, users drawn from one task.

    Cluster centres ``~ N(0, cluster_scale^2 I)``; task ``t`` has centre ``c_t = cluster +
    N(0, task_scale^2 I)``; its spec is ``K`` points ``c_t + N(0, point_scale^2 I)`` with
    Dirichlet(``alpha``) weights. A user is a fresh spec drawn the same way from a random task,
    so its nearest market specs are that task and its neighbours in the cluster.

    The scales are in units of ``sqrt(0.8 / (gamma d))`` (1 at gamma=0.1, d=8), so expected squared
    distances times ``gamma`` -- hence kernel values and the market's neighbour structure -- do not
    change with ``d`` or ``gamma``.

    Returns a dict with ``z`` (N, K, d) float32, ``beta`` (N, K) float32, ``centres`` (N, d),
    ``qz`` (Q, K, d), ``qbeta`` (Q, K) and ``qtask`` (Q,) int64 (the task each user came from).
    """
    if n_specs < 1 or K < 1 or d < 1:
        raise ValueError(f"n_specs, K and d must be >= 1; got {n_specs}, {K}, {d}")
    rng = np.random.default_rng(seed)
    unit = float(np.sqrt(0.8 / (gamma * d)))
    cluster_scale, task_scale, point_scale = cluster_scale * unit, task_scale * unit, point_scale * unit
    n_clusters = max(1, n_specs // 100) if n_clusters is None else int(n_clusters)
    cl = rng.standard_normal((n_clusters, d), dtype=np.float32) * cluster_scale
    which = rng.integers(0, n_clusters, size=n_specs)
    centres = cl[which] + rng.standard_normal((n_specs, d), dtype=np.float32) * task_scale
    z = np.empty((n_specs, K, d), np.float32)
    beta = np.empty((n_specs, K), np.float32)
    for s in range(0, n_specs, chunk):
        e = min(s + chunk, n_specs)
        _draw_points(rng, centres[s:e], K, point_scale, alpha, z[s:e], beta[s:e])
    out = {"z": z, "beta": beta, "centres": centres}
    qtask = rng.integers(0, n_specs, size=n_queries).astype(np.int64)
    out["qz"] = np.empty((n_queries, K, d), np.float32)
    out["qbeta"] = np.empty((n_queries, K), np.float32)
    _draw_points(rng, centres[qtask], K, point_scale, alpha, out["qz"], out["qbeta"])
    out["qtask"] = qtask
    return out


def _draw_points(rng: np.random.Generator, centres: np.ndarray, K: int, scale: float, alpha: float,
                 z_out: np.ndarray, b_out: np.ndarray) -> None:
    n, d = centres.shape
    z_out[...] = centres[:, None, :] + rng.standard_normal((n, K, d), dtype=np.float32) * scale
    g = rng.standard_gamma(alpha, size=(n, K)).astype(np.float32) + 1e-12
    b_out[...] = g / g.sum(1, keepdims=True)
