"""ShardedBank over two worker processes: the same answers as one bank in this process, balanced shards.

Ground truth: ``search_exact`` / ``statistical_search`` over the unsharded bank (same torch backend), and
the float64 brute force of :mod:`lwgpu.kernels.reference` for the distances.
"""
from __future__ import annotations

import numpy as np
import pytest

from dist_testutil import random_bank_arrays
from lwgpu.bank import SpecBank
from lwgpu.distributed import ShardedBank, balance_moves, scores_from_stats, water_fill
from lwgpu.kernels import reference
from lwgpu.search import dist_to_score, search_exact, statistical_search
from lwgpu.spec.rkme import RKME

GAMMA, K, D = 0.3, 6, 3
BE = "torch"  # no JIT in fresh worker processes; the same backend on both sides


def _bank(seed: int, n: int, start: int = 0) -> SpecBank:
    rng = np.random.default_rng(seed)
    z, beta = random_bank_arrays(rng, n, K, D)
    ids = start + rng.permutation(3 * n)[:n]  # ids are not row order
    return SpecBank.from_arrays(z, beta, GAMMA, ids=ids)


def _mixture_users(bank: SpecBank, n: int, seed: int) -> list[RKME]:
    """Users whose spec is a 50/50 or 70/30 blend of two bank specs (so a mixture is the right answer)."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        a, b = rng.choice(len(bank), 2, replace=False)
        w = 0.5 if j % 2 else 0.7
        z = np.concatenate([bank.z[a].numpy(), bank.z[b].numpy()])
        beta = np.concatenate([w * bank.beta[a].numpy(), (1 - w) * bank.beta[b].numpy()])
        out.append(RKME(z + rng.normal(scale=0.05, size=z.shape), beta, GAMMA))
    return out


def _same_result(a, b, rtol=1e-9):
    """Two SearchResults agree: single ids, distances and scores; mixture ids, weights, mmd2 and score."""
    assert [s.id for s in a.single] == [s.id for s in b.single]
    np.testing.assert_allclose([s.mmd2 for s in a.single], [s.mmd2 for s in b.single], rtol=rtol, atol=1e-12)
    np.testing.assert_allclose([s.score for s in a.single], [s.score for s in b.single], rtol=rtol, atol=1e-12)
    assert (a.mixture is None) == (b.mixture is None)
    if a.mixture is not None:
        assert a.mixture.ids == b.mixture.ids
        np.testing.assert_allclose(a.mixture.weights, b.mixture.weights, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(a.mixture.mmd2, b.mixture.mmd2, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(a.mixture.score, b.mixture.score, rtol=1e-6, atol=1e-9)
    assert a.n_candidates == b.n_candidates


@pytest.fixture(scope="module")
def bank():
    return _bank(0, 240)


@pytest.fixture(scope="module")
def sharded(client, bank):
    sb = ShardedBank(client, bank, backend=BE)
    yield sb
    sb.close()


def test_shards_live_on_both_workers(sharded, bank):
    info = sharded.info()
    assert len({i["pid"] for i in info}) == 2
    assert [i["n"] for i in info] == [120, 120] == sharded.sizes.tolist()
    assert np.array_equal(sharded.ids, np.sort(bank.ids))
    back = sharded.gather()
    pos = back.positions(bank.ids)
    np.testing.assert_array_equal(back.z[pos].numpy(), bank.z.numpy())
    np.testing.assert_array_equal(back.self_inner[pos].numpy(), bank.self_inner.numpy())


def test_search_equals_exact_search_and_brute_force(sharded, bank):
    rng = np.random.default_rng(5)
    zq, bq = random_bank_arrays(rng, 7, K, D)
    queries = [RKME(zq[i], bq[i], GAMMA) for i in range(7)]
    for k in (1, 10):
        got = sharded.search(queries, k)
        want = search_exact(bank, queries, k=k, backend=BE)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.dists, want.dists, rtol=1e-12, atol=0)
    # float64 brute force over the whole bank: the same neighbours
    z64, b64 = bank.z.numpy().astype(np.float64), bank.beta.numpy().astype(np.float64)
    for qi, q in enumerate(queries):
        exact = np.array([reference.mmd2(zq[qi].astype(np.float64), bq[qi].astype(np.float64), z64[n], b64[n], GAMMA)
                          for n in range(len(bank))])
        order = np.argsort(exact, kind="stable")[:10]
        np.testing.assert_array_equal(np.sort(got.ids[qi]), np.sort(bank.ids[order]))
        np.testing.assert_allclose(got.dists[qi], exact[order], rtol=2e-4, atol=1e-6)


def test_k_beyond_the_bank_pads_like_search_exact(client):
    small = _bank(3, 5)
    with ShardedBank(client, small, backend=BE) as sb:
        q = RKME(small.z[0].numpy(), small.beta[0].numpy(), GAMMA)
        got, want = sb.search(q, 8), search_exact(small, q, k=8, backend=BE)
    np.testing.assert_array_equal(got.ids, want.ids)
    assert got.ids[0, 5:].tolist() == [-1, -1, -1] and np.isinf(got.dists[0, 5:]).all()
    assert got.ids[0, 0] == small.ids[0] and got.dists[0, 0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", ["greedy", "auto"])
def test_statistical_search_equals_single_process(sharded, bank, method):
    users = _mixture_users(bank, 4, seed=11)
    mixtures = 0
    for u in users:
        got = sharded.statistical_search(u, k=5, method=method, max_mixture=3)
        want = statistical_search(bank, u, k=5, method=method, max_mixture=3, backend=BE, device="cpu")
        _same_result(got, want)
        mixtures += got.mixture is not None
    assert mixtures >= 2  # the blended users do get mixtures: the mixture path was compared


def test_filtered_statistical_search_equals_single_process(sharded, bank):
    users = _mixture_users(bank, 2, seed=12)
    admitted = np.sort(np.random.default_rng(2).choice(bank.ids, 60, replace=False))
    for u in users:
        got = sharded.statistical_search(u, k=4, ids=admitted, max_mixture=3)
        want = statistical_search(bank, u, k=4, ids=admitted, max_mixture=3, backend=BE, device="cpu")
        _same_result(got, want)
        assert set(got.ids) <= set(admitted.tolist())
        assert got.n_candidates == 60


def test_scores_from_stats_equal_dist_to_score():
    rng = np.random.default_rng(4)
    for scale in (0.01, 1.0, 30.0):
        d = np.sort(rng.gamma(2.0, scale, size=50))
        for m in (1, 7, 50):
            np.testing.assert_allclose(scores_from_stats(d[:m], d.min(), d.max(), d.mean()), dist_to_score(d)[:m],
                                       rtol=1e-13)
    assert scores_from_stats(np.array([2.0, 2.0]), 2.0, 2.0, 2.0).tolist() == [1.0, 1.0]


def test_water_fill_and_balance_moves_by_hand():
    assert water_fill([5, 2, 9], 4).tolist() == [1, 3, 0]  # -> 6, 5, 9: level 5, one left for the first at it
    assert water_fill([3, 3], 5).tolist() == [3, 2]
    assert water_fill([0, 10], 3).tolist() == [3, 0]
    assert water_fill([4, 4, 4], 0).tolist() == [0, 0, 0]
    assert balance_moves([10, 2, 6]) == [(0, 1, 4)]  # total 18 -> 6, 6, 6
    assert balance_moves([9, 1, 1, 1]) == [(0, 1, 2), (0, 2, 2), (0, 3, 2)]  # 12 -> 3 each
    moves = balance_moves([7, 0, 4])  # 11 -> 4, 3, 4 (the extra one stays on a largest shard)
    sizes = np.array([7, 0, 4])
    for s, t, n in moves:
        sizes[s] -= n
        sizes[t] += n
    assert sorted(sizes.tolist()) == [3, 4, 4] and sizes[1] == 3


def test_add_goes_to_the_smallest_shard_and_remove_rebalances(client):
    base = _bank(7, 40)
    extra = _bank(8, 30, start=10_000)
    queries = _mixture_users(base, 3, seed=3)
    with ShardedBank(client, base, backend=BE, max_imbalance=0.25) as sb:
        assert sb.sizes.tolist() == [20, 20]
        # remove 6 from shard 0: sizes 14/20, imbalance 6/17 > 0.25 -> rebalanced to 17/17
        first = sb.shard_ids()[0][:6]
        sb.remove(first)
        assert sb.sizes.tolist() == [17, 17]
        assert sb.refresh_sizes().tolist() == [17, 17]
        # remove 3 more from shard 1: 17/14, imbalance 3/15.5 < 0.25 -> left as it is
        sb.remove(sb.shard_ids()[1][:3])
        assert sb.sizes.tolist() == [17, 14]
        # one spec goes to the smallest shard (17/14 -> 17/15); a batch of 10 water-fills to 21/21 (+4/+6)
        sb.add(extra.subset(extra.ids[:1]))
        assert sb.sizes.tolist() == [17, 15]
        sb.add(extra.subset(extra.ids[1:11]))
        assert sb.sizes.tolist() == [21, 21]
        # RKMEs with default ids continue after the largest id seen
        new = sb.add([extra.get(int(i)) for i in extra.ids[11:14]])
        assert new.tolist() == list(range(int(extra.ids[:11].max()) + 1, int(extra.ids[:11].max()) + 4))
        assert sb.sizes.tolist() == [23, 22]
        # the sharded bank equals one bank holding the same specs
        single = sb.gather()
        assert len(single) == 45 and np.array_equal(np.sort(single.ids), sb.ids)
        want = search_exact(single, queries, k=6, backend=BE)
        got = sb.search(queries, 6)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.dists, want.dists, rtol=1e-12)
        for u in queries:
            _same_result(sb.statistical_search(u, k=3, max_mixture=3),
                         statistical_search(single, u, k=3, max_mixture=3, backend=BE, device="cpu"))
        # refused changes leave the shards as they were
        with pytest.raises(ValueError, match="not in the sharded bank"):
            sb.remove([int(sb.ids[0]), 999_999])
        with pytest.raises(ValueError, match="already in the sharded bank"):
            sb.add(extra.subset(extra.ids[1:2]))
        assert sb.refresh_sizes().tolist() == [23, 22] and len(sb) == 45


@pytest.mark.gpu
def test_shards_on_the_gpu_match_the_cpu_search(client, bank):
    """device="cuda": each shard on its worker's GPU (the CUDA kernel); same ids, float32 tolerance."""
    rng = np.random.default_rng(6)
    zq, bq = random_bank_arrays(rng, 5, K, D)
    queries = [RKME(zq[i], bq[i], GAMMA) for i in range(5)]
    with ShardedBank(client, bank, device="cuda", backend="auto") as sb:
        assert {i["device"] for i in sb.info()} == {"cuda"}
        got = sb.search(queries, 10)
    want = search_exact(bank, queries, k=10, backend=BE, device="cpu")
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.dists, want.dists, rtol=1e-4, atol=1e-6)


def test_shard_indexes_follow_adds_and_removes(client, bank):
    """index={...}: each shard builds its SpecIndex (Flat: every candidate re-ranked exactly) and keeps it in
    step; the statistical search then takes the index path and still finds the exact nearest specs."""
    pytest.importorskip("faiss")
    users = _mixture_users(bank, 2, seed=21)
    with ShardedBank(client, bank.subset(bank.ids[:100]), backend=BE, index={"factory": "Flat"},
                     index_threshold=40) as sb:
        assert [i["index"] for i in sb.info()] == [True, True]
        sb.add(bank.subset(bank.ids[100:140]))
        gone = bank.ids[[0, 120]]
        sb.remove(gone)
        single = sb.gather()
        for u in users:
            got = sb.statistical_search(u, k=5, mixture=False)
            want = search_exact(single, u, k=5, backend=BE)
            assert got.method == "index"
            assert got.ids == want.ids[0].tolist() and not set(got.ids) & set(gone.tolist())
            # the index re-ranks with mmd2_rows (another float32 summation order than the scan)
            np.testing.assert_allclose([s.mmd2 for s in got.single], want.dists[0], rtol=2e-6)
