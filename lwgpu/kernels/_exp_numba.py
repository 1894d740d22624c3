"""A float64 ``exp`` for numba kernels that vectorises (libm's does not): base-2 split + degree-12 polynomial.

``p, nf = exp_split(x)`` gives ``exp(x) = p * 2**nf`` (relative error ~1e-15 for ``-700 <= x <= 0``). A
kernel stores ``p`` (times its weight) in one buffer and ``2**nf`` as bits in an int64 buffer viewed as
float64 (``(nf + 1023) << 52``), so the loop over points has no call and no branch. Inlined into each
kernel, it compiles with that kernel's own ``fastmath`` setting.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
D1, D2, D3, D4, D5, D6, D7, D8, D9, D10, D11, D12 = [1.0 / math.factorial(i) for i in range(1, 13)]  # Taylor, |r| <= ln2/2


@numba.njit(inline="always", cache=True)
def exp_split(x: float) -> tuple[float, float]:  # pragma: no cover - compiled
    """``(p, nf)`` with ``exp(x) = p * 2**nf``, ``nf`` a whole number (float64)."""
    t = x * _LOG2E
    nf = np.floor(t + 0.5)
    r = (t - nf) * _LN2
    p = D12
    p = p * r + D11
    p = p * r + D10
    p = p * r + D9
    p = p * r + D8
    p = p * r + D7
    p = p * r + D6
    p = p * r + D5
    p = p * r + D4
    p = p * r + D3
    p = p * r + D2
    p = p * r + D1
    p = p * r + 1.0
    return p, nf
