"""Numba CPU kernel for the cross terms ``<Q_q, B_n>`` between query specs and a bank tile.

Parallel over chunks of ~300 bank points (``prange``; a chunk is a few whole specs). For each query, a
chunk's points are shifted by that query's centre (MMD is shift invariant; this keeps the float32
expansion ``|a-b|^2 = |a|^2 + |b|^2 - 2 a.b`` accurate, at 1/Kq of the work) and transposed to a (d, P)
buffer with their squared norms. Then, four query points at a time (each bank-point load feeds four FMAs), the
exponents ``2 gamma a.b - gamma |a|^2 - gamma |b|^2`` are accumulated over the d dimensions in vectors
running over contiguous bank points, exponentiated by a branch-free float32 ``exp`` (Cody-Waite split +
degree-7 polynomial, exponent set through an int32 view; relative error ~2e-7; vectorises, unlike
libm's) and added into a per-point sum weighted by the query weights. Each spec's cross term is the
float64 dot of those sums with its own weights. No K x K temporary is made; loads are float32.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .. import settings
from .backend import KernelBackend

logger = logging.getLogger(__name__)

try:  # numba is optional; lwgpu.kernels only routes here when lwgpu.device.numba_available()
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

_LOG2E = np.float32(1.4426950408889634)
_LN2 = 0.6931471805599453
# Taylor coefficients of 2^f = exp(f ln2), |f| <= 0.5
_C = [np.float32(_LN2**i / float(np.prod(np.arange(1, i + 1)))) for i in range(8)]
_V = 16  # float32 lanes of one AVX-512 vector: chunk point counts are padded to a multiple

if numba is not None:
    C1, C2, C3, C4, C5, C6, C7 = _C[1:]

    @njit(cache=True, fastmath=True, inline="always")
    def _exp_axpy(acc, wi, E, pb, ib, fb, P):  # pragma: no cover - compiled
        """E[p] += wi * exp(min(acc[p], 0)) for p < P, vectorised (ib/fb: one int32 buffer, two views)."""
        for p in range(P):
            x = min(max(acc[p], np.float32(-87.0)), np.float32(0.0))
            t = x * _LOG2E
            nf = np.floor(t + np.float32(0.5))
            f = t - nf  # exp(x) = 2^nf * 2^f, |f| <= 1/2
            pp = C7
            pp = pp * f + C6
            pp = pp * f + C5
            pp = pp * f + C4
            pp = pp * f + C3
            pp = pp * f + C2
            pp = pp * f + C1
            pp = pp * f + np.float32(1.0)
            pb[p] = pp * wi
            ib[p] = (np.int32(nf) + np.int32(127)) << np.int32(23)  # the float 2^nf, as bits
        for p in range(P):
            E[p] += pb[p] * fb[p]

    @njit(parallel=True, fastmath=True, cache=True)
    def _cross_kernel(qp, qn, qw, center, bz, bb, bcnt, gamma, ch, out):  # pragma: no cover - compiled
        """out[q, n] = sum_i qw[q,i] sum_j bb[n,j] exp(qp[q,i].zc[n,j] - qn[q,i] - gamma |zc[n,j]|^2).

        qp (Q, Kq4, dp): centred query points times 2 gamma, Kq4 and dp multiples of 4 (zero padded);
        qn (Q, Kq4): gamma |centred point|^2; qw (Q, Kq4) weights (0 on padding); center (Q, d) per query;
        bz (T, K, d), bb (T, K), bcnt (T,) points per bank spec; ch: bank specs per work item;
        out (Q, T) float64. zc = bz - center[q].
        """
        t_n, k_max, d = bz.shape
        n_q, kq, dp = qp.shape
        g = np.float32(gamma)
        n_chunks = (t_n + ch - 1) // ch
        for cix in prange(n_chunks):
            n0 = cix * ch
            n1 = min(n0 + ch, t_n)
            seg = np.empty(n1 - n0 + 1, np.int64)  # the chunk's points, concatenated: spec n at seg[n-n0]:
            seg[0] = 0
            for n in range(n0, n1):
                seg[n - n0 + 1] = seg[n - n0] + bcnt[n]
            P = ((seg[n1 - n0] + _V - 1) // _V) * _V  # padded to whole vectors (zero weight)
            zt = np.zeros((dp, P), np.float32)
            bn = np.zeros(P, np.float32)
            w = np.zeros(P, np.float32)
            acc = np.empty((4, P), np.float32)
            E = np.empty(P, np.float32)
            pb = np.empty(P, np.float32)
            ib = np.empty(P, np.int32)
            fb = ib.view(np.float32)
            for n in range(n0, n1):
                o = seg[n - n0]
                for j in range(bcnt[n]):
                    w[o + j] = bb[n, j]
            a0 = acc[0]
            a1 = acc[1]
            a2 = acc[2]
            a3 = acc[3]
            for q in range(n_q):
                for n in range(n0, n1):  # the chunk's points, centred on this query (cost 1/Kq of the FMAs)
                    o = seg[n - n0]
                    for j in range(bcnt[n]):
                        s = np.float32(0.0)
                        for c in range(d):
                            v = bz[n, j, c] - center[q, c]
                            zt[c, o + j] = v
                            s += v * v
                        bn[o + j] = g * s
                for p in range(P):
                    E[p] = 0.0
                for i in range(0, kq, 4):  # four query points at a time share every bank-point load
                    if qw[q, i] == 0.0 and qw[q, i + 1] == 0.0 and qw[q, i + 2] == 0.0 and qw[q, i + 3] == 0.0:
                        continue
                    m0, m1, m2, m3 = -qn[q, i], -qn[q, i + 1], -qn[q, i + 2], -qn[q, i + 3]
                    for p in range(P):
                        b = bn[p]
                        a0[p] = m0 - b
                        a1[p] = m1 - b
                        a2[p] = m2 - b
                        a3[p] = m3 - b
                    for c in range(0, dp, 4):
                        z0, z1, z2, z3 = zt[c], zt[c + 1], zt[c + 2], zt[c + 3]
                        s00, s01, s02, s03 = qp[q, i, c], qp[q, i, c + 1], qp[q, i, c + 2], qp[q, i, c + 3]
                        r = qp[q, i + 1]
                        s10, s11, s12, s13 = r[c], r[c + 1], r[c + 2], r[c + 3]
                        r = qp[q, i + 2]
                        s20, s21, s22, s23 = r[c], r[c + 1], r[c + 2], r[c + 3]
                        r = qp[q, i + 3]
                        s30, s31, s32, s33 = r[c], r[c + 1], r[c + 2], r[c + 3]
                        for p in range(P):
                            y0, y1, y2, y3 = z0[p], z1[p], z2[p], z3[p]
                            a0[p] += (s00 * y0 + s01 * y1) + (s02 * y2 + s03 * y3)
                            a1[p] += (s10 * y0 + s11 * y1) + (s12 * y2 + s13 * y3)
                            a2[p] += (s20 * y0 + s21 * y1) + (s22 * y2 + s23 * y3)
                            a3[p] += (s30 * y0 + s31 * y1) + (s32 * y2 + s33 * y3)
                    _exp_axpy(a0, qw[q, i], E, pb, ib, fb, P)
                    _exp_axpy(a1, qw[q, i + 1], E, pb, ib, fb, P)
                    _exp_axpy(a2, qw[q, i + 2], E, pb, ib, fb, P)
                    _exp_axpy(a3, qw[q, i + 3], E, pb, ib, fb, P)
                for n in range(n0, n1):
                    tot = 0.0
                    for p in range(seg[n - n0], seg[n - n0 + 1]):
                        tot += np.float64(w[p]) * np.float64(E[p])
                    out[q, n] = tot


    from ._exp_numba import exp_split

    @njit(parallel=True, fastmath=False, cache=True)
    def _self_kernel(bz, bb, bcnt, gamma, out):  # pragma: no cover - compiled
        """out[n] = sum_ij bb[n,i] bb[n,j] exp(-gamma |bz[n,i] - bz[n,j]|^2) in float64 (pairs i < j once).

        Float64 throughout: each spec centred on its mean, |a-b|^2 = |a|^2 + |b|^2 - 2 a.b; exp by :func:`._exp_numba.exp_split` (base-2 split +
        degree-12 polynomial, relative error ~1e-15; exponent bits through an int64 view) so the loop over j vectorises.
        """
        t_n, k_max, d = bz.shape
        dp = ((d + 3) // 4) * 4
        for n in prange(t_n):
            k = bcnt[n]
            zt = np.zeros((dp, k_max), np.float64)
            w = np.empty(k_max, np.float64)
            nrm = np.zeros(k_max, np.float64)
            acc = np.empty(k_max, np.float64)
            pb = np.empty(k_max, np.float64)
            ib = np.empty(k_max, np.int64)
            fb = ib.view(np.float64)
            for c in range(d):  # centre the spec on its mean: the float64 expansion then loses nothing
                m = 0.0
                for j in range(k):
                    m += bz[n, j, c]
                m /= max(k, 1)
                for j in range(k):
                    v = bz[n, j, c] - m
                    zt[c, j] = v
                    nrm[j] += v * v
            for j in range(k):
                w[j] = bb[n, j]
            tot = 0.0
            for i in range(k):
                for j in range(i + 1, k):
                    acc[j] = 0.0
                for c in range(0, dp, 4):
                    a0, a1, a2, a3 = zt[c, i], zt[c + 1, i], zt[c + 2, i], zt[c + 3, i]
                    z0, z1, z2, z3 = zt[c], zt[c + 1], zt[c + 2], zt[c + 3]
                    for j in range(i + 1, k):
                        acc[j] += (a0 * z0[j] + a1 * z1[j]) + (a2 * z2[j] + a3 * z3[j])
                ni = nrm[i]
                for j in range(i + 1, k):
                    acc[j] = ni + nrm[j] - 2.0 * acc[j]
                for j in range(i + 1, k):
                    p, nf = exp_split(min(max(-gamma * acc[j], -700.0), 0.0))
                    pb[j] = p * w[j]
                    ib[j] = (np.int64(nf) + np.int64(1023)) << np.int64(52)
                s = 0.0
                for j in range(i + 1, k):
                    s += pb[j] * fb[j]
                tot += w[i] * (w[i] + 2.0 * s)
            out[n] = tot


def _counts(beta: np.ndarray) -> np.ndarray:
    """Points per spec up to the last nonzero weight (trailing zero-weight points change no sum)."""
    nz = beta != 0
    last = beta.shape[1] - np.argmax(nz[:, ::-1], axis=1)
    return np.where(nz.any(1), last, 0).astype(np.int32)


def cross_terms(qz, qb, bz, bb, gamma: float, **_: object) -> torch.Tensor:
    """float64 (Q, T) cross terms; qz (Q, Kq, d), qb (Q, Kq), bz (T, K, d), bb (T, K) CPU tensors/arrays.

    Inputs are used as float32 (converted if needed). Numba threads follow ``numba.set_num_threads``.
    """
    if numba is None:
        raise ValueError("the numba backend needs numba installed (pip install numba)")
    qz_np = np.ascontiguousarray(_np32(qz))
    qb_np = np.ascontiguousarray(_np32(qb))
    bz_np = np.ascontiguousarray(_np32(bz))
    bb_np = np.ascontiguousarray(_np32(bb))
    q, kq, d = qz_np.shape
    out = np.zeros((q, bz_np.shape[0]), np.float64)
    if q == 0 or bz_np.shape[0] == 0:
        return torch.from_numpy(out)
    g = np.float32(gamma)
    real = (qb_np != 0).astype(np.float64)  # centre each query on its real points (MMD is shift invariant)
    center = np.einsum("qi,qid->qd", real, qz_np.astype(np.float64)) / np.maximum(real.sum(1), 1.0)[:, None]
    kq4, dp = -(-kq // 4) * 4, -(-d // 4) * 4  # pad query points and dims to multiples of 4 with zeros
    qc = np.zeros((q, kq4, dp))
    qc[:, :kq, :d] = qz_np - center[:, None, :]
    qn = (g * (qc * qc).sum(-1)).astype(np.float32)
    qp = (qc * (2.0 * float(gamma))).astype(np.float32)
    qw = np.zeros((q, kq4), np.float32)
    qw[:, :kq] = qb_np
    k = bz_np.shape[1]  # ~300 points per work item, its transposed buffer zt in L1/L2:
    ch = max(1, min(settings.NUMBA_CHUNK_POINTS // max(k, 1), settings.NUMBA_CHUNK_FLOATS // max(1, dp * k)))
    _cross_kernel(qp, qn, qw, center.astype(np.float32), bz_np, bb_np, _counts(bb_np), g, ch, out)
    return torch.from_numpy(out)


def _np32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        x = x.numpy()
    return np.asarray(x, dtype=np.float32)


def self_terms(bz, bb, gamma: float) -> torch.Tensor:
    """float64 (N,) ``<B_n, B_n>`` for a (N, K, d) / (N, K) CPU bank in float64 (see ``_self_kernel``)."""
    if numba is None:
        raise ValueError("numba self terms need numba installed (pip install numba)")
    bz_np = np.ascontiguousarray(bz.detach().cpu().numpy() if isinstance(bz, torch.Tensor) else np.asarray(bz))
    bb_np = np.ascontiguousarray(bb.detach().cpu().numpy() if isinstance(bb, torch.Tensor) else np.asarray(bb))
    out = np.zeros(bz_np.shape[0], np.float64)
    if bz_np.shape[0] and bz_np.shape[1]:
        _self_kernel(bz_np, bb_np, _counts(bb_np), float(gamma), out)
    return torch.from_numpy(out)


def set_threads(n: int | None = None) -> int:
    """Set numba's thread count (default: ``LWGPU_NUMBA_THREADS`` or all cores); returns it."""
    if numba is None:
        return 0
    n = int(n or os.environ.get("LWGPU_NUMBA_THREADS", 0) or numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


class NumbaBackend(KernelBackend):
    """The fused numba CPU kernel (float32 loads, float64 spec sums); float64 self terms by its own kernel."""

    name = "numba"
    tile = settings.TILE_NUMBA

    def cross(self, qz, qb, bz, bb, gamma) -> torch.Tensor:
        return cross_terms(qz, qb, bz, bb, gamma)

    def self_terms(self, z, beta, gamma) -> torch.Tensor:
        if z.device.type != "cpu" or z.shape[0] * z.shape[1] == 0:
            return super().self_terms(z, beta, gamma)
        return self_terms(z, beta, gamma)
