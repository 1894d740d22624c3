"""The size-aware layout rules (lwgpu.index.layout) and certified re-ranking (lwgpu.index.rerank)."""
import numpy as np
import pytest

from lwgpu import settings
from lwgpu.index import auto_layout, clip_factory, default_nprobe, filtered_candidates, filtered_probe, layout_for
from lwgpu.index.layout import needs_rebuild
from lwgpu.index.rerank import certified, grow_pool


def test_auto_layout_per_size():
    assert auto_layout(10).factory == "Flat" and auto_layout(settings.INDEX_FLAT_MAX - 1).kind == "flat"
    mid = auto_layout(20_000)
    assert (mid.factory, mid.nlist, mid.nprobe) == ("IVF128,PQ1024x4fs", 128, 128)  # D=1024, one dim per code
    assert auto_layout(100_000).factory == "IVF256,PQ1024x4fs" and auto_layout(100_000).nprobe == 128
    edge = settings.INDEX_FINE_CODES_MAX_N
    assert auto_layout(edge).factory.endswith(",PQ1024x4fs") and auto_layout(edge + 1).factory.endswith(",PQ512x4fs")
    big = auto_layout(1_000_000)
    assert (big.factory, big.nprobe) == ("IVF1024,PQ512x4fs", 1024)  # 128 per 125,000 specs, at most every list
    assert auto_layout(1_000_000, D=510).factory == "IVF1024,PQ255x4fs"
    assert auto_layout(1_000_000, D=511).factory == "IVF1024,SQ8"  # no whole sub-vectors
    assert default_nprobe(10_000_000, 512) == 512  # never more than the lists


def test_explicit_factories_are_clipped_and_keep_their_codes():
    assert clip_factory("IVF4096,PQ8", 100_000) == "IVF2564,PQ8"
    lay = layout_for("IVF1024,Flat", 1_000)
    assert (lay.factory, lay.nlist, lay.kind) == ("IVF25,Flat", 25, "ivf")
    assert layout_for("HNSW32", 5_000).ef_search == settings.INDEX_EF_SEARCH
    assert layout_for("auto", 50).factory == "Flat"


def test_filtered_probes_and_first_pools_grow_as_the_admitted_fraction_falls():
    assert filtered_probe(64, 1.0, 1024) == 64
    assert filtered_probe(64, 0.25, 1024) == 256 and filtered_probe(64, 0.01, 1024) == 1024
    assert filtered_candidates(100, 1.0) == 100
    assert filtered_candidates(100, 0.25) == 200  # candidates / sqrt(f)
    assert filtered_candidates(100, 1e-9) == settings.INDEX_MAX_CANDIDATES


def test_rebuild_only_past_the_growth_factor_and_when_the_layout_changes():
    built = auto_layout(1_000)
    assert not needs_rebuild("auto", built, 1_000, 3_999)
    assert not needs_rebuild("auto", built, 1_000, 4_000)  # still Flat
    big = auto_layout(20_000)
    assert needs_rebuild("auto", big, 20_000, 80_000)  # IVF128 -> IVF256
    assert not needs_rebuild("Flat", layout_for("Flat", 10), 10, 10_000)


def test_certification_and_pool_growth():
    rng = np.random.default_rng(0)
    d = np.sort(rng.random(5_000))
    e = d + rng.normal(0, 0.01, d.size)  # embedding distances: the exact ones plus noise
    order = np.argsort(e)
    e, d, ids = e[order], d[order], order.astype(np.int64)
    assert not certified(e[:20], d[:20], 10)  # the boundary is within the noise
    assert certified(e[:2_000], d[:2_000], 10)
    assert certified(e[:20], d[:20], 10, z=0)  # z = 0 switches certification off
    calls = []
    d_of = np.empty(d.size)
    d_of[ids] = d  # exact distance by id

    def fetch(m):
        calls.append(m)
        return e[:m], ids[:m]

    first = np.concatenate([d[:20], np.full(60, np.inf)])
    got_ids, got_d, ok = grow_pool(10, 20, 4_000, fetch, lambda c: d_of[c], e[:80], ids[:80], first)
    assert ok and 20 < len(got_ids) <= 4_000 and calls  # grew past the first FAISS answer
    np.testing.assert_array_equal(np.sort(got_d)[:10], np.sort(d)[:10])  # the true top-10 are in the pool


def test_pool_of_every_reachable_spec_is_certified():
    e = np.array([0.1, 0.2, np.inf, np.inf])
    ids = np.array([4, 7, -1, -1])
    got_ids, got_d, ok = grow_pool(3, 4, 100, lambda m: pytest.fail("no refetch needed"), lambda c: c * 0.0,
                                   e, ids, np.array([0.1, 0.2, np.inf, np.inf]))
    assert ok and got_ids.tolist() == [4, 7, -1, -1]


def test_fast_scan_layout_follows_adds_and_removes():
    """IVF,PQ fast-scan lists cannot delete in place: removed ids are hidden, new ids added, never answered twice."""
    import numpy as np

    from lwgpu import SpecBank
    from lwgpu.data.clustered import synthetic_spec_arrays
    from lwgpu.index import SpecIndex

    a = synthetic_spec_arrays(20_000, 5, K=4, d=3, seed=1)
    bank = SpecBank.from_arrays(a["z"][:18_000], a["beta"][:18_000], 0.1)
    index = SpecIndex(bank, device="cpu")
    assert "fs" in index.built_factory  # the auto layout above INDEX_FLAT_MAX
    new = np.arange(18_000, 20_000)
    bank.add_arrays(a["z"][18_000:], a["beta"][18_000:], ids=new)
    index.add(new)
    gone = np.arange(0, 20_000, 7)
    bank.remove(gone)
    index.remove(gone)
    q = SpecBank.from_arrays(a["qz"], a["qbeta"], 0.1)
    nb = index.search(q, k=20)
    assert not np.isin(nb.ids, gone).any()
    assert all(len(set(r[r >= 0].tolist())) == (r >= 0).sum() for r in nb.ids)
    assert index.ntotal == len(bank)
