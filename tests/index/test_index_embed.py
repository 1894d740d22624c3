"""Random-feature and Nystroem spec embeddings against the float64 kernel / MMD brute force."""
import numpy as np
import pytest
import torch

from lwgpu.index.embed import NystroemFeatures, RandomFourierFeatures, SpecEmbedder, make_embedder, pad_specs
from lwgpu.kernels import reference
from lwgpu.spec.rkme import RKME

GAMMA = 0.1


def _pairs(d=8, n=300, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = a + rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=(n, 1))  # kernel values spread over (0, 1)
    return a, b, np.exp(-GAMMA * ((a - b) ** 2).sum(1))


def _kernel_err(emb, a, b, k):
    pa, pb = emb.embed_points(a), emb.embed_points(b)
    return np.abs((pa.double() * pb.double()).sum(1).numpy() - k)


@pytest.mark.parametrize("orthogonal", [False, True])
@pytest.mark.parametrize("pair", [True, False])
def test_feature_inner_products_converge_to_kernel(orthogonal, pair):
    a, b, k = _pairs()
    errs = {D: _kernel_err(RandomFourierFeatures(8, D, GAMMA, seed=0, orthogonal=orthogonal, pair=pair), a, b, k)
            for D in (64, 1024, 16384)}
    # Monte Carlo rate: the mean error times sqrt(D) is ~0.5 (rff) / ~0.35 (orf); 1.0 (cos+phase: ~0.7) is a 2x margin.
    bound = 1.0 if pair else 1.5
    for D, e in errs.items():
        assert e.mean() < bound / np.sqrt(D), (D, e.mean())
    assert errs[16384].mean() < errs[64].mean() / 8  # 16x sqrt(D) -> ~16x smaller
    assert errs[16384].max() < 0.06


def test_orthogonal_features_have_lower_error_than_iid():
    a, b, k = _pairs()
    for D in (64, 256, 1024):
        e_rff = np.mean([_kernel_err(RandomFourierFeatures(8, D, GAMMA, seed=s), a, b, k).mean() for s in range(3)])
        e_orf = np.mean([_kernel_err(RandomFourierFeatures(8, D, GAMMA, seed=s, orthogonal=True), a, b, k).mean()
                         for s in range(3)])
        assert e_orf < 0.85 * e_rff, (D, e_orf, e_rff)


def _specs(rng, n, K, d, scale=1.0):
    z = (rng.normal(size=(n, K, d)) * scale + rng.normal(size=(n, 1, d))).astype(np.float32)
    beta = rng.dirichlet(np.ones(K), size=n).astype(np.float32)
    return z, beta


@pytest.mark.parametrize("kind", ["rff", "orf"])
def test_spec_embedding_distance_approximates_mmd(kind):
    rng = np.random.default_rng(1)
    z, beta = _specs(rng, 20, 12, 6)
    exact = np.array([[reference.mmd2(z[i], beta[i], z[j], beta[j], GAMMA) for j in range(20)] for i in range(20)])
    errs = []
    for D in (128, 8192):
        e = make_embedder(kind, 6, D, GAMMA, seed=3).embed_specs(z, beta, device="cpu").astype(np.float64)
        approx = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
        errs.append(np.abs(approx - exact).mean())
    assert errs[1] < errs[0] / 4
    assert errs[1] < 0.01


def test_nystroem_exact_on_its_landmarks_and_a_lower_bound():
    rng = np.random.default_rng(2)
    z, beta = _specs(rng, 2, 10, 4)
    emb = NystroemFeatures(z.reshape(-1, 4), GAMMA, rcond=1e-9)  # landmarks = every point of both specs
    ea, eb = emb.embed_specs(z, beta, device="cpu").astype(np.float64)
    exact = reference.mmd2(z[0], beta[0], z[1], beta[1], GAMMA)
    assert abs(((ea - eb) ** 2).sum() - exact) < 1e-3 * max(exact, 1e-3)
    # With few landmarks psi is a projection: ||P(A - B)||^2 never exceeds dist(A, B).
    z2, beta2 = _specs(rng, 30, 8, 4)
    small = NystroemFeatures.from_points_of_specs(z2, beta2, 16, GAMMA, seed=0)
    e = small.embed_specs(z2, beta2, device="cpu").astype(np.float64)
    for i in range(0, 30, 3):
        for j in range(1, 30, 4):
            approx = ((e[i] - e[j]) ** 2).sum()
            assert approx <= reference.mmd2(z2[i], beta2[i], z2[j], beta2[j], GAMMA) + 1e-4


