"""Distances between one image spec and a bank of image specs (``z`` (N, K, C, 32, 32), ``beta`` (N, K)),
tiled over the bank, and the bank's self terms ``<B, B>`` computed once at insertion."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ..device import resolve_device
from ..kernels.nngp import ConvNNGP, NNGPConfig

logger = logging.getLogger(__name__)


def _bank_device(device: Any, z: torch.Tensor) -> torch.device:
    if device is None or device == "auto":
        return resolve_device("auto") if z.device.type == "cpu" else z.device
    return resolve_device(device)


def image_self_terms(z: torch.Tensor, beta: torch.Tensor, device: Any = "auto", tile: int = 8,
                     model_config: dict | None = None) -> torch.Tensor:
    """``<B, B>`` for every spec of a bank: z (N, K, C, 32, 32), beta (N, K) -> (N,) float64 (CPU).

    Computed once, at insertion; padded points with ``beta = 0`` are allowed.
    """
    dev = _bank_device(device, z)
    kern = ConvNNGP(NNGPConfig.from_model_config(model_config), torch.float64)
    out = torch.empty(z.shape[0], dtype=torch.float64)
    if dev.type == "cpu":
        tile = max(tile, 256)  # the fused CPU kernel spreads (spec, point) rows over the cores
    with torch.no_grad():
        for s in range(0, z.shape[0], tile):
            zt = z[s:s + tile].to(dev, torch.float64)
            bt = beta[s:s + tile].to(dev, torch.float64)
            out[s:s + tile] = kern.self_inner(zt, bt).cpu()
    return out


def image_mmd2_to_bank(query: Any, z: torch.Tensor, beta: torch.Tensor, device: Any = "auto",
                       backend: Any = None, bank_self: torch.Tensor | None = None,
                       tile: int | None = None) -> torch.Tensor:
    """Squared MMD from one image spec to every spec of a bank.

    Parameters
    ----------
    query : ImageRKME
        The query spec.
    z : torch.Tensor, (N, K, C, 32, 32)
        The bank's points (zero-weight padding points allowed).
    beta : torch.Tensor, (N, K)
        The bank's weights.
    device : "auto" | "cpu" | "cuda[:i]"
        Where the kernel runs ("auto": the GPU when there is one); ``backend`` is accepted as an alias
        (a name such as "torch" is ignored beyond its device).
    bank_self : torch.Tensor, (N,), optional
        ``<B, B>`` per bank spec from :func:`image_self_terms` (computed here when absent: as costly
        as the cross terms, so a bank should keep them).
    tile : int, optional
        Bank specs per kernel call (memory ~ tile * Kq * K * 10 KB).

    Returns
    -------
    torch.Tensor, (N,) float64 on the CPU: ``<Q,Q> - 2<Q,B> + <B,B>``.
    """
    if z.dim() != 5 or beta.shape != z.shape[:2]:
        raise ValueError(f"bank must be z (N, K, C, 32, 32) and beta (N, K); got {tuple(z.shape)} and "
                         f"{tuple(beta.shape)}")
    if z.shape[2] != query.channels:
        raise ValueError(f"bank specs have {z.shape[2]} channels, the query {query.channels}")
    if backend is not None and not isinstance(backend, str) and hasattr(backend, "device"):
        device = backend.device
    dev = _bank_device(device, z)
    kern = query.kernel()
    N, Kb = z.shape[0], z.shape[1]
    if tile is None:
        tile = max(1, min(64, 200_000 // max(1, query.K * Kb)))
    qz = query.z.to(dev, torch.float64)
    qb = query.beta.to(dev, torch.float64)
    qd = query.diag_maps().to(dev)
    cross = torch.empty(N, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, N, tile):
            zt = z[s:s + tile].to(dev, torch.float64)
            bt = beta[s:s + tile].to(dev, torch.float64)
            kq = kern.cross(qz.unsqueeze(0), zt, qd, None)  # (T, Kq, K)
            cross[s:s + tile] = torch.einsum("k,tkl,tl->t", qb, kq, bt).cpu()
    if bank_self is None:
        bank_self = image_self_terms(z, beta, device=dev, model_config=query.model_config)
    return query.self_inner() - 2.0 * cross + bank_self.to(torch.float64).cpu()
