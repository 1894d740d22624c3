"""search_exact: exact top-k against the float64 brute force, ties by id, padding, empty bank, errors."""
import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.device import numba_available
from lwgpu.kernels import get_backend
from lwgpu.search import Neighbors, search_exact
from lwgpu.search.exact import merge_topk
from lwgpu.spec.rkme import RKME
from lwgpu_testutil import random_spec_arrays
from tests.kernels.kernel_helpers import ALL, device_of, ragged_bank, reference_terms


@pytest.mark.parametrize("backend", ALL)
def test_topk_matches_brute_force(rng, backend):
    bank, _ = ragged_bank(rng, 120, 6, 3, scale=0.7)
    bank = bank.subset(rng.permutation(bank.ids))  # ids not in row order
    q, qs = ragged_bank(rng, 5, 6, 3, scale=0.7)
    dist, _ = reference_terms(q, bank)
    for chunk in (1000, 17):  # one pass, and many merges of small chunks
        nb = search_exact(bank, qs, k=8, backend=backend, device=device_of(backend), chunk=chunk)
        assert isinstance(nb, Neighbors) and nb.method == "exact"
        d, ids = nb
        assert d.shape == ids.shape == (5, 8) and ids.dtype == np.int64
        order = np.argsort(dist, axis=1, kind="stable")[:, :8]
        assert np.array_equal(ids, bank.ids[order])
        assert np.allclose(d, np.take_along_axis(dist, order, 1), atol=1e-6)
        assert np.all(np.diff(d, axis=1) >= 0)


def test_merge_topk_breaks_ties_by_id():
    d = np.array([[0.5, 0.1, 0.5, 0.5, 0.2, 0.5]])
    ids = np.array([[9, 4, 3, 7, 8, 1]])
    dd, ii = merge_topk(d, ids, 4)
    assert ii.tolist() == [[4, 8, 1, 3]] and dd.tolist() == [[0.1, 0.2, 0.5, 0.5]]
    dd, ii = merge_topk(d, ids, 10)
    assert ii.tolist() == [[4, 8, 1, 3, 7, 9]]


@pytest.mark.skipif(not numba_available(), reason="needs numba")
def test_duplicate_specs_tie_ordered_by_id(rng):
    bank, specs = ragged_bank(rng, 30, 5, 2)
    dup = specs[4]
    bank.add([dup, dup, dup], ids=[99, 31, 77])
    q = RKME(dup.z.numpy() + 0.05, dup.beta.numpy(), 0.1)
    d, ids = search_exact(bank, [q, q], k=3, backend="numba", device="cpu", chunk=11)
    assert ids[0].tolist() == sorted([4, 99, 31, 77])[:3] == ids[1].tolist()
    assert d[0, 0] == d[0, 1] == d[0, 2]


@pytest.mark.parametrize("backend", ALL)
def test_fewer_than_k_padded_empty_bank_and_errors(rng, backend):
    dev = device_of(backend)
    bank, _ = ragged_bank(rng, 4, 3, 2)
    q = RKME(*random_spec_arrays(rng, 3, 2), 0.1)
    d, ids = search_exact(bank, q, k=10, backend=backend, device=dev)
    assert d.shape == ids.shape == (1, 10) and sorted(ids[0, :4].tolist()) == [0, 1, 2, 3]
    assert np.all(np.isfinite(d[0, :4])) and np.all(np.isinf(d[0, 4:])) and np.all(ids[0, 4:] == -1)
    nb = search_exact(SpecBank(0.1, 2), [q, q], k=5, backend=backend, device=dev)
    assert nb.dists.shape == nb.ids.shape == (2, 5) and np.all(nb.ids == -1) and np.all(np.isinf(nb.dists))
    assert not nb.found().any()
    with pytest.raises(ValueError, match="k must be"):
        search_exact(bank, q, k=0)
    with pytest.raises(ValueError, match="chunk"):
        search_exact(bank, q, chunk=0)
    with pytest.raises(ValueError, match="dimension"):
        search_exact(bank, RKME(*random_spec_arrays(rng, 3, 5), 0.1), backend=backend, device=dev)
    with pytest.raises(ValueError, match="gamma"):
        search_exact(bank, RKME(*random_spec_arrays(rng, 3, 2), 1.0), backend=backend, device=dev)
    with pytest.raises(ValueError, match="SpecBank"):
        search_exact([q], q)


