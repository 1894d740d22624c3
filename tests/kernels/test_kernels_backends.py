"""mmd2 / mmd2_pairwise on every backend against the float64 brute force (lwgpu.kernels.reference)."""
import json

import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.device import cupy_available, numba_available
from lwgpu.kernels import mmd2, mmd2_pairwise, pick_backend
from lwgpu.spec.rkme import RKME
from lwgpu_testutil import FIXTURES, random_spec_arrays
from tests.kernels.kernel_helpers import reference_terms, rel_err

CPU_BACKENDS = ["torch"] + (["numba"] if numba_available() else [])
ALL = [pytest.param(b, id=b) for b in CPU_BACKENDS] + [
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not cupy_available(), reason="needs CuPy")])
]


def device_of(backend):
    return "cuda" if backend == "cuda" else "cpu"


def ragged_bank(rng, n, kmax, d, gamma=0.1, scale=1.0, shift=0.0):
    specs = []
    for _ in range(n):
        z, b = random_spec_arrays(rng, int(rng.integers(1, kmax + 1)), d, scale)
        specs.append(RKME(z + shift, b, gamma))
    return SpecBank.from_specs(specs), specs


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("n,kmax,kq,d,scale,shift", [
    (1, 1, 1, 1, 1.0, 0.0),
    (37, 9, 6, 1, 2.0, 0.0),
    (23, 12, 5, 3, 1.0, 0.0),
    (19, 7, 11, 17, 0.5, 30.0),   # far from the origin: needs centring for float32 accuracy
    (11, 20, 9, 64, 0.2, 0.0),
    (5, 6, 4, 512, 0.05, 0.0),
])
def test_mmd2_matches_reference(rng, backend, n, kmax, kq, d, scale, shift):
    bank, _ = ragged_bank(rng, n, kmax, d, scale=scale, shift=shift)
    queries, qspecs = ragged_bank(rng, 4, kq, d, scale=scale, shift=shift)
    dist, terms = reference_terms(queries, bank)
    got = mmd2(qspecs, bank, backend=backend, device=device_of(backend))
    assert got.shape == (4, n) and got.dtype == torch.float64
    assert rel_err(got, dist, terms) < 1e-5
    # the query given as a SpecBank and as one RKME gives the same numbers
    assert torch.allclose(mmd2(queries, bank, backend=backend, device=device_of(backend)), got, atol=1e-12)
    one = mmd2(qspecs[2], bank, backend=backend, device=device_of(backend))
    assert one.shape == (1, n) and torch.allclose(one[0], got[2], atol=1e-12)


@pytest.mark.parametrize("backend", ALL)
def test_large_n_cheap(rng, backend):
    n, d = 10_000, 2
    z = rng.normal(size=(n, 3, d)).astype(np.float32)
    b = rng.random((n, 3)).astype(np.float32)
    b[:, 2][rng.random(n) < 0.3] = 0.0  # some specs padded
    bank = SpecBank.from_arrays(z, b, 0.5)
    q, qs = ragged_bank(rng, 2, 4, d, gamma=0.5)
    zb, bb, zq, bq = (x.astype(np.float64) for x in (z, b, q.z.numpy(), q.beta.numpy()))
    # vectorised float64 brute force over all specs (same formula as lwgpu.kernels.reference)
    def inner(za, ba, zc, bc):  # za (n,K,d) ba (n,K) | zc (K2,d) bc (K2,)
        d2 = ((za[:, :, None, :] - zc[None, None, :, :]) ** 2).sum(-1)
        return np.einsum("nk,nkl,l->n", ba, np.exp(-0.5 * d2), bc)
    for i in range(2):
        cross = inner(zb, bb, zq[i], bq[i])
        sb = np.array([inner(zb[j:j + 1], bb[j:j + 1], zb[j], bb[j])[0] for j in range(0, n, 997)])
        assert np.allclose(sb, bank.self_inner.numpy()[::997], rtol=1e-12)
        dist = bank.self_inner.numpy() + q.self_inner[i].item() - 2 * cross
        scale = bank.self_inner.numpy() + q.self_inner[i].item() + 2 * np.abs(cross)
        got = mmd2(qs[i], bank, backend=backend, device=device_of(backend), tile=3001)[0]
        assert rel_err(got, dist, scale) < 1e-5


@pytest.mark.parametrize("backend", ALL)
def test_reference_fixture_distances(backend):
    specs = [RKME.load(FIXTURES / "reference_rkme" / f"spec{i}.json") for i in range(3)]
    expected = json.loads((FIXTURES / "reference_rkme" / "expected.json").read_text())
    bank = SpecBank.from_specs(specs)
    got = mmd2(specs, bank, backend=backend, device=device_of(backend)).cpu().numpy()
    exp = np.array(expected["dist"])
    inner = np.array(expected["inner_prod"])
    scale = np.diag(inner)[:, None] + np.diag(inner)[None, :] + 2 * np.abs(inner)
    assert np.max(np.abs(got - exp) / scale) < 1e-5
    assert np.allclose(bank.self_inner.numpy(), np.diag(inner), rtol=1e-6)  # float32-stored points


