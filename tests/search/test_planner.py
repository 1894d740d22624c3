"""The search planner (exact scan / exact rows in place / index / index with a selector) and statistical_search
reusing the single search's distances for the mixture."""
import numpy as np
import pytest
import torch

from lwgpu import settings
from lwgpu.bank import SpecBank
from lwgpu.data.clustered import synthetic_spec_arrays
from lwgpu.index import SpecIndex, recall_at_k
from lwgpu.kernels import get_backend, reference
from lwgpu.search import search_exact
from lwgpu.search.mixture import mixture_auto, mixture_greedy
from lwgpu.search.planner import choose_path, plan_search, search
from lwgpu.search.scores import dist_to_score
from lwgpu.search.statistical import statistical_search

GAMMA = 0.1


@pytest.fixture(scope="module")
def market():
    torch.set_num_threads(2)
    m = synthetic_spec_arrays(6_000, 20, K=16, d=8, seed=4)
    bank = SpecBank.from_arrays(m["z"], m["beta"], GAMMA, ids=np.arange(6_000) * 3 + 11)
    queries = SpecBank.from_arrays(m["qz"], m["qbeta"], GAMMA)
    return bank, queries, SpecIndex(bank, factory="IVF32,Flat", probe=16)


def test_choose_path_by_selectivity():
    small = settings.PLANNER_EXACT_MAX_ROWS
    assert choose_path(None, has_index=False) == "exact"
    assert choose_path(None, has_index=True) == "index"
    assert choose_path(small, has_index=True) == "exact-rows"
    assert choose_path(small + 1, has_index=True) == "index-filtered"
    assert choose_path(small + 1, has_index=False) == "exact-rows"
    assert choose_path(50, has_index=True, exact_max_rows=10) == "index-filtered"
    sparse = settings.PLANNER_FALLBACK_MAX_ROWS
    assert choose_path(sparse, has_index=True, n_bank=10 * sparse) == "exact-rows"  # far-out nearest: scan
    assert choose_path(sparse + 1, has_index=True, n_bank=10 * sparse) == "index-filtered"
    assert choose_path(small + 1, has_index=True, n_bank=2 * small) == "index-filtered"


def test_uncertified_pools_fall_back_to_the_admitted_rows(market, monkeypatch):
    bank, queries, index = market
    allowed = np.random.default_rng(2).choice(bank.ids, 3_000, replace=False)
    monkeypatch.setattr(settings, "INDEX_CERTIFY_Z", 1e9)  # nothing certifies ...
    monkeypatch.setattr(settings, "INDEX_MAX_CANDIDATES", 200)  # ... within 200 candidates
    got = plan_search(bank, queries, 10, allowed=allowed, index=index, exact_max_rows=1_000).neighbors
    assert got.method == "exact-rows"
    ed, ei = search_exact(bank.subset(np.sort(allowed)), queries, k=10)
    np.testing.assert_array_equal(got.ids, ei)
    np.testing.assert_allclose(got.dists, ed, rtol=1e-12)


def test_tiny_admitted_sets_are_scanned_exactly_in_place(market, monkeypatch):
    bank, queries, index = market
    allowed = np.random.default_rng(0).choice(bank.ids, 300, replace=False)
    monkeypatch.setattr(type(bank), "subset", lambda *a, **k: pytest.fail("the planner copied the bank"))
    got = search(bank, queries, 10, allowed=allowed, index=index)
    monkeypatch.undo()
    assert got.method == "exact-rows"
    ed, ei = search_exact(bank.subset(np.sort(allowed)), queries, k=10)
    np.testing.assert_array_equal(got.ids, ei)  # identical: the same kernel sums over the same rows
    np.testing.assert_array_equal(got.dists, ed)


def test_large_admitted_sets_go_through_the_index_with_a_selector(market):
    bank, queries, index = market
    allowed = np.random.default_rng(1).choice(bank.ids, 3_000, replace=False)
    got = plan_search(bank, queries, 10, allowed=allowed, index=index, exact_max_rows=1_000).neighbors
    assert got.method == "index-filtered" and np.isin(got.ids, allowed).all()
    ed, ei = search_exact(bank.subset(np.sort(allowed)), queries, k=10)
    assert recall_at_k(got.ids, ei) >= 0.99
    same = got.ids == ei
    np.testing.assert_allclose(got.dists[same], ed[same], rtol=1e-6)


def test_unfiltered_paths_and_edge_cases(market):
    bank, queries, index = market
    ed, ei = search_exact(bank, queries, k=10)
    ex = search(bank, queries, 10)
    assert ex.method == "exact"
    np.testing.assert_array_equal(ex.ids, ei)
    via = search(bank, queries, 10, index=index)
    assert via.method == "index" and recall_at_k(via.ids, ei) >= 0.99
    # admitted ids the bank does not hold are ignored; nothing admitted gives padded results
    got = search(bank, queries, 5, allowed=[10**9, int(bank.ids[0]), int(bank.ids[1])])
    assert got.method == "exact-rows" and set(got.ids[0, :2]) == set(bank.ids[:2].tolist())
    assert (got.ids[:, 2:] == -1).all() and np.isinf(got.dists[:, 2:]).all()
    none = search(bank, queries, 5, allowed=[])
    assert (none.ids == -1).all()
    planned = plan_search(bank, queries.rows(0, 1), 3, allowed=bank.ids[:50], keep_all=True)
    assert planned.pool_ids.shape == (1, 50) and planned.n_admitted == 50
    assert np.all(np.diff(planned.pool_dists, axis=1) >= 0) and set(planned.timings) == {"plan", "scan"}
    with pytest.raises(ValueError, match="another bank"):
        search(bank.rows(0, 10), queries, 3, index=index)