def test_mmap_bank_search(tmp_path, rng):
    bank, _ = ragged_bank(rng, 200, 5, 3)
    bank.save(tmp_path / "b")
    back = SpecBank.load(tmp_path / "b", mmap=True)
    q, qs = ragged_bank(rng, 3, 5, 3)
    a = search_exact(bank, q, k=7, device="cpu")
    b = search_exact(back, q, k=7, device="cpu", chunk=13, tile=5)
    assert np.array_equal(a.ids, b.ids) and np.allclose(a.dists, b.dists, atol=1e-12)


def test_backend_object_and_float64_bank(rng):
    """A ready backend object is used as given; a float64 bank scans in float64 (torch) by default."""
    bank, _ = ragged_bank(rng, 60, 5, 3, shift=4.0)
    q, qs = ragged_bank(rng, 2, 5, 3, shift=4.0)
    dist, _ = reference_terms(q, bank)
    order = np.argsort(dist, axis=1, kind="stable")[:, :6]
    be = get_backend("torch", "cpu", torch.float64)
    for b, backend in ((bank, be), (bank.to(dtype="float64"), "auto")):
        d, ids = search_exact(b, qs, k=6, backend=backend, device="cpu", chunk=25)
        assert np.array_equal(ids, bank.ids[order]) and np.allclose(d, np.take_along_axis(dist, order, 1),
                                                                    atol=1e-10)
    with pytest.raises(ValueError, match="options"):
        search_exact(bank, qs, backend=be, max_block_elems=1 << 16)


def clustered_bank(rng, n_clusters, per, d, kmax=6):
    specs = []
    for c in range(n_clusters):
        center = rng.normal(size=d) * 3
        for _ in range(per):
            z, b = random_spec_arrays(rng, int(rng.integers(2, kmax + 1)), d, 0.5)
            specs.append(RKME(z + center, b, 0.1))
    return SpecBank.from_specs(specs), specs


@pytest.mark.parametrize("backend", ["torch"] + (["numba"] if numba_available() else []))
def test_pivot_pruning_is_exact(rng, backend):
    from lwgpu.search import Pivots

    bank, specs = clustered_bank(rng, 30, 40, 3)
    bank = bank.subset(rng.permutation(bank.ids))
    piv = Pivots(bank, m=6, seed=1, backend=get_backend(backend, "cpu"))
    assert piv.table.shape == (len(bank), 6) and piv.slack > 0
    queries = [RKME(s.z.numpy() + 0.1, s.beta.numpy(), 0.1) for s in specs[::241]]
    full = search_exact(bank, queries, k=5, backend=backend, device="cpu")
    pruned = search_exact(bank, queries, k=5, backend=backend, device="cpu", pivots=piv)
    assert np.array_equal(full[1], pruned[1]) and np.allclose(full[0], pruned[0], atol=1e-6)
    assert piv.last_visited < 0.5  # clustered market: the bounds skip most specs
    big_k = search_exact(bank, queries[:1], k=len(bank) + 3, backend=backend, device="cpu", pivots=piv)
    assert np.array_equal(np.sort(big_k.ids[0, : len(bank)]), np.sort(bank.ids)) and np.all(big_k.ids[0, -3:] == -1)
    # the bound really is a lower bound on sqrt(dist) for every spec
    from lwgpu.kernels import mmd2
    qb = SpecBank.from_specs(queries[:1])
    exact = np.sqrt(mmd2(qb, bank, backend=backend, device="cpu")[0].numpy())
    dq = np.sqrt(mmd2(qb, piv.pivots, backend=backend, device="cpu")[0].numpy())
    assert np.all(piv.lower_bounds(dq) <= exact + 1e-12)
    bank.remove(bank.ids[:1])
    with pytest.raises(ValueError, match="rebuild"):
        search_exact(bank, queries, k=5, pivots=piv)


def test_pivots_fall_back_when_bounds_are_weak(rng):
    from lwgpu.search import Pivots

    bank, specs = ragged_bank(rng, 600, 5, 8, scale=2.0)  # spread specs: distances concentrate
    piv = Pivots(bank, m=4, backend="torch", device="cpu")
    q = [RKME(*random_spec_arrays(rng, 5, 8, 2.0), 0.1) for _ in range(2)]
    full = search_exact(bank, q, k=4, backend="torch", device="cpu")
    pruned = search_exact(bank, q, k=4, backend="torch", device="cpu", pivots=piv)
    assert np.array_equal(full[1], pruned[1]) and np.allclose(full[0], pruned[0], atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        Pivots(SpecBank(0.1, 8))