@pytest.mark.parametrize("backend", ALL)
def test_duplicates_give_equal_distance_and_zero_self_distance(rng, backend):
    bank, specs = ragged_bank(rng, 6, 5, 3)
    bank.add([specs[2], specs[2]], ids=[50, 40])
    got = mmd2(specs[2], bank, backend=backend, device=device_of(backend))[0].cpu()
    p = bank.positions([2, 40, 50])
    assert torch.allclose(got[p], torch.zeros(3, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("backend", ALL)
def test_empty_bank_and_mismatches(rng, backend):
    dev = device_of(backend)
    q = RKME(*random_spec_arrays(rng, 4, 3), 0.1)
    assert mmd2(q, SpecBank(0.1, 3), backend=backend, device=dev).shape == (1, 0)
    bank, _ = ragged_bank(rng, 3, 4, 3)
    with pytest.raises(ValueError, match="dimension"):
        mmd2(RKME(*random_spec_arrays(rng, 4, 2), 0.1), bank, backend=backend, device=dev)
    with pytest.raises(ValueError, match="gamma"):
        mmd2(RKME(*random_spec_arrays(rng, 4, 3), 0.2), bank, backend=backend, device=dev)
    with pytest.raises(ValueError, match="no queries"):
        mmd2([], bank, backend=backend, device=dev)


def test_backend_choice():
    cpu = torch.device("cpu")
    assert pick_backend("auto", cpu) == ("numba" if numba_available() else "torch")
    assert pick_backend("auto", cpu, torch.float64) == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        pick_backend("fortran", cpu)
    with pytest.raises(ValueError, match="CUDA device"):
        pick_backend("cuda", cpu)
    if not cupy_available():
        assert pick_backend("auto", torch.device("cuda")) == "torch"


def test_torch_blocks_stay_tile_sized(rng):
    """Memory: the torch path never builds more than max_block_elems kernel values at once."""
    bank, _ = ragged_bank(rng, 300, 8, 3)
    q, qs = ragged_bank(rng, 3, 8, 3)
    stats = {}
    cap = 3 * q.K * bank.K * 5  # 5 specs per block
    got = mmd2(q, bank, backend="torch", device="cpu", max_block_elems=cap, stats=stats)
    assert 0 < stats["max_block"] <= cap
    full = mmd2(q, bank, backend="torch", device="cpu")
    assert torch.allclose(got, full, atol=1e-9)
    dist, terms = reference_terms(q, bank)
    assert rel_err(got, dist, terms) < 1e-5


@pytest.mark.parametrize("backend", ALL)
def test_pairwise(rng, backend):
    a, _ = ragged_bank(rng, 13, 6, 4)
    b, _ = ragged_bank(rng, 7, 5, 4)
    dev = device_of(backend)
    dist, terms = reference_terms(a, b)
    ab = mmd2_pairwise(a, b, backend=backend, device=dev, tile=4)
    assert ab.shape == (13, 7) and rel_err(ab, dist, terms) < 1e-5
    aa = mmd2_pairwise(a, backend=backend, device=dev, tile=5)
    dist, terms = reference_terms(a, a)
    assert rel_err(aa, dist, terms) < 1e-5
    assert torch.equal(aa, aa.T) and torch.all(aa.diagonal() == 0)


@pytest.mark.parametrize("backend", ALL)
def test_mmd2_rows_matches_full_matrix(rng, backend):
    from lwgpu.kernels import mmd2_rows

    bank, _ = ragged_bank(rng, 40, 6, 5)
    q, qs = ragged_bank(rng, 3, 6, 5)
    dev = device_of(backend)
    full = mmd2(q, bank, backend=backend, device=dev).cpu().numpy()
    pos = np.array([[3, 39, -1, 0], [7, 7, 12, -1], [-1, -1, -1, -1]])
    got = mmd2_rows(qs, bank.to(dev), pos, backend=backend, device=dev)
    want = np.where(pos >= 0, np.take_along_axis(full, np.maximum(pos, 0), 1), np.inf)
    assert np.allclose(got, want, atol=1e-6) and np.all(np.isinf(got[pos < 0]))
    with pytest.raises(ValueError, match="positions"):
        mmd2_rows(qs, bank, np.array([[40]] * 3), backend=backend, device=dev)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [2, 64, 300])
def test_torch_backend_on_gpu(rng, d):
    bank, _ = ragged_bank(rng, 57, 8, d, scale=0.5)
    q, qs = ragged_bank(rng, 3, 6, d, scale=0.5)
    got = mmd2(qs, bank, backend="torch", device="cuda", tile=13)  # CPU bank scanned on the GPU
    dist, terms = reference_terms(q, bank)
    assert got.device.type == "cuda" and rel_err(got, dist, terms) < 1e-5
    assert rel_err(mmd2(qs, bank.to("cuda"), backend="torch", device="cuda"), dist, terms) < 1e-5
