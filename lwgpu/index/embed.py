"""Feature maps that turn an RKME into one vector whose L2 distances approximate the squared MMD.

A feature map ``phi: R^d -> R^D`` with ``phi(a).phi(b) ~= k(a, b) = exp(-gamma ||a - b||^2)`` turns
a spec ``A = (z, beta)`` into ``psi(A) = sum_i beta_i phi(z_i)`` and then
``||psi(A) - psi(B)||^2 ~= dist(A, B)`` (docs/index.md), so MMD search becomes an L2
nearest-neighbour problem that FAISS can answer.

Three maps:

* :class:`RandomFourierFeatures` (``kind="rff"``): ``omega ~ N(0, 2 gamma I)``;
  ``phi(x) = sqrt(1/M) [cos(omega x), sin(omega x)]`` (``D = 2M``, the default, lower variance and
  exactly shift-invariant) or ``phi(x) = sqrt(2/D) cos(omega x + b)``, ``b ~ U[0, 2 pi)``.
* ``kind="orf"``: the same with orthogonal random features (blocks of ``d`` orthogonal directions
  with chi-distributed norms; unbiased, lower variance).
* :class:`NystroemFeatures` (``kind="nystroem"``): ``phi(x) = K_LL^{-1/2} k(L, x)`` on ``D``
  landmarks ``L`` drawn from the bank's points (k-means). ``||psi(A) - psi(B)||^2`` is then the
  squared MMD of the projections onto the landmarks' span: never above ``dist(A, B)``, and much
  tighter than random features at equal ``D`` when the landmarks cover the market's points.

Every map stores its parameters as arrays (:meth:`SpecEmbedder.state`), so a reloaded index embeds
queries exactly as it embedded the bank.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import resolve_device
from ..kernels.torch_backend import gaussian_kernel

logger = logging.getLogger(__name__)

#: Elements of the largest intermediate tile (chunk x K x D) an embedding pass materialises.
TILE_ELEMENTS = 1 << 24


def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)


class SpecEmbedder:
    """Base class: a point feature map ``phi`` (n, d) -> (n, D) and the spec map ``psi``.

    Subclasses set ``d``, ``D``, ``gamma`` and implement :meth:`_features` and :meth:`state`.
    """

    kind: str = ""
    d: int
    D: int
    gamma: float

    # ------------------------------------------------------------------ maps
    def embed_points(self, x: Any, device: str | torch.device | None = "cpu") -> torch.Tensor:
        """``phi(x)``: x (n, d) -> (n, D) float32 on ``device``."""
        dev = resolve_device(device)
        xt = _as_tensor(x, dev, torch.float32)
        if xt.dim() != 2 or xt.shape[1] != self.d:
            raise ValueError(f"points must have shape (n, {self.d}); got {tuple(xt.shape)}")
        return self._finish(self._features(xt))

    def embed_specs(self, z: Any, beta: Any, device: str | torch.device | None = "auto",
                    chunk: int | None = None) -> np.ndarray:
        """``psi`` of N specs: z (N, K, d), beta (N, K) -> (N, D) float32 numpy.

        Tiled over the specs so that no (chunk, K, D) intermediate exceeds :data:`TILE_ELEMENTS`;
        ``z``/``beta`` may be numpy, memory-mapped, or torch tensors on any device.
        """
        dev = resolve_device(device)
        if z.ndim != 3 or z.shape[2] != self.d:
            raise ValueError(f"z must have shape (N, K, {self.d}); got {tuple(z.shape)}")
        if tuple(beta.shape) != tuple(z.shape[:2]):
            raise ValueError(f"beta must have shape {tuple(z.shape[:2])} to match z; got {tuple(beta.shape)}")
        n, k = int(z.shape[0]), int(z.shape[1])
        out = np.empty((n, self.D), dtype=np.float32)
        if n == 0:
            return out
        step = chunk or max(1, TILE_ELEMENTS // max(1, k * self._width()))
        with torch.no_grad():
            for s in range(0, n, step):
                zc = _as_tensor(z[s : s + step], dev, torch.float32)
                bc = _as_tensor(beta[s : s + step], dev, torch.float32)
                feats = self._features(zc.reshape(-1, self.d)).reshape(zc.shape[0], k, -1)
                pooled = torch.bmm(bc.unsqueeze(1), feats).squeeze(1)  # (c, width)
                out[s : s + step] = self._finish(pooled).cpu().numpy()
        return out

    def embed_rkmes(self, specs: list, device: str | torch.device | None = "auto") -> np.ndarray:
        """``psi`` of a list of RKMEs (ragged K allowed: padded with zero weights) -> (Q, D)."""
        z, beta = pad_specs(specs)
        return self.embed_specs(z, beta, device=device)

    # ------------------------------------------------------------------ hooks
    def _width(self) -> int:
        """Width of the per-point features before :meth:`_finish` (tile sizing)."""
        return self.D

    def _features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self, f: torch.Tensor) -> torch.Tensor:
        """Linear map applied after pooling over a spec's points (identity by default)."""
        return f

    def state(self) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> None:
        """Write the parameters to ``path`` (.npz)."""
        np.savez(path, **self.state())

    @staticmethod
    def from_state(state: dict[str, np.ndarray]) -> "SpecEmbedder":
        """Rebuild the embedder that :meth:`state` described (any kind)."""
        kind = str(np.asarray(state["kind"]).item())
        if kind in ("rff", "orf"):
            return RandomFourierFeatures._from_state(state)
        if kind == "nystroem":
            return NystroemFeatures._from_state(state)
        raise ValueError(f"unknown embedder kind {kind!r} in saved state: expected rff, orf or nystroem")

    @staticmethod
    def load(path: str | Path) -> "SpecEmbedder":
        """Read an embedder written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            return SpecEmbedder.from_state({key: f[key] for key in f.files})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, d={self.d}, D={self.D}, gamma={self.gamma})"


class RandomFourierFeatures(SpecEmbedder):
    """Random Fourier features of the Gaussian kernel, plain (``rff``) or orthogonal (``orf``).

    Parameters
    ----------
    d : int
        Input dimension.
    D : int
        Output dimension (even when ``pair=True``).
    gamma : float
        Kernel bandwidth; frequencies are drawn from ``N(0, 2 gamma I)``.
    seed : int
        Seed of the frequencies (numpy ``default_rng``); the drawn arrays are what is stored.
    orthogonal : bool
        Orthogonal random features: each block of ``d`` frequencies is a random rotation's rows,
        rescaled by independent chi(d) norms (Yu et al., 2016).
    pair : bool
        ``[cos, sin]`` features (default) instead of ``cos(. + b)`` with random phases.
    """

    def __init__(self, d: int, D: int, gamma: float, seed: int = 0, orthogonal: bool = False, pair: bool = True) -> None:
        if d < 1 or D < 1:
            raise ValueError(f"d and D must be positive; got d={d}, D={D}")
        if pair and D % 2:
            raise ValueError(f"D={D} must be even for [cos, sin] features; use an even D or pair=False")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0; got {gamma}")
        self.d, self.D, self.gamma = int(d), int(D), float(gamma)
        self.pair, self.orthogonal, self.seed = bool(pair), bool(orthogonal), int(seed)
        self.kind = "orf" if orthogonal else "rff"
        m = D // 2 if pair else D
        rng = np.random.default_rng(seed)
        omega = _orthogonal_gaussian(rng, d, m) if orthogonal else rng.standard_normal((d, m))
        self.omega = (omega * math.sqrt(2.0 * gamma)).astype(np.float32)  # (d, m)
        self.phase = None if pair else rng.uniform(0.0, 2.0 * math.pi, size=m).astype(np.float32)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _params(self, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        if dev not in self._cache:
            w = torch.as_tensor(self.omega, device=dev)
            b = None if self.phase is None else torch.as_tensor(self.phase, device=dev)
            self._cache[dev] = (w, b)
        return self._cache[dev]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._params(x.device)
        proj = x @ w  # (n, m)
        if self.pair:
            scale = math.sqrt(1.0 / w.shape[1])
            return torch.cat([torch.cos(proj), torch.sin(proj)], dim=1).mul_(scale)
        return torch.cos(proj.add_(b)).mul_(math.sqrt(2.0 / self.D))

    def state(self) -> dict[str, np.ndarray]:
        st = {
            "kind": np.array(self.kind),
            "gamma": np.array(self.gamma),
            "D": np.array(self.D),
            "seed": np.array(self.seed),
            "pair": np.array(self.pair),
            "omega": self.omega,
        }
        if self.phase is not None:
            st["phase"] = self.phase
        return st

    @classmethod
    def _from_state(cls, st: dict[str, np.ndarray]) -> "RandomFourierFeatures":
        obj = cls.__new__(cls)
        obj.kind = str(st["kind"].item())
        obj.orthogonal = obj.kind == "orf"
        obj.gamma, obj.D, obj.seed = float(st["gamma"]), int(st["D"]), int(st["seed"])
        obj.pair = bool(st["pair"])
        obj.omega = np.asarray(st["omega"], dtype=np.float32)
        obj.d = int(obj.omega.shape[0])
        obj.phase = np.asarray(st["phase"], dtype=np.float32) if "phase" in st else None
        obj._cache = {}
        return obj


def _orthogonal_gaussian(rng: np.random.Generator, d: int, m: int) -> np.ndarray:
    """(d, m) frequencies whose blocks of d columns are orthogonal, with N(0, I)-like norms."""
    blocks = []
    for _ in range(math.ceil(m / d)):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q = q * np.sign(np.diag(r))  # Haar-distributed rotation
        norms = np.sqrt(rng.chisquare(d, size=d))
        blocks.append(q * norms)  # column j has the norm of a d-dim standard Gaussian
    return np.concatenate(blocks, axis=1)[:, :m]


class NystroemFeatures(SpecEmbedder):
    """Nystroem features on landmarks ``L`` (D, d): ``phi(x) = K_LL^{-1/2} k(L, x)``.

    The ``K_LL^{-1/2}`` map is applied after pooling over a spec's points, so embedding a spec
    costs ``K D d`` kernel work plus one ``D x D`` product. Eigenvalues of ``K_LL`` below
    ``rcond * max`` are dropped (their directions get zero weight).
    """

    kind = "nystroem"

    def __init__(self, landmarks: Any, gamma: float, rcond: float = 1e-6) -> None:
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.ndim != 2 or lm.shape[0] < 1:
            raise ValueError(f"landmarks must have shape (D, d) with D >= 1; got {lm.shape}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0; got {gamma}")
        self.gamma, self.rcond = float(gamma), float(rcond)
        self.landmarks = lm.astype(np.float32)
        self.D, self.d = int(lm.shape[0]), int(lm.shape[1])
        sq = ((lm[:, None, :] - lm[None, :, :]) ** 2).sum(-1)
        evals, evecs = np.linalg.eigh(np.exp(-self.gamma * sq))
        keep = evals > rcond * evals.max()
        inv_sqrt = np.zeros_like(evals)
        inv_sqrt[keep] = 1.0 / np.sqrt(evals[keep])
        # Symmetric K^{-1/2}: output coordinates stay tied to landmarks (any rotation works for L2).
        self.transform = ((evecs * inv_sqrt) @ evecs.T).astype(np.float32)
        self.rank = int(keep.sum())
        if self.rank < self.D:
            logger.info("Nystroem: K_LL has numerical rank %d of %d (duplicate or close landmarks)", self.rank, self.D)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_points(
        cls,
        points: Any,
        D: int,
        gamma: float,
        weights: Any | None = None,
        seed: int = 0,
        method: str = "kmeans",
        iters: int = 10,
        rcond: float = 1e-6,
    ) -> "NystroemFeatures":
        """Choose ``D`` landmarks among/around ``points`` (n, d).

        ``method="sample"`` draws ``D`` points (probability proportional to ``weights``);
        ``"kmeans"`` (default) runs ``iters`` Lloyd rounds from that draw, which spreads the
        landmarks over the points' mass and gives a tighter approximation at equal ``D``.
        """
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[0] == 0:
            raise ValueError(f"points must have shape (n, d) with n >= 1; got {pts.shape}")
        if method not in ("kmeans", "sample"):
            raise ValueError(f"method must be 'kmeans' or 'sample'; got {method!r}")
        rng = np.random.default_rng(seed)
        p = None
        if weights is not None:
            w = np.clip(np.asarray(weights, dtype=np.float64).reshape(-1), 0.0, None)
            p = w / w.sum() if w.sum() > 0 else None
        n_pos = pts.shape[0] if p is None else int((p > 0).sum())
        idx = rng.choice(pts.shape[0], size=D, replace=D > n_pos, p=p)
        centres = pts[idx].copy()
        if method == "kmeans" and iters > 0:
            centres = _lloyd(pts, centres, iters, p)
        return cls(centres, gamma, rcond=rcond)

    @classmethod
    def from_bank(
        cls, bank: Any, D: int, seed: int = 0, method: str = "kmeans", sample: int = 200_000, iters: int = 10
    ) -> "NystroemFeatures":
        """Landmarks from up to ``sample`` points of a SpecBank, drawn with probability ``beta``."""
        return cls.from_points_of_specs(bank.z, bank.beta, D, float(bank.gamma), seed=seed, method=method, sample=sample,
                                        iters=iters)

    @classmethod
    def from_points_of_specs(cls, z: Any, beta: Any, D: int, gamma: float, seed: int = 0, method: str = "kmeans",
                             sample: int = 200_000, iters: int = 10) -> "NystroemFeatures":
        """Landmarks from specs' points z (N, K, d), drawn with probability proportional to ``|beta|``."""
        n, k = int(z.shape[0]), int(z.shape[1])
        if n == 0:
            raise ValueError("cannot choose Nystroem landmarks from an empty bank; add specs first or use kind='rff'")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=min(n, max(1, sample // k)), replace=False))
        pts = np.asarray(_np(z[rows]), dtype=np.float32).reshape(-1, z.shape[2])  # only the sample leaves the device
        w = np.abs(np.asarray(_np(beta[rows]), dtype=np.float64)).reshape(-1)
        return cls.from_points(pts, D, gamma, weights=w, seed=seed, method=method, iters=iters)

    def _params(self, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if dev not in self._cache:
            self._cache[dev] = (torch.as_tensor(self.landmarks, device=dev), torch.as_tensor(self.transform, device=dev))
        return self._cache[dev]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        lm, _ = self._params(x.device)
        return gaussian_kernel(x, lm, self.gamma)  # (n, D): k(x, L)

    def _finish(self, f: torch.Tensor) -> torch.Tensor:
        _, t = self._params(f.device)
        return f @ t

    def state(self) -> dict[str, np.ndarray]:
        return {
            "kind": np.array(self.kind),
            "gamma": np.array(self.gamma),
            "rcond": np.array(self.rcond),
            "landmarks": self.landmarks,
            "transform": self.transform,
        }

    @classmethod
    def _from_state(cls, st: dict[str, np.ndarray]) -> "NystroemFeatures":
        obj = cls.__new__(cls)
        obj.gamma, obj.rcond = float(st["gamma"]), float(st["rcond"])
        obj.landmarks = np.asarray(st["landmarks"], dtype=np.float32)
        obj.transform = np.asarray(st["transform"], dtype=np.float32)  # stored, not recomputed: bitwise equal
        obj.D, obj.d = int(obj.landmarks.shape[0]), int(obj.landmarks.shape[1])
        obj.rank = obj.D
        obj._cache = {}
        return obj


def _lloyd(pts: np.ndarray, centres: np.ndarray, iters: int, p: np.ndarray | None) -> np.ndarray:
    """A few weighted Lloyd rounds in torch (CPU); empty clusters keep their previous centre."""
    x = torch.as_tensor(pts)
    c = torch.as_tensor(centres).clone()
    w = torch.ones(x.shape[0]) if p is None else torch.as_tensor(p, dtype=torch.float32)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(dim=1)
        mass = torch.zeros(c.shape[0]).index_add_(0, assign, w)
        sums = torch.zeros_like(c).index_add_(0, assign, x * w[:, None])
        ok = mass > 0
        c[ok] = sums[ok] / mass[ok, None]
    return c.numpy()


def _np(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def pad_specs(specs: list) -> tuple[np.ndarray, np.ndarray]:
    """Pack RKMEs with possibly different K into z (Q, Kmax, d), beta (Q, Kmax); zero weights pad."""
    if len(specs) == 0:
        raise ValueError("no specs given: pass at least one RKME")
    d = specs[0].d
    kmax = max(s.K for s in specs)
    z = np.zeros((len(specs), kmax, d), dtype=np.float32)
    beta = np.zeros((len(specs), kmax), dtype=np.float32)
    for i, s in enumerate(specs):
        if s.d != d:
            raise ValueError(f"spec {i} has d={s.d} but spec 0 has d={d}; all specs must share one input dimension")
        zi, bi = s.numpy()
        z[i, : s.K] = zi
        beta[i, : s.K] = bi
    return z, beta


def make_embedder(
    kind: str, d: int, D: int, gamma: float, seed: int = 0, bank: Any | None = None, **options: Any
) -> SpecEmbedder:
    """Build an embedder by name: ``"rff"``, ``"orf"`` or ``"nystroem"`` (landmarks from ``bank``)."""
    kind = kind.lower()
    if kind in ("rff", "orf"):
        return RandomFourierFeatures(d, D, gamma, seed=seed, orthogonal=kind == "orf", **options)
    if kind == "nystroem":
        if bank is None:
            raise ValueError("kind='nystroem' needs a bank to draw landmarks from; pass bank=... or use kind='rff'")
        return NystroemFeatures.from_bank(bank, D, seed=seed, **options)
    raise ValueError(f"unknown embedder kind {kind!r}: use 'rff', 'orf' or 'nystroem'")
