"""DistributedMarket: a Market whose statistical search runs on the sharded banks gives Market.search's answers,
before and after writes through the wrapper (add_many, delete) and with a semantic filter."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier

from dist_testutil import random_bank_arrays
from lwgpu.data.semantic_specs import synthetic_semantic_specs
from lwgpu.distributed import DistributedMarket
from lwgpu.market import Market
from lwgpu.spec.rkme import RKME

D, K = 3, 5


def _items(n: int, seed: int, start: int = 0):
    rng = np.random.default_rng(seed)
    z, beta = random_bank_arrays(rng, n, K, D)
    model = DummyClassifier(strategy="most_frequent").fit(np.zeros((4, D)), [0, 1, 1, 0])
    sems = synthetic_semantic_specs(n, input_dim=D, n_tags=4, n_tags_each=1, seed=seed, start=start)
    return [model] * n, sems, [RKME(z[i], beta[i], 0.1) for i in range(n)]


def _same(a, b, rtol=2e-6):
    """Equal answers; distances to float32 tolerance (the market's bank and a shard are scanned in float32
    tiles of different shapes, so sums may round differently in the last bit)."""
    assert a.ids == b.ids and a.n_candidates == b.n_candidates
    np.testing.assert_allclose([s.mmd2 for s in a.single], [s.mmd2 for s in b.single], rtol=rtol, atol=1e-9)
    np.testing.assert_allclose([s.score for s in a.single], [s.score for s in b.single], rtol=rtol, atol=1e-9)
    assert (a.mixture is None) == (b.mixture is None)
    if a.mixture is not None:
        assert a.mixture.ids == b.mixture.ids
        np.testing.assert_allclose(a.mixture.weights, b.mixture.weights, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.mixture.mmd2, b.mixture.mmd2, rtol=1e-4, atol=1e-9)


def test_distributed_market_answers_like_the_market(client, tmp_path):
    market = Market(tmp_path / "m", device="cpu", backend="torch")
    ids = market.add_many(*_items(30, seed=1), check=False, progress=False)
    assert all(isinstance(i, int) for i in ids)
    dm = DistributedMarket(market, client, backend="torch")
    try:
        assert dm.banks[D].sizes.tolist() == [15, 15] and len(dm) == 30  # len() is the market's
        users = _items(3, seed=9)[2]
        blend = RKME(np.concatenate([market.bank(D).z[0].numpy(), market.bank(D).z[7].numpy()]),
                     np.concatenate([0.5 * market.bank(D).beta[0].numpy(), 0.5 * market.bank(D).beta[7].numpy()]), 0.1)
        for u in users + [blend]:
            _same(dm.search(u, k=4, max_mixture=3), market.search(u, k=4, max_mixture=3))
            _same(dm.search(u, semantic={"tags": ["tag001"]}, k=3), market.search(u, semantic={"tags": ["tag001"]}, k=3))
        assert dm.search(blend, k=2, max_mixture=3).mixture is not None  # the mixture path was compared
        # writes through the wrapper reach the shards
        new = dm.add_many(*_items(6, seed=2, start=30), check=False, progress=False)
        assert dm.banks[D].sizes.tolist() == [18, 18]
        dm.delete(ids[0])
        dm.delete(new[0])
        assert sorted(dm.banks[D].ids.tolist()) == sorted(market.bank(D).ids.tolist()) and len(dm.banks[D]) == 34
        for u in users:
            _same(dm.search(u, k=5, max_mixture=3), market.search(u, k=5, max_mixture=3))
        assert dm.sync() == {D: (0, 0)}
        with pytest.raises(ValueError, match="gamma"):
            dm.search(RKME(np.zeros((2, D)), [0.5, 0.5], 0.5))
    finally:
        dm.close()
