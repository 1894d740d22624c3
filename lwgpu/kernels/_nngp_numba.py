"""Fused numba kernels of the NNGP arc-cosine (ReLU) step, on maps laid out (B, P, Na, Nb).

``J = sqrt(vx vy) (sin t + (pi - t) cos t) / 2pi`` with ``cos t = rho = c / sqrt(vx vy)``: both
``sin t = sqrt((1 - rho)(1 + rho))`` and ``pi - t = pi/2 + asin(rho)`` come from the same ``rho``,
so near ``rho = 1`` (an image with itself, or near-duplicates) their rounding cancels instead of
adding (the direct ``sqrt(vx vy - c^2)`` loses half the digits there). ``asin`` is fdlibm's
rational approximation, branch-free so that the inner loop vectorises; accurate to ~1e-16.
Module-level so that numba's on-disk cache applies.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_INV_2PI = 1.0 / (2.0 * math.pi)
_INV_4PI = 1.0 / (4.0 * math.pi)
_HALF_PI = 0.5 * math.pi
pS0, pS1, pS2 = 1.66666666666666657415e-01, -3.25565818622400915405e-01, 2.01212532134862925881e-01
pS3, pS4, pS5 = -4.00555345006794114027e-02, 7.91534994289814532176e-04, 3.47933107596021167570e-05
qS1, qS2 = -2.40339491173441421878e+00, 2.02094576023350569471e+00
qS3, qS4 = -6.88283971605453293030e-01, 7.70381505559019352791e-02


@numba.njit(inline="always", fastmath=True, cache=True)
def _asin(x: float) -> float:
    ax = abs(x)
    big = ax > 0.5
    t = (1.0 - ax) * 0.5 if big else ax * ax
    sq = math.sqrt(t)
    s = sq if big else ax
    p = t * (pS0 + t * (pS1 + t * (pS2 + t * (pS3 + t * (pS4 + t * pS5)))))
    q = 1.0 + t * (qS1 + t * (qS2 + t * (qS3 + t * qS4)))
    w = s + s * (p / q)
    res = _HALF_PI - 2.0 * w if big else w
    return res if x >= 0.0 else -res


@numba.njit(parallel=True, fastmath=True, cache=True)
def relu_inplace(c, va, vb, same):  # c (B, P, Na, Nb); va (Ba, P, Na); vb (Bb, P, Nb)
    B, P, Na, Nb = c.shape
    Ba = va.shape[0]
    Bb = vb.shape[0]
    for bp in numba.prange(B * P):
        b = bp // P
        p = bp - b * P
        ia = b if Ba > 1 else 0
        ib = b if Bb > 1 else 0
        for i in range(Na):
            a = va[ia, p, i]
            for j in range(Nb):
                r = math.sqrt(a * vb[ib, p, j])
                rho = min(max(c[b, p, i, j] / r, -1.0), 1.0)
                sin_t = math.sqrt(max((1.0 - rho) * (1.0 + rho), 0.0))
                c[b, p, i, j] = r * (sin_t + (_HALF_PI + _asin(rho)) * rho) * _INV_2PI
            if same:
                c[b, p, i, i] = 0.5 * a


@numba.njit(parallel=True, fastmath=True, cache=True)
def relu_grad(c, va, vb, same, out, dc, s4):  # also dJ/dc and sqrt(vx vy - c^2) / 4pi
    B, P, Na, Nb = c.shape
    Ba = va.shape[0]
    Bb = vb.shape[0]
    for bp in numba.prange(B * P):
        b = bp // P
        p = bp - b * P
        ia = b if Ba > 1 else 0
        ib = b if Bb > 1 else 0
        for i in range(Na):
            a = va[ia, p, i]
            for j in range(Nb):
                r = math.sqrt(a * vb[ib, p, j])
                rho = min(max(c[b, p, i, j] / r, -1.0), 1.0)
                sin_t = math.sqrt(max((1.0 - rho) * (1.0 + rho), 0.0))
                d = (_HALF_PI + _asin(rho)) * _INV_2PI
                out[b, p, i, j] = r * (sin_t * _INV_2PI + d * rho)
                dc[b, p, i, j] = d
                s4[b, p, i, j] = r * sin_t * _INV_4PI
            if same:
                out[b, p, i, i] = 0.5 * a
                dc[b, p, i, i] = 0.0
                s4[b, p, i, i] = 0.25 * a  # split 1/2 between the (identical) va and vb paths


@numba.njit(fastmath=True, cache=True)
def _pair(a, b, va, vb, offs, S, depth, k, vw, vbias, buf, tmp):
    """k(a, b) for one pair of images (C, S, S) through the whole recursion, in scratch buffers.

    Loops are laid out branch-free over contiguous rows (bounds hoisted out of the inner loops) so
    that LLVM vectorises them, the arc-cosine step included.
    """
    C = a.shape[0]
    inv_c = 1.0 / C
    for p in range(S * S):
        buf[p] = 0.0
    for ch in range(C):
        for y in range(S):
            for x in range(S):
                buf[y * S + x] += a[ch, y, x] * b[ch, y, x]
    r = k // 2
    wk = vw / (k * k)
    side = S
    for layer in range(depth):
        scale = wk * inv_c if layer == 0 else wk
        o = offs[layer]
        # horizontal box sum (zero padding): buf -> tmp
        for y in range(side):
            row = y * side
            for x in range(side):
                tmp[row + x] = buf[row + x]
            for dx in range(1, r + 1):
                for x in range(dx, side):
                    tmp[row + x] += buf[row + x - dx]
                for x in range(side - dx):
                    tmp[row + x] += buf[row + x + dx]
        # vertical box sum, bias, arc-cosine: tmp -> buf
        for y in range(side):
            row = y * side
            for x in range(side):
                buf[row + x] = tmp[row + x]
            for dy in range(1, r + 1):
                if y - dy >= 0:
                    up = row - dy * side
                    for x in range(side):
                        buf[row + x] += tmp[up + x]
                if y + dy < side:
                    dn = row + dy * side
                    for x in range(side):
                        buf[row + x] += tmp[dn + x]
            for x in range(side):
                c = buf[row + x] * scale + vbias
                rr = math.sqrt(va[o + row + x] * vb[o + row + x])
                rho = min(max(c / rr, -1.0), 1.0)
                sin_t = math.sqrt(max((1.0 - rho) * (1.0 + rho), 0.0))
                buf[row + x] = rr * (sin_t + (_HALF_PI + _asin(rho)) * rho) * _INV_2PI
        # 2x2 mean, stride 2: buf -> buf (in place, rows written before they are read again)
        half = side // 2
        for y in range(half):
            r0 = (2 * y) * side
            r1 = r0 + side
            for x in range(half):
                tmp[x] = 0.25 * (buf[r0 + 2 * x] + buf[r0 + 2 * x + 1] + buf[r1 + 2 * x] + buf[r1 + 2 * x + 1])
            for x in range(half):
                buf[y * half + x] = tmp[x]
        side = half
    acc = 0.0
    for p in range(side * side):
        acc += buf[p]
    return acc / (side * side)


@numba.njit(parallel=True, fastmath=True, cache=True)
def cross_fused(a, b, va, vb, offs, depth, k, vw, vbias, same, self_k, out):
    """out[i, j] = k(a_i, b_j): a (Na, C, S, S), b (Nb, C, S, S); va (Na, P_all), vb (Nb, P_all)
    the per-layer variance maps concatenated at ``offs``; ``same``: a is b, diagonal = self_k."""
    Na = a.shape[0]
    Nb = b.shape[0]
    S = a.shape[2]
    for j in numba.prange(Nb):
        buf = np.empty(S * S)
        tmp = np.empty(S * S)
        for i in range(Na):
            if same and i == j:
                out[i, j] = self_k[i]
            else:
                out[i, j] = _pair(a[i], b[j], va[i], vb[j], offs, S, depth, k, vw, vbias, buf, tmp)


@numba.njit(parallel=True, fastmath=True, cache=True)
def self_inner_fused(z, v, self_k, beta, offs, depth, k, vw, vbias, part):
    """part[n, i] = beta_i^2 k(z_i, z_i) + 2 sum_{j > i} beta_i beta_j k(z_i, z_j) for specs z (N, K, C, S, S).

    ``v`` (N, K, P_all) the variance maps, ``self_k`` (N, K) the exact diagonal; sum ``part`` over i
    for ``<B, B>``. Symmetry halves the pairs; zero-weight (padding) points are skipped.
    """
    N, K = beta.shape
    S = z.shape[3]
    for ni in numba.prange(N * K):
        n = ni // K
        i = ni - n * K
        bi = beta[n, i]
        acc = bi * bi * self_k[n, i]
        if bi != 0.0:
            buf = np.empty(S * S)
            tmp = np.empty(S * S)
            for j in range(i + 1, K):
                bj = beta[n, j]
                if bj != 0.0:
                    acc += 2.0 * bi * bj * _pair(z[n, i], z[n, j], v[n, i], v[n, j], offs, S, depth, k, vw, vbias,
                                                 buf, tmp)
        part[n, i] = acc
