"""The front door of lwgpu.kernels: get_backend / backend_for choices and errors, mmd2 / mmd2_rows /
mmd2_pairwise on every backend name, a large cheap bank, the reference fixture, memory blocks, the GPU."""
import json

import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.device import cupy_available, numba_available
from lwgpu.kernels import (
    KernelBackend, Packed, auto_backend_name, available_backends, backend_for, get_backend, mmd2, mmd2_pairwise, mmd2_rows,
)
from lwgpu.spec.rkme import RKME
from lwgpu_testutil import FIXTURES
from tests.kernels.kernel_helpers import ALL, device_of, ragged_bank, reference_terms, rel_err

CPU = torch.device("cpu")


def test_get_backend_choices():
    auto = get_backend("auto", "cpu")
    assert auto.name == ("numba" if numba_available() else "torch") and auto.dtype == torch.float32
    assert get_backend("auto", "cpu", torch.float64).name == "torch"
    assert get_backend("torch", "cpu") is get_backend("torch", CPU, "float32")  # cached instances
    assert get_backend(auto) is auto
    assert auto_backend_name(CPU, torch.float64) == "torch"
    assert "torch" in available_backends() and ("numba" in available_backends()) == numba_available()
    assert get_backend("torch", "cpu", max_block_elems=1 << 16).max_block_elems == 1 << 16
    f64 = get_backend("torch", "cpu", torch.float64)
    assert f64.precise is f64 and get_backend("torch", "cpu").precise is f64
    assert isinstance(f64, KernelBackend) and "float64" in repr(f64)


def test_get_backend_errors():
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("fortran", "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        get_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="CPU only|no CUDA GPU"):
        get_backend("numba", "cuda")
    if numba_available():
        with pytest.raises(ValueError, match="float32 only"):
            get_backend("numba", "cpu", torch.float64)
    with pytest.raises(ValueError, match="options"):
        get_backend(get_backend("torch", "cpu"), max_block_elems=5)
    with pytest.raises(ValueError, match="does not take"):
        get_backend("torch", "cpu", accumulate="float64")
    with pytest.raises(ValueError, match="dtype"):
        get_backend("torch", "cpu", "float16")
    if not cupy_available():
        with pytest.raises(ValueError, match="not available|CUDA"):
            get_backend("cupy", "cpu")


def test_backend_for_follows_the_bank(rng):
    bank, _ = ragged_bank(rng, 4, 3, 2)
    b64 = bank.to(dtype="float64")
    assert backend_for(bank, "auto", "cpu").dtype == torch.float32
    assert (backend_for(b64, "auto", "cpu").name, backend_for(b64, "auto", "cpu").dtype) == ("torch", torch.float64)
    assert backend_for(b64, "torch", "cpu").dtype == torch.float64
    if numba_available():  # numba reads a float64 bank as float32
        assert backend_for(b64, "numba", "cpu").dtype == torch.float32
    be = get_backend("torch", "cpu")
    assert backend_for(b64, be) is be


@pytest.mark.parametrize("backend", ALL)
def test_front_door_matches_reference(rng, backend):
    dev = device_of(backend)
    bank, _ = ragged_bank(rng, 23, 7, 5, shift=2.0)
    q, qs = ragged_bank(rng, 3, 6, 5, shift=2.0)
    dist, terms = reference_terms(q, bank)
    got = mmd2(qs, bank, backend=backend, device=dev)
    assert got.shape == (3, 23) and rel_err(got, dist, terms) < 1e-5
    assert torch.allclose(mmd2(q, bank, backend=backend, device=dev, rows=[4, 2]), got[:, [4, 2]], atol=1e-12)
    pos = np.array([[0, -1], [22, 3], [-1, -1]])
    rows = mmd2_rows(qs, bank, pos, backend=backend, device=dev).cpu().numpy()
    assert np.allclose(rows, np.where(pos >= 0, np.take_along_axis(got.cpu().numpy(), np.maximum(pos, 0), 1),
                                      np.inf), atol=1e-9)
    with pytest.raises(ValueError, match="no specs"):
        mmd2([], bank, backend=backend, device=dev)


@pytest.mark.parametrize("backend", ALL)
def test_large_n_cheap(rng, backend):
    n, d = 10_000, 2
    z = rng.normal(size=(n, 3, d)).astype(np.float32)
    b = rng.random((n, 3)).astype(np.float32)
    b[:, 2][rng.random(n) < 0.3] = 0.0  # some specs padded
    bank = SpecBank.from_arrays(z, b, 0.5)
    q, qs = ragged_bank(rng, 2, 4, d, gamma=0.5)
    zb, bb, zq, bq = (x.astype(np.float64) for x in (z, b, q.z.numpy(), q.beta.numpy()))

    def inner(za, ba, zc, bc):  # vectorised float64 brute force: za (n,K,d) ba (n,K) | zc (K2,d) bc (K2,)
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
    # the float64 path reproduces the reference to float64 rounding
    specs64 = [RKME.load(FIXTURES / "reference_rkme" / f"spec{i}.json", dtype="float64") for i in range(3)]
    got64 = mmd2(specs64, Packed.of(specs64), backend="torch", device="cpu").numpy()
    np.testing.assert_allclose(got64, np.maximum(exp, 0.0), atol=1e-12)


def test_torch_blocks_stay_tile_sized(rng):
    """Memory: the torch backend never builds more than max_block_elems kernel values at once."""
    bank, _ = ragged_bank(rng, 300, 8, 3)
    q, _ = ragged_bank(rng, 3, 8, 3)
    cap = 3 * q.K * bank.K * 5  # 5 specs per block
    be = get_backend("torch", "cpu", max_block_elems=cap)
    stats = {}
    got = be.cross(q.z, q.beta, bank.z, bank.beta, bank.gamma, stats=stats)
    assert 0 < stats["max_block"] <= cap
    full = get_backend("torch", "cpu").cross(q.z, q.beta, bank.z, bank.beta, bank.gamma)
    assert torch.allclose(got, full, atol=1e-9)
    dist, terms = reference_terms(q, bank)
    assert rel_err(mmd2(q, bank, backend=be), dist, terms) < 1e-5


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


@pytest.mark.gpu
@pytest.mark.parametrize("d", [2, 64, 300])
def test_torch_backend_on_gpu(rng, d):
    bank, _ = ragged_bank(rng, 57, 8, d, scale=0.5)
    q, qs = ragged_bank(rng, 3, 6, d, scale=0.5)
    got = mmd2(qs, bank, backend="torch", device="cuda", tile=13)  # CPU bank scanned on the GPU
    dist, terms = reference_terms(q, bank)
    assert got.device.type == "cuda" and rel_err(got, dist, terms) < 1e-5
    assert rel_err(mmd2(qs, bank.to("cuda"), backend="torch", device="cuda"), dist, terms) < 1e-5