# ---------------------------------------------------------------------- statistical search
@pytest.fixture(scope="module")
def digits():
    """The market tests' digits tasks (K=32, d=64) as a bank, and users mixing two or three tasks."""
    from lwgpu.data.real import make_digits_market

    data = make_digits_market(30, seed=0, K=32, n_mixture_users=0, fit_user_specs=False, spec_options={"steps": 0})
    bank = SpecBank.from_specs([t.rkme for t in data.tasks], ids=np.arange(30) * 2 + 1)
    users = [data.make_user(t, seed=i).rkme for i, t in enumerate([(1, 4), (2, 7, 9), (5,), (0, 3)])]
    return bank, users


def _old_statistical_search(bank, query, k, ids, max_mixture, method):
    """The previous recomputation path in float64: every distance, then G and c of the top candidates
    recomputed by brute force; scores over every admitted distance."""
    sub_ids = np.asarray(bank.ids if ids is None else np.sort(ids))
    pos = bank.positions(sub_ids)
    z, b = bank.z.numpy().astype(np.float64), bank.beta.numpy().astype(np.float64)
    zu, bu = query.z.double().numpy(), query.beta.double().numpy()
    d = np.array([reference.mmd2(zu, bu, z[p], b[p], GAMMA) for p in pos])
    order = np.lexsort((sub_ids, d))
    n_top = min(len(order), max(k, max_mixture ** 2))
    top = pos[order[:n_top]]
    G = np.array([[reference.inner(z[i], b[i], z[j], b[j], GAMMA) for j in top] for i in top])
    c = np.array([reference.inner(zu, bu, z[i], b[i], GAMMA) for i in top])
    uu = reference.inner(zu, bu, zu, bu, GAMMA)
    fn = mixture_greedy if method == "greedy" else mixture_auto
    mix = fn(torch.tensor(G), torch.tensor(c), uu, max_mixture)
    sorted_d = d[order]
    merged = dist_to_score(np.concatenate([sorted_d, [mix.mmd2]]))
    return sub_ids[order], sorted_d, merged, [int(sub_ids[order[j]]) for j in mix.members], mix


@pytest.mark.parametrize("method", ["greedy", "auto"])
@pytest.mark.parametrize("filtered", [False, True])
def test_mixture_from_the_single_distances_equals_the_recomputation(digits, method, filtered):
    bank, users = digits
    be = get_backend("torch", "cpu", torch.float64)
    ids = bank.ids[2:27] if filtered else None
    for user in users:
        res = statistical_search(bank, user, k=5, ids=ids, max_mixture=3, method=method, backend=be)
        assert res.method == ("exact-rows" if filtered else "exact") and res.n_candidates == (25 if filtered else 30)
        order, d, merged, mix_ids, mix = _old_statistical_search(bank, user, 5, ids, 3, method)
        assert res.ids == order[:5].tolist()
        np.testing.assert_allclose([s.mmd2 for s in res.single], d[:5], rtol=0, atol=1e-9)
        if res.mixture is not None:
            assert list(res.mixture.ids) == mix_ids
            np.testing.assert_allclose(res.mixture.weights, mix.weights, atol=1e-9)
            assert res.mixture.mmd2 == pytest.approx(mix.mmd2, abs=1e-9)
            assert res.mixture.score == pytest.approx(merged[-1], abs=1e-9)
            np.testing.assert_allclose([s.score for s in res.single], merged[:5], atol=1e-9)
        else:
            assert len(mix.members) <= 1 or int(merged[-1] * 100) == int(merged[0] * 100)
    assert any(statistical_search(bank, u, k=5, max_mixture=3, backend=be).mixture is not None for u in users)


def test_statistical_search_with_the_default_backend_and_an_index(digits):
    bank, users = digits
    be = get_backend("torch", "cpu", torch.float64)
    for user in users:
        ref = statistical_search(bank, user, k=5, max_mixture=3, backend=be)
        got = statistical_search(bank, user, k=5, max_mixture=3)  # float32 kernels: the same ranking
        assert got.ids == ref.ids and got.timings["total"] > 0
        np.testing.assert_allclose([s.mmd2 for s in got.single], [s.mmd2 for s in ref.single], rtol=1e-4, atol=1e-6)
        assert (got.mixture is None) == (ref.mixture is None)
        if got.mixture is not None:
            assert set(got.mixture.ids) == set(ref.mixture.ids)
    index = SpecIndex(bank, factory="Flat", D=128, candidates=30)
    res = statistical_search(bank, users[0], k=5, max_mixture=3, index=index, backend=be)
    assert res.method == "index" and res.ids == statistical_search(bank, users[0], k=5, backend=be).ids
    res = statistical_search(bank, users[0], k=5, ids=bank.ids[:3], index=index)
    assert res.method == "exact-rows" and res.n_candidates == 3 and set(res.ids) <= set(bank.ids[:3].tolist())
    assert statistical_search(bank, users[0], ids=[]).single == []
