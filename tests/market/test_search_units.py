"""Scores, fuzzy matching and mixture QPs against the reference package and float64 brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lwgpu.kernels import reference as ref
from lwgpu.search.mixture import gram_and_cross, mixture_auto, mixture_greedy
from lwgpu.search.scores import dist_to_score
from lwgpu.search.semantic_filter import filter_semantic, partial_ratio


def _reference_scores(d):
    searcher = pytest.importorskip("learnware.market.easy.searcher")
    return np.asarray(searcher.EasyStatSearcher._convert_dist_to_score(None, list(d)))


@pytest.mark.parametrize("seed", range(6))
def test_scores_match_reference(seed):
    rng = np.random.default_rng(seed)
    d = rng.random(12) * (10 ** rng.uniform(-3, 1))
    if seed == 0:
        d[:] = 0.5  # all equal
    if seed == 1:
        d[0] = 0.0
    np.testing.assert_allclose(dist_to_score(d), _reference_scores(d), rtol=1e-12, atol=1e-12)
    s = dist_to_score(d)
    assert ((s >= 0) & (s <= 1)).all()


def test_partial_ratio_and_filter():
    assert partial_ratio("digit", "handwritten digits") == 1.0
    assert partial_ratio("digts", "handwritten digits") >= 0.75
    assert partial_ratio("weather", "handwritten digits") < 0.75
    specs = {
        1: {"data_type": "table", "task_type": "classification", "tags": ["a", "b"], "name": "digits lr",
            "description": "x", "library": "sklearn", "license": "MIT", "input_dim": 64, "output_dim": 10},
        2: {"data_type": "image", "task_type": "regression", "tags": ["c"], "name": "house prices",
            "description": "regressor", "library": "pytorch", "license": "MIT", "input_dim": 8, "output_dim": 1},
    }
    assert filter_semantic(None, specs) == [1, 2]
    assert filter_semantic({"data_type": ["table", "image"]}, specs) == [1, 2]
    assert filter_semantic({"task_type": "Regression"}, specs) == [2]
    assert filter_semantic({"tags": ["b", "z"]}, specs) == [1]
    assert filter_semantic({"library": "scikit-learn", "input_dim": 64}, specs) == [1]
    assert filter_semantic({"name": "house"}, specs) == [2]
    assert filter_semantic({"name": "hause prises"}, specs) == [2]
    assert filter_semantic({"description": "nothing like it"}, specs) == []
    with pytest.raises(ValueError, match="unknown"):
        filter_semantic({"colour": "red"}, specs)
    with pytest.raises(ValueError, match="task_type"):
        filter_semantic({"task_type": "dance"}, specs)


def _random_specs(rng, M, K, d):
    z = rng.normal(size=(M, K, d)) * 0.8
    b = rng.random((M, K)) + 0.1
    return z, b / b.sum(1, keepdims=True)


def _brute_mixture(G, c, uu, members):
    """Best simplex weights on ``members`` by a fine grid / exact small solves (float64)."""
    from scipy.optimize import minimize

    idx = list(members)
    Gs, cs = G[np.ix_(idx, idx)], c[idx]
    m = len(idx)
    f = lambda w: uu - 2 * cs @ w + w @ Gs @ w  # noqa: E731
    res = minimize(f, np.full(m, 1 / m), method="SLSQP", bounds=[(0, 1)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}], options={"ftol": 1e-14})
    return res.fun


def test_gram_and_mixtures_against_brute_force():
    rng = np.random.default_rng(3)
    M, K, d = 7, 6, 3
    z, b = _random_specs(rng, M, K, d)
    # the user is a mixture of specs 1 and 4: greedy must find both
    zu = np.concatenate([z[1], z[4]])
    bu = np.concatenate([0.6 * b[1], 0.4 * b[4]])
    G, c, uu = gram_and_cross(torch.tensor(z), torch.tensor(b), torch.tensor(zu), torch.tensor(bu), 0.5)
    for i, j in itertools.product(range(M), range(M)):
        assert float(G[i, j]) == pytest.approx(ref.inner(z[i], b[i], z[j], b[j], 0.5), rel=1e-10)
    for i in range(M):
        assert float(c[i]) == pytest.approx(ref.inner(zu, bu, z[i], b[i], 0.5), rel=1e-10)
    assert uu == pytest.approx(ref.inner(zu, bu, zu, bu, 0.5), rel=1e-10)
    Gn, cn = G.numpy(), c.numpy()
    g = mixture_greedy(G, c, uu, max_mixture=4)
    assert set(g.members) == {1, 4}
    assert dict(zip(g.members, g.weights))[1] == pytest.approx(0.6, abs=1e-6)
    assert g.mmd2 == pytest.approx(0.0, abs=1e-9)
    a = mixture_auto(G, c, uu, max_mixture=4)
    assert set(a.members) == {1, 4} and a.mmd2 == pytest.approx(0.0, abs=1e-9)
    # a user that is no exact mixture: the reported mmd2 is the optimum over the chosen members
    zu2, bu2 = _random_specs(rng, 1, 9, d)
    G, c, uu = gram_and_cross(torch.tensor(z), torch.tensor(b), torch.tensor(zu2[0]), torch.tensor(bu2[0]), 0.5)
    g = mixture_greedy(G, c, uu, max_mixture=3)
    assert g.mmd2 == pytest.approx(_brute_mixture(G.numpy(), c.numpy(), uu, g.members), abs=1e-8)
    w = np.zeros(M)
    w[list(g.members)] = g.weights
    zz = z.reshape(-1, d)
    bb = (b * w[:, None]).reshape(-1)
    assert g.mmd2 == pytest.approx(ref.mmd2(zu2[0], bu2[0], zz, bb, 0.5), abs=1e-8)
    # greedy never beats the best single by less than the stopping rule allows
    singles = uu - 2 * c.numpy() + np.diag(G.numpy())
    assert g.mmd2 <= singles.min() + 1e-12
