"""Fitting RKME specifications: many datasets at once, on the CPU or in padded batches on a GPU.

Objective (DESIGN.md section 2): for data x_1..x_n, minimise over z (K, d) and beta on the simplex

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

Two engines run this same algorithm on the same random draws (``engine="auto"`` picks):

- ``"numba"`` (the CPU default): the whole fit of one dataset in one compiled kernel
  (:mod:`lwgpu.spec._fit_numba`): per round two single-threaded BLAS products, one pass of a
  vectorised exponential and one QP. A market's specs (n ~ 10^3, K = 100) take a few milliseconds each.
- ``"torch"`` (any device, the GPU default): datasets in padded batches of (B, n, d) tensors; on a GPU
  one batch fits hundreds of datasets at once. On the CPU it is bound by per-op overhead, and batches
  whose kernel blocks are small (``small_work``) run on one torch thread.

For large n the z-steps use a fixed uniform subsample of ``max_points`` rows per dataset; the final
beta always uses every row. ``step_size=`` (with e.g. ``steps=3``) selects the reference package's
scheme instead: plain exact-gradient steps of fixed size, beta re-solved after each.

Every random draw of a dataset comes from a generator seeded with that dataset's seed, and each
dataset's accept/reject decisions are its own, so ``fit_many`` gives the same specs as fitting
one dataset at a time (up to floating-point rounding).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Sequence

import numpy as np
import torch

from ..device import numba_available, resolve_device, resolve_dtype
from ..kernels.torch_backend import sqdist
from .kmeans import _uniforms_rows, kmeans_pp_init, lloyd
from .qp import solve_simplex_qp
from .validation import as_matrix, check_gamma, check_K

logger = logging.getLogger(__name__)

__all__ = ["fit_many", "effective_K", "DEFAULT_STEPS", "DEFAULT_MAX_POINTS"]

#: Rounds of (z step, beta QP) when ``steps=None``: as many as the reference package takes, each a
#: better step (residual 0.2-0.35x the reference's, see benchmarks/RESULTS.md); 10-30 lowers it further.
DEFAULT_STEPS = 3
#: Rows per dataset used for the z-steps (all rows when n is smaller); the final beta uses all rows.
DEFAULT_MAX_POINTS = 2048

_OPTIONS = {
    "step_size": None,  # float: reference-style fixed-size gradient steps
    "max_points": DEFAULT_MAX_POINTS,
    "kmeans_iters": 2,
    "kmeans_rounds": 10,  # blocks of D^2 sampling in the k-means++ seeding (None: classic)
    "qp_iters": 50,  # per-round QP iterations (warm-started; z moves again next round)
    "final_qp_iters": 3000,
    "batch_memory": 2**28,  # bytes of kernel blocks per batch
    "chunk_rows": 65536,  # rows per tile in the full-data pass
    "progress": None,  # None: a bar when fitting >= 8 datasets
    "min_eta": 1.0 / 1024,
    "max_eta": 2.0,
    "small_work": 1 << 27,  # CPU batches with fewer kernel-block entries x d run on one torch thread
    "engine": "auto",  # "numba": one fused kernel per dataset (CPU); "torch": padded batches; auto: numba on CPU
}


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """Temporarily cap torch's CPU threads (small fits are overhead-bound: threads only add syncs)."""
    old = torch.get_num_threads()
    if n is None or n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def effective_K(K: int, n: int) -> int:
    """K as the reference package uses it: ``max(1, 2n // 3)`` when K >= n, else K."""
    return max(1, (2 * n) // 3) if K >= n else K


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed)] * n
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"seed must be an int or one int per dataset: got {len(seeds)} seeds for {n} datasets")
    return seeds


