"""Shared helpers for kernel tests: float64 reference terms and a relative error that respects cancellation."""
import numpy as np

from lwgpu.kernels import reference as ref


def bank_lists(bank):
    """The bank's stored (float32) specs as float64 lists, padding dropped."""
    z, b = bank.z.double().cpu().numpy(), bank.beta.double().cpu().numpy()
    return [z[i, : bank.counts[i]] for i in range(len(bank))], [b[i, : bank.counts[i]] for i in range(len(bank))]


def reference_terms(qbank, bank):
    """float64 (dist, scale) with scale = <A,A> + <B,B> + 2|<A,B>|: the size of the terms dist is made of.

    dist is a difference of terms of that size, so float32 work can only promise an error relative
    to ``scale`` (dist itself may be ~0 for near-identical specs).
    """
    zq, bq = bank_lists(qbank)
    zb, bb = bank_lists(bank)
    g = bank.gamma
    dist = ref.mmd2_matrix(zq, bq, zb, bb, g)
    sq = np.array([ref.inner(z, b, z, b, g) for z, b in zip(zq, bq)])
    sb = np.array([ref.inner(z, b, z, b, g) for z, b in zip(zb, bb)])
    cross = (sq[:, None] + sb[None, :] - dist) / 2
    return dist, sq[:, None] + sb[None, :] + 2 * np.abs(cross)


def rel_err(got, dist, scale):
    got = got.detach().cpu().numpy() if hasattr(got, "detach") else np.asarray(got)
    return float(np.max(np.abs(got - dist) / scale)) if dist.size else 0.0
