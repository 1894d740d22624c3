"""Mixture search: the weighted mixture of a few market specs nearest a user's spec in MMD.

For candidates ``B_1..B_M`` with Gram matrix ``G_ij = <B_i, B_j>`` and cross terms ``c_i = <U, B_i>``,
weights ``w`` on the simplex minimise ``dist(U, sum_m w_m B_m) = <U,U> - 2 c'w + w'Gw``, a QP.

- :func:`mixture_greedy` (the reference's ``_search_by_rkme_spec_mixture_greedy``): start from the
  best single spec, then repeatedly add the candidate whose re-optimised mixture has the lowest MMD;
  stop when that MMD does not drop below ``decay_rate`` times the current one. The QPs of all
  candidates in a step are solved as one batch by :func:`lwgpu.spec.qp.solve_simplex_qp`.
- :func:`mixture_auto` (after the reference's ``_search_by_rkme_spec_mixture_auto``): one QP over all
  candidates, keep the fewest heaviest ones that hold ``weight_cutoff`` of the mass (the reference
  leaves out the member that crosses the cutoff, so a 60/40 mixture came back as a single), re-solve.

``G``, ``c`` and ``<U,U>`` come from :func:`gram_and_cross` / :func:`cross_and_self`, which ask the kernel
backend for them, always in float64 (the backend's :attr:`~lwgpu.kernels.KernelBackend.precise` sibling:
the candidates are few, and the QP compares small differences of these terms). Defaults live in
:mod:`lwgpu.settings` (mixture section).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from .. import settings
from ..kernels import KernelBackend, get_backend
from ..spec.qp import solve_simplex_qp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mixture:
    """Positions ``members`` (m,) into the candidate list, simplex ``weights`` (m,), and its ``mmd2``."""

    members: tuple[int, ...]
    weights: tuple[float, ...]
    mmd2: float


def _solve(G: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Simplex QP min 0.5 w'Gw - c'w, batched: G (B, M, M), c (B, M) -> w (B, M)."""
    if G.shape[-1] == 1:
        return torch.ones_like(c)
    # the active-set polish makes the answer exact for these small M, so few FISTA steps suffice
    w = solve_simplex_qp(G, c, iters=settings.MIXTURE_QP_ITERS, check_every=settings.MIXTURE_QP_CHECK_EVERY)
    w = w.clamp_min(0.0)
    return w / w.sum(-1, keepdim=True).clamp_min(1e-300)


