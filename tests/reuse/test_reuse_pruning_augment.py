"""EnsemblePruning and FeatureAugment: hand cases, label curves on digits against the user's own model."""
import numpy as np
import pytest

from lwgpu.reuse import EnsemblePruning, FeatureAugment
from lwgpu.reuse.ensemble_pruning import greedy_path
from lwgpu.reuse.feature_augment import fit_linear

from reuse_stubs import Stub


def candidates(market, user, n_decoys=3):
    """The user's true tasks first, then the decoys nearest to the user in MMD."""
    d = np.array([user.rkme.dist(t.rkme) for t in market.tasks])
    decoys = [int(i) for i in np.argsort(d) if int(i) not in user.tasks][:n_decoys]
    return [market.tasks[t] for t in list(user.tasks) + decoys]


def errors(make, user, labels, seeds):
    out = []
    for s in seeds:
        Xl, yl, Xr, yr = user.split(labels, seed=s)
        out.append((make().fit(Xl, yl).predict(Xr) != yr).mean())
    return float(np.mean(out))


def own_error(user, labels, seeds):
    out = []
    for s in seeds:
        Xl, yl, Xr, yr = user.split(labels, seed=s)
        out.append((fit_linear(Xl, yl, "classification").predict(Xr) != yr).mean())
    return float(np.mean(out))


def test_greedy_path_hand_case():
    # 3 rows, classes {0, 1}, targets 0, 1, 0. Learnware 0 is wrong on row 2, learnware 1 on every
    # row, learnwares 2 and 3 right everywhere (3 more confident: wins the tie on error).
    S = np.array([
        [[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]],
        [[0.1, 0.9], [0.9, 0.1], [0.1, 0.9]],
        [[0.6, 0.4], [0.4, 0.6], [0.6, 0.4]],
        [[0.8, 0.2], [0.2, 0.8], [0.8, 0.2]],
    ])
    target = np.array([0, 1, 0])
    assert greedy_path(S, target, "classification", 1) == [3]
    # without 3: 2 first; then adding 0 or 1 would flip a row, so 2 again (with replacement)
    assert greedy_path(S[:3], target, "classification", 2) == [2, 2]
    assert greedy_path(S[:3], target, "classification", 5, stop_early=True) == [2]
    # regression: values 1 and 3, target 2 -> averaging both is exact
    R = np.array([[[1.0]] * 4, [[3.0]] * 4])
    assert sorted(greedy_path(R, np.full((4, 1), 2.0), "regression", 2)) == [0, 1]


def test_pruning_regression_keeps_the_right_models(rng):
    X = rng.normal(size=(60, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    good = Stub(values=lambda X: X @ np.array([1.0, -2.0, 0.5]) + 0.3)
    good2 = Stub(values=lambda X: X @ np.array([1.0, -2.0, 0.5]) - 0.3)
    bad = Stub(values=lambda X: X @ np.array([-1.0, 0.0, 2.0]))
    ep = EnsemblePruning([bad, good, good2], task="regression").fit(X[:20], y[:20])
    assert ep.weights_[0] == 0 and ep.selected_ == [1, 2]
    np.testing.assert_allclose(ep.predict(X[20:]), y[20:], atol=1e-9)


def test_pruning_finds_the_users_learnware_with_few_labels(digits):
    user = digits.users[3]  # a single-task user
    lws = candidates(digits, user)[::-1]  # true learnware last
    ep = EnsemblePruning(lws).fit(*user.split(5, seed=0)[:2])
    assert ep.weights_[-1] == ep.weights_.max()
    seeds = range(3)
    own5 = own_error(user, 5, seeds)
    ep5 = errors(lambda: EnsemblePruning(lws), user, 5, seeds)
    assert ep5 < 0.1 < own5


def test_pruning_and_augment_improve_with_labels_and_beat_own_when_labels_are_few(digits):
    mix = [u for u in digits.users if len(u.tasks) == 2][:2]
    seeds = range(2)
    res = {}
    for user in mix:
        lws = candidates(digits, user)
        for k in (5, 40):
            res.setdefault(("own", k), []).append(own_error(user, k, seeds))
            res.setdefault(("ep", k), []).append(errors(lambda: EnsemblePruning(lws), user, k, seeds))
            res.setdefault(("fa", k), []).append(errors(lambda: FeatureAugment(lws), user, k, seeds))
    m = {key: float(np.mean(v)) for key, v in res.items()}
    assert m[("ep", 40)] < m[("ep", 5)] and m[("fa", 40)] < m[("fa", 5)] and m[("own", 40)] < m[("own", 5)]
    assert m[("ep", 5)] < m[("own", 5)]
    assert m[("fa", 5)] < m[("own", 5)]
    assert m[("fa", 40)] < m[("own", 40)]  # learnware outputs still help at 40 labels


def test_feature_augment_regression_and_edge_cases(rng):
    X = rng.normal(size=(40, 4))
    y = np.sin(X[:, 0]) * 3
    helper = Stub(values=lambda X: np.sin(X[:, 0]))  # the nonlinearity a linear model cannot find
    fa = FeatureAugment([helper], task="regression").fit(X[:10], y[:10])
    np.testing.assert_allclose(fa.predict(X[10:]), y[10:], atol=0.1)
    own = fit_linear(X[:10], y[:10], "regression")
    assert ((own.predict(X[10:]) - y[10:]) ** 2).mean() > 10 * ((fa.predict(X[10:]) - y[10:]) ** 2).mean()
    lw = Stub(labels=lambda X: (X[:, 0] > 0).astype(int))
    one_class = FeatureAugment([lw]).fit(X[:3], np.array([1, 1, 1]))
    np.testing.assert_array_equal(one_class.predict(X), 1)
    with pytest.raises(ValueError, match="at least 2 labeled rows"):
        FeatureAugment([lw]).fit(X[:1], np.array([1]))
    with pytest.raises(ValueError, match="X_labeled has no rows"):
        EnsemblePruning([lw]).fit(X[:0], np.array([]))
    with pytest.raises(ValueError, match="output_weight"):
        FeatureAugment([lw], output_weight=0)
    with pytest.raises(ValueError, match="max_size"):
        EnsemblePruning([lw], max_size=0)
