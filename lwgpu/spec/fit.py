"""Fitting RKME specifications: many datasets at once, on the CPU or in padded batches on a GPU.

Objective (docs/fitting.md): for data x_1..x_n, minimise over z (K, d) and beta on the simplex

    J(z, beta) = beta' K_zz beta - 2 beta' m(z),      m_i(z) = 1/n sum_j k(z_i, x_j)

which is the squared MMD between the reduced and the full empirical embedding, minus the constant
``1/n^2 sum_jl k(x_j, x_l)``.

Algorithm (defaults match the reference package: K=100, gamma=0.1, k-means init, beta >= 0, sum 1):

1. k-means++ seeding (D^2 sampling in blocks) and a few Lloyd iterations on (a subsample of) X; the
   start is whichever of the centroids and the seeds themselves (data points) gives the lower J with
   optimal beta: in high dimension relative to the kernel width, centroids embed worse than points.
2. ``steps`` rounds of: a preconditioned exact-gradient step on z (the gradient of J w.r.t. z_i is
   ``4 gamma beta_i (B_i - A_i)`` with ``B_i = m_i z_i - 1/n sum_j k(z_i,x_j) x_j`` and
   ``A_i = sum_l beta_l k(z_i,z_l)(z_i - z_l)``; the step moves z_i by ``-eta (B_i - A_i) / D_i``,
   ``D_i = max(m_i, (K_zz beta)_i)``, a mean-shift step with repulsion, which also moves
   zero-weight points uphill on the witness function so the QP can re-use them), accepted only if
   J decreases (else eta is halved: backtracking, so J never increases); then beta is re-solved
   for the new z by the batched simplex QP (:func:`lwgpu.spec.qp.solve_simplex_qp`, warm-started).
3. A final QP for beta (with the exact active-set polish) with ``c = m(z)`` over the full data.

:func:`fit_arrays` returns the fitted arrays; :meth:`lwgpu.spec.rkme.RKME.fit_many` (the public entry
point) wraps them into specs. Defaults live in :mod:`lwgpu.settings` (specs section).

Two engines run this same algorithm on the same random draws (``engine="auto"`` picks):

- ``"numba"`` (the CPU default): the whole fit of one dataset in one compiled kernel
  (:mod:`lwgpu.spec._fit_numba`): per round two single-threaded BLAS products, one pass of a
  vectorised exponential and one QP. A market's specs (n ~ 10^3, K = 100) take a few milliseconds each.
- ``"torch"`` (any device, the GPU default; :mod:`lwgpu.spec._fit_torch`): datasets in padded
  batches of (B, n, d) tensors; on a GPU one batch fits hundreds of datasets at once. On the CPU it
  is bound by per-op overhead, and batches whose kernel blocks are small (``small_work``) run on
  one torch thread.

For large n the z-steps use a fixed uniform subsample of ``max_points`` rows per dataset; the final
beta always uses every row. ``step_size=`` (with e.g. ``steps=3``) selects the reference package's
scheme instead: plain exact-gradient steps of fixed size, beta re-solved after each.

Every random draw of a dataset comes from a generator seeded with that dataset's seed, and each
dataset's accept/reject decisions are its own, so ``fit_arrays`` gives the same specs as fitting
one dataset at a time (up to floating-point rounding).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from .. import settings
from ..device import numba_available, resolve_device, resolve_dtype, single_torch_thread
from .validation import as_matrix, check_gamma, check_K

logger = logging.getLogger(__name__)

__all__ = ["fit_arrays", "effective_K", "DEFAULT_STEPS", "DEFAULT_MAX_POINTS"]

#: Rounds of (z step, beta QP) when ``steps=None``: as many as the reference package takes, each a
#: better step (residual 0.2-0.35x the reference's, see benchmarks/RESULTS.md); 10-30 lowers it further.
DEFAULT_STEPS = settings.FIT_STEPS
#: Rows per dataset used for the z-steps (all rows when n is smaller); the final beta uses all rows.
DEFAULT_MAX_POINTS = settings.FIT_MAX_POINTS

_OPTIONS = {
    "step_size": None,  # float: reference-style fixed-size gradient steps
    "max_points": settings.FIT_MAX_POINTS,
    "kmeans_iters": settings.FIT_KMEANS_ITERS,
    "kmeans_rounds": settings.FIT_KMEANS_ROUNDS,  # blocks of D^2 sampling in the k-means++ seeding (None: classic)
    "qp_iters": settings.FIT_QP_ITERS,  # per-round QP iterations (warm-started; z moves again next round)
    "final_qp_iters": settings.FIT_FINAL_QP_ITERS,
    "batch_memory": settings.FIT_BATCH_MEMORY,  # bytes of kernel blocks per batch
    "chunk_rows": settings.FIT_CHUNK_ROWS,  # rows per tile in the full-data pass
    "progress": None,  # None: a bar when fitting >= 8 datasets
    "min_eta": settings.FIT_MIN_ETA,
    "max_eta": settings.FIT_MAX_ETA,
    "small_work": settings.FIT_SMALL_WORK,  # CPU batches with fewer kernel-block entries x d run on one torch thread
    "engine": settings.FIT_ENGINE,  # "numba": one fused kernel per dataset (CPU); "torch": padded batches; auto: numba on CPU
}


def effective_K(K: int, n: int) -> int:
    """K as the reference package uses it: ``max(1, 2n // 3)`` when K >= n, else K."""
    return max(1, (2 * n) // 3) if K >= n else K


def per_dataset_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per dataset: ``seed`` repeated ``n`` times, or the ``n`` seeds given (ValueError otherwise)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed)] * n
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"seed must be an int or one int per dataset: got {len(seeds)} seeds for {n} datasets")
    return seeds


