"""Every KernelBackend object against the float64 brute force (lwgpu.kernels.reference) and against the others:
cross, self_terms, gram, inner, mmd2 (full, rows=, start/stop), mmd2_rows; ragged K, d from 1 to 512,
float32 and float64 banks, empty banks, wrong d / gamma."""
import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.kernels import Packed, get_backend, reference as ref
from lwgpu.spec.rkme import RKME
from lwgpu_testutil import random_spec_arrays
from tests.kernels.kernel_helpers import (
    OBJECTS, ragged_bank, reference_cross, reference_terms, rel_err, tol_of,
)

SHAPES = [  # n, kmax, kq, d, scale, shift
    (1, 1, 1, 1, 1.0, 0.0),
    (37, 9, 6, 1, 2.0, 0.0),
    (23, 12, 5, 3, 1.0, 0.0),
    (19, 7, 11, 17, 0.5, 30.0),  # far from the origin: needs centring for float32 accuracy
    (11, 20, 9, 64, 0.2, 0.0),
    (5, 6, 4, 300, 0.05, 0.0),
    (4, 5, 3, 512, 0.05, 0.0),
]


@pytest.fixture(params=OBJECTS)
def be(request):
    name, device, dtype = request.param
    return get_backend(name, device, dtype)


def _as(bank, dtype):
    return bank if dtype == "float32" else bank.to(dtype="float64")


