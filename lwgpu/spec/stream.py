"""Streaming RKME fits: one pass over data that does not fit in memory, and merging of specs.

Algorithm (docs/streaming.md). The stream is cut into chunks of ``chunk_rows`` rows. The first chunk
is fitted with the regular engine (:func:`lwgpu.spec.fit.fit_arrays`). After that the spec after
``n_old`` rows, ``S_old = sum_i beta_i k(z_i, .)``, and a new chunk ``x_1..x_c`` define the target

    mu = (n_old / N) S_old + (1 / N) sum_j k(x_j, .),     N = n_old + c,

a kernel mean embedding of ``K + c`` weighted points, which is reduced back to ``K`` points by
:func:`reduce_weighted`: the weighted version of the fit's rounds (a swap of the dead and lightest
points onto chunk rows where the witness ``mu - S`` is largest, kept if it lowers the objective;
preconditioned mean-shift z steps with repulsion against the old spec plus a ``sub_rows`` sample of the
chunk, accepted only when the objective does not increase; the simplex QP for beta warm-started at the
old weights, against every row of the chunk). Memory is one chunk, the spec and one ``K x c`` kernel
block, whatever the number of rows; each row is read once (``passes=2`` reads the data a second time to re-solve beta against the
exact mean embedding of all rows, as :func:`~lwgpu.spec.fit.fit_arrays` does in its last step).

:func:`merge_arrays` is the same reduction for two specs weighted by their row counts (a learnware whose
data grows: merge its stored spec with a spec of the new rows).

Sources (:func:`iter_chunks`): an iterable of (n_i, d) arrays, a 2-D numpy array or ``np.memmap``
(pages are released after each chunk, so resident memory stays bounded), or a path to a ``.npy``
(read with plain file reads), ``.csv`` (pandas chunks) or ``.parquet`` file (pyarrow batches).
"""
from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .. import settings
from ..device import single_torch_thread
from ..kernels.torch_backend import gaussian_kernel
from .fit import fit_arrays
from .qp import solve_simplex_qp
from .validation import as_matrix, check_gamma, check_K

logger = logging.getLogger(__name__)

__all__ = ["iter_chunks", "rechunk", "reduce_weighted", "fit_stream_arrays", "merge_arrays",
           "DEFAULT_CHUNK_ROWS", "DEFAULT_STEPS_PER_CHUNK"]

#: Rows per chunk of a streaming fit (the memory bound is this many rows plus the spec).
DEFAULT_CHUNK_ROWS = 65536
#: Reduction rounds (swap + z step + beta QP) per chunk.
DEFAULT_STEPS_PER_CHUNK = 2
#: Candidate rows (per chunk) and target rows used to score them in the swap of dead points.
_SWAP_CANDIDATES = 256
_SWAP_TARGET_ROWS = 2048
#: beta below this (times 1/K) marks a dead point that the swap may replace.
_DEAD = 1e-9


# ---------------------------------------------------------------------------------------------- sources
def _npy_chunks(path: Path, chunk_rows: int) -> Iterator[np.ndarray]:
    """Chunks of a .npy file read with plain file reads (no mmap: resident memory is one chunk)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D array in the .npy file, got shape {shape} "
                             f"(fortran_order={fortran}); save it with np.save(path, np.ascontiguousarray(X))")
        n, d = shape
        row_bytes = d * dtype.itemsize
        for start in range(0, n, chunk_rows):
            rows = min(chunk_rows, n - start)
            buf = fh.read(rows * row_bytes)
            if len(buf) != rows * row_bytes:
                raise ValueError(f"{path} is truncated: header says {n} rows, data ends before row {start + rows}")
            yield np.frombuffer(buf, dtype=dtype).reshape(rows, d)


def _release_pages(arr: np.ndarray, start: int, stop: int) -> None:
    """Drop the pages of rows [start, stop) of a memmap from this process's resident set (best effort)."""
    base = getattr(arr, "_mmap", None)
    if base is None or not hasattr(base, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row_bytes = arr.strides[0]
    page = mmap.PAGESIZE
    off = int(getattr(arr, "offset", 0))
    lo = (off + start * row_bytes) // page * page
    hi = (off + stop * row_bytes) // page * page
    if hi > lo:
        try:
            base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):  # pragma: no cover - platform specific
            pass


