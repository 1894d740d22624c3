"""Random-feature embedding of image specs, so that FAISS can index them.

The NNGP kernel of :mod:`lwgpu.kernels.nngp` is the infinite-width limit of random ConvNets of the
same architecture: with conv weights ``N(0, var_weight / (C_in k^2))``, biases ``N(0, var_bias)``,
ReLU, and each 2x2 "pool" a *random* 2x2 stride-2 convolution (weights ``N(0, 1 / (4 C_in))``: the
kernel's recursion averages same-position covariances only, which is what independent weights per
tap give; a fixed average pool would add cross-position terms), the features ``phi(x)`` of the last
map (width x s x s), scaled by ``1 / sqrt(width s^2)``, satisfy ``E[phi(x) . phi(y)] -> k(x, y)``
as the width grows.
A spec's embedding is ``psi(A) = sum_i beta_i phi(z_i)``, so ``||psi(A) - psi(B)||^2`` estimates the
squared MMD ``dist(A, B)`` (with a small finite-width bias and a variance that falls with
``n_nets * width``). As for table specs, the index only proposes candidates: they are re-ranked by
the exact distance (:func:`lwgpu.spec.image.image_mmd2_to_bank`).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..kernels.nngp import NNGPConfig
from ..spec.image import ImageRKME

logger = logging.getLogger(__name__)

__all__ = ["image_features", "ImageFeatureMap"]


class ImageFeatureMap:
    """``n_nets`` random ConvNets of the NNGP's architecture; ``phi`` maps images to (n, D) features.

    Parameters
    ----------
    channels : int
        Input channels C.
    width : int
        Channels of each hidden layer (D = n_nets * width * s^2, s = 32 / 2^depth).
    n_nets : int
        Independent networks, concatenated.
    config : NNGPConfig, optional
        The kernel's architecture (the reference's by default).
    seed : int
        Seed of the weights: embeddings compared with each other must share it.
    """

    def __init__(self, channels: int, width: int = 64, n_nets: int = 4, config: NNGPConfig | None = None,
                 seed: int = 0, device: Any = "cpu") -> None:
        self.config = config or NNGPConfig()
        self.channels, self.width, self.n_nets, self.seed = int(channels), int(width), int(n_nets), int(seed)
        self.device = resolve_device(device)
        g = torch.Generator().manual_seed(seed)
        k = self.config.kernel_size
        self.nets: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        for _ in range(self.n_nets):
            layers = []
            cin = self.channels
            for _ in range(self.config.depth):
                std = math.sqrt(self.config.var_weight / (cin * k * k))
                w = torch.randn(self.width, cin, k, k, generator=g) * std
                b = torch.randn(self.width, generator=g) * math.sqrt(self.config.var_bias)
                p = torch.randn(self.width, self.width, 2, 2, generator=g) * math.sqrt(1.0 / (4 * self.width))
                layers.append((w.to(self.device), b.to(self.device), p.to(self.device)))
                cin = self.width
            self.nets.append(layers)
        side = self.config.image_size // (2 ** self.config.depth)
        self.dim = self.n_nets * self.width * side * side

    @torch.no_grad()
    def phi(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Features of images x (n, C, 32, 32) -> (n, D) float32, ``E[phi(x).phi(y)] ~ k(x, y)``."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected images (n, {self.channels}, H, W), got {tuple(x.shape)}")
        k = self.config.kernel_size
        outs = []
        for s in range(0, x.shape[0], batch):
            xb = x[s:s + batch].to(self.device, torch.float32)
            feats = []
            for layers in self.nets:
                h = xb
                for w, b, p in layers:
                    h = F.conv2d(F.relu(F.conv2d(h, w, b, padding=k // 2)), p, stride=2)
                feats.append(h.flatten(1))
            outs.append(torch.cat(feats, 1) / math.sqrt(self.dim / self.n_nets) / math.sqrt(self.n_nets))
        return torch.cat(outs, 0)


def image_features(specs: "ImageRKME | Sequence[ImageRKME] | tuple[torch.Tensor, torch.Tensor]",
                   width: int = 64, n_nets: int = 4, seed: int = 0, device: Any = "cpu",
                   feature_map: ImageFeatureMap | None = None) -> np.ndarray:
    """Embed image specs as vectors whose squared L2 distances estimate the squared MMD.

    Parameters
    ----------
    specs : ImageRKME, list of ImageRKME, or a bank ``(z (N, K, C, 32, 32), beta (N, K))``
        The specs (one channel count).
    width, n_nets, seed : int
        The random feature map (see :class:`ImageFeatureMap`); ignored when ``feature_map`` is given.

    Returns
    -------
    np.ndarray, (N, D) float32: ``psi(A) = sum_i beta_i phi(z_i)`` per spec.
    """
    if isinstance(specs, ImageRKME):
        specs = [specs]
    if isinstance(specs, tuple):
        z, beta = specs
        if z.dim() != 5 or beta.shape != z.shape[:2]:
            raise ValueError(f"a bank is (z (N, K, C, 32, 32), beta (N, K)); got {tuple(z.shape)}, {tuple(beta.shape)}")
    else:
        specs = list(specs)
        if not specs:
            raise ValueError("no specs to embed")
        Kmax = max(s.K for s in specs)
        C = specs[0].channels
        if any(s.channels != C for s in specs):
            raise ValueError("specs of different channel counts cannot share one embedding")
        z = torch.zeros(len(specs), Kmax, C, 32, 32)
        beta = torch.zeros(len(specs), Kmax, dtype=torch.float64)
        for i, s in enumerate(specs):
            z[i, :s.K] = s.z.cpu()
            beta[i, :s.K] = s.beta.cpu()
    fm = feature_map or ImageFeatureMap(int(z.shape[2]), width, n_nets, seed=seed, device=device)
    N, K = z.shape[:2]
    feats = fm.phi(z.reshape(N * K, *z.shape[2:])).reshape(N, K, -1)
    psi = (feats * beta.to(feats.device, torch.float32).unsqueeze(-1)).sum(1)
    return psi.cpu().numpy().astype(np.float32)
