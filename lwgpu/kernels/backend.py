"""Kernel backends: one object per implementation of the Gaussian-kernel sums, chosen once, passed down.

A :class:`KernelBackend` owns every Gaussian-kernel sum between packed specs (``z`` (N, K, d),
``beta`` (N, K), zero weights padding ragged specs):

- :meth:`~KernelBackend.cross`       ``<Q_q, B_n>`` for a bank tile (the primitive each backend implements);
- :meth:`~KernelBackend.self_terms`  ``<B_n, B_n>`` in float64 (once per spec, at insertion);
- :meth:`~KernelBackend.gram`        ``<B_i, B_j>`` of a candidate set (mixture QPs);
- :meth:`~KernelBackend.mmd2`        squared MMD of queries to a bank, or to chosen rows of it, in place;
- :meth:`~KernelBackend.mmd2_rows`   squared MMD of each query to its own rows (index re-ranking);
- :meth:`~KernelBackend.inner`       ``<A, B>`` of two single specs.

Every method returns float64 torch tensors on the backend's device (:meth:`~KernelBackend.inner`: a
float). Backends register by name; :func:`get_backend` resolves ``"auto"`` from the device and dtype
once (numba on a CPU for float32, CUDA C through CuPy on a GPU for float32, torch otherwise) and callers
pass the object down; :func:`backend_for` does the same for a given bank (float64 banks get a float64
backend when the preference allows one). :attr:`KernelBackend.precise` is the float64 torch sibling on
the same device, for the small sums whose differences matter (mixture Gram matrices, ``RKME.inner``).
"""
from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from .. import settings
from ..device import cupy_available, numba_available, resolve_device, resolve_dtype
from ..spec.validation import check_same_kernel

logger = logging.getLogger(__name__)


@dataclass
class Packed:
    """Specs packed for the kernels: ``z`` (N, K, d), ``beta`` (N, K), float64 ``self_inner`` (N,), ``gamma``.

    A :class:`~lwgpu.bank.SpecBank` already has these attributes and is used as it is.
    """

    z: torch.Tensor
    beta: torch.Tensor
    self_inner: torch.Tensor
    gamma: float

    @property
    def d(self) -> int:
        return int(self.z.shape[2])

    @property
    def K(self) -> int:
        return int(self.z.shape[1])

    def __len__(self) -> int:
        return int(self.z.shape[0])

    @classmethod
    def of(cls, specs: Any) -> "Packed":
        """:func:`pack` as a :class:`Packed` (a bank's arrays are wrapped, not copied)."""
        p = pack(specs)
        return p if isinstance(p, Packed) else cls(p.z, p.beta, p.self_inner, float(p.gamma))

    def rows(self, start: int, stop: int) -> "Packed":
        """Specs [start, stop) as a view."""
        return Packed(self.z[start:stop], self.beta[start:stop], self.self_inner[start:stop], self.gamma)


def pack(specs: Any, backend: "KernelBackend | None" = None) -> Any:
    """Specs as packed arrays: a bank (anything with 3-D ``z`` and ``self_inner``) as it is; one RKME
    or a list of RKMEs padded with zero weights into a :class:`Packed` (float32 unless any is float64)."""
    if hasattr(specs, "self_inner") and hasattr(specs, "z") and getattr(specs.z, "dim", lambda: 0)() == 3:
        return specs
    items = [specs] if hasattr(specs, "z") else list(specs) if specs is not None else []
    if not items:
        raise ValueError("no specs given: pass an RKME, a non-empty list of RKMEs, or a SpecBank")
    for i, s in enumerate(items):
        if not all(hasattr(s, a) for a in ("z", "beta", "gamma")):
            raise ValueError(f"spec {i} is a {type(s).__name__}, not an RKME (needs z, beta, gamma)")
        check_same_kernel(int(s.z.shape[1]), s.gamma, int(items[0].z.shape[1]), items[0].gamma,
                          f"spec {i}", "spec 0")
    dt = torch.float64 if any(s.z.dtype == torch.float64 for s in items) else torch.float32
    dev = items[0].z.device
    k, d = max(int(s.z.shape[0]) for s in items), int(items[0].z.shape[1])
    z = torch.zeros(len(items), k, d, dtype=dt, device=dev)
    beta = torch.zeros(len(items), k, dtype=dt, device=dev)
    for i, s in enumerate(items):
        z[i, : s.z.shape[0]] = s.z.to(dev, dt)
        beta[i, : s.z.shape[0]] = s.beta.to(dev, dt)
    si = torch.tensor([float(s.self_inner) for s in items], dtype=torch.float64, device=dev)
    return Packed(z, beta, si, float(items[0].gamma))


