"""SpecBank: packing, self terms, ids alignment through add/remove, save/load (mmap) round trip."""
import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.kernels import mmd2, reference as ref
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
    bank.remove([3, 9])
    assert bank.ids.tolist() == [7, 5, 8, 10, 100]
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
            a = mmd2(q, bank, backend=backend, device="cpu")
            b = mmd2(q, back, backend=backend, device="cpu", tile=7)  # scanned in tiles of 7 specs
            assert torch.allclose(a, b, rtol=0, atol=1e-12)
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
    """The numba (CPU) and torch (any device) self-term paths agree with the reference in float64."""
    from lwgpu.bank import self_terms

    z = torch.as_tensor(rng.normal(size=(30, 7, 5)) * 2 + 10, dtype=torch.float32)
    b = torch.as_tensor(rng.random((30, 7)), dtype=torch.float32)
    b[3, 4:] = 0
    ref_s = np.array([ref.inner(z[i].double().numpy(), b[i].double().numpy(), z[i].double().numpy(),
                                b[i].double().numpy(), 0.3) for i in range(30)])
    for backend in ("auto", "torch"):
        assert np.allclose(self_terms(z, b, 0.3, backend=backend).numpy(), ref_s, rtol=1e-12, atol=0)
    assert np.allclose(self_terms(z, b, 0.3, backend="torch", tile_elems=50).numpy(), ref_s, rtol=1e-12, atol=0)
