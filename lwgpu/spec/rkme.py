"""RKME: a Reduced Kernel Mean Embedding, the statistical specification of a dataset.

An RKME is ``K`` points ``z`` (K, d) with weights ``beta`` (K,) such that
``sum_i beta_i k(z_i, .)`` approximates the kernel mean embedding ``1/n sum_j k(x_j, .)`` of the
data, with the Gaussian kernel ``k(a, b) = exp(-gamma ||a - b||^2)``.

Inner products and distances go through a kernel backend (:mod:`lwgpu.kernels`): by default the float64
torch backend on the spec's device (exact to float64 rounding, as the reference package computes them);
pass ``backend=`` (a name or a :class:`~lwgpu.kernels.KernelBackend`) to use another. Fitting lives in
:mod:`lwgpu.spec.fit`, which returns arrays that :meth:`RKME.fit_many` wraps.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import settings
from ..device import resolve_device, resolve_dtype
from ..fsutil import write_atomic
from ..kernels import backend as kernel_backend  # a module alias: lwgpu.kernels imports lwgpu.spec.validation
from ..kernels.torch_backend import gaussian_kernel
from .fit import fit_arrays
from .validation import as_matrix, check_gamma, check_same_kernel

logger = logging.getLogger(__name__)

#: The ``type`` the reference package writes into its table-spec JSON files.
REFERENCE_TYPE = "RKMETableSpecification"


class RKME:
    """A weighted point set in the RKHS of a Gaussian kernel.

    Parameters
    ----------
    z : array-like, (K, d)
        Reduced points.
    beta : array-like, (K,)
        Weights (the fit keeps them >= 0 summing to 1; directly built specs may use any finite values).
    gamma : float
        Kernel bandwidth, ``k(a, b) = exp(-gamma ||a - b||^2)``.
    num_points : int, optional
        Number of data rows the spec summarises (0 when unknown).
    dtype, device : optional
        Float32 on the resolved device by default; ``dtype="float64"`` on request.
    """

    def __init__(
        self,
        z: Any,
        beta: Any,
        gamma: float = settings.GAMMA,
        num_points: int = 0,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = "cpu",
        privacy: dict[str, Any] | None = None,
    ) -> None:
        dt = resolve_dtype(dtype)
        dev = resolve_device(device)
        z_t = as_matrix(z, name="z", dtype=dt, device=dev)
        if isinstance(beta, torch.Tensor):
            b_t = beta.detach().to(device=dev, dtype=dt).reshape(-1)
        else:
            b_t = torch.tensor(np.asarray(beta, dtype=np.float64), dtype=dt, device=dev).reshape(-1)
        if b_t.shape[0] != z_t.shape[0]:
            raise ValueError(f"beta has {b_t.shape[0]} weights but z has {z_t.shape[0]} points; they must match")
        if not bool(torch.isfinite(b_t).all()):
            raise ValueError("beta contains NaN/Inf; every weight must be finite")
        self.z: torch.Tensor = z_t
        self.beta: torch.Tensor = b_t
        self.gamma: float = check_gamma(gamma)
        self.num_points: int = int(num_points)
        self._self_inner: float | None = None
        #: The differential-privacy record of a private spec (epsilon, delta, mechanism, sigma, ...;
        #: :mod:`lwgpu.spec.privacy`), None for a plain spec.
        self.privacy: dict[str, Any] | None = dict(privacy) if privacy else None

    # ------------------------------------------------------------------ shape & device
    @property
    def K(self) -> int:
        """Number of reduced points."""
        return int(self.z.shape[0])

    @property
    def d(self) -> int:
        """Input dimension."""
        return int(self.z.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.z.dtype

    @property
    def device(self) -> torch.device:
        return self.z.device

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "RKME":
        """A copy on ``device`` (default: current) in ``dtype`` (default: current)."""
        dev = self.device if device is None else resolve_device(device)
        dt = self.dtype if dtype is None else resolve_dtype(dtype)
        return RKME(self.z.to(dev, dt), self.beta.to(dev, dt), self.gamma, self.num_points, dtype=dt, device=dev,
                    privacy=self.privacy)

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(z, beta)`` as numpy arrays on the CPU."""
        return self.z.detach().cpu().numpy(), self.beta.detach().cpu().numpy()

    def __repr__(self) -> str:
        return (
            f"RKME(K={self.K}, d={self.d}, gamma={self.gamma}, num_points={self.num_points}, "
            f"dtype={str(self.dtype).replace('torch.', '')}, device={self.device})"
        )

    # ------------------------------------------------------------------ kernel algebra
    def _check_compatible(self, other: "RKME") -> None:
        if not isinstance(other, RKME):
            raise ValueError(f"expected an RKME, got {type(other).__name__}")
        check_same_kernel(self.d, self.gamma, other.d, other.gamma)

    def _backend(self, backend: Any = None) -> "kernel_backend.KernelBackend":
        """``backend`` resolved on this spec's device; None: the float64 torch backend there."""
        if backend is None:
            return kernel_backend.get_backend("torch", self.device, torch.float64)
        return kernel_backend.get_backend(backend, self.device)

    def inner(self, other: "RKME", backend: Any = None) -> float:
        """RKHS inner product ``<A, B> = sum_ij beta^A_i beta^B_j k(z^A_i, z^B_j)`` (float64 by default)."""
        self._check_compatible(other)
        return self._backend(backend).inner(self.z, self.beta, other.z, other.beta, self.gamma)

    @property
    def self_inner(self) -> float:
        """``<A, A>`` in float64, computed once and cached."""
        if self._self_inner is None:
            self._self_inner = float(self._backend().self_terms(self.z[None], self.beta[None], self.gamma)[0])
        return self._self_inner

    def dist(self, other: "RKME", backend: Any = None) -> float:
        """Squared MMD ``<A,A> - 2<A,B> + <B,B>`` (no square root, not clamped), as in the reference package."""
        return self.self_inner - 2.0 * self.inner(other, backend) + other.self_inner

    def residual(self, X: Any, tile: int = 65536, nan_policy: str = "raise") -> float:
        """MMD^2 between this spec and the full empirical embedding ``1/n sum_j k(x_j, .)`` of X (n, d).

        Computed in float64 in tiles of ``tile`` rows, so memory stays O(tile * max(K, tile)) and
        n = 1,000,000 fits. The X-X term costs O(n^2 d): it is the exact quality measure, not a fast one.
        """
        x = as_matrix(X, nan_policy=nan_policy, dtype=torch.float64, device=self.device)
        if x.shape[1] != self.d:
            raise ValueError(f"X has d={x.shape[1]} columns but the spec has d={self.d}")
        n = x.shape[0]
        z, beta = self.z.double(), self.beta.double()
        zz = self.self_inner
        zx = 0.0
        xx = 0.0
        for i in range(0, n, tile):
            xi = x[i : i + tile]
            zx += float((beta @ gaussian_kernel(z, xi, self.gamma)).sum())
            for j in range(0, n, tile):
                xx += float(gaussian_kernel(xi, x[j : j + tile], self.gamma).sum())
        return zz - 2.0 * zx / n + xx / (n * n)

    def herd(self, n: int, candidates_per_sample: int = 100, seed: int = 0) -> np.ndarray:
        """Kernel herding: ``n`` samples (n, d) that greedily match this embedding.

        Candidates are drawn around the reduced points (Gaussian noise, std 0.25, points chosen in
        proportion to the non-negative part of beta), then each step takes the candidate that most
        increases agreement with the embedding, as the reference package does.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        z, beta = self.z.double().cpu(), self.beta.double().cpu().clamp_min(0.0)
        if float(beta.sum()) <= 0:
            raise ValueError("cannot herd from a spec with no positive weight")
        m = n * candidates_per_sample
        pick = torch.multinomial(beta / beta.sum(), m, replacement=True, generator=gen)
        cand = z[pick] + 0.25 * torch.randn(m, self.d, generator=gen, dtype=torch.float64)
        target = beta @ gaussian_kernel(z, cand, self.gamma)  # (m,)
        acc = torch.zeros(m, dtype=torch.float64)
        out = torch.empty(n, self.d, dtype=torch.float64)
        for t in range(n):
            idx = int(torch.argmax((t + 1) * target - acc))
            out[t] = cand[idx]
            acc += gaussian_kernel(cand[idx : idx + 1], cand, self.gamma)[0]
        return out.numpy()

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        X: Any,
        K: int = settings.K,
        gamma: float = settings.GAMMA,
        steps: int | None = None,
        device: str | torch.device | None = "auto",
        seed: int = 0,
        dtype: str | torch.dtype | None = None,
        nan_policy: str = "raise",
        privacy: tuple[float, float] | None = None,
        **options: Any,
    ) -> "RKME":
        """Fit an RKME of ``K`` points to data X (n, d); see :mod:`lwgpu.spec.fit` for the optimiser.

        ``privacy=(epsilon, delta)`` fits an (epsilon, delta)-differentially private spec instead
        (:func:`lwgpu.spec.privacy.fit_private_arrays`; options ``features``, ``mechanism``, ``domain``,
        ``noise_seed``); its budget is kept in ``spec.privacy`` and in the saved JSON.
        """
        if privacy is not None:
            from .privacy import fit_private_arrays  # noqa: PLC0415

            try:
                epsilon, delta = privacy
            except (TypeError, ValueError) as exc:
                raise ValueError(f"privacy must be a pair (epsilon, delta), got {privacy!r}") from exc
            z, beta, n, record = fit_private_arrays(X, float(epsilon), float(delta), K=K, gamma=gamma, seed=seed,
                                                    nan_policy=nan_policy, **options)
            dev = resolve_device(device)
            return cls(z, beta, gamma=gamma, num_points=n, dtype=dtype, device=dev, privacy=record)
        return cls.fit_many([X], K=K, gamma=gamma, steps=steps, device=device, seed=seed, dtype=dtype,
                            nan_policy=nan_policy, **options)[0]

    @classmethod
    def fit_many(
        cls,
        datasets: Sequence[Any],
        K: int = settings.K,
        gamma: float = settings.GAMMA,
        steps: int | None = None,
        device: str | torch.device | None = "auto",
        seed: int | Sequence[int] = 0,
        dtype: str | torch.dtype | None = None,
        nan_policy: str = "raise",
        **options: Any,
    ) -> list["RKME"]:
        """Fit one RKME per dataset (each (n_i, d_i)), in input order with ``num_points`` set: the fused
        numba kernel on the CPU, padded batches on a GPU (either way the same result as one at a time).

        Parameters and options as in :func:`lwgpu.spec.fit.fit_arrays` (``steps=None``: ``settings.FIT_STEPS``).
        """
        fitted = fit_arrays(datasets, K=K, gamma=gamma, steps=steps, device=device, seed=seed, dtype=dtype,
                            nan_policy=nan_policy, **options)
        return [cls(z, beta, gamma=gamma, num_points=n, dtype=z.dtype, device=z.device) for z, beta, n in fitted]

    @classmethod
    def fit_stream(
        cls,
        source: Any,
        K: int = settings.K,
        gamma: float = settings.GAMMA,
        chunk_rows: int | None = None,
        steps_per_chunk: int | None = None,
        passes: int = 1,
        seed: int = 0,
        columns: Sequence[str] | None = None,
        nan_policy: str = "raise",
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = "cpu",
    ) -> "RKME":
        """Fit an RKME to rows streamed in chunks: an iterable of (c_i, d) arrays, a 2-D array or
        ``np.memmap``, or a ``.npy`` / ``.csv`` / ``.parquet`` path; memory is one chunk plus the spec.

        See :func:`lwgpu.spec.stream.fit_stream_arrays` (``passes=2`` re-reads the data for an exact beta).
        """
        from . import stream  # noqa: PLC0415

        z, beta, n = stream.fit_stream_arrays(
            source, K=K, gamma=gamma, chunk_rows=chunk_rows or stream.DEFAULT_CHUNK_ROWS,
            steps_per_chunk=stream.DEFAULT_STEPS_PER_CHUNK if steps_per_chunk is None else steps_per_chunk,
            passes=passes, seed=seed, columns=columns, nan_policy=nan_policy)
        return cls(z, beta, gamma=gamma, num_points=n, dtype=dtype, device=device)

    def merge(self, other: "RKME", n_self: int | None = None, n_other: int | None = None, K: int | None = None,
              steps: int = 10, seed: int = 0) -> "RKME":
        """The spec of the union of two datasets: ``(n_self A + n_other B) / (n_self + n_other)`` reduced
        back to ``K`` points (default: the larger K). Counts default to each spec's ``num_points``."""
        from .stream import merge_arrays  # noqa: PLC0415

        self._check_compatible(other)
        n_a = self.num_points if n_self is None else int(n_self)
        n_b = other.num_points if n_other is None else int(n_other)
        z, beta = merge_arrays(self.z, self.beta, n_a, other.z, other.beta, n_b, self.gamma, K=K, steps=steps,
                               seed=seed)
        return RKME(z, beta, gamma=self.gamma, num_points=n_a + n_b, dtype=self.dtype, device=self.device)

    def update(self, X_new: Any, n_self: int | None = None, steps: int = 10, seed: int = 0,
               **fit_options: Any) -> "RKME":
        """This spec after its dataset grew by the rows X_new (n_new, d): fit X_new (``RKME.fit`` with
        this spec's K and gamma, ``fit_options`` passed on) and :meth:`merge` by row counts."""
        new = RKME.fit(X_new, K=self.K, gamma=self.gamma, device="cpu", seed=seed, dtype="float64", **fit_options)
        return self.merge(new, n_self=n_self, n_other=new.num_points, K=self.K, steps=steps, seed=seed)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The reference package's JSON layout (``type``, ``z``, ``beta``, ``gamma``, ``num_points``)."""
        z, beta = self.numpy()
        return {
            "type": REFERENCE_TYPE,
            "z": z.astype(np.float64).tolist(),
            "beta": beta.astype(np.float64).tolist(),
            "gamma": self.gamma,
            "num_points": self.num_points,
            **({"privacy": self.privacy} if self.privacy else {}),
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any], dtype: str | torch.dtype | None = None, device: Any = "cpu") -> "RKME":
        """Build from the reference JSON layout; unknown keys are ignored, missing required ones refused."""
        missing = [k for k in ("z", "beta", "gamma") if k not in obj]
        if missing:
            raise ValueError(f"RKME JSON lacks keys {missing}; expected at least 'z', 'beta', 'gamma'")
        kind = obj.get("type", REFERENCE_TYPE)
        if kind not in (REFERENCE_TYPE, "RKMEStatSpecification"):
            raise ValueError(f"RKME JSON has type {kind!r}; only table specs ({REFERENCE_TYPE}) are supported")
        z = np.asarray(obj["z"], dtype=np.float64)
        if z.ndim > 2:  # reference image specs keep the image shape; table specs are (K, d)
            z = z.reshape(z.shape[0], -1)
        return cls(z, np.asarray(obj["beta"], np.float64), float(obj["gamma"]), int(obj.get("num_points", 0)),
                   dtype=dtype, device=device, privacy=obj.get("privacy"))

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON in the reference package's format, atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_dict(), separators=(",", ":")).encode(), fsync=False)

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: str | torch.dtype | None = None, device: Any = "cpu") -> "RKME":
        """Read a JSON spec written by lwgpu or by the reference package."""
        try:
            with open(path, encoding="utf-8") as fh:
                obj = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(obj, dtype=dtype, device=device)