def _kernel(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    return torch.exp(sqdist(a, b).mul_(-gamma))


class _Batch:
    """Padded batch state: subsampled data, z, beta and the kernel blocks at the current z."""

    def __init__(self, Xs: torch.Tensor, mask: torch.Tensor, z: torch.Tensor, gamma: float) -> None:
        self.Xs, self.mask, self.gamma = Xs, mask, gamma
        self.XsT = Xs.transpose(1, 2)
        self.padded = not bool(mask.all())
        self.mf = mask.to(Xs.dtype).unsqueeze(1)  # (B, 1, S)
        self.n = self.mf.sum(-1)  # (B, 1)
        self.x2 = (Xs * Xs).sum(-1).unsqueeze(1)  # (B, 1, S)
        self.set_z(z)

    def kernels(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Kzx (B,K,S) masked, m (B,K), Kzz (B,K,K)) at z; few fused in-place ops (overhead-bound)."""
        g = -self.gamma
        z2 = (z * z).sum(-1, keepdim=True)  # (B, K, 1)
        Kzx = torch.baddbmm(z2 + self.x2, z, self.XsT, alpha=-2.0).clamp_min_(0.0).mul_(g).exp_()
        if self.padded:
            Kzx.mul_(self.mf)
        m = Kzx.sum(-1).div_(self.n)
        Kzz = torch.baddbmm(z2 + z2.transpose(1, 2), z, z.transpose(1, 2), alpha=-2.0).clamp_min_(0.0).mul_(g).exp_()
        return Kzx, m, Kzz

    def set_z(self, z: torch.Tensor) -> None:
        self.z = z
        self.Kzx, self.m, self.Kzz = self.kernels(z)

    def objective(self, beta: torch.Tensor, m: torch.Tensor | None = None, Kzz: torch.Tensor | None = None):
        """J = beta'K_zz beta - 2 beta'm, (B,)."""
        m = self.m if m is None else m
        Kzz = self.Kzz if Kzz is None else Kzz
        return (beta * (Kzz @ beta.unsqueeze(-1)).squeeze(-1)).sum(-1) - 2.0 * (beta * m).sum(-1)

    def direction(self, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_i - A_i) (B,K,d) and the preconditioner D (B,K); gradient = 4 gamma beta_i (B_i - A_i)."""
        z = self.z
        Wx = (self.Kzx @ self.Xs).div_(self.n.unsqueeze(-1))
        P = self.Kzz * beta.unsqueeze(1)
        s = P.sum(-1)
        A = s.unsqueeze(-1) * z - P @ z
        Bt = self.m.unsqueeze(-1) * z - Wx
        D = torch.maximum(self.m, s).clamp_min(torch.finfo(z.dtype).tiny)
        return Bt - A, D


def _solve_beta(Kzz: torch.Tensor, c: torch.Tensor, beta0: torch.Tensor, iters: int, polish: bool = False):
    """QP for beta warm-started at beta0 (the solver never returns worse than its warm start).

    Inside the rounds FISTA alone is enough (the next round moves z anyway); the final solve
    adds the active-set polish for an exact beta."""
    return solve_simplex_qp(Kzz, c, x0=beta0, iters=iters, polish=polish)


def _uniform(batch: _Batch) -> torch.Tensor:
    B, K, _ = batch.z.shape
    return torch.full((B, K), 1.0 / K, dtype=batch.z.dtype, device=batch.z.device)


def _optimise(batch: _Batch, steps: int, opts: dict[str, Any], beta: torch.Tensor | None = None) -> torch.Tensor:
    """Run the rounds on a batch from beta (default: solved at the initial z); returns beta (B, K)
    and leaves the final z in batch.z."""
    B, K, _ = batch.z.shape
    if beta is None:
        beta = _solve_beta(batch.Kzz, batch.m, _uniform(batch), opts["qp_iters"])
    step_size = opts["step_size"]
    eta = torch.ones(B, dtype=batch.z.dtype, device=batch.z.device)
    active = torch.ones(B, dtype=torch.bool, device=batch.z.device)
    J = batch.objective(beta)
    for r in range(steps):
        dirn, D = batch.direction(beta)
        if step_size is not None:  # reference scheme: z <- z - step * exact gradient
            batch.set_z(batch.z - float(step_size) * 4.0 * batch.gamma * beta.unsqueeze(-1) * dirn)
        else:
            z_new = batch.z - eta.view(-1, 1, 1) * dirn / D.unsqueeze(-1)
            Kzx, m, Kzz = batch.kernels(z_new)
            J_new = batch.objective(beta, m, Kzz)
            acc = (J_new <= J) & active
            if bool(acc.all()):
                batch.z, batch.Kzx, batch.Kzz, batch.m = z_new, Kzx, Kzz, m
            else:
                a3 = acc.view(-1, 1, 1)
                batch.z = torch.where(a3, z_new, batch.z)
                batch.Kzx = torch.where(a3, Kzx, batch.Kzx)
                batch.Kzz = torch.where(a3, Kzz, batch.Kzz)
                batch.m = torch.where(acc.unsqueeze(-1), m, batch.m)
            eta = torch.where(acc, (eta * 1.5).clamp_max(opts["max_eta"]), eta * 0.5)
            active &= eta >= opts["min_eta"]
        beta_new = _solve_beta(batch.Kzz, batch.m, beta, opts["qp_iters"])
        beta = torch.where(active.unsqueeze(-1), beta_new, beta) if step_size is None else beta_new
        J = batch.objective(beta)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("round %d: J=%s eta=%s", r, J.tolist()[:4], eta.tolist()[:4])
        if step_size is None and not bool(active.any()):
            break
    return beta


def _full_mean_kernel(z: torch.Tensor, x: torch.Tensor, gamma: float, chunk: int) -> torch.Tensor:
    """m_i = 1/n sum_j k(z_i, x_j) over every row of x (n, d), in tiles: (K,)."""
    acc = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    for i in range(0, x.shape[0], chunk):
        acc += _kernel(z, x[i : i + chunk], gamma).sum(-1, dtype=torch.float64)
    return (acc / x.shape[0]).to(z.dtype)


def _draw(x: torch.Tensor, K: int, seed: int, opts: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """A dataset's random draws: its z-step rows (a uniform subsample when n > max_points) and the
    seed of its k-means++ draws, both from a generator seeded with the dataset's own seed."""
    g = torch.Generator().manual_seed(int(seed))
    S = max(min(x.shape[0], int(opts["max_points"])), K)
    if S < x.shape[0]:
        x = x[torch.randperm(x.shape[0], generator=g)[:S].sort().values.to(x.device)]
    return x, int(torch.randint(0, 2**62, (1,), generator=g))


_BLAS_CONTROLLER = None


def _single_thread_blas():
    """A context capping the BLAS libraries (the one numba calls included) at one thread.

    The fused kernel's products are small: multi-threaded BLAS only wakes pools of threads that then
    spin against torch's and numpy's own pools on the same cores (10x slower on 2 cores)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        import scipy.linalg.cython_blas  # noqa: F401, PLC0415 - the BLAS numba links against
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _fit_one_numba(x: torch.Tensor, K: int, gamma: float, steps: int, seed: int,
                   opts: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit one centred CPU dataset x (n, d) with the fused numba kernel: (z (K, d), beta (K,))."""
    from ._fit_numba import fit_one  # noqa: PLC0415 - compiled lazily

    sub, kseed = _draw(x, K, seed, opts)
    rounds = opts["kmeans_rounds"]
    R = K - 1 if rounds is None else max(1, min(int(rounds), K - 1))
    per = [1] + ([len(a) for a in torch.arange(K - 1).tensor_split(R)] if K > 1 else [])
    u = _uniforms_rows([kseed], [sub.shape[0]], len(per), sub.shape[0])[0].numpy()
    np_dt = np.float32 if x.dtype == torch.float32 else np.float64
    X = np.ascontiguousarray(sub.numpy(), dtype=np_dt)
    Xfull = X if sub is x else np.ascontiguousarray(x.numpy(), dtype=np_dt)
    step_size = opts["step_size"]
    z, beta = fit_one(
        X, Xfull, np_dt(gamma), int(steps), np.ascontiguousarray(u), np.asarray(per, dtype=np.int64),
        int(opts["kmeans_iters"]), int(opts["qp_iters"]), int(opts["final_qp_iters"]),
        1e-7 if np_dt is np.float32 else 1e-12, -1.0 if step_size is None else float(step_size),
        float(opts["min_eta"]), float(opts["max_eta"]), int(opts["chunk_rows"]),
    )
    return torch.from_numpy(z), torch.from_numpy(beta).to(x.dtype)


def _fit_batch(xs: list[torch.Tensor], K: int, gamma: float, steps: int, seeds: list[int],
               opts: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fit one batch of centred datasets with the same d and K: returns [(z (K,d), beta (K,))]."""
    dev, dt = xs[0].device, xs[0].dtype
    B, d = len(xs), xs[0].shape[1]
    subs, gens = [], []
    for x, s in zip(xs, seeds):
        sub, kseed = _draw(x, K, s, opts)
        subs.append(sub)
        gens.append(kseed)
    S_max = max(s.shape[0] for s in subs)
    Xs = torch.zeros(B, S_max, d, dtype=dt, device=dev)
    mask = torch.zeros(B, S_max, dtype=torch.bool, device=dev)
    for b, s in enumerate(subs):
        Xs[b, : s.shape[0]] = s
        mask[b, : s.shape[0]] = True
    seeds_z = kmeans_pp_init(Xs, mask, K, gens, rounds=opts["kmeans_rounds"])  # data points, D^2-spread
    z0 = lloyd(Xs, mask, seeds_z, iters=int(opts["kmeans_iters"])) if opts["kmeans_iters"] > 0 else seeds_z
    batch = _Batch(Xs, mask, z0, gamma)
    beta = None
    if opts["kmeans_iters"] > 0:
        # In high dimension (relative to the kernel width) centroids embed worse than data points;
        # start each dataset from whichever of the two gives the lower objective with optimal beta.
        beta = _solve_beta(batch.Kzz, batch.m, _uniform(batch), int(opts["qp_iters"]))
        alt = _Batch(Xs, mask, seeds_z, gamma)
        b_s = _solve_beta(alt.Kzz, alt.m, _uniform(alt), int(opts["qp_iters"]))
        use = alt.objective(b_s) < batch.objective(beta)
        if bool(use.any()):
            batch.set_z(torch.where(use.view(-1, 1, 1), seeds_z, z0))
            beta = torch.where(use.unsqueeze(-1), b_s, beta)
    beta = _optimise(batch, steps, opts, beta)
    # final exact beta for every dataset of the batch at once, with c = m(z) over all rows
    c = torch.stack([
        batch.m[b] if subs[b] is x else _full_mean_kernel(batch.z[b], x, gamma, int(opts["chunk_rows"]))
        for b, x in enumerate(xs)
    ])
    beta = _solve_beta(batch.Kzz, c, beta, int(opts["final_qp_iters"]), polish=True)
    return [(batch.z[b], beta[b]) for b in range(B)]


def fit_many(
    datasets: Sequence[Any],
    K: int = 100,
    gamma: float = 0.1,
    steps: int | None = None,
    device: str | torch.device | None = "auto",
    seed: int | Sequence[int] = 0,
    dtype: str | torch.dtype | None = None,
    nan_policy: str = "raise",
    **options: Any,
) -> list:
    """Fit one RKME per dataset, many at once in padded batches.

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
    list of :class:`lwgpu.spec.rkme.RKME`, in input order, with ``num_points`` set.
    """
    from .rkme import RKME

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
    seeds = _seeds(seed, len(datasets))

    engine = _resolve_engine(opts["engine"], dev)
    show = opts["progress"] if opts["progress"] is not None else len(datasets) >= 8
    from tqdm.auto import tqdm

    # the numba engine works one dataset at a time on one core: torch's own preparation runs on
    # one thread too, so that no idle torch worker spins against the kernel on the other core
    with _cpu_threads(1) if engine == "numba" else contextlib.nullcontext():
        xs, mus = _centred(datasets, nan_policy, dt)
        with tqdm(total=len(datasets), desc="fit RKME", unit="spec", disable=not show) as bar:
            if engine == "numba":
                fitted = _fit_all_numba(xs, K, gamma, steps, seeds, opts, bar)
            else:
                fitted = _fit_all_torch(xs, K, gamma, steps, seeds, opts, dev, bar)
    results = []
    for i, (z, beta) in enumerate(fitted):
        z = (z.to(torch.float64) + mus[i].to(z.device)).to(dt)
        results.append(RKME(z, beta, gamma=gamma, num_points=int(xs[i].shape[0]), dtype=dt, device=dev))
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


def _fit_all_numba(xs: list[torch.Tensor], K: int, gamma: float, steps: int, seeds: list[int],
                   opts: dict[str, Any], bar) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every dataset through the fused CPU kernel, one at a time: [(z (K, d), beta (K,))]."""
    out = []
    with _single_thread_blas():
        for x, seed in zip(xs, seeds):
            out.append(_fit_one_numba(x, effective_K(K, x.shape[0]), gamma, steps, seed, opts))
            bar.update(1)
    return out


def _fit_all_torch(xs: list[torch.Tensor], K: int, gamma: float, steps: int, seeds: list[int],
                   opts: dict[str, Any], dev: torch.device, bar) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Datasets grouped by (d, K) into padded batches under ``batch_memory``: [(z (K, d), beta (K,))]."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault((x.shape[1], effective_K(K, x.shape[0])), []).append(i)
    itemsize = torch.finfo(xs[0].dtype).bits // 8
    batches = []
    for (d, Kg), idx in groups.items():
        idx.sort(key=lambda i: xs[i].shape[0])
        cur: list[int] = []
        for i in idx:
            S = max(min(xs[i].shape[0], int(opts["max_points"])), Kg)
            per = 4 * S * (Kg + d) * itemsize
            if cur and per * (len(cur) + 1) > opts["batch_memory"]:
                batches.append((Kg, cur))
                cur = []
            cur.append(i)
        batches.append((Kg, cur))
    out: list[Any] = [None] * len(xs)
    for Kg, idx in batches:
        work = sum(max(min(xs[i].shape[0], int(opts["max_points"])), Kg) * Kg * (xs[i].shape[1] + 8) for i in idx)
        small = dev.type == "cpu" and work < opts["small_work"]
        with _cpu_threads(1 if small else None):
            fitted = _fit_batch([xs[i].to(dev) for i in idx], Kg, gamma, steps, [seeds[i] for i in idx], opts)
        for i, zb in zip(idx, fitted):
            out[i] = zb
        bar.update(len(idx))
    logger.debug("torch engine: %d datasets in %d batches", len(xs), len(batches))
    return out
