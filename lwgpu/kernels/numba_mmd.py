"""Numba CPU kernel for the cross terms ``<Q_q, B_n>`` between query specs and a bank tile.

Parallel over bank specs (``prange`` over small chunks). Per bank spec, its points are shifted by the
query centre and transposed to a (d, K) buffer with their squared norms, once for all queries; then for
every query point the K exponents ``-gamma |a - b|^2 = 2 gamma a.b - gamma|a|^2 - gamma|b|^2`` are
accumulated in a K-vector (inner loop over contiguous bank points: one FMA per point per dimension,
vectorised), exponentiated by a branch-free float32 ``exp`` (Cody-Waite split + degree-7 polynomial,
exponent set through an int32 view; relative error ~2e-7) and summed with the bank weights. The sum over
query points is kept in float64. No K x K temporary is made; loads are float32.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

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
_CHUNK = 8  # bank specs per parallel work item

if numba is not None:
    C1, C2, C3, C4, C5, C6, C7 = _C[1:]

    @njit(cache=True, fastmath=True, inline="always")
    def _exp_block(acc, pbuf, ibuf, k):  # pragma: no cover - compiled
        """pbuf[j] <- mantissa part, ibuf[j] <- exponent bits of exp(min(acc[j], 0)) for j < k."""
        for j in range(k):
            x = acc[j]
            x = min(x, np.float32(0.0))
            x = max(x, np.float32(-87.0))
            t = x * _LOG2E
            nf = np.floor(t + np.float32(0.5))
            f = t - nf
            p = C7
            p = p * f + C6
            p = p * f + C5
            p = p * f + C4
            p = p * f + C3
            p = p * f + C2
            p = p * f + C1
            p = p * f + np.float32(1.0)
            pbuf[j] = p
            ibuf[j] = (np.int32(nf) + np.int32(127)) << np.int32(23)

    @njit(parallel=True, fastmath=True, cache=True)
    def _cross_kernel(qp, qn, qw, qcnt, center, bz, bb, bcnt, gamma, out):  # pragma: no cover - compiled
        """out[q, n] = sum_i qw[q,i] sum_j bb[n,j] exp(qp[q,i].zc[n,j] - qn[q,i] - gamma|zc[n,j]|^2).

        qp (Q, Kq, d): centred query points times 2 gamma; qn (Q, Kq): gamma |centred point|^2;
        qw (Q, Kq) weights; qcnt (Q,) points per query; center (d,); bz (T, K, d); bb (T, K);
        bcnt (T,) points per bank spec; out (Q, T) float64.
        """
        t_n, k_max, d = bz.shape
        n_q = qp.shape[0]
        g = np.float32(gamma)
        n_chunks = (t_n + _CHUNK - 1) // _CHUNK
        for ch in prange(n_chunks):
            zt = np.empty((d, k_max), np.float32)
            bn = np.empty(k_max, np.float32)
            acc = np.empty(k_max, np.float32)
            pbuf = np.empty(k_max, np.float32)
            ibuf = np.empty(k_max, np.int32)
            fbuf = ibuf.view(np.float32)
            w = np.empty(k_max, np.float32)
            for n in range(ch * _CHUNK, min((ch + 1) * _CHUNK, t_n)):
                k = bcnt[n]
                for j in range(k):
                    bn[j] = np.float32(0.0)
                    w[j] = bb[n, j]
                for c in range(d):
                    cc = center[c]
                    for j in range(k):
                        v = bz[n, j, c] - cc
                        zt[c, j] = v
                        bn[j] += v * v
                for j in range(k):
                    bn[j] *= g
                for q in range(n_q):
                    total = 0.0
                    for i in range(qcnt[q]):
                        wi = qw[q, i]
                        if wi == 0.0:
                            continue
                        a0 = -qn[q, i]
                        for j in range(k):
                            acc[j] = a0 - bn[j]
                        for c in range(d):
                            s = qp[q, i, c]
                            for j in range(k):
                                acc[j] += s * zt[c, j]
                        _exp_block(acc, pbuf, ibuf, k)
                        ssum = np.float32(0.0)
                        for j in range(k):
                            ssum += w[j] * pbuf[j] * fbuf[j]
                        total += np.float64(wi) * np.float64(ssum)
                    out[q, n] = total


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
    real = qb_np.reshape(-1) != 0  # centre on the real query points (MMD is shift invariant)
    pts = qz_np.reshape(-1, d).astype(np.float64)
    center = pts[real].mean(0) if real.any() else np.zeros(d)
    qc = qz_np.astype(np.float64) - center
    qn = (g * (qc * qc).sum(-1)).astype(np.float32)
    qp = (qc * (2.0 * float(gamma))).astype(np.float32)
    _cross_kernel(qp, qn, qb_np, _counts(qb_np), center.astype(np.float32), bz_np, bb_np, _counts(bb_np),
                  g, out)
    return torch.from_numpy(out)


def _np32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        x = x.numpy()
    return np.asarray(x, dtype=np.float32)


def set_threads(n: int | None = None) -> int:
    """Set numba's thread count (default: ``LWGPU_NUMBA_THREADS`` or all cores); returns it."""
    if numba is None:
        return 0
    n = int(n or os.environ.get("LWGPU_NUMBA_THREADS", 0) or numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n