def _objective(uu: float, G: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``<U,U> - 2 c'w + w'Gw`` for batched G (B, M, M), c (B, M), w (B, M) -> (B,)."""
    return uu - 2.0 * (c * w).sum(-1) + torch.einsum("bi,bij,bj->b", w, G, w)


def precise_backend(backend: "str | KernelBackend | None", device: Any) -> KernelBackend:
    """The float64 backend mixture terms are computed with: ``backend.precise`` for a backend (or name,
    resolved on ``device``), the float64 torch backend on ``device`` for None."""
    if backend is None:
        return get_backend("torch", device, torch.float64)
    return get_backend(backend, device).precise


def gram_and_cross(
    z: torch.Tensor, beta: torch.Tensor, zu: torch.Tensor, bu: torch.Tensor, gamma: float,
    backend: "str | KernelBackend | None" = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Float64 ``G`` (M, M), ``c`` (M,) and ``<U,U>`` for candidate specs and a user spec.

    Parameters
    ----------
    z, beta : (M, K, d), (M, K) candidate specs (zero weights pad ragged specs).
    zu, bu : (Ku, d), (Ku,) the user spec.
    backend : the search's kernel backend (its float64 sibling computes the terms), or None for the
        float64 torch backend on z's device.
    """
    be = precise_backend(backend, z.device)
    G = be.gram(z, beta, gamma)
    c, uu = cross_and_self(z, beta, zu, bu, gamma, backend=be)
    return G, c, uu


def cross_and_self(
    z: torch.Tensor, beta: torch.Tensor, zu: torch.Tensor, bu: torch.Tensor, gamma: float,
    backend: "str | KernelBackend | None" = None,
) -> tuple[torch.Tensor, float]:
    """Float64 ``c_m = <U, B_m>`` (M,) for candidates z (M, K, d), beta (M, K), and ``<U,U>`` (a float);
    ``backend`` as in :func:`gram_and_cross`."""
    be = precise_backend(backend, z.device)
    c = be.cross(zu[None].to(be.device, be.dtype), bu[None].to(be.device, be.dtype), z, beta, gamma)[0]
    uu = float(be.self_terms(zu[None].to(be.device, be.dtype), bu[None].to(be.device, be.dtype), gamma)[0])
    return c, uu


def mixture_greedy(
    G: torch.Tensor, c: torch.Tensor, uu: float, max_mixture: int = settings.MIXTURE_MAX,
    decay_rate: float = settings.MIXTURE_DECAY_RATE,
) -> Mixture:
    """Greedy forward selection over M candidates (G (M, M), c (M,), ``uu = <U,U>``)."""
    M = int(c.shape[0])
    if M == 0:
        raise ValueError("mixture search needs at least one candidate")
    selected: list[int] = []
    best_w: torch.Tensor | None = None
    best: float | None = None
    for step in range(min(max_mixture, M)):
        mask = torch.ones(M, dtype=torch.bool, device=c.device)
        if selected:
            mask[torch.tensor(selected, device=c.device)] = False
        rest = torch.nonzero(mask).reshape(-1)
        sel = torch.tensor(selected, dtype=torch.long, device=c.device).expand(rest.shape[0], step)
        idx = torch.cat([sel, rest[:, None]], dim=1)  # (R, step+1)
        Gb = G[idx[:, :, None], idx[:, None, :]]
        cb = c[idx]
        w = _solve(Gb, cb)
        obj = _objective(uu, Gb, cb, w)
        j = int(torch.argmin(obj))
        val = float(obj[j])
        if best is None or val <= best * decay_rate:
            best, best_w = val, w[j]
            selected.append(int(rest[j]))
        else:
            break
    assert best_w is not None and best is not None
    return _drop_zero(selected, best_w, best)


def _drop_zero(members: list[int], w: torch.Tensor, val: float, tol: float = settings.MIXTURE_MIN_WEIGHT) -> Mixture:
    """Leave out members whose optimal weight is (numerically) zero; they do not change the mixture."""
    keep = [(m, float(x)) for m, x in zip(members, w.cpu().tolist()) if x > tol]
    total = sum(x for _, x in keep)
    return Mixture(tuple(m for m, _ in keep), tuple(x / total for _, x in keep), max(val, 0.0))


def mixture_auto(
    G: torch.Tensor, c: torch.Tensor, uu: float, max_mixture: int = settings.MIXTURE_MAX,
    weight_cutoff: float = settings.MIXTURE_WEIGHT_CUTOFF,
) -> Mixture:
    """One QP over all candidates; keep the heaviest up to ``weight_cutoff`` of the mass; re-solve."""
    M = int(c.shape[0])
    if M == 0:
        raise ValueError("mixture search needs at least one candidate")
    w = _solve(G[None], c[None])[0]
    order = torch.argsort(w, descending=True).tolist()
    chosen: list[int] = []
    acc = 0.0
    for i in order:  # the fewest heaviest members holding weight_cutoff of the mass (the reference
        if acc >= weight_cutoff or float(w[i]) <= settings.MIXTURE_MIN_WEIGHT:  # stops *before* the crossing one, which drops
            break  # the second of two equal halves; we keep it)
        chosen.append(i)
        acc += float(w[i])
    if len(chosen) <= 1:
        i = order[0]
        val = uu - 2.0 * float(c[i]) + float(G[i, i])
        return Mixture((i,), (1.0,), max(val, 0.0))
    chosen = chosen[:max_mixture]
    idx = torch.tensor(chosen, device=c.device)
    Gs, cs = G[idx][:, idx], c[idx]
    ws = _solve(Gs[None], cs[None])
    val = float(_objective(uu, Gs[None], cs[None], ws)[0])
    return _drop_zero(chosen, ws[0], val)
