"""End to end through lwgpu.Market: submit 30 digits learnwares, search for a mixture user, reuse what it finds."""
import numpy as np
import pytest

from lwgpu.data.real import make_digits_market
from lwgpu.reuse import Averaging, EnsemblePruning, FeatureAugment, JobSelector


@pytest.fixture(scope="module")
def market_and_data(tmp_path_factory):
    from lwgpu.market import Market, pack_learnware

    data = make_digits_market(30, seed=1, K=32, n_mixture_users=2, spec_options={"steps": 0})
    root = tmp_path_factory.mktemp("reuse_e2e")
    market = Market(root / "market", device="cpu")
    ids = [market.submit(pack_learnware(t.model, t.semantic_spec, t.rkme, root / f"t{t.index}.zip"))
           for t in data.tasks]
    yield market, ids, data
    market.close()


def test_reuse_of_searched_learnwares_beats_the_market_average(market_and_data):
    market, ids, data = market_and_data
    user = next(u for u in data.users if len(u.tasks) == 2)
    res = market.search(user.rkme, k=5)
    assert res.mixture is not None and {ids[t] for t in user.tasks} <= set(res.mixture.ids)
    found = [market.get(i) for i in res.mixture.ids]  # market Learnware objects (model loaded from the package)
    singles = [(market.get(i).predict(user.X) == user.y).mean() for i in ids]
    Xl, yl, Xr, yr = user.split(20, seed=0)
    acc = {
        "job_selector": (JobSelector(found).predict(Xr) == yr).mean(),
        "averaging": (Averaging(found).predict(Xr) == yr).mean(),
        "ensemble_pruning": (EnsemblePruning(found).fit(Xl, yl).predict(Xr) == yr).mean(),
        "feature_augment": (FeatureAugment(found).fit(Xl, yl).predict(Xr) == yr).mean(),
    }
    assert acc["job_selector"] > max(singles) + 0.2 and acc["job_selector"] > 0.9
    for name, a in acc.items():
        assert a > np.mean(singles) + 0.3, name
