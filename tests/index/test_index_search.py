"""SpecIndex: recall against exact search (filtered too), exact re-ranked distances, hooks, repair, save/load."""
import json

import numpy as np
import pytest
import torch

from lwgpu import settings
from lwgpu.bank import SpecBank
from lwgpu.data.clustered import synthetic_spec_arrays
from lwgpu.index import SpecIndex, id_checksum, recall_at_k, tune
from lwgpu.index.embed import RandomFourierFeatures
from lwgpu.index.ids import Selector
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
    return bank, queries, search_exact(bank, queries, k=10), SpecIndex(bank)


def _small(n=1500, q=20, seed=3, K=8, d=4):
    m = synthetic_spec_arrays(n, q, K=K, d=d, seed=seed, n_clusters=20)
    return SpecBank.from_arrays(m["z"], m["beta"], GAMMA), SpecBank.from_arrays(m["qz"], m["qbeta"], GAMMA)


def _rkmes(rng, n, shift=9.0):
    return [RKME(rng.normal(size=(6, 4)) + shift, np.full(6, 1 / 6), GAMMA) for _ in range(n)]


def test_recall_at_k_is_the_one_rule():
    from lwgpu.eval.search import recall_at_k as eval_recall

    assert recall_at_k is eval_recall


def test_default_index_reaches_recall_099_on_20000_specs(market):
    bank, queries, (ed, ei), index = market
    assert index.built_factory == "IVF128,PQ1024x4fs" and index.D == settings.INDEX_D  # factory="auto" at 20k
    nb = index.search(queries, 10)
    dists, ids = nb
    assert nb.method == "index" and recall_at_k(ids, ei) >= 0.99
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


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_filtered_search_matches_exact_over_the_admitted(market, fraction):
    bank, queries, _, index = market
    allowed = np.sort(np.random.default_rng(1).choice(bank.ids, int(fraction * len(bank)), replace=False))
    ed, ei = search_exact(bank.subset(allowed), queries, k=10)
    nb = index.search(queries, 10, allowed=allowed)
    assert nb.method == "index-filtered"
    assert np.isin(nb.ids, allowed).all()  # 1% admits 200 specs: every slot still filled
    assert recall_at_k(nb.ids, ei) >= 0.99
    same = nb.ids == ei
    np.testing.assert_allclose(nb.dists[same], ed[same], rtol=1e-5, atol=1e-6)


def test_selector_kinds_give_the_same_answers():
    bank, queries = _small(n=600)
    far = SpecBank.from_arrays(bank.z, bank.beta, GAMMA, ids=bank.ids + 10**12)  # ids too sparse for a bitmap
    allowed = bank.ids[::3]
    assert Selector(np.sort(allowed), len(bank)).kind == "bitmap"
    assert Selector(np.sort(allowed + 10**12), len(bank)).kind == "batch"
    a = SpecIndex(bank, factory="Flat", D=64, candidates=50).search(queries, 5, allowed=allowed)
    b = SpecIndex(far, factory="Flat", D=64, candidates=50).search(queries, 5, allowed=allowed + 10**12)
    np.testing.assert_array_equal(a.ids + 10**12, b.ids)
    np.testing.assert_array_equal(a.dists, b.dists)
    empty = SpecIndex(bank, factory="Flat", D=64).search(queries, 5, allowed=[])
    assert (empty.ids == -1).all() and np.isinf(empty.dists).all() and empty.method == "index-filtered"


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,PQ8x4", "IVF16,SQ8"])
def test_other_factories_search_exactly_on_candidates(factory):
    bank, queries = _small()
    _, ei = search_exact(bank, queries, k=5)
    index = SpecIndex(bank, factory=factory, D=64, candidates=300, probe=16)
    _, ids = index.search(queries, 5)
    assert recall_at_k(ids, ei) >= 0.95
    allowed = bank.ids[1::2]
    _, fi = search_exact(bank.subset(allowed), queries, k=5)
    got = index.search(queries, 5, allowed=allowed)
    assert np.isin(got.ids, allowed).all() and recall_at_k(got.ids, fi) >= 0.95


