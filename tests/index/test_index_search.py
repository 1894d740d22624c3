"""SpecIndex: recall against exact search, exact re-ranked distances, add/remove/sync, save/load."""
import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.data.clustered import synthetic_spec_arrays
from lwgpu.index import DEFAULTS, SpecIndex, effective_factory, recall_at_k, tune
from lwgpu.index.embed import RandomFourierFeatures
from lwgpu.kernels import reference
from lwgpu.search import search_exact
from lwgpu.spec.rkme import RKME

GAMMA = 0.1


@pytest.fixture(scope="module")
def market():
    torch.set_num_threads(2)
    m = synthetic_spec_arrays(20_000, 100, K=16, d=8, seed=0)
    bank = SpecBank.from_arrays(m["z"], m["beta"], GAMMA)
    queries = SpecBank.from_arrays(m["qz"], m["qbeta"], GAMMA)
    return bank, queries, search_exact(bank, queries, k=10)


def _small(n=1500, q=20, seed=3, K=8, d=4):
    m = synthetic_spec_arrays(n, q, K=K, d=d, seed=seed, n_clusters=20)
    return SpecBank.from_arrays(m["z"], m["beta"], GAMMA), SpecBank.from_arrays(m["qz"], m["qbeta"], GAMMA)


def test_recall_at_k_counts_shared_ids():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[3, 2, 9], [7, 8, 9]]), exact) == pytest.approx(2 / 6)
    assert recall_at_k(np.array([[1, 9], [4, 9]]), exact[:, :2], k=1) == 1.0
    assert recall_at_k(np.array([[1, -1, -1]]), np.array([[1, -1, -1]])) == 1.0  # bank smaller than k
    with pytest.raises(ValueError, match="queries"):
        recall_at_k(exact[:1], exact)


