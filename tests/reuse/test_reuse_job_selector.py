"""JobSelector on digits: mixture weights against a float64 brute-force QP, routing, and errors."""
import numpy as np
import pytest
from scipy.optimize import minimize

from lwgpu.kernels import reference
from lwgpu.reuse import JobSelector
from lwgpu.spec.rkme import RKME

from reuse_stubs import Stub


def mixture_users(market):
    return [u for u in market.users if len(u.tasks) == 2]


def test_beats_average_learnware_on_mixture_user(digits):
    for user in mixture_users(digits)[:2]:
        pair = [digits.tasks[t] for t in user.tasks]
        js = JobSelector(pair, seed=0)
        acc = (js.predict(user.X) == user.y).mean()
        singles = [(t.predict(user.X) == user.y).mean() for t in digits.tasks]
        assert acc > np.mean(singles) + 0.4
        assert acc > max(singles) + 0.2  # no single learnware covers both tasks
        routed = np.asarray(user.tasks)[js.select(user.X)]
        assert (routed == user.source).mean() > 0.75


def test_weights_pick_the_true_tasks_among_decoys(digits):
    user = mixture_users(digits)[0]
    decoys = [t for t in range(len(digits.tasks)) if t not in user.tasks][:3]
    order = [user.tasks[0], decoys[0], user.tasks[1], decoys[1], decoys[2]]
    lws = [digits.tasks[t] for t in order]
    js = JobSelector(lws, selector="kernel").fit(user.X)
    assert js.weights_[[0, 2]].sum() > 0.85
    acc = (js.predict(user.X) == user.y).mean()
    assert acc > 0.85


def test_mixture_weights_match_float64_qp(rng):
    d, gamma = 3, 0.5
    specs = [RKME(*(rng.normal(size=(6, d)) + c, np.full(6, 1 / 6)), gamma=gamma) for c in (0.0, 1.5, -1.5)]
    X = np.concatenate([rng.normal(size=(40, d)), rng.normal(size=(20, d)) + 1.5])
    js = JobSelector([Stub(labels=lambda X: np.zeros(len(X), int))] * 3, specs=specs)
    w = js.mixture_weights(X)
    zb = [s.numpy() for s in specs]
    G = np.array([[reference.inner(*a, *b, gamma) for b in zb] for a in zb])
    u = np.full(len(X), 1 / len(X))
    c = np.array([reference.inner(*a, X, u, gamma) for a in zb])
    obj = lambda v: v @ G @ v - 2 * c @ v  # noqa: E731  dist(U, sum w B) minus the constant <U,U>
    ref = minimize(obj, np.full(3, 1 / 3), method="SLSQP", bounds=[(0, 1)] * 3,
                   constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}], options={"ftol": 1e-14})
    assert w.min() >= -1e-9 and abs(w.sum() - 1) < 1e-6
    assert obj(w) <= ref.fun + 1e-7
    np.testing.assert_allclose(w, ref.x, atol=1e-3)


def test_single_learnware_and_explicit_specs(digits):
    user = digits.users[0]
    task = digits.tasks[0]
    bare = Stub(labels=task.predict)  # no .rkme: spec passed explicitly
    js = JobSelector([bare], specs=[task.rkme])
    np.testing.assert_array_equal(js.select(user.X), 0)
    np.testing.assert_array_equal(js.predict(user.X), task.predict(user.X))


def test_errors(digits):
    a, b = digits.tasks[0], digits.tasks[1]
    with pytest.raises(ValueError, match="no RKME"):
        JobSelector([a, Stub(labels=a.predict)])
    with pytest.raises(ValueError, match="2 specs for 1 learnwares"):
        JobSelector([a], specs=[a.rkme, b.rkme])
    z, beta = a.rkme.numpy()
    with pytest.raises(ValueError, match="share one dimension and gamma"):
        JobSelector([a, b], specs=[a.rkme, RKME(z, beta, gamma=0.2)])
    with pytest.raises(ValueError, match="selector must be one of"):
        JobSelector([a], selector="forest")
    with pytest.raises(ValueError, match="features but the learnwares take 64"):
        JobSelector([a, b]).predict(np.zeros((5, 10)))