@pytest.mark.parametrize("embedder", ["orf", "rff", "nystroem"])
def test_flat_with_all_candidates_equals_exact(embedder):
    bank, queries = _small(n=400)
    ed, ei = search_exact(bank, queries, k=7)
    index = SpecIndex(bank, factory="Flat", D=64, candidates=400, embedder=embedder)
    assert index.embedder.kind == embedder and index.D == 64
    d, i = index.search(queries, 7)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(d, ed, rtol=1e-5, atol=1e-6)


def test_torch_backend_reranks_like_the_default():
    bank, queries = _small(n=500)
    a = SpecIndex(bank, factory="Flat", D=64, candidates=80)
    b = SpecIndex(bank, factory="Flat", D=64, candidates=80, backend="torch", device="cpu")
    assert type(b.backend).__name__ == "TorchBackend"
    ra, rb = a.search(queries, 10), b.search(queries, 10)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_allclose(ra.dists, rb.dists, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "Flat", "HNSW16"])
def test_incremental_hooks_equal_a_rebuilt_index(factory):
    bank, queries = _small(n=800)
    probe = 8 if factory.startswith("IVF") else None  # every list: the IVF answers as exhaustively as Flat
    index = SpecIndex(bank, factory=factory, D=64, candidates=100, probe=probe)
    rng = np.random.default_rng(0)
    v0 = index.version
    gone = rng.choice(bank.ids, size=50, replace=False)
    bank.remove(gone)  # rows move (swap with the last, or compaction): the index holds ids, not rows
    index.remove(gone)
    new = _rkmes(rng, 3)
    new_ids = bank.add(new, ids=[10_001, 10_002, 10_003])
    index.add(new_ids)
    assert index.version == v0 + 2 and index.matches()
    late = bank.ids[:7].copy()
    bank.remove(late)
    assert not index.matches()  # 7 ids left the bank, the hook not called yet
    index.remove(late)
    assert index.matches() and len(index) == len(bank)
    np.testing.assert_array_equal(index.indexed_ids(), np.sort(bank.ids))
    d, ids = index.search(new, 1)  # each added spec finds itself at distance ~0
    np.testing.assert_array_equal(ids[:, 0], new_ids)
    assert np.all(d[:, 0] < 1e-5)
    fresh = SpecIndex(bank, factory=factory, D=64, candidates=100, probe=probe, embedder=index.embedder)
    a, b = index.search(queries, 10), fresh.search(queries, 10)
    if factory == "HNSW16":  # a graph built in another order: same quality, not the same graph
        assert recall_at_k(a.ids, b.ids) >= 0.95
    else:
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.dists, b.dists, rtol=1e-6)
    # re-adding a removed id works (graph indexes rebuild instead of duplicating it)
    back = bank.add([new[0]], ids=[int(gone[0])])
    index.add(back)
    assert sorted(index.search(new[0], 2).ids[0].tolist()) == sorted([10_001, int(gone[0])])
    np.testing.assert_array_equal(index.indexed_ids(), np.sort(bank.ids))


def test_add_replaces_a_spec_under_the_same_id_and_refuses_specs():
    bank, _ = _small(n=300)
    index = SpecIndex(bank, factory="IVF4,Flat", D=32, probe=4)
    rng = np.random.default_rng(5)
    spec = _rkmes(rng, 1, shift=-20.0)[0]
    victim = int(bank.ids[10])
    bank.remove([victim])
    bank.add([spec], ids=[victim])
    index.add([victim])  # no duplicate entry
    assert len(index) == len(bank) and index.matches()
    assert index.search(spec, 1).ids[0, 0] == victim
    with pytest.raises(TypeError, match="bank.add"):
        index.add([spec])


def test_search_never_syncs_and_sync_repairs():
    bank, queries = _small(n=600)
    index = SpecIndex(bank, factory="Flat", D=64, candidates=50)
    bank.remove(bank.ids[:100])  # behind the index's back
    bank.add(_rkmes(np.random.default_rng(1), 1, shift=0.0), ids=[5_000])
    _, ids = index.search(queries, 10)  # stale candidates are dropped, nothing is synced
    assert np.isin(ids[ids >= 0], bank.ids).all()
    assert not index.matches() and len(index) == 600
    assert index.sync() == (100, 1)
    assert index.matches()
    np.testing.assert_array_equal(index.indexed_ids(), np.sort(bank.ids))