def test_default_index_reaches_recall_099_on_20000_specs(market):
    bank, queries, (ed, ei) = market
    index = SpecIndex(bank)  # documented defaults: IVF1024,Flat (clipped to 512 lists), ORF, D=512
    assert index.built_factory == "IVF512,Flat" and index.D == DEFAULTS["D"]
    dists, ids = index.search(queries, 10)
    assert recall_at_k(ids, ei) >= 0.99
    assert ids.dtype == np.int64 and dists.shape == (100, 10)
    assert np.all(np.diff(dists, axis=1) >= 0)
    # returned distances are the exact squared MMD (float64 brute force), not the embedding's
    z, beta = bank.z.numpy(), bank.beta.numpy()
    pos = bank.positions(ids[:5].ravel()).reshape(5, 10)
    for q in range(5):
        for j in range(0, 10, 3):
            ref = reference.mmd2(queries.z[q].numpy(), queries.beta[q].numpy(), z[pos[q, j]], beta[pos[q, j]], GAMMA)
            assert dists[q, j] == pytest.approx(ref, rel=1e-4, abs=1e-6)
    same = ids == ei
    np.testing.assert_allclose(dists[same], ed[same], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,PQ8x4", "IVF16,SQ8"])
def test_other_factories_search_exactly_on_candidates(factory):
    bank, queries = _small()
    _, ei = search_exact(bank, queries, k=5)
    index = SpecIndex(bank, factory=factory, D=64, candidates=300, probe=16)
    _, ids = index.search(queries, 5)
    assert recall_at_k(ids, ei) >= 0.95
    assert index.search(queries, 5, candidates=len(bank), probe=16)[1].shape == (20, 5)


@pytest.mark.parametrize("embedder", ["orf", "rff", "nystroem"])
def test_flat_with_all_candidates_equals_exact(embedder):
    bank, queries = _small(n=400)
    ed, ei = search_exact(bank, queries, k=7)
    index = SpecIndex(bank, factory="Flat", D=64, candidates=400, embedder=embedder)
    assert index.embedder.kind == embedder and index.D == 64
    d, i = index.search(queries, 7)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(d, ed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW16"])
def test_add_remove_keep_index_and_bank_consistent(factory):
    bank, queries = _small(n=800)
    index = SpecIndex(bank, factory=factory, D=64, candidates=100, probe=8)
    rng = np.random.default_rng(0)
    gone = rng.choice(bank.ids, size=50, replace=False)
    index.remove(gone)
    assert len(bank) == 750 and len(index) == 750
    np.testing.assert_array_equal(index.indexed_ids(), np.sort(bank.ids))
    _, ids = index.search(queries, 10)
    assert not np.isin(ids, gone).any()
    new = [RKME(rng.normal(size=(6, 4)) + 9.0, np.full(6, 1 / 6), GAMMA) for _ in range(3)]
    new_ids = index.add(new, ids=[10_001, 10_002, 10_003])
    np.testing.assert_array_equal(new_ids, [10_001, 10_002, 10_003])
    np.testing.assert_array_equal(index.indexed_ids(), np.sort(bank.ids))
    d, ids = index.search(new, 1)  # each added spec finds itself at distance ~0
    np.testing.assert_array_equal(ids[:, 0], new_ids)
    assert np.all(d[:, 0] < 1e-5)
    # re-adding a removed id works (graph indexes rebuild instead of duplicating it)
    index.add([new[0]], ids=[int(gone[0])])
    assert sorted(index.search(new[0], 2)[1][0].tolist()) == sorted([10_001, int(gone[0])])
    np.testing.assert_array_equal(index.indexed_ids(), np.sort(bank.ids))


def test_sync_after_the_bank_changed_directly():
    bank, queries = _small(n=600)
    index = SpecIndex(bank, factory="Flat", D=64, candidates=50)
    bank.remove(bank.ids[:100])  # behind the index's back
    extra = [RKME(np.random.default_rng(1).normal(size=(5, 4)), np.full(5, 0.2), GAMMA)]
    bank.add(extra, ids=[5_000])
    _, ids = index.search(queries, 10)  # meets removed ids -> syncs on its own
    assert np.isin(ids, bank.ids).all()
    np.testing.assert_array_equal(index.indexed_ids(), np.sort(bank.ids))
    assert index.search(extra, 1)[1][0, 0] == 5_000


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW16"])
def test_save_load_round_trip_beside_the_bank(tmp_path, factory):
    bank, queries = _small(n=700)
    index = SpecIndex(bank, factory=factory, D=64, candidates=60, probe=4, seed=5)
    if factory.startswith("HNSW"):
        index.remove(bank.ids[:5])  # tombstones survive the round trip
    before = index.search(queries, 10)
    bank.save(tmp_path)
    index.save(tmp_path)
    bank2 = SpecBank.load(tmp_path)
    index2 = SpecIndex.load(tmp_path, bank2)
    assert index2.built_factory == index.built_factory and index2.candidates == 60 and index2.probe == 4
    after = index2.search(queries, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    with pytest.raises(ValueError, match="d="):
        SpecIndex.load(tmp_path, SpecBank(GAMMA, 3))


def test_empty_bank_small_bank_and_validation():
    bank = SpecBank(GAMMA, 4)
    index = SpecIndex(bank, factory="IVF1024,Flat", D=32, candidates=10)
    q = RKME(np.zeros((3, 4)), np.full(3, 1 / 3), GAMMA)
    d, i = index.search(q, 3)
    assert np.all(i == -1) and np.all(np.isinf(d))
    rng = np.random.default_rng(2)
    index.add([RKME(rng.normal(size=(3, 4)), np.full(3, 1 / 3), GAMMA) for _ in range(5)])
    assert index.built_factory == "IVF1,Flat" and len(index) == 5
    d, i = index.search([q, q], 8)  # k > N: padded with -1 / inf
    assert (i[:, :5] >= 0).all() and (i[:, 5:] == -1).all() and np.isinf(d[:, 5:]).all()
    assert effective_factory("IVF4096,PQ8", 100_000) == "IVF2564,PQ8"
    # a bank that outgrows its clipped IVF layout is re-trained with more lists
    more = synthetic_spec_arrays(300, 0, K=3, d=4, seed=9)
    added = index.add([RKME(z, b, GAMMA) for z, b in zip(more["z"], more["beta"])])
    assert index.built_factory == "IVF7,Flat" and len(index) == 305 and len(bank) == 305
    np.testing.assert_array_equal(index.indexed_ids(), np.sort(bank.ids))
    assert index.search(RKME(more["z"][7], more["beta"][7], GAMMA), 1)[1][0, 0] == added[7]
    with pytest.raises(ValueError, match="gamma"):
        index.search(RKME(np.zeros((3, 4)), np.full(3, 1 / 3), 0.5), 1)
    with pytest.raises(ValueError, match="k must"):
        index.search(q, 0)
    with pytest.raises(ValueError, match="d/gamma"):
        SpecIndex(bank, embedder=RandomFourierFeatures(5, 32, GAMMA))


def test_tune_finds_a_setting_that_meets_the_target():
    bank, queries = _small(n=2000, q=30)
    best = tune(bank, queries, target=0.98, factory="IVF32,Flat", Ds=(32, 128), candidates=(20, 100),
                probes=(2, 8, 32))
    assert best["recall"] >= 0.98 and best["D"] in (32, 128) and len(best["table"]) >= 1
    index = SpecIndex(bank, factory="IVF32,Flat", D=best["D"], candidates=best["candidates"], probe=best["probe"])
    assert recall_at_k(index.search(queries, 10)[1], search_exact(bank, queries, k=10)[1]) >= 0.98


def test_default_params_scale_nprobe_with_market_size():
    from lwgpu.index import default_nprobe, default_params

    assert default_params(20_000)["nprobe"] == DEFAULTS["nprobe"]
    assert default_params(1_000_000)["nprobe"] == 8 * DEFAULTS["nprobe"]
    assert default_params(1_000_000, "HNSW32")["nprobe"] is None
    assert default_nprobe(10_000_000, 512) == 512  # never more than the lists
    assert default_params(50)["candidates"] == 50
