"""Synthetic market generator: shapes, seeding, chunk independence, user ground truth."""
import numpy as np
import pytest

from lwgpu.data.synthetic import RNG_CHUNK, SyntheticMarket
from lwgpu.kernels import reference


def test_generate_shapes_and_weights():
    m = SyntheticMarket.generate(50, d=5, components=4, seed=3)
    assert m.means.shape == (50, 4, 5) and m.weights.shape == (50, 4) and len(m) == 50 and m.d == 5
    np.testing.assert_allclose(m.weights.sum(1), 1.0)
    assert (m.ids == np.arange(50)).all()


def test_same_seed_same_market_other_seed_differs():
    a, b, c = (SyntheticMarket.generate(30, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.means, b.means) and not np.array_equal(a.means, c.means)
    assert all(np.array_equal(x, y) for x, y in zip(a.sample(20), b.sample(20)))


def test_sample_of_subset_matches_full_draw_across_chunks():
    m = SyntheticMarket.generate(RNG_CHUNK + 10, d=3, seed=0)
    full = m.sample(6)
    some = m.sample(6, tasks=[RNG_CHUNK + 3, 2])
    assert np.array_equal(some[0], full[RNG_CHUNK + 3]) and np.array_equal(some[1], full[2])
    # the first chunk of a larger market is the smaller market (keyed on chunk, not on N)
    small = SyntheticMarket.generate(RNG_CHUNK, d=3, seed=0)
    assert np.array_equal(small.means, m.means[:RNG_CHUNK])


def test_separation_controls_overlap():
    """Rows sit near their own task's components; with large separation the own task is the nearest in MMD."""
    m = SyntheticMarket.generate(8, d=4, separation=10.0, spread=0.5, noise=0.3, seed=5)
    x = m.sample(60)
    z, beta = m.spec_arrays(30)
    d = reference.mmd2_matrix([xi for xi in x], [np.full(60, 1 / 60)] * 8, list(z), list(beta), 0.1)
    assert (d.argmin(1) == np.arange(8)).all()
    # no separation and no spread: every task has the same distribution, so own-task distance is not special
    flat = SyntheticMarket.generate(8, d=4, separation=0.0, spread=0.0, noise=1.0, seed=5)
    assert np.allclose(flat.means, 0.0)


def test_spec_arrays_are_simplex_specs():
    m = SyntheticMarket.generate(100, d=2, seed=0)
    z, beta = m.spec_arrays(7)
    assert z.shape == (100, 7, 2) and z.dtype == np.float32 and beta.shape == (100, 7)
    np.testing.assert_allclose(beta.sum(1), 1.0, rtol=1e-6)
    z2, _ = m.spec_arrays(7)
    assert np.array_equal(z, z2)


def test_users_ground_truth():
    m = SyntheticMarket.generate(40, d=3, seed=0)
    u = m.users(30, n_rows=25, max_mix=3, mix_fraction=0.5, min_weight=0.1)
    assert len(u) == 30 and u.is_mixture.any() and (~u.is_mixture).any()
    for ids, w, x in zip(u.true_ids, u.true_weights, u.data):
        assert 1 <= len(ids) <= 3 and len(set(ids.tolist())) == len(ids)
        assert np.isclose(w.sum(), 1.0) and (w >= 0.1 - 1e-12).all() and (np.diff(w) <= 0).all()
        assert x.shape == (25, 3)
    assert (u.primary == np.array([i[0] for i in u.true_ids])).all()
    zq, bq = m.user_spec_arrays(u, 5)
    assert zq.shape == (30, 5, 3) and np.allclose(bq.sum(1), 1.0)
    u2 = m.users(30, n_rows=0, max_mix=3, mix_fraction=0.5, min_weight=0.1)
    assert u2.data == [] and all(np.array_equal(a, b) for a, b in zip(u.true_ids, u2.true_ids))


@pytest.mark.parametrize("kwargs", [dict(n_tasks=0), dict(n_tasks=5, d=0), dict(n_tasks=5, noise=0.0),
                                    dict(n_tasks=5, separation=-1.0)])
def test_generate_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticMarket.generate(**kwargs)


def test_users_reject_bad_arguments():
    m = SyntheticMarket.generate(5, seed=0)
    with pytest.raises(ValueError, match="max_mix"):
        m.users(3, max_mix=6)
    with pytest.raises(ValueError, match="min_weight"):
        m.users(3, max_mix=3, min_weight=0.4)
    with pytest.raises(ValueError, match="task ids"):
        m.sample(3, tasks=[7])
