"""Image specs: an RKME in the NNGP kernel of an infinitely wide ConvNet (the reference's image spec).

``ImageRKME`` is the counterpart of the reference package's ``RKMEImageSpecification``: ``K``
images ``z`` (K, C, 32, 32) with weights ``beta`` (K,), compared through the NNGP kernel of
:mod:`lwgpu.kernels.nngp` (``inner``, ``dist`` = squared MMD, as the reference computes them), and
read and written in the reference's JSON layout (``RKME_IMAGE_VERSION``, ``msg``, ``z``, ``beta``,
``n_models``, ``model_config``, ``type``), both ways.

Fitting follows the reference's data handling (NaN/inf replaced by the image mean, bilinear
antialiased resize to 32x32, per-channel standardisation, ZCA whitening with regularisation 0.1
for colour images, a random subsample of at most ``sample_size`` images) and then does better on
the objective itself: where the reference fits ``z`` against the features of 16 random finite
ConvNets (an estimate of a different kernel) with AdaBelief, here ``z`` starts from kernel herding
on the data and takes Adam steps on the exact squared MMD in the NNGP kernel the spec is judged
by, with exact gradients, and ``beta`` is the exact QP solution (``beta >= 0``, sum 1, batched,
:func:`lwgpu.spec.qp.solve_simplex_qp`) after every step. ``fit_many`` fits many datasets in one
batch; ``fit`` is ``fit_many`` of one.

``image_mmd2_to_bank`` is the batched distance of one query to a bank of image specs
(``z`` (N, K, C, 32, 32), ``beta`` (N, K)), tiled over the bank; ``image_self_terms`` computes the
bank's ``<B, B>`` once, at insertion.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..device import resolve_device, single_torch_thread
from ..kernels.nngp import ConvNNGP, DiagMaps, NNGPConfig
from ..fsutil import write_atomic
from ._fit_image import IMAGE_WIDTH, _chunked_cross, _fit_batch

logger = logging.getLogger(__name__)

__all__ = ["ImageRKME", "preprocess_images", "image_mmd2_to_bank", "image_self_terms", "REFERENCE_IMAGE_TYPE"]

#: The ``type`` the reference writes into its image-spec JSON files.
REFERENCE_IMAGE_TYPE = "RKMEImageSpecification"
#: The reference's default ``model_config`` (only ``net_depth`` changes the kernel).
DEFAULT_MODEL_CONFIG = {"k": 2, "mu": 0, "sigma": None, "net_width": 128, "net_depth": 3}


# ----------------------------------------------------------------------------------------------
# data handling (as the reference)
# ----------------------------------------------------------------------------------------------

def _zca_whiten(x: torch.Tensor, reg_coef: float = 0.1) -> torch.Tensor:
    """The reference's ZCA whitening, ``x @ (cov + reg tr(cov)/D I)^(-1/2)``, for x (n, D).

    With fewer images than dimensions the rows of x lie in the span U of its thin SVD
    (``x = A S U'``), where the whitening matrix acts as ``U diag((s^2/n + reg)^(-1/2)) U'``: the
    same result as the reference's (D, D) decomposition, at O(n^2 D) instead of O(D^3).
    """
    n, D = x.shape
    reg = reg_coef * (x * x).sum() / n / D
    if n < D:
        _, sv, vh = torch.linalg.svd(x, full_matrices=False)  # vh (n, D)
        scale = (sv * sv / n + reg).rsqrt()
        return ((x @ vh.T) * scale) @ vh
    cov = (x.T @ x) / n
    evals, evecs = torch.linalg.eigh(cov + reg * torch.eye(D, dtype=cov.dtype, device=cov.device))
    return x @ ((evecs * evals.rsqrt()) @ evecs.T)


def preprocess_images(X: Any, whitening: bool = True, resize: bool = True, device: Any = "cpu") -> torch.Tensor:
    """The reference's preprocessing: clean, resize to 32x32, standardise per channel, ZCA-whiten.

    Parameters
    ----------
    X : array or tensor, (n, C, H, W)
        Raw images.
    whitening : bool
        ZCA-whiten colour images (C > 1), as the reference does by default.
    resize : bool
        Resize to 32x32 (bilinear, antialiased); ``False`` requires 32x32 input.

    Returns
    -------
    torch.Tensor, (n, C, 32, 32), float32 on ``device``.
    """
    x = X if torch.is_tensor(X) else torch.from_numpy(np.asarray(X))
    if x.dim() != 4:
        raise ValueError(f"X should be images of shape (n, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 images to standardise, got {x.shape[0]}")
    x = x.to(device=resolve_device(device), dtype=torch.float32).clone()
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        x[bad] = torch.nan
        for i in torch.nonzero(bad.flatten(1).any(1)).flatten().tolist():
            if bool(torch.isnan(x[i]).all()):
                raise ValueError(f"all values in image {i} are NaN or infinite; drop that image")
            x[i] = torch.where(torch.isnan(x[i]), torch.nanmean(x[i]), x[i])
    if x.shape[2] != IMAGE_WIDTH or x.shape[3] != IMAGE_WIDTH:
        if not resize:
            raise ValueError(f"images are {x.shape[2]}x{x.shape[3]}; pass resize=True to resize them to "
                             f"{IMAGE_WIDTH}x{IMAGE_WIDTH}")
        x = F.interpolate(x, size=(IMAGE_WIDTH, IMAGE_WIDTH), mode="bilinear", align_corners=False, antialias=True)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    if x.shape[1] > 1 and whitening:
        flat = x.reshape(x.shape[0], -1).double()
        x = _zca_whiten(flat).float().reshape(x.shape)
    return x


# ----------------------------------------------------------------------------------------------
# the spec
# ----------------------------------------------------------------------------------------------

class ImageRKME:
    """An image RKME: points ``z`` (K, C, 32, 32) and weights ``beta`` (K,) in the ConvNet NNGP's RKHS.

    Parameters
    ----------
    z : array or tensor, (K, C, 32, 32)
        Points, kept in float32 (what the reference stores).
    beta : array or tensor, (K,)
        Weights, float64.
    model_config : dict, optional
        The reference's ``model_config``; ``net_depth`` sets the kernel's depth.
    n_models : int
        The reference's number of random ConvNets (kept for the JSON; the kernel is exact).
    """

    type = REFERENCE_IMAGE_TYPE
    IMAGE_WIDTH = IMAGE_WIDTH

    def __init__(self, z: Any, beta: Any, model_config: dict | None = None, n_models: int = 16,
                 msg: Any = None, version: int = 1, device: Any = "cpu") -> None:
        dev = resolve_device(device)
        z = z.detach() if torch.is_tensor(z) else torch.from_numpy(np.asarray(z, dtype=np.float32))
        beta = beta.detach() if torch.is_tensor(beta) else torch.from_numpy(np.asarray(beta, dtype=np.float64))
        if z.dim() != 4 or z.shape[-1] != IMAGE_WIDTH or z.shape[-2] != IMAGE_WIDTH:
            raise ValueError(f"z must have shape (K, C, {IMAGE_WIDTH}, {IMAGE_WIDTH}), got {tuple(z.shape)}")
        if beta.shape != (z.shape[0],):
            raise ValueError(f"beta must have shape ({z.shape[0]},) to match z, got {tuple(beta.shape)}")
        self.z = z.to(device=dev, dtype=torch.float32)
        self.beta = beta.to(device=dev, dtype=torch.float64)
        self.model_config = dict(DEFAULT_MODEL_CONFIG if model_config is None else model_config)
        self.n_models = int(n_models)
        self.msg = msg
        self.version = int(version)
        self.config = NNGPConfig.from_model_config(self.model_config)
        self._diag: DiagMaps | None = None
        self._self_inner: float | None = None

    # -- shape -----------------------------------------------------------------------------
    @property
    def K(self) -> int:
        return int(self.z.shape[0])

    @property
    def channels(self) -> int:
        return int(self.z.shape[1])

    @property
    def device(self) -> torch.device:
        return self.z.device

    def kernel(self) -> ConvNNGP:
        """The float64 NNGP kernel of this spec's ``model_config``."""
        return ConvNNGP(self.config, torch.float64)

    def diag_maps(self) -> DiagMaps:
        """The per-point variance maps of the NNGP recursion (computed once, cached)."""
        if self._diag is None:
            self._diag = self.kernel().diag(self.z.double())
        return self._diag

    def __repr__(self) -> str:
        return f"ImageRKME(K={self.K}, C={self.channels}, depth={self.config.depth})"

    # -- algebra ---------------------------------------------------------------------------
    def _check_same_kernel(self, other: "ImageRKME") -> None:
        if not isinstance(other, ImageRKME):
            raise TypeError(f"cannot compare an ImageRKME with {type(other).__name__}")
        if other.config != self.config:
            raise ValueError(f"specs use different NNGP kernels ({self.config} vs {other.config})")
        if other.channels != self.channels:
            raise ValueError(f"specs have {self.channels} vs {other.channels} channels; they cannot be compared")

    def inner(self, other: "ImageRKME") -> float:
        """``<self, other> = sum_ij beta_i beta'_j k(z_i, z'_j)`` in float64 (the reference's ``inner_prod``)."""
        self._check_same_kernel(other)
        if other is self:
            return self.self_inner()
        with torch.no_grad():
            kz = self.kernel().cross(self.z.double(), other.z.double().to(self.device), self.diag_maps(),
                                     other.diag_maps().to(self.device))
            return float(self.beta @ kz @ other.beta.to(self.device))

    def self_inner(self) -> float:
        """``<self, self>`` (cached), with the exact diagonal as the reference computes it."""
        if self._self_inner is None:
            with torch.no_grad():
                d = self.diag_maps()
                one = DiagMaps([t.unsqueeze(0) for t in d.v], d.self_k.unsqueeze(0))
                self._self_inner = float(self.kernel().self_inner(self.z.double().unsqueeze(0),
                                                                  self.beta.unsqueeze(0), one)[0])
        return self._self_inner

    def dist(self, other: "ImageRKME", omit_term1: bool = False) -> float:
        """Squared MMD ``<A,A> - 2<A,B> + <B,B>`` (the reference's ``dist``; no square root)."""
        t1 = 0.0 if omit_term1 else self.self_inner()
        return float(t1 - 2.0 * self.inner(other) + other.self_inner())

    def residual(self, X: Any, preprocessed: bool = False, whitening: bool = True) -> float:
        """Squared MMD between this spec and the (preprocessed) data it summarises: the fit's quality.

        ``X`` raw images (n, C, H, W) go through :func:`preprocess_images` first unless
        ``preprocessed=True``. Costs n^2 kernel pairs: use a few hundred images.
        """
        x = X if preprocessed else preprocess_images(X, whitening=whitening, device=self.device)
        x = torch.as_tensor(x).to(self.device).double()
        kern = self.kernel()
        with torch.no_grad():
            dx = kern.diag(x)
            kxx = _chunked_cross(kern, x, x, dx, dx, same=True).mean()
            kzx = _chunked_cross(kern, self.z.double(), x, self.diag_maps(), dx).mean(1)
        return float(self.self_inner() - 2.0 * (self.beta @ kzx) + kxx)

    # -- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, X: Any, K: int = 50, **kwargs: Any) -> "ImageRKME":
        """Fit one spec to images X (n, C, H, W); see :meth:`fit_many` for the options."""
        return cls.fit_many([X], K=K, **kwargs)[0]

    @classmethod
    def fit_many(cls, datasets: Sequence[Any], K: int = 50, steps: int = 10, lr: float = 0.05,
                 sample_size: int = 5000, whitening: bool = True, resize: bool = True, herding_pool: int = 256,
                 seed: int = 0, device: Any = "cpu", model_config: dict | None = None,
                 chunk_pairs: int = 20000, single_thread: bool = True) -> list["ImageRKME"]:
        """Fit one spec per dataset, all datasets of a channel count in one batch.

        Parameters
        ----------
        datasets : sequence of arrays, each (n_d, C, H, W)
            Raw images (resized and preprocessed as the reference does).
        K : int
            Points per spec (the reference's default 50); at most n_d.
        steps : int
            Adam steps on ``z`` (each with the exact gradient over all (sampled) images and an exact
            QP for ``beta``). ``steps=0`` keeps the herding initialisation.
        lr : float
            Adam step size, in units of the standardised pixels.
        sample_size : int
            At most this many images per dataset are used (seeded subsample), as in the reference.
        herding_pool : int
            Candidates (a seeded subsample) from which kernel herding draws the initial ``z``.
        chunk_pairs : int
            (point, image) pairs per kernel call: bounds memory (about 30 KB per pair with gradients).
        single_thread : bool
            On a CPU, run torch's ops on one thread (many mid-sized ops: the thread pool's round
            trips cost more than they save, several-fold on a loaded machine).

        Returns
        -------
        list of ImageRKME, one per dataset, in order. The fit's residual (squared MMD to the
        preprocessed sample, without the data-data term) never increases: the best iterate is kept.
        """
        if len(datasets) == 0:
            return []
        dev = resolve_device(device)
        # one generator per dataset, seeded alike: a dataset's draws do not depend on the others
        gens = [np.random.default_rng(seed) for _ in datasets]
        xs = []
        for d, X in enumerate(datasets):
            gen = gens[d]
            x = preprocess_images(X, whitening=whitening, resize=resize, device=dev)
            if x.shape[0] > sample_size:
                x = x[torch.from_numpy(np.sort(gen.choice(x.shape[0], sample_size, replace=False))).to(dev)]
            if K > x.shape[0]:
                raise ValueError(f"dataset {d} has {x.shape[0]} images, fewer than K={K}; lower K")
            xs.append(x)
        mc = dict(DEFAULT_MODEL_CONFIG if model_config is None else model_config)
        config = NNGPConfig.from_model_config(mc)
        out: list[ImageRKME | None] = [None] * len(xs)
        for C in sorted({int(x.shape[1]) for x in xs}):
            idx = [i for i, x in enumerate(xs) if x.shape[1] == C]
            with single_torch_thread(single_thread and dev.type == "cpu"):
                zs, betas = _fit_batch([xs[i] for i in idx], K, steps, lr, herding_pool, [gens[i] for i in idx],
                                       config, chunk_pairs)
            for j, i in enumerate(idx):
                out[i] = cls(zs[j], betas[j], model_config=mc, device=dev)
        return out  # type: ignore[return-value]

    # -- JSON (the reference's layout) ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The reference's JSON layout (keys in its order)."""
        return {
            "RKME_IMAGE_VERSION": self.version,
            "msg": self.msg,
            "z": self.z.detach().cpu().numpy().tolist(),
            "beta": self.beta.detach().cpu().numpy().tolist(),
            "n_models": self.n_models,
            "model_config": self.model_config,
            "type": self.type,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any], device: Any = "cpu") -> "ImageRKME":
        """Build from the reference's JSON layout; missing required keys and other types are refused."""
        missing = [k for k in ("z", "beta") if k not in obj]
        if missing:
            raise ValueError(f"image spec JSON lacks keys {missing}; expected at least 'z' and 'beta'")
        kind = obj.get("type", REFERENCE_IMAGE_TYPE)
        if kind != REFERENCE_IMAGE_TYPE:
            raise ValueError(f"JSON has type {kind!r}; an image spec has type {REFERENCE_IMAGE_TYPE!r}")
        return cls(np.asarray(obj["z"], dtype=np.float32), np.asarray(obj["beta"], dtype=np.float64),
                   model_config=obj.get("model_config"), n_models=int(obj.get("n_models", 16)),
                   msg=obj.get("msg"), version=int(obj.get("RKME_IMAGE_VERSION", 1)), device=device)

    def save(self, path: str | os.PathLike) -> None:
        """Write the reference's JSON, atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_dict(), separators=(",", ":")).encode(), fsync=False)

    @classmethod
    def load(cls, path: str | os.PathLike, device: Any = "cpu") -> "ImageRKME":
        """Read a JSON image spec written by lwgpu or by the reference."""
        try:
            with open(path, encoding="utf-8") as fh:
                obj = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(obj, device=device)


from .image_distances import image_mmd2_to_bank, image_self_terms  # noqa: E402 - the bank-side functions