def fit_arrays(
    datasets: Sequence[Any],
    K: int = settings.K,
    gamma: float = settings.GAMMA,
    steps: int | None = None,
    device: str | torch.device | None = "auto",
    seed: int | Sequence[int] = 0,
    dtype: str | torch.dtype | None = None,
    nan_policy: str = "raise",
    **options: Any,
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Fit one RKME per dataset, many at once (:meth:`lwgpu.spec.rkme.RKME.fit_many` wraps the result).

    Parameters
    ----------
    datasets : sequence of array-like, each (n_i, d_i)
        numpy / torch / pandas / lists. Datasets may differ in n and in d (batches group equal d).
    K : int
        Reduced points per spec (reference default 100); when K >= n_i, ``max(1, 2 n_i // 3)`` is used.
    gamma : float
        Gaussian kernel bandwidth (reference default 0.1).
    steps : int, optional
        Optimisation rounds; default :data:`DEFAULT_STEPS`. ``0`` gives k-means + optimal beta.
    device, dtype
        Where and in which precision to compute (float32 by default, ``"float64"`` on request).
    seed : int or sequence of int
        Seed of every dataset (an int applies to each), so a dataset fits identically alone or batched.
    nan_policy : {"raise", "impute"}
        NaN/Inf are refused, or replaced by column means (as the reference package does).
    **options
        ``step_size`` (reference scheme: fixed-size exact-gradient steps), ``max_points`` (rows per
        dataset for the z-steps, default 2048), ``kmeans_iters``, ``qp_iters``, ``final_qp_iters``,
        ``batch_memory`` (bytes), ``chunk_rows``, ``progress`` (bool), ``min_eta``, ``max_eta``,
        ``small_work`` (CPU batches below this many kernel entries x (d + 8) run on one torch thread,
        because at that size thread synchronisation costs more than it saves), ``engine``
        (``"auto"``: ``"numba"`` on the CPU, ``"torch"`` elsewhere; see the module docstring).

    Returns
    -------
    list of ``(z (K_i, d_i), beta (K_i,), n_i)`` in input order: points and weights in ``dtype`` on
    ``device``, and the rows each dataset had.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown fit options {unknown}; known options are {sorted(_OPTIONS)}")
    opts = {**_OPTIONS, **options}
    if isinstance(datasets, (np.ndarray, torch.Tensor)) and datasets.ndim == 2:
        raise ValueError("fit_many expects a list of (n, d) datasets; for one dataset use RKME.fit(X)")
    datasets = list(datasets)
    if not datasets:
        raise ValueError("fit_many got no datasets; pass a non-empty list of (n, d) arrays")
    K = check_K(K)
    gamma = check_gamma(gamma)
    steps = DEFAULT_STEPS if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if opts["step_size"] is not None and not (float(opts["step_size"]) > 0):
        raise ValueError(f"step_size must be > 0, got {opts['step_size']}")
    if int(opts["max_points"]) < 1:
        raise ValueError(f"max_points must be >= 1, got {opts['max_points']}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    seeds = per_dataset_seeds(seed, len(datasets))

    engine = _resolve_engine(opts["engine"], dev)
    show = opts["progress"] if opts["progress"] is not None else len(datasets) >= 8
    from tqdm.auto import tqdm

    # the numba engine works one dataset at a time on one core: torch's own preparation runs on
    # one thread too, so that no idle torch worker spins against the kernel on the other core
    with single_torch_thread(engine == "numba"):
        xs, mus = _centred(datasets, nan_policy, dt)
        Ks = [effective_K(K, x.shape[0]) for x in xs]
        with tqdm(total=len(datasets), desc="fit RKME", unit="spec", disable=not show) as bar:
            if engine == "numba":
                from ._fit_numba import fit_all  # noqa: PLC0415 - numba compiles lazily

                fitted = fit_all(xs, Ks, gamma, steps, seeds, opts, bar)
            else:
                from ._fit_torch import fit_all  # noqa: PLC0415

                fitted = fit_all(xs, Ks, gamma, steps, seeds, opts, dev, bar)
    results = []
    for i, (z, beta) in enumerate(fitted):
        z = (z.to(torch.float64) + mus[i].to(z.device)).to(dev, dt)
        results.append((z, torch.as_tensor(beta).to(dev, dt).reshape(-1), int(xs[i].shape[0])))
    logger.info("fitted %d RKME specs (K=%d, gamma=%g, steps=%d) with the %s engine on %s",
                len(datasets), K, gamma, steps, engine, dev)
    return results


def _resolve_engine(engine: str, dev: torch.device) -> str:
    """'numba' (one fused kernel per dataset, CPU) or 'torch' (padded batches, any device)."""
    if engine not in ("auto", "numba", "torch"):
        raise ValueError(f"unknown fit engine {engine!r}: use 'auto', 'numba' or 'torch'")
    if engine == "numba" and (dev.type != "cpu" or not numba_available()):
        raise ValueError("engine='numba' needs device='cpu' and numba installed; use engine='torch' otherwise")
    if engine == "auto":
        return "numba" if dev.type == "cpu" and numba_available() else "torch"
    return engine


def _centred(datasets: list, nan_policy: str, dt: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Validated datasets centred on the host (float32 distances stay accurate far from the origin):
    ([x - mean (n, d) in dt], [mean (d,) float64])."""
    xs, mus = [], []
    for i, X in enumerate(datasets):
        name = "X" if len(datasets) == 1 else f"datasets[{i}]"
        x = as_matrix(X, name=name, nan_policy=nan_policy, dtype=torch.float64, device="cpu")
        mu = x.mean(0)
        xs.append((x - mu).to(dt))
        mus.append(mu)
    return xs, mus
