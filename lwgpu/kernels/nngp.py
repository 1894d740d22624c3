"""The NNGP kernel of an infinitely wide ConvNet: the kernel of the reference's image specs.

The reference (``learnware``'s ``RKMEImageSpecification``, via its vendored ``cnn_gp``) compares
image specs with the neural-network Gaussian-process kernel of this network, ``depth`` times::

    conv k x k ("same", weight variance ``var_weight``, bias variance ``var_bias``) -> ReLU -> 2x2 average pool

followed by a full-size average (a convolution as large as the remaining map). For two images
``x, y`` (C, H, W) the recursion runs on maps of covariances, one value per pixel:

- input: ``c0(p) = mean_c x_c(p) y_c(p)`` and the variance maps ``v0x, v0y`` (same with x, x / y, y);
- conv: ``c <- var_weight * boxmean_k(c) + var_bias`` (zero padding, ``boxmean`` = sum / k^2);
- ReLU (arc-cosine): ``c <- (sqrt(vx vy - c^2) + (pi - acos(c / sqrt(vx vy))) c) / (2 pi)``
  (evaluated from ``rho = c / sqrt(vx vy)`` alone, which keeps it exact to rounding near rho = 1),
  ``v <- v / 2``; for an image with itself (``same``) the diagonal is set to ``v / 2`` exactly;
- pool: 2x2 mean, stride 2; end: the mean over the last map.

Here the maps of many pairs are computed at once, laid out ``(B, H, W, Na, Nb)`` (pairs innermost),
so that convolutions and pools are a few contiguous shifted adds. The first convolution is a
batched matrix product of k x k x C patches (one per pixel). The arc-cosine step is a fused numba
kernel on a CPU (with its own branch-free ``asin``, accurate to ~1e-16) and plain torch on a GPU;
it has exact analytic gradients (``dJ/dc = (pi - theta) / 2pi``, ``dJ/dv_x = sqrt(vx vy - c^2) /
(4 pi v_x)``), so fitting can differentiate through the kernel without autograd's ``acos`` poles.

The variance maps of each image (``DiagMaps``) do not depend on the other side of a pair, so they
are computed once per spec and reused for every pair it takes part in.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..device import numba_available

logger = logging.getLogger(__name__)

__all__ = ["NNGPConfig", "DiagMaps", "ConvNNGP", "nngp_kernel"]

_INV_2PI = 1.0 / (2.0 * math.pi)
_INV_4PI = 1.0 / (4.0 * math.pi)


@dataclass(frozen=True)
class NNGPConfig:
    """Architecture of the infinitely wide ConvNet (the reference's ``_build_ConvNet_NNGP``).

    Attributes
    ----------
    depth : int
        Number of (conv, ReLU, pool) blocks (the reference's ``net_depth``, default 3).
    kernel_size : int
        Odd convolution size (3).
    var_weight, var_bias : float
        Weight and bias variances of each convolution (sqrt(2) and 0.1 in the reference).
    image_size : int
        Side of the square input images (32); divisible by ``2 ** depth``.
    """

    depth: int = 3
    kernel_size: int = 3
    var_weight: float = math.sqrt(2.0)
    var_bias: float = 0.1
    image_size: int = 32

    def __post_init__(self) -> None:
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.depth < 1 or self.image_size % (2 ** self.depth) != 0:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**depth = {2 ** self.depth} (depth >= 1)"
            )

    @classmethod
    def from_model_config(cls, model_config: dict | None, image_size: int = 32) -> "NNGPConfig":
        """The kernel of a reference ``model_config`` (only ``net_depth``/``kernel_size`` matter)."""
        mc = dict(model_config or {})
        im = mc.get("im_size", (image_size, image_size))
        im = int(im[0]) if isinstance(im, (list, tuple)) else int(im)
        return cls(depth=int(mc.get("net_depth", 3)), kernel_size=int(mc.get("kernel_size", 3)), image_size=im)

    def sizes(self) -> list[int]:
        """Side of the map at each conv layer: [32, 16, 8] for the default."""
        return [self.image_size // (2 ** l) for l in range(self.depth)]


@dataclass
class DiagMaps:
    """Per-image quantities of the recursion that do not depend on the other image of a pair.

    Attributes
    ----------
    v : list of torch.Tensor
        Pre-activation variance map at each conv layer, ``(..., N, H_l * W_l)`` (pixels flattened).
    self_k : torch.Tensor, (..., N)
        ``k(x, x)`` for each image.
    """

    v: list[torch.Tensor]
    self_k: torch.Tensor

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "DiagMaps":
        return DiagMaps([t.to(device=device, dtype=dtype) for t in self.v], self.self_k.to(device=device, dtype=dtype))

    def index(self, sl: Any) -> "DiagMaps":
        """Select leading (spec) entries: ``maps.index(slice(a, b))``."""
        return DiagMaps([t[sl] for t in self.v], self.self_k[sl])


# ----------------------------------------------------------------------------------------------
# linear steps on maps laid out (B, H, W, ...)
# ----------------------------------------------------------------------------------------------

def _box_sum(x: torch.Tensor, k: int, hdim: int = 1) -> torch.Tensor:
    """Zero-padded k x k box sum over dims (hdim, hdim + 1) of x (any trailing dims)."""
    r = k // 2
    if r == 0:
        return x
    out = x.clone()
    for s in range(1, r + 1):
        out.narrow(hdim, s, out.shape[hdim] - s).add_(x.narrow(hdim, 0, x.shape[hdim] - s))
        out.narrow(hdim, 0, out.shape[hdim] - s).add_(x.narrow(hdim, s, x.shape[hdim] - s))
    wdim = hdim + 1
    res = out.clone()
    for s in range(1, r + 1):
        res.narrow(wdim, s, res.shape[wdim] - s).add_(out.narrow(wdim, 0, out.shape[wdim] - s))
        res.narrow(wdim, 0, res.shape[wdim] - s).add_(out.narrow(wdim, s, out.shape[wdim] - s))
    return res


def _pool2(x: torch.Tensor, hdim: int = 1) -> torch.Tensor:
    """2x2 mean with stride 2 over dims (hdim, hdim + 1)."""
    H, W = x.shape[hdim], x.shape[hdim + 1]
    shape = x.shape[:hdim] + (H // 2, 2, W // 2, 2) + x.shape[hdim + 2:]
    return x.reshape(shape).sum((hdim + 1, hdim + 3)) * 0.25


def _patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """Zero-padded k x k patches of images x (B, N, C, S, S) -> (B, S, S, N, C k k) (contiguous)."""
    B, N, C, S, _ = x.shape
    r = k // 2
    xp = F.pad(x.reshape(B * N, C, S, S), (r, r, r, r))
    cols = [xp[:, :, dy:dy + S, dx:dx + S] for dy in range(k) for dx in range(k)]
    p = torch.stack(cols, -1)  # (B N, C, S, S, k k)
    return p.reshape(B, N, C, S, S, k * k).permute(0, 3, 4, 1, 2, 5).reshape(B, S, S, N, C * k * k)


# ----------------------------------------------------------------------------------------------
# the arc-cosine (ReLU) step
# ----------------------------------------------------------------------------------------------

def _numba_kernels() -> Any:
    """The fused arc-cosine kernels (compiled once, cached on disk by numba)."""
    from . import _nngp_numba

    return _nngp_numba.relu_inplace, _nngp_numba.relu_grad


def _relu_torch(c: torch.Tensor, va: torch.Tensor, vb: torch.Tensor, same: bool,
                want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Torch arc-cosine step (GPU, or CPU without numba); returns (J, dJ/dc, S/4pi)."""
    r = (va.unsqueeze(-1) * vb.unsqueeze(-2)).sqrt()
    rho = (c / r).clamp(-1.0, 1.0)
    s = r * ((1.0 - rho) * (1.0 + rho)).clamp_min(0).sqrt()  # both from rho: see _nngp_numba
    d = (0.5 * math.pi + torch.asin(rho)) * _INV_2PI
    out = s * _INV_2PI + d * rho * r
    s4 = s * _INV_4PI if want_grad else None
    if same:
        eye = torch.eye(c.shape[-1], dtype=torch.bool, device=c.device)
        half = (0.5 * va).unsqueeze(-1).expand_as(out)
        out = torch.where(eye, half, out)
        if want_grad:
            d = torch.where(eye, torch.zeros_like(d), d)
            s4 = torch.where(eye, 0.5 * half, s4)
    return out, (d if want_grad else None), s4


def _use_numba(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and numba_available()


class _ArcCosReLU(torch.autograd.Function):
    """J(c, va, vb) with the analytic gradients; c (B, P, Na, Nb), va (Ba, P, Na), vb (Bb, P, Nb)."""

    @staticmethod
    def forward(ctx: Any, c: torch.Tensor, va: torch.Tensor, vb: torch.Tensor, same: bool) -> torch.Tensor:
        if _use_numba(c):
            cc, a, b = c.contiguous(), va.contiguous(), vb.contiguous()
            out, dc, s4 = torch.empty_like(cc), torch.empty_like(cc), torch.empty_like(cc)
            _numba_kernels()[1](cc.numpy(), a.numpy(), b.numpy(), bool(same), out.numpy(), dc.numpy(), s4.numpy())
        else:
            out, dc, s4 = _relu_torch(c, va, vb, same, True)
        ctx.save_for_backward(dc, s4, va, vb)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        dc, s4, va, vb = ctx.saved_tensors
        gs = g * s4
        ga = gs.sum(-1) / va if ctx.needs_input_grad[1] else None
        gb = gs.sum(-2) / vb if ctx.needs_input_grad[2] else None
        if ga is not None and va.shape[0] == 1 and ga.shape[0] != 1:
            ga = ga.sum(0, keepdim=True)
        if gb is not None and vb.shape[0] == 1 and gb.shape[0] != 1:
            gb = gb.sum(0, keepdim=True)
        return g * dc, ga, gb, None


def _relu(c: torch.Tensor, va: torch.Tensor, vb: torch.Tensor, same: bool) -> torch.Tensor:
    """The arc-cosine step: in place without autograd, through ``_ArcCosReLU`` with it."""
    if torch.is_grad_enabled() and (c.requires_grad or va.requires_grad or vb.requires_grad):
        return _ArcCosReLU.apply(c, va, vb, same)
    if _use_numba(c):
        c = c.contiguous()
        _numba_kernels()[0](c.numpy(), va.contiguous().numpy(), vb.contiguous().numpy(), bool(same))
        return c
    return _relu_torch(c, va, vb, same, False)[0]


# ----------------------------------------------------------------------------------------------
# the kernel
# ----------------------------------------------------------------------------------------------

class ConvNNGP:
    """NNGP kernel of the reference's infinitely wide ConvNet, batched over pairs of image sets.

    Parameters
    ----------
    config : NNGPConfig, optional
        The architecture (default: the reference's, depth 3).
    dtype : torch.dtype
        Precision of the recursion (float64 by default: the reference's float32 loses ~1e-4
        relative on near-identical images; float64 is the truth the tests compare with).
    fused : bool
        Without autograd, in float64 on a CPU with numba: run each pair's whole recursion in one
        fused kernel (cache-resident buffers; ~10x fewer memory passes than the tensor path, which
        ``fused=False`` forces and which autograd and GPUs use).

    Examples
    --------
    >>> kern = ConvNNGP()
    >>> K = kern.cross(a, b)             # a (Na, C, 32, 32), b (Nb, C, 32, 32) -> (Na, Nb)
    >>> G = kern.cross(z, z, same=True)  # Gram matrix of one set, diagonal exact
    """

    def __init__(self, config: NNGPConfig | None = None, dtype: torch.dtype = torch.float64,
                 fused: bool = True) -> None:
        self.config = config or NNGPConfig()
        self.dtype = dtype
        self.fused = fused

    # -- per-image terms -------------------------------------------------------------------
    def diag(self, x: torch.Tensor) -> DiagMaps:
        """Variance maps and self values of images x (..., N, C, H, W)."""
        cfg = self.config
        x = self._as_images(x)
        lead = x.shape[:-3]
        v = (x * x).mean(-3).reshape(-1, cfg.image_size, cfg.image_size)  # (M, H, W)
        maps = []
        for _ in range(cfg.depth):
            v = _box_sum(v, cfg.kernel_size) * (cfg.var_weight / cfg.kernel_size ** 2) + cfg.var_bias
            maps.append(v.reshape(*lead, -1))
            v = _pool2(v * 0.5)
        self_k = v.mean((-2, -1)).reshape(lead)
        return DiagMaps(maps, self_k)

    # -- pairs -----------------------------------------------------------------------------
    def cross(self, a: torch.Tensor, b: torch.Tensor, da: DiagMaps | None = None, db: DiagMaps | None = None,
              same: bool = False) -> torch.Tensor:
        """Kernel matrix between image sets: a (Ba, Na, C, H, W) or (Na, ...), b likewise -> (B, Na, Nb).

        Leading batch dims ``Ba``, ``Bb`` broadcast (each 1 or B); with 4-d inputs the result is
        (Na, Nb). ``same=True`` (a is b) sets the diagonal exactly, as the reference does for a
        spec with itself. ``da``/``db`` are the inputs' :meth:`diag` maps when already at hand.
        """
        cfg = self.config
        squeeze = a.dim() == 4 and b.dim() == 4
        a = self._as_images(a)
        b = self._as_images(b)
        if a.dim() == 4:
            a = a.unsqueeze(0)
        if b.dim() == 4:
            b = b.unsqueeze(0)
        if a.shape[-3] != b.shape[-3]:
            raise ValueError(f"images differ in channels: {a.shape[-3]} vs {b.shape[-3]}; "
                             "specs of different channel counts cannot be compared")
        da = self.diag(a) if da is None else da
        db = self.diag(b) if db is None else db
        if self.fused and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)) \
                and _use_numba(a) and self.dtype == torch.float64:
            out = self._cross_fused(a, b, da, db, same)
            return out[0] if squeeze else out
        Ba, Na, C = a.shape[0], a.shape[1], a.shape[2]
        Bb, Nb = b.shape[0], b.shape[1]
        B = max(Ba, Bb)
        S, k = cfg.image_size, cfg.kernel_size
        pa = _patches(a, k).reshape(Ba, S * S, Na, C * k * k)  # (Ba, P, Na, Ckk)
        pb = _patches(b, k).reshape(Bb, S * S, Nb, C * k * k).transpose(-1, -2)  # (Bb, P, Ckk, Nb)
        c = torch.matmul(pa, pb)  # (B, P, Na, Nb)
        scale = cfg.var_weight / (k * k * C)
        if c.requires_grad:
            c = c * scale + cfg.var_bias
        else:
            c.mul_(scale).add_(cfg.var_bias)
        for layer in range(cfg.depth):
            side = S // (2 ** layer)
            if layer > 0:
                c = _box_sum(c.reshape(B, side, side, Na, Nb), k) * (cfg.var_weight / (k * k)) + cfg.var_bias
                c = c.reshape(B, side * side, Na, Nb)
            va = da.v[layer].reshape(Ba, Na, side * side).transpose(1, 2)
            vb = db.v[layer].reshape(Bb, Nb, side * side).transpose(1, 2)
            c = _relu(c, va, vb, same)
            c = _pool2(c.reshape(B, side, side, Na, Nb))
            c = c.reshape(B, (side // 2) ** 2, Na, Nb)
        out = c.mean(1)
        return out[0] if squeeze else out

    def _cross_fused(self, a: torch.Tensor, b: torch.Tensor, da: DiagMaps, db: DiagMaps, same: bool) -> torch.Tensor:
        """The fused CPU kernel (one pair's whole recursion in cache-resident buffers), (B, Na, Nb)."""
        from . import _nngp_numba

        cfg = self.config
        Ba, Na, Bb, Nb = a.shape[0], a.shape[1], b.shape[0], b.shape[1]
        B = max(Ba, Bb)
        sizes = [s * s for s in cfg.sizes()]
        offs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

        def flat_maps(d: DiagMaps, n_lead: int, n: int) -> np.ndarray:
            return torch.cat([v.detach().reshape(n_lead * n, -1) for v in d.v], 1).contiguous().numpy()

        A = a.detach().contiguous().reshape(Ba * Na, *a.shape[2:]).numpy()
        Bm = b.detach().contiguous().reshape(Bb * Nb, *b.shape[2:]).numpy()
        VA, VB = flat_maps(da, Ba, Na), flat_maps(db, Bb, Nb)
        sk = da.self_k.detach().reshape(-1).contiguous().numpy()
        args = (offs, cfg.depth, cfg.kernel_size, float(cfg.var_weight), float(cfg.var_bias))
        if Ba == 1 and not same:  # one query set against every bank point at once
            out = np.empty((Na, Bb * Nb))
            _nngp_numba.cross_fused(A, Bm, VA, VB, *args, False, sk, out)
            res = torch.from_numpy(out).reshape(Na, Bb, Nb).permute(1, 0, 2)
            return res.expand(B, Na, Nb) if Bb == 1 else res.contiguous()
        res = torch.empty(B, Na, Nb, dtype=torch.float64)
        for t in range(B):
            ia, ib = (t if Ba > 1 else 0), (t if Bb > 1 else 0)
            out = res[t].numpy()
            _nngp_numba.cross_fused(A[ia * Na:(ia + 1) * Na], Bm[ib * Nb:(ib + 1) * Nb], VA[ia * Na:(ia + 1) * Na],
                                    VB[ib * Nb:(ib + 1) * Nb], *args, bool(same), sk[ia * Na:(ia + 1) * Na], out)
        return res

    def self_inner(self, z: torch.Tensor, beta: torch.Tensor, dz: DiagMaps | None = None) -> torch.Tensor:
        """``<B, B> = beta' K(z, z) beta`` per spec: z (N, K, C, H, W), beta (N, K) -> (N,) (exact diagonal).

        On a CPU (float64, numba) a fused kernel over the upper triangle (half the pairs, zero-weight
        points skipped); elsewhere the Gram matrices.
        """
        z = self._as_images(z)
        if z.dim() != 5 or beta.shape != z.shape[:2]:
            raise ValueError(f"expected z (N, K, C, H, W) and beta (N, K), got {tuple(z.shape)}, {tuple(beta.shape)}")
        dz = self.diag(z) if dz is None else dz
        beta = beta.to(device=z.device, dtype=torch.float64)
        if self.fused and _use_numba(z) and self.dtype == torch.float64 and not torch.is_grad_enabled():
            from . import _nngp_numba

            cfg = self.config
            N, K = beta.shape
            offs = np.concatenate([[0], np.cumsum([s * s for s in cfg.sizes()])[:-1]]).astype(np.int64)
            v = torch.cat([t.detach().reshape(N, K, -1) for t in dz.v], -1).contiguous().numpy()
            part = np.empty((N, K))
            _nngp_numba.self_inner_fused(z.detach().contiguous().numpy(), v,
                                         dz.self_k.detach().reshape(N, K).contiguous().numpy(),
                                         beta.detach().contiguous().numpy(), offs, cfg.depth, cfg.kernel_size,
                                         float(cfg.var_weight), float(cfg.var_bias), part)
            return torch.from_numpy(part.sum(1))
        g = self.cross(z, z, dz, dz, same=True)
        return torch.einsum("nk,nkl,nl->n", beta, g.to(torch.float64), beta)

    def gram(self, x: torch.Tensor, dx: DiagMaps | None = None) -> torch.Tensor:
        """Gram matrix of one set (..., N, C, H, W) -> (..., N, N), diagonal exact (``same``)."""
        return self.cross(x, x, dx, dx, same=True)

    def _as_images(self, x: torch.Tensor) -> torch.Tensor:
        S = self.config.image_size
        if not torch.is_tensor(x):
            x = torch.as_tensor(np.asarray(x))
        if x.dim() < 4 or x.shape[-1] != S or x.shape[-2] != S:
            raise ValueError(f"expected images (..., N, C, {S}, {S}), got shape {tuple(x.shape)}; "
                             f"resize images to {S}x{S} first (ImageRKME.fit does)")
        return x.to(self.dtype) if x.dtype != self.dtype else x


def nngp_kernel(a: torch.Tensor, b: torch.Tensor | None = None, config: NNGPConfig | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Convenience: ``k(a_i, b_j)`` (Na, Nb) for image sets (N, C, 32, 32); ``b=None`` is the Gram of a."""
    kern = ConvNNGP(config, dtype)
    with torch.no_grad():
        return kern.gram(a) if b is None else kern.cross(a, b)
