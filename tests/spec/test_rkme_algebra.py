"""RKME inner/dist against the float64 brute force; metric properties on generated specs."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from lwgpu import RKME
from lwgpu.device import numba_available
from lwgpu.kernels import get_backend
from lwgpu.kernels import reference as ref
from lwgpu_testutil import FIXTURES, random_spec_arrays


@pytest.mark.parametrize("d", [1, 3, 17])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_inner_and_dist_match_bruteforce(rng, d, dtype, tol):
    za, ba = random_spec_arrays(rng, 13, d)
    zb, bb = random_spec_arrays(rng, 7, d, scale=1.5)
    gamma = 0.3
    A, B = RKME(za, ba, gamma, dtype=dtype), RKME(zb, bb, gamma, dtype=dtype)
    assert A.inner(B) == pytest.approx(ref.inner(za, ba, zb, bb, gamma), abs=tol, rel=tol)
    assert A.dist(B) == pytest.approx(ref.mmd2(za, ba, zb, bb, gamma), abs=tol, rel=tol)
    assert A.self_inner == pytest.approx(ref.inner(za, ba, za, ba, gamma), abs=tol, rel=tol)


@pytest.mark.parametrize("backend", ["torch"] + (["numba"] if numba_available() else []))
def test_inner_through_another_backend(rng, backend):
    """RKME.inner/dist default to float64 torch; any backend (name or object) may be passed instead."""
    za, ba = random_spec_arrays(rng, 9, 4)
    zb, bb = random_spec_arrays(rng, 6, 4)
    A, B = RKME(za, ba, 0.2), RKME(zb, bb, 0.2)
    be = get_backend(backend, "cpu")
    want = ref.inner(A.z.double().numpy(), A.beta.double().numpy(), B.z.double().numpy(), B.beta.double().numpy(), 0.2)
    assert A.inner(B, backend=be) == pytest.approx(want, abs=1e-6)
    assert A.inner(B, backend=backend) == pytest.approx(want, abs=1e-6)
    assert A.inner(B) == pytest.approx(want, abs=1e-13)  # float64 from the float32-stored points
    assert A.dist(B, backend=be) == pytest.approx(A.dist(B), abs=1e-6)


def test_reference_fixture_distances():
    expected = json.loads((FIXTURES / "reference_rkme" / "expected.json").read_text())
    specs = [RKME.load(FIXTURES / "reference_rkme" / f"spec{i}.json", dtype="float64") for i in range(3)]
    assert [s.K for s in specs] == [30, 20, 30]
    got_dist = np.array([[a.dist(b) for b in specs] for a in specs])
    got_inner = np.array([[a.inner(b) for b in specs] for a in specs])
    np.testing.assert_allclose(got_dist, expected["dist"], atol=1e-12)
    np.testing.assert_allclose(got_inner, expected["inner_prod"], atol=1e-12)


def _spec_strategy(d):
    k = st.integers(1, 6)
    return k.flatmap(
        lambda K: st.tuples(
            arrays(np.float64, (K, d), elements=st.floats(-3, 3)),
            arrays(np.float64, (K,), elements=st.floats(0.01, 1.0)),
        )
    )


@settings(max_examples=40, deadline=None)
@given(_spec_strategy(3), _spec_strategy(3), _spec_strategy(3), st.floats(0.05, 2.0))
def test_metric_properties(a, b, c, gamma):
    A, B, C = (RKME(z, w / w.sum(), gamma, dtype="float64") for z, w in (a, b, c))
    assert A.dist(B) == pytest.approx(B.dist(A), abs=1e-12)
    assert A.dist(A) == pytest.approx(0.0, abs=1e-12)
    assert A.dist(B) >= -1e-12
    dab, dbc, dac = (math.sqrt(max(x, 0.0)) for x in (A.dist(B), B.dist(C), A.dist(C)))
    assert dac <= dab + dbc + 1e-6


def test_residual_matches_bruteforce_and_tiles(rng):
    x = rng.normal(size=(300, 4))
    z, beta = random_spec_arrays(rng, 10, 4)
    spec = RKME(z, beta, 0.2, dtype="float64")
    want = ref.residual(z, beta, x, 0.2)
    assert spec.residual(x) == pytest.approx(want, abs=1e-12)
    assert spec.residual(x, tile=37) == pytest.approx(want, abs=1e-12)
    # The exact empirical embedding (z = x, uniform beta) has zero residual.
    assert RKME(x, np.full(300, 1 / 300), 0.2, dtype="float64").residual(x) == pytest.approx(0.0, abs=1e-12)


def test_herd_is_seeded_and_close_to_spec(rng):
    z, beta = random_spec_arrays(rng, 8, 2)
    spec = RKME(z, beta, 0.5, dtype="float64")
    s1, s2 = spec.herd(50, seed=3), spec.herd(50, seed=3)
    np.testing.assert_array_equal(s1, s2)
    assert s1.shape == (50, 2)
    far = rng.normal(size=(50, 2)) + 10.0
    assert spec.residual(s1) < spec.residual(far)


def test_to_changes_dtype_and_keeps_values(rng):
    z, beta = random_spec_arrays(rng, 5, 3)
    a = RKME(z, beta, 0.1, num_points=42)
    b = a.to(dtype="float64")
    assert a.dtype == torch.float32 and b.dtype == torch.float64 and b.num_points == 42
    assert b.dist(a.to(dtype="float64")) == pytest.approx(0.0, abs=1e-12)
