"""SpecBank: packing, self terms, ids alignment through add/remove, growable storage (swap-deletes, K widening,
capacity doubling) against a reference, persistent memory-mapped banks (flush, reopen, crash, umask), snapshots,
and the market's BankSet."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.bank.files import BankLockedError
from lwgpu.kernels import get_backend, mmd2, reference as ref
from lwgpu.spec.rkme import RKME
from lwgpu_testutil import random_spec_arrays


def ragged_specs(rng, n, kmax, d, gamma=0.1):
    out = []
    for i in range(n):
        z, b = random_spec_arrays(rng, int(rng.integers(1, kmax + 1)), d)
        out.append(RKME(z, b, gamma))
    return out


def test_from_specs_pads_ragged_and_self_terms_match_reference(rng):
    specs = ragged_specs(rng, 9, 6, 3)
    bank = SpecBank.from_specs(specs)
    assert len(bank) == 9 and bank.K == max(s.K for s in specs) and bank.d == 3
    assert bank.ids.dtype == np.int64 and bank.z.dtype == torch.float32
    assert bank.self_inner.dtype == torch.float64
    for i, s in enumerate(specs):
        k = s.K
        assert bank.counts[i] == k
        assert torch.all(bank.beta[i, k:] == 0) and torch.all(bank.z[i, k:] == 0)
        z, b = s.z.double().numpy(), s.beta.double().numpy()
        assert bank.self_inner[i].item() == pytest.approx(ref.inner(z, b, z, b, 0.1), rel=1e-12)
        got = bank.get(int(bank.ids[i]))
        assert got.K == k and torch.equal(got.z, s.z) and torch.equal(got.beta, s.beta)


def test_from_arrays_validation(rng):
    z = rng.normal(size=(4, 3, 2))
    b = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="shape"):
        SpecBank.from_arrays(z[0], b, 0.1)
    with pytest.raises(ValueError, match="beta"):
        SpecBank.from_arrays(z, b[:, :2], 0.1)
    with pytest.raises(ValueError, match="unique"):
        SpecBank.from_arrays(z, b, 0.1, ids=[1, 1, 2, 3])
    bad = z.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        SpecBank.from_arrays(bad, b, 0.1)
    with pytest.raises(ValueError, match="gamma"):
        SpecBank.from_arrays(z, b, -1.0)
    bank = SpecBank.from_arrays(z, b, 0.1, ids=[10, 20, 30, 40])
    assert bank.ids.tolist() == [10, 20, 30, 40]
    assert bank.positions([30, 10]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="not in the bank"):
        bank.positions([5])


def test_add_remove_keep_ids_aligned(rng):
    specs = ragged_specs(rng, 6, 4, 2)
    bank = SpecBank.from_specs(specs[:3], ids=[7, 3, 5])
    new = bank.add(specs[3:])
    assert new.tolist() == [8, 9, 10]
    wide = RKME(*random_spec_arrays(rng, 9, 2), 0.1)  # more points than the bank's K: bank widens
    (wid,) = bank.add([wide], ids=[100])
    assert bank.K == 9 and wid == 100
    bank.remove([3, 9])  # the last rows move into the holes: the ids stay aligned, not in insertion order
    assert sorted(bank.ids.tolist()) == [5, 7, 8, 10, 100]
    expect = {7: specs[0], 5: specs[2], 8: specs[3], 10: specs[5], 100: wide}
    for sid, s in expect.items():
        p = int(bank.positions([sid])[0])
        z, b = s.z.double().numpy(), s.beta.double().numpy()
        assert bank.self_inner[p].item() == pytest.approx(ref.inner(z, b, z, b, 0.1), rel=1e-12)
        assert torch.equal(bank.get(sid).z, s.z)
    with pytest.raises(ValueError, match="already in the bank"):
        bank.add(specs[:1], ids=[7])
    with pytest.raises(ValueError, match="not in the bank"):
        bank.remove([3])
    with pytest.raises(ValueError, match="gamma"):
        bank.add([RKME(*random_spec_arrays(rng, 3, 2), 0.5)])
    with pytest.raises(ValueError, match="dimension"):
        bank.add([RKME(*random_spec_arrays(rng, 3, 4), 0.1)])
    sub = bank.subset([100, 8])
    assert sub.ids.tolist() == [100, 8] and torch.equal(sub.z[1], bank.z[bank.positions([8])[0]])
    other = SpecBank.from_specs(ragged_specs(rng, 2, 3, 2), ids=[500, 501])
    assert bank.add(other).tolist() == [500, 501]
    assert len(bank) == 7


def test_empty_bank_then_add(rng):
    bank = SpecBank(0.1, 3)
    assert len(bank) == 0 and bank.K == 0
    ids = bank.add(ragged_specs(rng, 2, 3, 3))
    assert ids.tolist() == [0, 1] and len(bank) == 2
    with pytest.raises(ValueError):
        SpecBank.from_specs([])


def test_save_load_mmap_round_trip(tmp_path, rng):
    specs = ragged_specs(rng, 40, 5, 4)
    bank = SpecBank.from_specs(specs, ids=np.arange(40) * 3 + 1)
    bank.save(tmp_path / "bank")
    for mm in (True, False):
        back = SpecBank.load(tmp_path / "bank", mmap=mm)
        assert back.gamma == bank.gamma and back.d == bank.d and back.K == bank.K
        assert np.array_equal(back.ids, bank.ids) and np.array_equal(back.counts, bank.counts)
        assert torch.equal(back.z, bank.z) and torch.equal(back.beta, bank.beta)
        assert torch.equal(back.self_inner, bank.self_inner)
        q = specs[:3]
        for backend in ("torch", "numba"):
            a = mmd2(q, bank, backend=backend, device="cpu", tile=7)
            b = mmd2(q, back, backend=backend, device="cpu", tile=7)  # scanned in tiles of 7 specs
            assert torch.allclose(a, b, rtol=0, atol=1e-12)
            # another tiling may round float32 sums differently (the torch backend sizes blocks per tile)
            assert torch.allclose(mmd2(q, bank, backend=backend, device="cpu"), b, rtol=0, atol=1e-6)
    back = SpecBank.load(tmp_path / "bank", mmap=True)
    back.add(specs[:1], ids=[10_000])  # a mapped bank still accepts additions (copied into memory)
    assert len(back) == 41
    with pytest.raises(ValueError, match="meta.json"):
        SpecBank.load(tmp_path / "nothing")


def test_to_and_rows(rng):
    bank = SpecBank.from_specs(ragged_specs(rng, 5, 3, 2))
    b64 = bank.to(dtype="float64")
    assert b64.z.dtype == torch.float64 and torch.equal(b64.self_inner, bank.self_inner)
    view = bank.rows(1, 4)
    assert view.ids.tolist() == [1, 2, 3] and view.z.data_ptr() == bank.z[1].data_ptr()
    assert bank.nbytes > bank.z.numel() * 4


def test_self_terms_paths_agree(rng):
    """The numba (CPU) and torch self-term backends agree with the reference in float64."""
    from lwgpu.kernels import available_backends

    z = torch.as_tensor(rng.normal(size=(30, 7, 5)) * 2 + 10, dtype=torch.float32)
    b = torch.as_tensor(rng.random((30, 7)), dtype=torch.float32)
    b[3, 4:] = 0
    ref_s = np.array([ref.inner(z[i].double().numpy(), b[i].double().numpy(), z[i].double().numpy(),
                                b[i].double().numpy(), 0.3) for i in range(30)])
    for name in ("auto", "torch", "numba"):
        if name == "numba" and "numba" not in available_backends():
            continue
        got = get_backend(name, "cpu").self_terms(z, b, 0.3)
        assert got.dtype == torch.float64 and np.allclose(got.numpy(), ref_s, rtol=1e-12, atol=0)
    bank = SpecBank.from_arrays(z, b, 0.3)  # the bank stores what its backend computed, once
    assert np.allclose(bank.self_inner.numpy(), ref_s, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------- growable + persistent storage
def _spec(rng, k, d=3, gamma=0.1):
    return RKME(*random_spec_arrays(rng, k, d), gamma)


def _check_against(bank, ref_specs):
    """The bank holds exactly ``ref_specs`` (id -> RKME): ids, rows, counts, padding, self terms."""
    assert len(bank) == len(ref_specs) and set(bank.ids.tolist()) == set(ref_specs)
    if not ref_specs:
        return
    ids = np.array(sorted(ref_specs), np.int64)
    pos = bank.positions(ids)
    assert np.array_equal(bank.ids[pos], ids) and np.array_equal(np.sort(pos), np.arange(len(bank)))
    z, beta, cnt = bank.z.cpu(), bank.beta.cpu(), bank.counts
    for i, p in zip(ids.tolist(), pos.tolist()):
        s = ref_specs[i]
        assert cnt[p] == s.K
        assert torch.equal(z[p, : s.K], s.z) and torch.equal(beta[p, : s.K], s.beta)
        assert not z[p, s.K:].any() and not beta[p, s.K:].any()
    want = get_backend("torch", "cpu").self_terms(z[pos], beta[pos], bank.gamma)
    assert torch.allclose(bank.self_inner.cpu()[pos], want, rtol=1e-12, atol=0)


def _random_ops(bank, rng, steps, ref, next_id, reopen=None):
    """Interleave batch adds (ragged, sometimes wider than K), removes, and (``reopen``) flush + reopen."""
    for step in range(steps):
        r = rng.random()
        if r < 0.5 or not ref:
            m = int(rng.integers(1, 12))
            kmax = bank.K + 2 if rng.random() < 0.15 else max(bank.K, 3)
            specs = [_spec(rng, int(rng.integers(1, kmax + 1))) for _ in range(m)]
            ids = np.arange(next_id, next_id + m) if rng.random() < 0.7 else None
            got = bank.add(specs, ids=ids)
            next_id = int(got.max()) + 1
            ref.update(zip(got.tolist(), specs))
        elif r < 0.9:
            gone = rng.choice(np.array(sorted(ref)), size=int(rng.integers(1, min(len(ref), 9) + 1)), replace=False)
            bank.remove(gone)
            for i in gone.tolist():
                ref.pop(i)
        elif reopen is not None:
            bank = reopen(bank)
        if step % 4 == 0:
            _check_against(bank, ref)
        assert set(bank.ids.tolist()) == set(ref)
    _check_against(bank, ref)
    return bank, next_id


@pytest.mark.parametrize("kind", ["memory", "persistent", "mirror"])
def test_random_add_remove_against_reference(tmp_path, monkeypatch, kind):
    """Seeded random interleavings of batch adds (incl. K widening) and swap-deletes match a dict of specs."""
    if kind == "mirror":  # the device-copy code path (a GPU bank), exercised with a CPU "device" copy
        monkeypatch.setattr(SpecBank, "_mirror", True)
    for seed in range(2):
        rng = np.random.default_rng(seed)
        reopen = None
        if kind == "persistent":
            bank = SpecBank.create(tmp_path / f"b{seed}", 0.1, 3, capacity=4)

            def reopen(b):
                b.flush()
                b.close()
                return SpecBank.open(tmp_path / f"b{seed}")
        else:
            bank = SpecBank(0.1, 3)
        ref: dict = {}
        bank, _ = _random_ops(bank, rng, 100, ref, 0, reopen)
        assert bank.K >= 3 and len(bank) == len(ref)
        if kind == "persistent":
            _check_against(reopen(bank), ref)


def test_from_arrays_input_is_never_written(rng):
    z = rng.normal(size=(20, 4, 3)).astype(np.float32)
    b = np.full((20, 4), 0.25, np.float32)
    z0 = z.copy()
    bank = SpecBank.from_arrays(z, b, 0.1)
    assert np.shares_memory(bank.z.numpy(), z)  # used without a copy ...
    view = bank.rows(2, 6)
    bank.remove([0, 1])  # ... until the first change, which copies
    bank.add([_spec(rng, 4)], ids=[99])
    assert np.array_equal(z, z0) and view.ids.tolist() == [2, 3, 4, 5]
    view.remove([3])
    assert 3 in bank and np.array_equal(z, z0)


def test_capacity_doubles_and_keeps_rows(tmp_path, rng):
    for bank in (SpecBank(0.1, 3), SpecBank.create(tmp_path / "b", 0.1, 3, capacity=1)):
        ref, caps = {}, []
        for i in range(70):
            s = _spec(rng, 4)
            bank.add([s], ids=[i])
            ref[i] = s
            caps.append(bank.capacity)
        assert len(set(caps)) <= 8 and all(b >= a for a, b in zip(caps, caps[1:]))
        assert all(c2 in (c1, 2 * c1) or c1 < 16 for c1, c2 in zip(caps, caps[1:]))
        _check_against(bank, ref)
    assert (tmp_path / "b" / "ids.bin").stat().st_size == bank.capacity * 8


def test_positions_of_100k_ids(rng):
    n = 100_000
    z = np.zeros((n, 1, 2), np.float32)
    b = np.ones((n, 1), np.float32)
    for ids in (rng.permutation(n) * 3 + 7, rng.permutation(n) + 10**12):  # dense table / sparse fallback
        bank = SpecBank.from_arrays(z, b, 0.1, ids=ids)
        want = rng.permutation(ids)
        pos = bank.positions(want)
        assert np.array_equal(bank.ids[pos], want)
        bank.remove(want[:5000])
        bank.add_arrays(z[:3], b[:3], ids=[-5, 2**40, int(ids.max()) + 1])  # outside the dense range
        keep = np.concatenate([want[5000:], [-5, 2**40, int(ids.max()) + 1]])
        assert np.array_equal(bank.ids[bank.positions(keep)], keep) and len(bank) == keep.size
        with pytest.raises(ValueError, match="not in the bank"):
            bank.positions(want[:3])
        assert int(want[0]) not in bank and 2**40 in bank
        probe = np.concatenate([want[:100], keep[:100], [-7, 2**50]])
        assert np.array_equal(bank.holds(probe), np.isin(probe, bank.ids))  # membership without positions


def _counts_equal_content(a, b):
    assert set(a.ids.tolist()) == set(b.ids.tolist())
    pa, pb = a.positions(b.ids), np.arange(len(b))
    assert torch.equal(a.z[pa], b.z[pb]) and torch.equal(a.beta[pa], b.beta[pb])
    assert torch.equal(a.self_inner[pa], b.self_inner[pb]) and np.array_equal(a.counts[pa], b.counts[pb])


def test_persistent_round_trip_and_last_flushed_state(tmp_path, rng):
    root = tmp_path / "bank"
    bank = SpecBank.create(root, 0.1, 3)
    bank.add([_spec(rng, int(k)) for k in rng.integers(1, 6, 50)], ids=np.arange(50))
    bank.remove([3, 10, 49])
    bank.flush()
    flushed = bank.subset(np.sort(bank.ids))
    with pytest.raises(BankLockedError):
        SpecBank.open(root)  # one writer at a time
    bank.add([_spec(rng, 3) for _ in range(5)], ids=np.arange(100, 105))  # appended, not flushed
    _counts_equal_content(SpecBank.open(root, mode="r"), flushed)
    bank.remove([0, 1, 2, 100])  # swap-deletes into flushed rows (journaled), not flushed
    bank.add([_spec(rng, 4)], ids=[200])
    ro = SpecBank.open(root, mode="r")  # rolls the journal back in private memory
    _counts_equal_content(ro, flushed)
    with pytest.raises(ValueError, match="read-only"):
        ro.add([_spec(rng, 3)])
    live = bank.subset(np.sort(bank.ids))
    bank.flush()
    bank.close()
    back = SpecBank.open(root)
    _counts_equal_content(back, live)
    q = [_spec(rng, 4) for _ in range(3)]
    mem = SpecBank.from_arrays(live.z.clone(), live.beta.clone(), 0.1, ids=live.ids, counts=live.counts)
    be = get_backend("auto", "cpu")
    d_back, d_mem = be.mmd2(q, back), be.mmd2(q, mem)
    assert torch.allclose(d_back[:, back.positions(mem.ids)], d_mem, rtol=0, atol=1e-12)
    assert torch.allclose(be.mmd2(q, back, rows=back.positions(mem.ids[::2])), d_mem[:, ::2], rtol=0, atol=1e-12)
    back.save(tmp_path / "snap")  # a plain snapshot of N rows, readable both ways
    for mm in (True, False):
        _counts_equal_content(SpecBank.load(tmp_path / "snap", mmap=mm), live)
    snap = SpecBank.load(tmp_path / "snap", mmap=True)
    before = (tmp_path / "snap" / "ids.bin").read_bytes()
    snap.remove(snap.ids[:2])
    snap.add([_spec(rng, 3)], ids=[999])
    assert (tmp_path / "snap" / "ids.bin").read_bytes() == before  # a loaded snapshot never writes its files


CRASH = """
import os, sys, numpy as np
from lwgpu.bank import SpecBank
b = SpecBank.open(sys.argv[1])
b.remove(b.ids[:7])
b.add_arrays(np.ones((40, 4, 3), np.float32), np.full((40, 4), 0.25, np.float32))
b.remove(b.ids[-20:])
os._exit(3)  # killed: nothing flushed
"""


def test_crash_without_flush_reopens_at_last_flush(tmp_path, rng):
    root = tmp_path / "bank"
    bank = SpecBank.create(root, 0.1, 3)
    bank.add([_spec(rng, 4) for _ in range(30)], ids=np.arange(30) * 2)
    bank.flush()
    flushed = bank.subset(np.sort(bank.ids))
    bank.close()
    r = subprocess.run([sys.executable, "-c", CRASH, str(root)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-2000:]
    assert (root / "journal.bin").stat().st_size > 0
    back = SpecBank.open(root)
    _counts_equal_content(back, flushed)
    assert (root / "journal.bin").stat().st_size == 0
    # the caller (the market) then brings the bank to the database's ids
    truth = {i: flushed.get(i) for i in flushed.ids.tolist()[5:]}
    truth.update({1001: _spec(rng, 2), 1002: _spec(rng, 6)})
    removed, added = back.reconcile(sorted(truth), lambda ids: [truth[int(i)] for i in ids], batch=1)
    assert sorted(removed.tolist()) == sorted(flushed.ids.tolist()[:5]) and added.tolist() == [1001, 1002]
    _check_against(back, truth)
    back.flush()
    # a crash after meta.json was replaced but before the journal was emptied: its records are stale
    back.remove(back.ids[:3])
    stale = (root / "journal.bin").read_bytes()
    assert stale
    back.flush()
    flushed = back.subset(np.sort(back.ids))
    back.close()
    (root / "journal.bin").write_bytes(stale)
    back = SpecBank.open(root)
    _counts_equal_content(back, flushed)
    back.close()
    # a torn last journal record (the crash hit while writing it) is ignored: no row had changed yet
    bank = SpecBank.open(root)
    bank.remove(bank.ids[:4])
    with open(root / "journal.bin", "ab") as f:
        f.write(b"LWJRNL02" + b"\0" * 10)
    bank._store.files.close()  # "crash": drop the lock without flushing
    del bank
    _counts_equal_content(SpecBank.open(root, mode="r"), flushed)


def test_open_refuses_inconsistent_files(tmp_path, rng):
    root = tmp_path / "bank"
    bank = SpecBank.create(root, 0.1, 3)
    bank.add([_spec(rng, 2) for _ in range(10)])
    bank.close()
    ids = np.memmap(root / "ids.bin", np.int64, "r+")
    ids[1] = ids[0]
    ids.flush()
    del ids
    with pytest.raises(ValueError, match="unique"):
        SpecBank.open(root)
    (root / "meta.json").write_text((root / "meta.json").read_text().replace('"N": 10', '"N": 100000'))
    with pytest.raises(ValueError, match="inconsistent"):
        SpecBank.open(root)
    (root / "meta.json").write_text("{broken")
    with pytest.raises(ValueError):
        SpecBank.open(root)
    with pytest.raises(ValueError, match="already holds"):
        SpecBank.create(root, 0.1, 3)


def test_files_follow_umask_and_no_temp_files(tmp_path, rng):
    from lwgpu.market.banks import BankSet

    old = os.umask(0o027)
    try:
        bank = SpecBank.create(tmp_path / "p", 0.1, 3)
        bank.add([_spec(rng, 3) for _ in range(5)])
        bank.remove(bank.ids[:1])
        bank.add([_spec(rng, 6)])  # widening writes new z/beta files
        bank.flush()
        bank.save(tmp_path / "s")
        bs = BankSet(tmp_path / "banks", tmp_path / "idx", 0.1, "cpu", 10**9)
        bs.add_many([1, 2], [_spec(rng, 3), _spec(rng, 3, d=5)])
        bs.save()
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*")]
    assert files and not [p for p in files if p.name.endswith(".tmp")]
    for p in files:
        want = (0o777 if p.is_dir() else 0o666) & ~0o027
        assert p.stat().st_mode & 0o777 == want, p


def test_old_npy_snapshot_still_loads(tmp_path, rng):
    import json

    bank = SpecBank.from_specs([_spec(rng, int(k)) for k in (2, 4, 3)], ids=[5, 6, 9])
    root = tmp_path / "old"
    root.mkdir()
    for name in ("ids", "counts"):
        np.save(root / f"{name}.npy", getattr(bank, name))
    for name in ("z", "beta", "self_inner"):
        np.save(root / f"{name}.npy", getattr(bank, name).numpy())
    (root / "meta.json").write_text(json.dumps({"format": "lwgpu.SpecBank/1", "gamma": 0.1, "d": 3, "K": 4, "N": 3,
                                                "dtype": "float32"}))
    for mm in (True, False):
        _counts_equal_content(SpecBank.load(root, mmap=mm), bank)


def test_bankset_batches_flush_and_reopen(tmp_path, rng):
    from lwgpu.market.banks import BankSet

    def fresh():
        return BankSet(tmp_path / "banks", tmp_path / "idx", 0.1, "cpu", 10**9)

    bs = fresh()
    specs = {i: _spec(rng, 3, d=3 if i % 3 else 5) for i in range(40)}
    bs.add_many(list(specs)[:30], list(specs.values())[:30])
    for d in (3, 5):  # packed arrays, one append per dimension
        part = [i for i in range(30, 40) if specs[i].d == d]
        bs.add_arrays(d, part, np.stack([specs[i].z.numpy() for i in part]),
                      np.stack([specs[i].beta.numpy() for i in part]))
    bs.remove(4, 3)
    bs.remove_many(5, [0, 3])
    specs = {i: s for i, s in specs.items() if i not in (0, 3, 4)}
    zfile = tmp_path / "banks" / "d3" / "z.k3.bin"
    inode = zfile.stat().st_ino
    bs.save()
    assert zfile.stat().st_ino == inode  # flushed in place, not rewritten
    bs.close()
    bs = fresh()
    bs.load()
    for d in (3, 5):
        _check_against(bs.get(d), {i: s for i, s in specs.items() if s.d == d})
    want = {3: {i for i, s in specs.items() if s.d == 3 and i != 1} | {77}, 5: set()}
    extra = _spec(rng, 3)
    assert bs.sync(want, lambda i: extra) and bs.get(5) is None
    _check_against(bs.get(3), {i: (extra if i == 77 else specs[i]) for i in want[3]})
    assert not bs.sync(want, lambda i: extra)
    bs.close()


@pytest.mark.gpu
def test_cuda_bank_keeps_a_device_copy(tmp_path, rng):
    root = tmp_path / "gpu"
    bank = SpecBank.create(root, 0.1, 3, device="cuda", capacity=2)
    ref: dict = {}
    bank, _ = _random_ops(bank, rng, 60, ref, 0)
    assert bank.z.is_cuda and bank.self_inner.is_cuda
    bank.flush()
    bank.close()
    back = SpecBank.open(root, device="cuda")
    _check_against(back, ref)
    cpu = SpecBank.open(root, mode="r")
    q = [_spec(rng, 4) for _ in range(2)]
    d_gpu = get_backend("auto", "cuda").mmd2(q, back).cpu()
    d_cpu = get_backend("auto", "cpu").mmd2(q, cpu)
    assert torch.allclose(d_gpu, d_cpu, rtol=1e-4, atol=1e-5)
