"""Real-data markets: ground truth, determinism, semantic specs, shifts, tabular and mnist carving."""
import pickle

import numpy as np
import pytest

from lwgpu.data.real import apply_shift, load_dataset, make_digits_market, make_real_market
from lwgpu.kernels import reference
from lwgpu.spec.qp import solve_simplex_qp
from lwgpu.spec.semantic import validate_semantic_spec


@pytest.fixture(scope="module")
def market():
    return make_digits_market(n_tasks=30, seed=0)


def mmd_row(user, tasks):
    uz, ub = user.rkme.numpy()
    return np.array([reference.mmd2(uz, ub, *t.rkme.numpy(), user.rkme.gamma) for t in tasks])


def test_tasks_models_and_specs(market):
    assert len(market.tasks) == 30 and market.spec_method == "fit_many" and market.input_dim == 64
    subsets = {t.classes for t in market.tasks}
    assert len(subsets) == 30  # distinct class subsets
    for t in market.tasks:
        assert set(np.unique(t.y_train)) == set(t.classes) and set(np.unique(t.y_test)) <= set(t.classes)
        assert (t.predict(t.X_test) == t.y_test).mean() > 0.9
        P = t.predict_proba(t.X_test)
        assert P.shape == (len(t.X_test), 10)
        np.testing.assert_allclose(P.sum(1), 1.0)
        assert np.all(P[:, [c for c in range(10) if c not in t.classes]] == 0)
        spec = validate_semantic_spec(t.semantic_spec)
        assert spec["input_dim"] == 64 and spec["output_dim"] == 10 and spec["library"] == "sklearn"
        assert t.rkme.d == 64 and t.rkme.gamma == 0.1 and np.isfinite(t.rkme.numpy()[0]).all()
    clone = pickle.loads(pickle.dumps(market.tasks[0].model))
    np.testing.assert_array_equal(clone.predict(market.tasks[0].X_test), market.tasks[0].predict(market.tasks[0].X_test))


def test_single_users_are_nearest_to_their_task(market):
    singles = [u for u in market.users if len(u.tasks) == 1]
    assert len(singles) == 30
    for u in singles:
        assert np.all(u.source == u.tasks[0]) and set(np.unique(u.y)) <= set(market.tasks[u.tasks[0]].classes)
        assert int(np.argmin(mmd_row(u, market.tasks))) == u.tasks[0]


def test_mixture_users_are_explained_by_their_two_tasks(market):
    import torch

    mixes = [u for u in market.users if len(u.tasks) == 2]
    assert len(mixes) == 10
    Z = [t.rkme.numpy() for t in market.tasks]
    G = np.array([[reference.inner(*a, *b, 0.1) for b in Z] for a in Z])
    for u in mixes:
        counts = np.bincount(u.source, minlength=30)
        assert counts[list(u.tasks)].min() >= len(u.y) // 2 - 1 and counts.sum() == counts[list(u.tasks)].sum()
        c = np.array([reference.inner(*u.rkme.numpy(), *b, 0.1) for b in Z])
        w = solve_simplex_qp(torch.tensor(G)[None], torch.tensor(c)[None])[0].numpy()
        assert set(np.argsort(-w)[:2]) == set(u.tasks) and w[list(u.tasks)].sum() > 0.8


def test_deterministic_by_seed():
    kw = dict(n_tasks=4, n_mixture_users=2, K=10, spec_method="kmeans")
    a, b, c = make_digits_market(seed=5, **kw), make_digits_market(seed=5, **kw), make_digits_market(seed=6, **kw)
    for ta, tb in zip(a.tasks, b.tasks):
        np.testing.assert_array_equal(ta.X_train, tb.X_train)
        np.testing.assert_array_equal(ta.rkme.numpy()[0], tb.rkme.numpy()[0])
        np.testing.assert_array_equal(ta.model.predict_proba(ta.X_test), tb.model.predict_proba(tb.X_test))
    for ua, ub in zip(a.users, b.users):
        np.testing.assert_array_equal(ua.X, ub.X)
        np.testing.assert_array_equal(ua.y, ub.y)
    assert [t.classes for t in a.tasks] != [t.classes for t in c.tasks]


def test_shifts_are_the_stated_transforms():
    X, _, shape = load_dataset("digits")
    img = X[:5].reshape(5, 8, 8)
    np.testing.assert_array_equal(apply_shift(X[:5], {"kind": "flip_lr"}, shape).reshape(5, 8, 8), img[:, :, ::-1])
    np.testing.assert_array_equal(apply_shift(X[:5], {"kind": "flip_ud"}, shape).reshape(5, 8, 8), img[:, ::-1])
    np.testing.assert_array_equal(apply_shift(X[:5], {"kind": "transpose"}, shape).reshape(5, 8, 8),
                                  img.transpose(0, 2, 1))
    v = np.arange(64.0)
    np.testing.assert_array_equal(apply_shift(X[:5], {"kind": "offset", "vector": v}, shape), X[:5] + v)
    with pytest.raises(ValueError, match="needs image data"):
        apply_shift(X[:5], {"kind": "flip_lr"}, None)


@pytest.mark.parametrize("name,d", [("breast_cancer", 30), ("wine", 13)])
def test_table_datasets_carve_regions(name, d):
    m = make_real_market(name, n_tasks=5, n_mixture_users=1, K=10, spec_method="kmeans", seed=1)
    assert m.info["carving"] == "regions" and m.input_dim == d
    assert {t.shift["kind"] for t in m.tasks} <= {"none", "offset"}
    for t in m.tasks:
        assert t.X_train.shape[1] == d and (t.predict(t.X_test) == t.y_test).mean() > 0.6


def test_mnist_loads_offline_and_pools():
    m = make_real_market("mnist", n_tasks=2, n_mixture_users=0, model="knn", fit_task_specs=False,
                         fit_user_specs=False)
    assert m.input_dim == 196 and m.info["image_shape"] == (14, 14) and all(t.rkme is None for t in m.tasks)
    X, y, shape = load_dataset("mnist", pool=1)  # cached raw arrays: no second read
    assert X.shape == (5000, 784) and shape == (28, 28) and set(np.unique(y)) == set(range(10))
    assert (m.tasks[0].predict(m.tasks[0].X_test) == m.tasks[0].y_test).mean() > 0.8


def test_make_user_and_split(market):
    u = market.make_user([3, 7], weights=[0.25, 0.75], n=40, seed=1, fit_spec=False)
    assert np.bincount(u.source, minlength=30)[[3, 7]].tolist() == [10, 30] and u.rkme is None
    Xl, yl, Xr, yr = u.split(5, seed=0)
    assert len(yl) == 5 and len(yr) == 35
    with pytest.raises(ValueError, match="distinct indices"):
        market.make_user([3, 3])
    with pytest.raises(ValueError, match="distinct indices"):
        market.make_user([99])
    with pytest.raises(ValueError, match="weights must be"):
        market.make_user([1, 2], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="test sets have"):
        market.make_user([1], n=10_000)
    with pytest.raises(ValueError, match="n_labels"):
        u.split(40)


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown dataset"):
        make_real_market("cifar")
    with pytest.raises(ValueError, match="not valid for digits"):
        make_real_market("digits", shifts=["offset"])
    with pytest.raises(ValueError, match="n_tasks"):
        make_real_market("digits", n_tasks=0)
    with pytest.raises(ValueError, match="unknown model"):
        make_real_market("digits", n_tasks=1, model="svm")
    with pytest.raises(ValueError, match="pool must divide"):
        load_dataset("mnist", pool=3)
