"""Shared helpers for kernel tests: backends to parametrise over, ragged banks, float64 reference terms and a
relative error that respects cancellation."""
import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.device import cupy_available, numba_available
from lwgpu.kernels import reference as ref
from lwgpu.spec.rkme import RKME
from lwgpu_testutil import random_spec_arrays

_GPU = [pytest.mark.gpu, pytest.mark.skipif(not cupy_available(), reason="needs CuPy")]
CPU_BACKENDS = ["torch"] + (["numba"] if numba_available() else [])
#: backend names (search and front-door tests)
ALL = [pytest.param(b, id=b) for b in CPU_BACKENDS] + [pytest.param("cuda", id="cuda", marks=_GPU)]
#: (name, device, dtype) of every backend object
OBJECTS = [
    pytest.param(("torch", "cpu", torch.float32), id="torch-f32"),
    pytest.param(("torch", "cpu", torch.float64), id="torch-f64"),
    pytest.param(("numba", "cpu", torch.float32), id="numba",
                 marks=pytest.mark.skipif(not numba_available(), reason="needs numba")),
    pytest.param(("torch", "cuda", torch.float32), id="torch-cuda-f32", marks=[pytest.mark.gpu]),
    pytest.param(("torch", "cuda", torch.float64), id="torch-cuda-f64", marks=[pytest.mark.gpu]),
    pytest.param(("cuda", "cuda", torch.float32), id="cuda", marks=_GPU),
]


def device_of(backend):
    return "cuda" if backend == "cuda" else "cpu"


def tol_of(be):
    """Error bound relative to the terms' size: float32 rounding, or float64's."""
    return 1e-5 if be.dtype == torch.float32 else 1e-10


def ragged_bank(rng, n, kmax, d, gamma=0.1, scale=1.0, shift=0.0):
    """A bank of n specs with 1..kmax points each (and the RKMEs it holds)."""
    specs = []
    for _ in range(n):
        z, b = random_spec_arrays(rng, int(rng.integers(1, kmax + 1)), d, scale)
        specs.append(RKME(z + shift, b, gamma))
    return SpecBank.from_specs(specs), specs


def bank_lists(bank):
    """The bank's stored specs as float64 lists, padding dropped."""
    z, b = bank.z.double().cpu().numpy(), bank.beta.double().cpu().numpy()
    return [z[i, : bank.counts[i]] for i in range(len(bank))], [b[i, : bank.counts[i]] for i in range(len(bank))]


def reference_cross(qbank, bank):
    """float64 (Q, N) cross terms <Q_q, B_n> and the self terms (Q,), (N,) from the reference."""
    zq, bq = bank_lists(qbank)
    zb, bb = bank_lists(bank)
    g = bank.gamma
    cross = np.array([[ref.inner(a, wa, b, wb, g) for b, wb in zip(zb, bb)] for a, wa in zip(zq, bq)])
    sq = np.array([ref.inner(z, b, z, b, g) for z, b in zip(zq, bq)])
    sb = np.array([ref.inner(z, b, z, b, g) for z, b in zip(zb, bb)])
    return cross.reshape(len(zq), len(zb)), sq, sb


def reference_terms(qbank, bank):
    """float64 (dist, scale) with scale = <A,A> + <B,B> + 2|<A,B>|: the size of the terms dist is made of.

    dist is a difference of terms of that size, so float32 work can only promise an error relative
    to ``scale`` (dist itself may be ~0 for near-identical specs).
    """
    cross, sq, sb = reference_cross(qbank, bank)
    dist = np.maximum(sq[:, None] + sb[None, :] - 2 * cross, 0.0)
    return dist, sq[:, None] + sb[None, :] + 2 * np.abs(cross)


def rel_err(got, dist, scale):
    got = got.detach().cpu().numpy() if hasattr(got, "detach") else np.asarray(got)
    return float(np.max(np.abs(got - dist) / scale)) if dist.size else 0.0