@pytest.mark.parametrize("bank_dtype", ["float32", "float64"])
@pytest.mark.parametrize("n,kmax,kq,d,scale,shift", SHAPES)
def test_mmd2_matches_reference(rng, be, bank_dtype, n, kmax, kq, d, scale, shift):
    bank, _ = ragged_bank(rng, n, kmax, d, scale=scale, shift=shift)
    queries, qspecs = ragged_bank(rng, 4, kq, d, scale=scale, shift=shift)
    bank = _as(bank, bank_dtype)
    dist, terms = reference_terms(queries, bank)
    got = be.mmd2(qspecs, bank)
    assert got.shape == (4, n) and got.dtype == torch.float64 and got.device.type == be.device.type
    assert rel_err(got, dist, terms) < tol_of(be)
    # queries as a bank, as one RKME, as a Packed: the same numbers
    assert torch.allclose(be.mmd2(queries, bank), got, atol=1e-12)
    one = be.mmd2(qspecs[2], bank)
    assert one.shape == (1, n) and torch.allclose(one[0], got[2], atol=1e-12)
    # rows= (any order, repeats) and [start, stop) are the matching columns of the full matrix
    rows = np.array([n - 1, 0, n // 2, 0])
    assert torch.allclose(be.mmd2(queries, bank, rows=rows), got[:, rows], atol=1e-12)
    s, e = n // 3, max(n // 3 + 1, n - 1)
    assert torch.allclose(be.mmd2(queries, bank, start=s, stop=e, tile=2), got[:, s:e], atol=1e-12)


@pytest.mark.parametrize("d", [1, 5, 130])
def test_cross_self_gram_inner_match_reference(rng, be, d):
    bank, specs = ragged_bank(rng, 9, 7, d, scale=0.6)
    queries, qspecs = ragged_bank(rng, 3, 5, d, scale=0.6)
    cross, sq, sb = reference_cross(queries, bank)
    scale = np.abs(sq)[:, None] + np.abs(sb)[None, :]
    dev = be.device
    got = be.cross(queries.z.to(dev, be.dtype), queries.beta.to(dev, be.dtype), bank.z, bank.beta, bank.gamma)
    assert got.shape == (3, 9) and got.dtype == torch.float64
    assert rel_err(got, cross, scale) < tol_of(be)
    # self terms: float64 from the stored points, whatever the backend computes cross terms in
    st = be.self_terms(bank.z.to(dev), bank.beta.to(dev), bank.gamma)
    assert st.dtype == torch.float64 and np.allclose(st.cpu().numpy(), sb, rtol=1e-10, atol=1e-14)
    g = be.gram(bank.z, bank.beta, bank.gamma)
    gref, _, _ = reference_cross(bank, bank)
    assert g.shape == (9, 9) and torch.equal(g, g.T)
    assert rel_err(g, gref, np.abs(sb)[:, None] + np.abs(sb)[None, :]) < tol_of(be)
    a, b = specs[1], qspecs[2]
    want = ref.inner(a.z.double().numpy(), a.beta.double().numpy(), b.z.double().numpy(), b.beta.double().numpy(),
                     bank.gamma)
    got_inner = be.inner(a.z, a.beta, b.z, b.beta, bank.gamma)
    assert isinstance(got_inner, float) and abs(got_inner - want) < tol_of(be) * (a.self_inner + b.self_inner)


def test_mmd2_rows_with_empty_slots(rng, be):
    bank, _ = ragged_bank(rng, 40, 6, 5)
    q, qs = ragged_bank(rng, 3, 6, 5)
    full = be.mmd2(q, bank).cpu().numpy()
    pos = np.array([[3, 39, -1, 0], [7, 7, 12, -1], [-1, -1, -1, -1]])
    got = be.mmd2_rows(qs, bank, pos)
    assert got.shape == (3, 4) and got.dtype == torch.float64
    got = got.cpu().numpy()
    want = np.where(pos >= 0, np.take_along_axis(full, np.maximum(pos, 0), 1), np.inf)
    assert np.allclose(got, want, atol=1e-9) and np.all(np.isinf(got[pos < 0]))
    with pytest.raises(ValueError, match="positions"):
        be.mmd2_rows(qs, bank, np.array([[40]] * 3))
    with pytest.raises(ValueError, match="positions"):
        be.mmd2_rows(qs, bank, np.array([[-2]] * 3))
    with pytest.raises(ValueError, match="shape"):
        be.mmd2_rows(qs, bank, np.array([[1, 2]]))


def test_backends_agree_with_each_other(rng, be):
    """Each backend against the float64 torch backend on the same banks (float32 and float64 storage)."""
    bank, _ = ragged_bank(rng, 50, 9, 6, scale=0.8, shift=3.0)
    q, _ = ragged_bank(rng, 5, 8, 6, scale=0.8, shift=3.0)
    exact = get_backend("torch", "cpu", torch.float64)
    _, terms = reference_terms(q, bank)
    for b in (bank, bank.to(dtype="float64")):
        want = exact.mmd2(q, b).numpy()
        assert rel_err(be.mmd2(q, b), want, terms) < tol_of(be)
        pos = np.array([[1, 4, -1], [0, 0, 49], [-1, 2, 3], [5, 6, 7], [8, -1, 9]])
        assert np.allclose(be.mmd2_rows(q, b, pos).cpu().numpy(), exact.mmd2_rows(q, b, pos).numpy(),
                           atol=tol_of(be) * terms.max())


def test_empty_bank_and_empty_rows(rng, be):
    q = RKME(*random_spec_arrays(rng, 4, 3), 0.1)
    empty = SpecBank(0.1, 3)
    assert be.mmd2(q, empty).shape == (1, 0)
    bank, _ = ragged_bank(rng, 3, 4, 3)
    assert be.mmd2(q, bank, rows=np.array([], np.int64)).shape == (1, 0)
    assert be.mmd2(q, bank, start=2, stop=2).shape == (1, 0)
    assert torch.isinf(be.mmd2_rows(q, bank, np.full((1, 3), -1))).all()
    z = torch.zeros(0, 4, 3)
    assert be.self_terms(z.to(be.device), torch.zeros(0, 4, device=be.device), 0.1).shape == (0,)
    assert be.cross(q.z[None].to(be.device, be.dtype), q.beta[None].to(be.device, be.dtype), z,
                    torch.zeros(0, 4), 0.1).shape == (1, 0)


def test_mismatches_are_refused(rng, be):
    bank, _ = ragged_bank(rng, 3, 4, 3)
    with pytest.raises(ValueError, match="dimension"):
        be.mmd2(RKME(*random_spec_arrays(rng, 4, 2), 0.1), bank)
    with pytest.raises(ValueError, match="gamma"):
        be.mmd2(RKME(*random_spec_arrays(rng, 4, 3), 0.2), bank)
    with pytest.raises(ValueError, match="gamma"):
        be.mmd2_rows(RKME(*random_spec_arrays(rng, 4, 3), 0.2), bank, np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="no specs"):
        be.mmd2([], bank)
    with pytest.raises(ValueError, match="dimension"):
        be.mmd2([RKME(*random_spec_arrays(rng, 4, 3), 0.1), RKME(*random_spec_arrays(rng, 4, 2), 0.1)], bank)


def test_duplicates_give_zero_distance(rng, be):
    bank, specs = ragged_bank(rng, 6, 5, 3)
    bank.add([specs[2], specs[2]], ids=[50, 40])
    got = be.mmd2(specs[2], bank)[0].cpu()
    p = bank.positions([2, 40, 50])
    assert torch.allclose(got[p], torch.zeros(3, dtype=torch.float64), atol=1e-6)


def test_packed_queries_and_rows(rng, be):
    bank, specs = ragged_bank(rng, 8, 5, 4)
    p = Packed.of(specs[:5])
    assert len(p) == 5 and p.K == 5 and p.d == 4 and Packed.of(bank).z.data_ptr() == bank.z.data_ptr()
    assert torch.allclose(be.mmd2(p.rows(1, 3), bank), be.mmd2(specs[1:3], bank), atol=1e-12)