def take_rows(t: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Rows ``rows`` (int64 positions) of ``t``: numpy row copies on a CPU (faster than index_select)."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.take(t.numpy(), rows, axis=0))
    return t.index_select(0, torch.as_tensor(rows, device=t.device))


class KernelBackend:
    """Base class: subclasses implement :meth:`cross`; everything else is composed here.

    Parameters
    ----------
    device : torch.device where the work runs (bank tiles are moved there as they are scanned).
    dtype : compute dtype of the points (float32 by default; float64 only where a backend allows it).
    """

    name: ClassVar[str] = ""
    #: bank specs per :meth:`cross` call when scanning a bank
    tile: ClassVar[int] = settings.TILE_TORCH
    #: dtypes this backend computes in
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32,)

    def __init__(self, device: Any = "cpu", dtype: Any = None) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if self.dtype not in self.dtypes:
            raise ValueError(f"backend {self.name!r} computes in {[str(d) for d in self.dtypes]}, not {self.dtype}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device}, dtype={str(self.dtype).replace('torch.', '')})"

    @property
    def precise(self) -> "KernelBackend":
        """The float64 torch backend on this device (``self`` when this is one): for small sums whose
        differences matter (mixture Gram matrices and cross terms, ``RKME.inner``)."""
        if self.name == "torch" and self.dtype == torch.float64:
            return self
        return get_backend("torch", self.device, torch.float64)

    # ------------------------------------------------------------------ primitives
    def cross(self, qz: torch.Tensor, qb: torch.Tensor, bz: torch.Tensor, bb: torch.Tensor,
              gamma: float) -> torch.Tensor:
        """float64 (Q, T) ``<Q_q, B_t> = sum_ij qb[q,i] bb[t,j] k(qz[q,i], bz[t,j])``.

        qz (Q, Kq, d), qb (Q, Kq): queries on this backend's device; bz (T, K, d), bb (T, K): a bank
        tile anywhere (moved here as needed).
        """
        raise NotImplementedError

    def self_terms(self, z: torch.Tensor, beta: torch.Tensor, gamma: float) -> torch.Tensor:
        """float64 (N,) ``<B_n, B_n>`` of z (N, K, d), beta (N, K), on z's device, exact to float64 rounding
        of the stored points: float64 blocks of specs centred on their own mean (MMD is shift
        invariant, so the expansion |a|^2 + |b|^2 - 2ab loses nothing)."""
        n, k, d = z.shape
        out = torch.empty(n, dtype=torch.float64, device=z.device)
        step = max(1, settings.SELF_TERMS_BLOCK // max(1, k * max(k, d)))
        for s in range(0, n, step):
            zt = z[s : s + step].to(torch.float64)
            zt = zt - zt.mean(1, keepdim=True)
            bt = beta[s : s + step].to(torch.float64)
            sq = (zt * zt).sum(-1)
            d2 = torch.baddbmm(sq[:, :, None] + sq[:, None, :], zt, zt.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)
            out[s : s + step] = torch.einsum("ni,nij,nj->n", bt, d2.mul_(-gamma).exp_(), bt)
        return out

    # ------------------------------------------------------------------ composed
    def _queries(self, queries: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        q = pack(queries)
        return q, q.z.to(self.device, self.dtype), q.beta.to(self.device, self.dtype)

    def cross_matrix(self, queries: Any, bank: Any, rows: np.ndarray | None = None, start: int = 0,
                     stop: int | None = None, tile: int | None = None) -> torch.Tensor:
        """float64 (Q, M) cross terms to bank rows ``rows`` (positions, gathered tile by tile: the bank
        is never copied whole) or to rows [start, stop)."""
        q, qz, qb = self._queries(queries)
        check_same_kernel(q.d, q.gamma, bank.d, bank.gamma, "the queries", "the bank")
        tile = int(tile or self.tile)
        if rows is None:
            stop = len(bank) if stop is None else int(stop)
            spans = [(s, min(s + tile, stop)) for s in range(int(start), stop, tile)]
            m = stop - int(start)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            spans = [(s, min(s + tile, len(rows))) for s in range(0, len(rows), tile)]
            m = len(rows)
        out = torch.empty(len(q), m, dtype=torch.float64, device=self.device)
        for s, e in spans:
            if rows is None:
                bz, bb, at = bank.z[s:e], bank.beta[s:e], slice(s - start, e - start)
            else:
                bz, bb, at = take_rows(bank.z, rows[s:e]), take_rows(bank.beta, rows[s:e]), slice(s, e)
            out[:, at] = self.cross(qz, qb, bz, bb, bank.gamma)
        return out

    def mmd2(self, queries: Any, bank: Any, rows: np.ndarray | None = None, start: int = 0,
             stop: int | None = None, tile: int | None = None) -> torch.Tensor:
        """float64 (Q, M) squared MMD ``<Q,Q> - 2<Q,B> + <B,B>`` (clamped at 0) to ``rows`` or [start, stop)."""
        q = pack(queries)
        cross = self.cross_matrix(q, bank, rows=rows, start=start, stop=stop, tile=tile)
        sb = bank.self_inner[start:stop] if rows is None else take_rows(bank.self_inner, np.asarray(rows, np.int64))
        return to_distance(cross, q.self_inner, sb)

    def mmd2_rows(self, queries: Any, bank: Any, positions: Any) -> torch.Tensor:
        """float64 (Q, C) squared MMD of each query to its own bank rows; ``positions`` int (Q, C), -1 marks
        an empty slot (distance ``inf``)."""
        q, pos = rows_request(queries, bank, positions)
        out = torch.full(pos.shape, float("inf"), dtype=torch.float64, device=self.device)
        for i in range(len(q)):
            ok = np.nonzero(pos[i] >= 0)[0]
            if ok.size:
                one = Packed(q.z[i : i + 1], q.beta[i : i + 1], q.self_inner[i : i + 1], q.gamma)
                out[i, torch.as_tensor(ok, device=self.device)] = self.mmd2(one, bank, rows=pos[i, ok])[0]
        return out

    def gram(self, z: torch.Tensor, beta: torch.Tensor, gamma: float) -> torch.Tensor:
        """float64 (M, M) ``<B_i, B_j>`` of candidate specs z (M, K, d), beta (M, K), symmetrised."""
        g = self.cross(z.to(self.device, self.dtype), beta.to(self.device, self.dtype), z, beta, gamma)
        return 0.5 * (g + g.T)

    def inner(self, za: torch.Tensor, ba: torch.Tensor, zb: torch.Tensor, bb: torch.Tensor, gamma: float) -> float:
        """``<A, B>`` (a float) of two single specs: za (Ka, d), ba (Ka,), zb (Kb, d), bb (Kb,)."""
        qz, qb = za.to(self.device, self.dtype)[None], ba.to(self.device, self.dtype)[None]
        return float(self.cross(qz, qb, zb[None], bb[None], gamma)[0, 0])


def rows_request(queries: Any, bank: Any, positions: Any) -> tuple[Any, np.ndarray]:
    """Packed queries and checked int64 positions (Q, C) for ``mmd2_rows``: same kernel, one row of
    positions per query, each in [-1, N) (-1: an empty slot)."""
    q = pack(queries)
    check_same_kernel(q.d, q.gamma, bank.d, bank.gamma, "the queries", "the bank")
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim != 2 or pos.shape[0] != len(q):
        raise ValueError(f"positions must have shape (Q={len(q)}, C), got {pos.shape}")
    if pos.size and (pos.max() >= len(bank) or pos.min() < -1):
        raise ValueError(f"positions must lie in [-1, N={len(bank)}); -1 marks an empty slot")
    return q, pos


def to_distance(cross: torch.Tensor, self_q: torch.Tensor, self_b: torch.Tensor) -> torch.Tensor:
    """``<Q,Q> - 2 cross + <B,B>`` clamped at 0 (in place): cross (Q, M), self_q (Q,), self_b (M,)."""
    dev = cross.device
    return cross.mul_(-2.0).add_(self_q.to(dev, torch.float64)[:, None]).add_(
        self_b.to(dev, torch.float64)[None, :]).clamp_min_(0.0)


# ---------------------------------------------------------------------- registry
_REGISTRY: dict[str, tuple[str, str, Callable[[], bool]]] = {}


def register(name: str, module: str, cls: str, available: Callable[[], bool]) -> None:
    """Register backend ``name``: class ``cls`` in ``module``, importable when ``available()``."""
    _REGISTRY[name] = (module, cls, available)


register("torch", "lwgpu.kernels.torch_mmd", "TorchBackend", lambda: True)
register("numba", "lwgpu.kernels.numba_mmd", "NumbaBackend", numba_available)
register("cuda", "lwgpu.kernels.cupy_mmd", "CupyBackend", cupy_available)
_ALIASES = {"cupy": "cuda"}


def available_backends() -> tuple[str, ...]:
    """Names of the backends whose library imports on this machine."""
    return tuple(n for n, (_, _, ok) in _REGISTRY.items() if ok())


def backend_class(name: str) -> type[KernelBackend]:
    """The class registered as ``name`` (ValueError naming what to install when unavailable)."""
    name = _ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}: use 'auto' or one of {sorted(_REGISTRY)}")
    module, cls, ok = _REGISTRY[name]
    if not ok():
        hint = {"numba": "pip install numba", "cuda": "pip install cupy-cuda12x and use a CUDA GPU"}.get(name, "")
        raise ValueError(f"backend {name!r} is not available on this machine ({hint})")
    return getattr(importlib.import_module(module), cls)


def auto_backend_name(device: torch.device, dtype: torch.dtype) -> str:
    """The default backend for a device and dtype: numba (CPU) or CUDA C (GPU) for float32, else torch."""
    if dtype == torch.float32:
        if device.type == "cuda" and cupy_available():
            return "cuda"
        if device.type == "cpu" and numba_available():
            return "numba"
    return "torch"


@functools.lru_cache(maxsize=None)
def _cached(name: str, device: torch.device, dtype: torch.dtype, options: tuple[tuple[str, Any], ...]) -> KernelBackend:
    return backend_class(name)(device, dtype, **dict(options))


def get_backend(backend: "str | KernelBackend" = settings.BACKEND, device: Any = "auto", dtype: Any = None,
                **options: Any) -> KernelBackend:
    """Resolve a backend once: ``"auto" | "torch" | "numba" | "cuda"`` (or a ready object, returned as is).

    Parameters
    ----------
    backend : name or :class:`KernelBackend`
        ``"auto"``: numba on a CPU, CUDA C on a GPU for float32; torch otherwise.
    device : ``"auto" | "cpu" | "cuda[:i]"``; dtype : compute dtype of the points (float32 by default).
    **options
        Constructor options of the backend class (``max_block_elems`` for torch, ``accumulate`` for
        cuda); instances are cached per (name, device, dtype, options).

    Raises
    ------
    ValueError
        Unknown name; the backend cannot run on the device (numba: CPU only; cuda: a CUDA device and
        CuPy) or in the dtype (numba and cuda: float32 only); options given with a ready object.
    """
    if isinstance(backend, KernelBackend):
        if options:
            raise ValueError(f"options {sorted(options)} cannot be applied to a ready backend object {backend!r}")
        return backend
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    name = str(backend).lower()
    name = auto_backend_name(dev, dt) if name == "auto" else _ALIASES.get(name, name)
    cls = backend_class(name)
    if name == "numba" and dev.type != "cpu":
        raise ValueError("backend='numba' runs on the CPU only: pass device='cpu' or backend='auto'")
    if name == "cuda" and dev.type != "cuda":
        raise ValueError("backend='cuda' needs a CUDA device: pass device='cuda' or use backend='torch'")
    if dt not in cls.dtypes:
        raise ValueError(f"backend {name!r} computes in float32 only; use backend='torch' for {dt}")
    try:
        return _cached(name, dev, dt, tuple(sorted(options.items())))
    except TypeError as exc:  # an option this backend's constructor does not take
        raise ValueError(f"backend {name!r} does not take the options {sorted(options)}: {exc}") from exc


def backend_for(bank: Any, backend: "str | KernelBackend" = settings.BACKEND, device: Any = "auto",
                **options: Any) -> KernelBackend:
    """The backend to scan ``bank`` with (anything with ``z``): a ready object as it is; else float64 for a
    float64 bank when the named backend computes in float64 (``"auto"`` then means torch), float32 otherwise
    (numba and cuda read a float64 bank as float32)."""
    if isinstance(backend, KernelBackend):
        return get_backend(backend, **options)
    z = getattr(bank, "z", None)
    dt = torch.float32
    if z is not None and z.dtype == torch.float64:
        name = _ALIASES.get(str(backend).lower(), str(backend).lower())
        if name == "auto" or (name in _REGISTRY and torch.float64 in backend_class(name).dtypes):
            dt = torch.float64
    return get_backend(backend, device, dt, **options)