def _array_chunks(arr: Any, chunk_rows: int) -> Iterator[np.ndarray]:
    n = arr.shape[0]
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        chunk = np.array(arr[start:stop])  # a copy, so the memmap pages can be released
        if isinstance(arr, np.memmap):
            _release_pages(arr, start, stop)
        yield chunk


def iter_chunks(source: Any, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                columns: Sequence[str] | None = None) -> Iterator[np.ndarray]:
    """Yield the rows of ``source`` as numpy chunks of about ``chunk_rows`` rows each, (c, d).

    Parameters
    ----------
    source : path, array, memmap or iterable of arrays
        ``.npy`` / ``.csv`` / ``.parquet`` path, a 2-D numpy array / ``np.memmap`` / torch tensor, or an
        iterable (generator, list) of 2-D chunks (their sizes are kept; see :func:`rechunk`).
    chunk_rows : int
        Rows per chunk read from a file or array.
    columns : sequence of str, optional
        CSV/Parquet columns to use (default: all; every used column must be numeric).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no data file at {path}")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            yield from _npy_chunks(path, chunk_rows)
        elif suffix in (".csv", ".txt", ".gz") and not path.name.lower().endswith((".parquet.gz",)):
            import pandas as pd  # noqa: PLC0415

            for frame in pd.read_csv(path, chunksize=chunk_rows, usecols=list(columns) if columns else None):
                yield frame.to_numpy(dtype=np.float64)
        elif suffix in (".parquet", ".pq"):
            try:
                import pyarrow.parquet as pq  # noqa: PLC0415
            except ImportError as exc:
                raise ImportError("reading Parquet needs pyarrow: pip install pyarrow "
                                  "(or convert the file to .npy / .csv)") from exc
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=list(columns) if columns else None):
                yield np.column_stack([batch.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
                                       for i in range(batch.num_columns)])
        else:
            raise ValueError(f"cannot stream {path}: unknown suffix {suffix!r}; use .npy, .csv or .parquet, "
                             "or pass an array / memmap / iterable of arrays")
        return
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise ValueError(f"expected a 2-D (n, d) array, got shape {source.shape}")
        yield from _array_chunks(source, chunk_rows)
        return
    if not isinstance(source, Iterable):
        raise ValueError(f"cannot stream a {type(source).__name__}: pass a path, a 2-D array / memmap, "
                         "or an iterable of 2-D arrays")
    for i, chunk in enumerate(source):
        arr = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else (
            chunk.to_numpy() if hasattr(chunk, "to_numpy") else np.asarray(chunk))
        if arr.ndim != 2:
            raise ValueError(f"chunk {i} has shape {arr.shape}; every chunk must be 2-D (rows, d)")
        yield arr


def rechunk(chunks: Iterable[np.ndarray], chunk_rows: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of (c_i, d) arrays into (chunk_rows, d) float64 arrays (the last may be shorter).

    Memory: at most one output chunk plus one input chunk.
    """
    pending: list[np.ndarray] = []
    have = 0
    d = None
    for arr in chunks:
        if d is None:
            d = arr.shape[1]
        elif arr.shape[1] != d:
            raise ValueError(f"a chunk has d={arr.shape[1]} columns but earlier chunks had d={d}")
        pos = 0
        while pos < arr.shape[0]:
            take = min(chunk_rows - have, arr.shape[0] - pos)
            pending.append(arr[pos:pos + take])
            have += take
            pos += take
            if have == chunk_rows:
                yield np.concatenate(pending).astype(np.float64, copy=False)
                pending, have = [], 0
    if have:
        yield np.concatenate(pending).astype(np.float64, copy=False)


# ---------------------------------------------------------------------------------------------- reduction
def _objective(Kzz: torch.Tensor, m: torch.Tensor, beta: torch.Tensor) -> float:
    """J = beta' Kzz beta - 2 beta' m (the squared MMD to the target minus the target's self term)."""
    return float(beta @ Kzz @ beta - 2.0 * beta @ m)