def test_nystroem_error_shrinks_with_more_landmarks():
    rng = np.random.default_rng(4)
    z, beta = _specs(rng, 40, 10, 3, scale=0.7)
    exact = np.array([[reference.mmd2(z[i], beta[i], z[j], beta[j], GAMMA) for j in range(40)] for i in range(40)])
    errs = []
    for D in (8, 64):
        e = NystroemFeatures.from_points_of_specs(z, beta, D, GAMMA, seed=0).embed_specs(z, beta, device="cpu")
        e = e.astype(np.float64)
        errs.append(np.abs(((e[:, None] - e[None]) ** 2).sum(-1) - exact).mean())
    assert errs[1] < errs[0] / 3 and errs[1] < 0.01, errs


@pytest.mark.parametrize("kind", ["rff", "orf", "nystroem", "rff-phase"])
def test_state_round_trip_embeds_bitwise_equal(tmp_path, kind):
    rng = np.random.default_rng(5)
    z, beta = _specs(rng, 50, 7, 5)
    if kind == "nystroem":
        emb = NystroemFeatures.from_points_of_specs(z, beta, 32, GAMMA, seed=1)
    elif kind == "rff-phase":
        emb = RandomFourierFeatures(5, 64, GAMMA, seed=1, pair=False)
    else:
        emb = make_embedder(kind, 5, 64, GAMMA, seed=1)
    emb.save(tmp_path / "e.npz")
    back = SpecEmbedder.load(tmp_path / "e.npz")
    assert type(back) is type(emb) and back.kind == emb.kind and back.D == emb.D and back.d == 5
    np.testing.assert_array_equal(back.embed_specs(z, beta, device="cpu"), emb.embed_specs(z, beta, device="cpu"))


def test_seeding_tiling_and_padding():
    rng = np.random.default_rng(6)
    z, beta = _specs(rng, 25, 6, 4)
    a, b, c = (RandomFourierFeatures(4, 32, GAMMA, seed=s, orthogonal=True) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.omega, b.omega)
    assert not np.allclose(a.omega, c.omega)
    full = a.embed_specs(z, beta, device="cpu")
    np.testing.assert_allclose(a.embed_specs(torch.from_numpy(z), torch.from_numpy(beta), chunk=4, device="cpu"),
                               full, rtol=1e-5, atol=1e-6)
    # zero-weight padding points change nothing; ragged RKME lists are padded that way
    zp = np.concatenate([z, rng.normal(size=(25, 3, 4)).astype(np.float32)], 1)
    bp = np.concatenate([beta, np.zeros((25, 3), np.float32)], 1)
    np.testing.assert_allclose(a.embed_specs(zp, bp, device="cpu"), full, rtol=1e-5, atol=1e-6)
    specs = [RKME(z[0], beta[0], GAMMA), RKME(z[1, :4], beta[1, :4], GAMMA)]
    pz, pb = pad_specs(specs)
    assert pz.shape == (2, 6, 4) and pb[1, 4:].sum() == 0
    np.testing.assert_allclose(a.embed_rkmes(specs, device="cpu")[1], a.embed_specs(z[1:2, :4], beta[1:2, :4])[0],
                               rtol=1e-5, atol=1e-6)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="even"):
        RandomFourierFeatures(4, 33, GAMMA)
    with pytest.raises(ValueError, match="gamma"):
        RandomFourierFeatures(4, 32, 0.0)
    emb = RandomFourierFeatures(4, 32, GAMMA)
    with pytest.raises(ValueError, match="shape"):
        emb.embed_specs(np.zeros((3, 2, 5), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="beta"):
        emb.embed_specs(np.zeros((3, 2, 4), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="nystroem|kind"):
        make_embedder("nystroem", 4, 32, GAMMA)
    with pytest.raises(ValueError, match="unknown"):
        make_embedder("laplace", 4, 32, GAMMA)