@pytest.mark.parametrize("factory", ["auto", "IVF8,Flat", "HNSW16"])
def test_save_load_round_trip_beside_the_bank(tmp_path, factory):
    bank, queries = _small(n=700)
    index = SpecIndex(bank, factory=factory, D=64, candidates=60, probe=4, seed=5)
    if factory.startswith("HNSW"):
        index.remove(bank.ids[:5])  # tombstones survive the round trip
        bank.remove(bank.ids[:5])
    before = index.search(queries, 10, allowed=bank.ids[::2])
    bank.save(tmp_path)
    index.save(tmp_path)
    meta = json.loads((tmp_path / "index_meta.json").read_text())
    assert meta["N"] == len(bank) and int(meta["checksum"]) == id_checksum(bank.ids)
    bank2 = SpecBank.load(tmp_path)
    index2 = SpecIndex.load(tmp_path, bank2)
    assert index2.built_factory == index.built_factory and index2.candidates == 60 and index2.probe == 4
    assert index2.matches()
    after = index2.search(queries, 10, allowed=bank.ids[::2])
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.dists, before.dists)
    with pytest.raises(ValueError, match="d="):
        SpecIndex.load(tmp_path, SpecBank(GAMMA, 3))
    bank2.remove(bank2.ids[-3:])  # the bank moved on without the index: repaired on load, or refused
    with pytest.raises(ValueError, match="differ"):
        SpecIndex.load(tmp_path, bank2, repair=False)
    assert SpecIndex.load(tmp_path, bank2).matches(bank2)


def test_auto_layout_grows_with_the_bank(monkeypatch):
    monkeypatch.setattr(settings, "INDEX_FLAT_MAX", 100)
    bank = SpecBank(GAMMA, 4)
    index = SpecIndex(bank, D=32, candidates=10)
    q = RKME(np.zeros((3, 4)), np.full(3, 1 / 3), GAMMA)
    d, i = index.search(q, 3)
    assert np.all(i == -1) and np.all(np.isinf(d))
    rng = np.random.default_rng(2)
    index.add(bank.add(_rkmes(rng, 5, shift=0.0)))
    assert index.built_factory == "Flat" and len(index) == 5
    d, i = index.search([q, q], 8)  # k > N: padded with -1 / inf
    assert (i[:, :5] >= 0).all() and (i[:, 5:] == -1).all() and np.isinf(d[:, 5:]).all()
    more = synthetic_spec_arrays(400, 0, K=3, d=4, seed=9)
    added = bank.add([RKME(z, b, GAMMA) for z, b in zip(more["z"], more["beta"])])
    index.add(added)  # 405 >= 4 x 5 specs and past the Flat range: re-trained as IVF
    assert index.built_factory.startswith("IVF") and index.built_n == 405 and index.matches()
    assert index.search(RKME(more["z"][7], more["beta"][7], GAMMA), 1).ids[0, 0] == added[7]
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_mmd2_rows_batched_against_float64_brute_force(dtype):
    from lwgpu.kernels import get_backend

    bank, queries = _small(n=200, q=7)
    pos = np.random.default_rng(3).integers(-1, len(bank), size=(7, 9))
    got = get_backend("torch", "cpu", dtype).mmd2_rows(queries, bank, pos).numpy()
    z, b = bank.z.numpy(), bank.beta.numpy()
    for q in range(7):
        for c in range(9):
            if pos[q, c] < 0:
                assert np.isinf(got[q, c])
                continue
            ref = reference.mmd2(queries.z[q].numpy(), queries.beta[q].numpy(), z[pos[q, c]], b[pos[q, c]], GAMMA)
            assert got[q, c] == pytest.approx(ref, rel=1e-4 if dtype == torch.float32 else 1e-10, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        get_backend("torch", "cpu").mmd2_rows(queries, bank, pos[:2])