def _swap(z: torch.Tensor, beta: torch.Tensor, T: torch.Tensor, w: torch.Tensor, gamma: float,
          gen: torch.Generator, qp_iters: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Move the lightest points onto target points where the witness ``mu - S`` is largest.

    The dead points (beta ~ 0) and up to ``K // 8`` of the lightest live ones are candidates for a move;
    the new places are the target points (from a sample of ``_SWAP_CANDIDATES``) with the largest
    witness, estimated from a sample of at most ``_SWAP_TARGET_ROWS`` target points. The swap is kept only
    if the objective with re-solved beta decreases. Returns ``(z, beta, points moved)``.
    """
    K = beta.numel()
    dead = int((beta <= _DEAD / K).sum())
    n_move = min(K, max(dead, K // 8))
    order = torch.argsort(beta)[:n_move]
    M = T.shape[0]
    cand = T[torch.randint(0, M, (min(_SWAP_CANDIDATES, M),), generator=gen)]
    if M > _SWAP_TARGET_ROWS:
        idx = torch.multinomial(w, _SWAP_TARGET_ROWS, replacement=True, generator=gen)
        Ts, ws = T[idx], torch.full((_SWAP_TARGET_ROWS,), 1.0 / _SWAP_TARGET_ROWS, dtype=T.dtype)
    else:
        Ts, ws = T, w
    keep = torch.ones(K, dtype=torch.bool)
    keep[order] = False
    witness = gaussian_kernel(cand, Ts, gamma) @ ws - gaussian_kernel(cand, z[keep], gamma) @ beta[keep]
    take = torch.argsort(witness, descending=True)[:n_move]
    take = take[witness[take] > 0]
    if take.numel() == 0:
        return z, beta, 0
    Kzz = gaussian_kernel(z, z, gamma)
    J_old = _objective(Kzz, gaussian_kernel(z, T, gamma) @ w, beta)
    z_new = z.clone()
    z_new[order[: take.numel()]] = cand[take]
    Kzz_new = gaussian_kernel(z_new, z_new, gamma)
    m_new = gaussian_kernel(z_new, T, gamma) @ w
    b_new = solve_simplex_qp(Kzz_new, m_new, x0=beta, iters=qp_iters, polish=False)
    if _objective(Kzz_new, m_new, b_new) < J_old:
        return z_new, b_new, int(take.numel())
    return z, beta, 0


@torch.no_grad()
def reduce_weighted(
    T: torch.Tensor,
    w: torch.Tensor,
    z0: torch.Tensor,
    beta0: torch.Tensor,
    gamma: float,
    steps: int = DEFAULT_STEPS_PER_CHUNK,
    eta: float = 1.0,
    qp_iters: int = settings.FIT_QP_ITERS,
    polish: bool = False,
    swap: bool = True,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Reduce the embedding ``sum_j w_j k(T_j, .)`` to K points, starting from ``(z0, beta0)``.

    Parameters
    ----------
    T : torch.Tensor, (M, d) float64
        Target points (old spec points and chunk rows, or two specs' points).
    w : torch.Tensor, (M,) float64
        Their weights (>= 0, summing to 1).
    z0, beta0 : torch.Tensor, (K, d) and (K,)
        Warm start.
    steps : int
        Rounds of (swap of dead points, preconditioned z step with backtracking, beta QP).
    eta : float
        Initial step size (carried between chunks by the caller).

    Returns
    -------
    ``(z (K, d), beta (K,), eta)``: the reduced spec and the step size to start the next call with.
    """
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    z = z0.clone()
    beta = beta0.clone()
    if swap:
        z, beta, _ = _swap(z, beta, T, w, gamma, gen, qp_iters)
    Kzt = gaussian_kernel(z, T, gamma)
    m = Kzt @ w
    Kzz = gaussian_kernel(z, z, gamma)
    J = _objective(Kzz, m, beta)
    tiny = torch.finfo(z.dtype).tiny
    for _ in range(steps):
        Wt = (Kzt * w) @ T  # (K, d): sum_j w_j k(z_i, t_j) t_j
        P = Kzz * beta  # P_il = k(z_i, z_l) beta_l
        s = P.sum(1)
        direction = (m[:, None] * z - Wt) - (s[:, None] * z - P @ z)
        D = torch.maximum(m, s).clamp_min(tiny)
        for _try in range(4):
            z_new = z - eta * direction / D[:, None]
            Kzt_new = gaussian_kernel(z_new, T, gamma)
            m_new = Kzt_new @ w
            Kzz_new = gaussian_kernel(z_new, z_new, gamma)
            J_new = _objective(Kzz_new, m_new, beta)
            if J_new <= J:
                z, Kzt, m, Kzz, J = z_new, Kzt_new, m_new, Kzz_new, J_new
                eta = min(settings.FIT_MAX_ETA, eta * 1.25)
                break
            eta = max(settings.FIT_MIN_ETA, eta * 0.5)
        beta = solve_simplex_qp(Kzz, m, x0=beta, iters=qp_iters, polish=polish)
        J = _objective(Kzz, m, beta)
    return z, beta, eta


# ---------------------------------------------------------------------------------------------- drivers
def fit_stream_arrays(
    source: Any,
    K: int = settings.K,
    gamma: float = settings.GAMMA,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    steps_per_chunk: int = DEFAULT_STEPS_PER_CHUNK,
    passes: int = 1,
    seed: int = 0,
    columns: Sequence[str] | None = None,
    nan_policy: str = "raise",
    first_fit_steps: int | None = None,
    sub_rows: int = settings.FIT_MAX_POINTS,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fit one RKME to a stream of rows (see the module docstring); float64 on the CPU.

    Parameters
    ----------
    source : path, array, memmap or iterable of (c_i, d) arrays
        See :func:`iter_chunks`.
    K, gamma
        Spec size and kernel bandwidth.
    chunk_rows : int
        Rows per reduction step (memory is O(chunk_rows * (d + K))).
    steps_per_chunk : int
        Reduction rounds per chunk.
    passes : {1, 2}
        1: each row is read once. 2: a second read computes the exact mean embedding at the final z
        and re-solves beta with the polished QP (needs a re-readable source: a path or an array).
    first_fit_steps : int, optional
        ``steps`` of the regular fit of the first chunk (default ``settings.FIT_STEPS``).
    sub_rows : int
        Chunk rows (a uniform sample) in the z steps, as the regular fit's ``max_points``; beta is then
        re-solved against every row of the chunk (one K x chunk_rows kernel block per chunk).

    Returns
    -------
    ``(z (K', d), beta (K',), n)`` float64 tensors and the number of rows seen
    (``K' = K`` unless the whole stream has <= K rows, then as :func:`~lwgpu.spec.fit.effective_K`).
    """
    K = check_K(K)
    gamma = check_gamma(gamma)
    if passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2, got {passes}")
    if chunk_rows < 2:
        raise ValueError(f"chunk_rows must be >= 2, got {chunk_rows}")
    if passes == 2 and not isinstance(source, (str, os.PathLike, np.ndarray, torch.Tensor)):
        raise ValueError("passes=2 reads the data twice: pass a path or an array/memmap, not a one-shot iterable")
    gen = torch.Generator().manual_seed(int(seed))
    first = max(chunk_rows, 4 * K)
    stream = rechunk(iter_chunks(source, chunk_rows, columns), first)
    z = beta = None
    mu = None
    n_seen = 0
    eta = 1.0
    n_chunks = 0
    with single_torch_thread(True):  # small ops: a thread-pool round trip costs more than it saves
        for chunk in _smaller(stream, chunk_rows, first):
            x = as_matrix(chunk, name=f"chunk {n_chunks}", nan_policy=nan_policy, dtype=torch.float64)
            if z is None:
                if x.shape[0] == 0:
                    continue
                mu = x.mean(0)
                (z, beta, _), = fit_arrays([x - mu], K=K, gamma=gamma, steps=first_fit_steps, device="cpu",
                                           seed=seed, dtype="float64")
                z = z.double()  # in the frame centred on the first chunk's mean
                beta = beta.double()
                n_seen = x.shape[0]
            else:
                x = x - mu
                c = x.shape[0]
                N = n_seen + c
                old_w = beta.clamp_min(0.0) / float(beta.clamp_min(0.0).sum())
                # z steps against the old spec + a uniform subsample of the chunk (all of it when small)
                xs = x if c <= sub_rows else x[torch.randperm(c, generator=gen)[:sub_rows]]
                T = torch.cat([z, xs])
                w = torch.cat([old_w * (n_seen / N), torch.full((xs.shape[0],), (c / N) / xs.shape[0],
                                                                dtype=torch.float64)])
                z_old = z
                z, beta, eta = reduce_weighted(T, w, z, beta, gamma, steps=steps_per_chunk, eta=eta, gen=gen)
                if xs.shape[0] < c:  # beta against the exact target: old spec + every row of the chunk
                    m = (n_seen / N) * (gaussian_kernel(z, z_old, gamma) @ old_w) + _kernel_row_sums(z, x, gamma) / N
                    beta = solve_simplex_qp(gaussian_kernel(z, z, gamma), m, x0=beta, iters=settings.FIT_QP_ITERS,
                                            polish=False)
                n_seen = N
            n_chunks += 1
            if n_chunks % 100 == 0:
                logger.info("streaming fit: %d rows in %d chunks", n_seen, n_chunks)
        if z is None:
            raise ValueError("the stream had no rows; a spec needs at least one row")
        if passes == 2:
            m = torch.zeros(z.shape[0], dtype=torch.float64)
            for chunk in iter_chunks(source, chunk_rows, columns):
                x = as_matrix(chunk, nan_policy=nan_policy, dtype=torch.float64)
                m += _kernel_row_sums(z, x - mu, gamma)
            m /= n_seen
            beta = solve_simplex_qp(gaussian_kernel(z, z, gamma), m, x0=beta, iters=settings.FIT_FINAL_QP_ITERS,
                                    polish=True)
    logger.info("streaming fit done: %d rows, %d chunks, K=%d, passes=%d", n_seen, n_chunks, z.shape[0], passes)
    return z + mu, beta, n_seen


def _kernel_row_sums(z: torch.Tensor, x: torch.Tensor, gamma: float) -> torch.Tensor:
    """``sum_j k(z_i, x_j)`` (K,) float64, with the kernel block in float32 (z and x are centred, so the
    distances keep float32's relative accuracy; sums accumulate in float64)."""
    k = gaussian_kernel(z.float(), x.float(), gamma)
    return k.sum(1, dtype=torch.float64)


def _smaller(stream: Iterator[np.ndarray], chunk_rows: int, first: int) -> Iterator[np.ndarray]:
    """The first (large) chunk whole, then every later one cut to ``chunk_rows`` rows."""
    for i, chunk in enumerate(stream):
        if i == 0 or chunk.shape[0] <= chunk_rows:
            yield chunk
        else:
            for s in range(0, chunk.shape[0], chunk_rows):
                yield chunk[s:s + chunk_rows]


@torch.no_grad()
def merge_arrays(
    z_a: torch.Tensor, beta_a: torch.Tensor, n_a: int,
    z_b: torch.Tensor, beta_b: torch.Tensor, n_b: int,
    gamma: float, K: int | None = None, steps: int = 10, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce ``(n_a A + n_b B) / (n_a + n_b)`` to K points (default: the larger spec's K), float64.

    The reduction starts from the spec with more rows (its K points, or the heaviest of both specs'
    points when K differs) and runs ``steps`` rounds of :func:`reduce_weighted`; the last QP is polished.
    """
    if n_a < 0 or n_b < 0 or n_a + n_b == 0:
        raise ValueError(f"row counts must be >= 0 and not both 0, got n_self={n_a}, n_other={n_b}")
    za, zb = z_a.double().cpu(), z_b.double().cpu()
    if za.shape[1] != zb.shape[1]:
        raise ValueError(f"cannot merge specs of d={za.shape[1]} and d={zb.shape[1]}")
    ba, bb = beta_a.double().cpu(), beta_b.double().cpu()
    N = float(n_a + n_b)
    T = torch.cat([za, zb])
    w = torch.cat([ba * (n_a / N), bb * (n_b / N)]).clamp_min(0.0)
    w = w / w.sum()
    K = int(K) if K is not None else max(za.shape[0], zb.shape[0])
    K = min(K, T.shape[0])
    center = (w[:, None] * T).sum(0)
    T = T - center
    if n_a >= n_b and za.shape[0] == K:
        z0, b0 = T[: za.shape[0]].clone(), ba.clamp_min(0.0) / ba.clamp_min(0.0).sum()
    elif n_b > n_a and zb.shape[0] == K:
        z0, b0 = T[za.shape[0]:].clone(), bb.clamp_min(0.0) / bb.clamp_min(0.0).sum()
    else:
        top = torch.argsort(w, descending=True)[:K]
        z0, b0 = T[top].clone(), w[top] / w[top].sum()
    gen = torch.Generator().manual_seed(int(seed))
    z, beta, _ = reduce_weighted(T, w, z0, b0, gamma, steps=max(0, steps - 1), gen=gen)
    z, beta, _ = reduce_weighted(T, w, z, beta, gamma, steps=1, polish=True, qp_iters=settings.FIT_FINAL_QP_ITERS,
                                 gen=gen)
    return z + center, beta
