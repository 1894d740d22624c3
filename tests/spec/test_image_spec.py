"""Image specs: the NNGP ConvNet kernel, reference agreement, JSON both ways, fitting, banks, embedding.

Ground truth: a float64 loop-based NNGP recursion written here independently; the reference
package's own numbers on specs it wrote (tests/fixtures/reference_image, made by its
``make_fixtures.py``), and the reference itself where ``learnware`` imports.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lwgpu.device import single_torch_thread
from lwgpu.kernels.nngp import ConvNNGP, NNGPConfig
from lwgpu.spec.image import ImageRKME, image_mmd2_to_bank, image_self_terms, preprocess_images

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "reference_image"
NAMES = ("digits_low", "digits_high", "colour")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many mid-sized ops: one torch thread is several times faster on a shared 2-core machine."""
    with single_torch_thread():
        yield


def _reference():
    """The reference's RKMEImageSpecification (with the resize shim), or skip."""
    if importlib.util.find_spec("learnware") is None or importlib.util.find_spec("torch_optimizer") is None:
        pytest.skip("reference package learnware (or torch-optimizer) not installed")
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.ref_shims import reference_image_class
        return reference_image_class()
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"reference not importable: {exc}")
    finally:
        sys.path.remove(str(ROOT))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images.astype(np.float32)[:, None], d.target


# ----------------------------------------------------------------------------------------------
# brute force: the recursion, pixel by pixel, in float64
# ----------------------------------------------------------------------------------------------

def _brute_pair(x: np.ndarray, y: np.ndarray, cfg: NNGPConfig, same: bool) -> float:
    """k(x, y) for images (C, S, S) by direct loops over pixels and patch offsets."""
    C, S, _ = x.shape
    kk = cfg.kernel_size
    r = kk // 2

    def conv(m: np.ndarray, var_w: float, var_b: float) -> np.ndarray:
        n = m.shape[0]
        out = np.zeros_like(m)
        for i in range(n):
            for j in range(n):
                acc = 0.0
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        if 0 <= i + di < n and 0 <= j + dj < n:
                            acc += m[i + di, j + dj]
                out[i, j] = var_w * acc / (kk * kk) + var_b
        return out

    def pool(m: np.ndarray) -> np.ndarray:
        n = m.shape[0] // 2
        out = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                out[i, j] = (m[2 * i, 2 * j] + m[2 * i + 1, 2 * j] + m[2 * i, 2 * j + 1] + m[2 * i + 1, 2 * j + 1]) / 4
        return out

    xy = np.zeros((S, S))
    xx = np.zeros((S, S))
    yy = np.zeros((S, S))
    for i in range(S):
        for j in range(S):
            xy[i, j] = sum(x[c, i, j] * y[c, i, j] for c in range(C)) / C
            xx[i, j] = sum(x[c, i, j] ** 2 for c in range(C)) / C
            yy[i, j] = sum(y[c, i, j] ** 2 for c in range(C)) / C
    for _ in range(cfg.depth):
        xy, xx, yy = (conv(m, cfg.var_weight, cfg.var_bias) for m in (xy, xx, yy))
        n = xy.shape[0]
        out = np.zeros_like(xy)
        for i in range(n):
            for j in range(n):
                if same:
                    out[i, j] = xx[i, j] / 2
                    continue
                v = xx[i, j] * yy[i, j]
                cos_t = min(1.0, max(-1.0, xy[i, j] / math.sqrt(v)))
                theta = math.acos(cos_t)
                out[i, j] = (math.sqrt(max(v - xy[i, j] ** 2, 0.0)) + (math.pi - theta) * xy[i, j]) / (2 * math.pi)
        xy, xx, yy = pool(out), pool(xx / 2), pool(yy / 2)
    return float(xy.mean())


@pytest.mark.parametrize("cfg,C", [(NNGPConfig(depth=2, image_size=8), 2), (NNGPConfig(), 1)])
def test_kernel_matches_loop_brute_force(cfg: NNGPConfig, C: int) -> None:
    g = torch.Generator().manual_seed(1)
    S = cfg.image_size
    a = torch.randn(3, C, S, S, generator=g, dtype=torch.float64)
    b = torch.randn(2, C, S, S, generator=g, dtype=torch.float64)
    b[1] = a[0] * 0.7 + 0.3 * b[1]  # a correlated pair, far from independent
    kern = ConvNNGP(cfg)
    got = kern.cross(a, b).numpy()
    gram = kern.gram(a).numpy()
    pairs = [(i, j) for i in range(3) for j in range(2)] if S == 8 else [(0, 1), (2, 0)]
    for i, j in pairs:
        assert got[i, j] == pytest.approx(_brute_pair(a[i].numpy(), b[j].numpy(), cfg, False), rel=1e-12)
    for i in range(3 if S == 8 else 1):
        assert gram[i, i] == pytest.approx(_brute_pair(a[i].numpy(), a[i].numpy(), cfg, True), rel=1e-12)
    if S == 8:
        assert gram[0, 1] == pytest.approx(_brute_pair(a[0].numpy(), a[1].numpy(), cfg, False), rel=1e-12)
    # the per-image terms: k(x, x) from diag() equals the exact diagonal of the Gram matrix
    np.testing.assert_allclose(kern.diag(a).self_k.numpy(), np.diag(gram), rtol=1e-14)
    # batched leading dims: (B, N) pairs as B separate calls
    batched = kern.cross(a[None].expand(2, -1, -1, -1, -1), torch.stack([b, b.flip(0)]))
    np.testing.assert_allclose(batched[1].numpy(), kern.cross(a, b.flip(0)).numpy(), rtol=1e-13)


def test_kernel_gradients_match_finite_differences() -> None:
    cfg = NNGPConfig(depth=2, image_size=8)
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    b = torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64)
    b[0] = a[1]  # an identical pair: rho = 1 exactly (acos has a pole there; the step must not)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    wz = torch.randn(3, 3, generator=g, dtype=torch.float64)
    kern = ConvNNGP(cfg)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (kern.cross(x, b) * w).sum() + (kern.gram(x) * wz).sum()

    x = a.clone().requires_grad_(True)
    f(x).backward()
    assert torch.isfinite(x.grad).all()
    for idx in [(0, 0, 3, 4), (1, 1, 0, 0), (2, 0, 7, 2), (1, 0, 5, 5)]:
        e = torch.zeros_like(a)
        e[idx] = 1e-5
        fd = (f(a + e) - f(a - e)).item() / 2e-5
        # image 1 has an identical partner: there the kernel's own rounding (~1e-16 in c near
        # sqrt(vx vy) -> ~1e-11 in J) dominates central differences, so only ~1e-5 is checkable
        assert x.grad[idx].item() == pytest.approx(fd, rel=2e-5 if idx[0] == 1 else 1e-7)


@pytest.mark.parametrize("same", [False, True])
def test_torch_arccos_step_matches_numba(same: bool) -> None:
    """The GPU's (torch) arc-cosine step against the CPU's fused numba one, values and gradient factors."""
    from lwgpu.kernels._nngp_numba import relu_grad
    from lwgpu.kernels.nngp import _relu_torch

    g = torch.Generator().manual_seed(3)
    va = torch.rand(2, 5, 4, generator=g, dtype=torch.float64) + 0.5
    vb = va.clone() if same else torch.rand(2, 5, 4, generator=g, dtype=torch.float64) + 0.5
    scale = (va.unsqueeze(-1) * vb.unsqueeze(-2)).sqrt()
    c = (torch.rand(2, 5, 4, 4, generator=g, dtype=torch.float64) * 2 - 1) * scale
    c[0, 0, 1, 2] = (va[0, 0, 1] * vb[0, 0, 2]).sqrt()  # rho = 1
    out, dc, s4 = torch.empty_like(c), torch.empty_like(c), torch.empty_like(c)
    relu_grad(c.numpy(), va.numpy(), vb.numpy(), same, out.numpy(), dc.numpy(), s4.numpy())
    t_out, t_dc, t_s4 = _relu_torch(c, va, vb, same, True)
    for x, y in ((out, t_out), (dc, t_dc), (s4, t_s4)):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-13, atol=1e-15)
    # the values against the textbook formula with acos
    vv = va.unsqueeze(-1) * vb.unsqueeze(-2)
    theta = torch.acos((c / vv.sqrt()).clamp(-1, 1))
    want = ((vv - c * c).clamp_min(0).sqrt() + (math.pi - theta) * c) / (2 * math.pi)
    if same:
        idx = torch.arange(4)
        want[..., idx, idx] = va / 2
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-7, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# the reference: fixtures it wrote, JSON both ways
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ref_specs() -> dict[str, ImageRKME]:
    return {n: ImageRKME.load(FIX / f"spec_{n}.json") for n in NAMES}


@pytest.fixture(scope="module")
def ref_values() -> dict:
    return json.loads((FIX / "reference_values.json").read_text())


def test_inner_and_dist_match_reference_fixtures(ref_specs, ref_values) -> None:
    for key, want in ref_values["inner"].items():
        a, b = key.split("|")
        got = ref_specs[a].inner(ref_specs[b])
        assert got == pytest.approx(want, rel=1e-5)  # the reference's float32 kernel
        # the reference's own recursion run in float64 (its float32 conv weights, ~1e-7 relative)
        assert got == pytest.approx(ref_values["inner_float64"][key], rel=3e-7)
    for key, want in ref_values["dist"].items():
        a, b = key.split("|")
        got = ref_specs[a].dist(ref_specs[b])
        ia, ib, iab = (ref_values["inner_float64"][f"{p}|{q}"] for p, q in ((a, a), (b, b), (a, b)))
        assert got == pytest.approx(ia + ib - 2 * iab, abs=2e-9)
        # the reference's float32 distance: these two specs share near-identical points (same seeded
        # init, one step), where its float32 arc-cosine loses ~1e-6 (its own float64 run agrees with ours)
        assert got == pytest.approx(want, abs=2e-6)


def test_json_layout_and_round_trip(ref_specs, tmp_path) -> None:
    raw = json.loads((FIX / "spec_colour.json").read_text())
    spec = ref_specs["colour"]
    out = spec.to_dict()
    assert list(out) == list(raw)  # the reference's keys, in its order
    assert out == raw  # float32 z and float64 beta survive exactly
    spec.save(tmp_path / "s.json")
    again = ImageRKME.load(tmp_path / "s.json")
    assert torch.equal(again.z, spec.z) and torch.equal(again.beta, spec.beta)
    assert again.type == "RKMEImageSpecification" and ImageRKME.type == "RKMEImageSpecification"
    with pytest.raises(ValueError, match="type"):
        ImageRKME.from_dict({**raw, "type": "RKMETableSpecification"})


def test_reference_loads_our_json_and_agrees(ref_specs, tmp_path) -> None:
    R = _reference()
    X, y = _digits()
    ours = ImageRKME.fit(X[y == 3][:12], K=4, steps=1)
    ours.save(tmp_path / "ours.json")
    theirs = R(cuda_idx=-1)
    theirs.load(str(tmp_path / "ours.json"))
    np.testing.assert_array_equal(theirs.get_z(), ours.z.numpy())
    np.testing.assert_array_equal(theirs.get_beta(), ours.beta.numpy())
    other = R(cuda_idx=-1)
    other.load(str(FIX / "spec_digits_low.json"))
    assert theirs.inner_prod(other) == pytest.approx(ours.inner(ref_specs["digits_low"]), rel=1e-5)
    assert theirs.inner_prod(theirs) == pytest.approx(ours.self_inner(), rel=1e-5)


def test_reference_written_in_test_agrees(tmp_path) -> None:
    """The reference fits a tiny set here (no steps: its init and QP), saves; we read and compare."""
    R = _reference()
    X, y = _digits()
    # net_width only sizes the reference's finite random ConvNets (its fit's features), not the
    # NNGP kernel: 8 instead of 128 makes its fit ~250x cheaper, and checks that model_config travels
    s = R(cuda_idx=-1, model_config={"k": 2, "mu": 0, "sigma": None, "net_width": 8, "net_depth": 3})
    s.generate_stat_spec_from_data(X[y == 7][:10], K=3, steps=1, verbose=False)
    s.save(str(tmp_path / "ref.json"))
    ours = ImageRKME.load(tmp_path / "ref.json")
    assert ours.model_config["net_width"] == 8 and ours.to_dict() == json.loads((tmp_path / "ref.json").read_text())
    other = R(cuda_idx=-1)
    other.load(str(FIX / "spec_digits_high.json"))
    assert ours.inner(ImageRKME.load(FIX / "spec_digits_high.json")) == pytest.approx(s.inner_prod(other), rel=1e-5)
    assert ours.self_inner() == pytest.approx(s.inner_prod(s), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------------

def test_fit_residual_decreases_and_beats_reference(ref_specs) -> None:
    X, y = _digits()
    data = X[y < 5][:40]  # the set the fixture spec_digits_low was fitted on, with K = 10
    x = preprocess_images(data)
    init = ImageRKME.fit(data, K=10, steps=0)
    fitted = ImageRKME.fit(data, K=10, steps=4)
    r0, r1 = init.residual(x, preprocessed=True), fitted.residual(x, preprocessed=True)
    r_ref = ref_specs["digits_low"].residual(x, preprocessed=True)
    assert r1 < 0.8 * r0
    assert r1 < r_ref
    assert fitted.beta.min() >= 0 and float(fitted.beta.sum()) == pytest.approx(1.0, abs=1e-9)
    assert fitted.z.dtype == torch.float32 and fitted.z.shape == (10, 1, 32, 32)


def test_fit_many_equals_separate_fits() -> None:
    X, y = _digits()
    # different sizes (the batch pads with zero weights); herding pools of 8 < n: seeded draws per dataset
    sets = [X[y == 1][:10], X[y == 8][:14]]
    many = ImageRKME.fit_many(sets, K=4, steps=2, herding_pool=8)
    for s, data in zip(many, sets):
        one = ImageRKME.fit(data, K=4, steps=2, herding_pool=8)
        np.testing.assert_allclose(s.z.numpy(), one.z.numpy(), atol=1e-5)
        np.testing.assert_allclose(s.beta.numpy(), one.beta.numpy(), atol=1e-6)


def test_preprocess_matches_reference_steps() -> None:
    g = np.random.default_rng(3)
    X = g.normal(size=(12, 3, 32, 32)).astype(np.float32) * np.array([1, 2, 3], np.float32)[None, :, None, None]
    X[0, 1, 2, 3] = np.nan
    x = preprocess_images(X, whitening=False)
    assert torch.isfinite(x).all()
    np.testing.assert_allclose(x.mean((0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(x.std((0, 2, 3)).numpy(), 1, atol=1e-5)
    w = preprocess_images(X).reshape(12, -1).double()
    # the reference's ZCA (a full (D, D) SVD of the regularised covariance), here on the SVD's
    # equivalent in float64 for a small D: 4x4 images, computed directly
    from lwgpu.spec.image import _zca_whiten
    small = torch.from_numpy(g.normal(size=(12, 48)))
    cov = small.T @ small / 12
    reg = 0.1 * torch.trace(cov) / 48
    u, sv, _ = torch.svd(cov + reg * torch.eye(48, dtype=torch.float64))
    np.testing.assert_allclose(_zca_whiten(small).numpy(), (small @ (u * sv.rsqrt()) @ u.T).numpy(), atol=1e-10)
    big = torch.from_numpy(g.normal(size=(60, 48)))  # n >= D: the eigendecomposition branch
    cov = big.T @ big / 60
    u, sv, _ = torch.svd(cov + 0.1 * torch.trace(cov) / 48 * torch.eye(48, dtype=torch.float64))
    np.testing.assert_allclose(_zca_whiten(big).numpy(), (big @ (u * sv.rsqrt()) @ u.T).numpy(), atol=1e-10)
    assert w.shape == (12, 3 * 32 * 32) and torch.isfinite(w).all()


# ----------------------------------------------------------------------------------------------
# banks and the embedding
# ----------------------------------------------------------------------------------------------

def _small_specs(n: int, K: int, seed: int) -> list[ImageRKME]:
    X, y = _digits()
    x = preprocess_images(X[:400])
    g = np.random.default_rng(seed)
    specs = []
    for _ in range(n):
        probs = g.dirichlet(np.full(10, 0.3))
        pick = g.choice(400, K, replace=False, p=probs[y[:400]] / probs[y[:400]].sum())
        beta = g.dirichlet(np.ones(K))
        specs.append(ImageRKME(x[pick], beta))
    return specs


def test_bank_distances_equal_pairwise_dists() -> None:
    specs = _small_specs(5, 3, seed=4)
    q = specs[0]
    z = torch.zeros(5, 4, 1, 32, 32)
    beta = torch.zeros(5, 4, dtype=torch.float64)  # padded to K = 4 with zero-weight points
    for i, s in enumerate(specs):
        z[i, :3], beta[i, :3] = s.z, s.beta
        z[i, 3] = torch.randn(1, 32, 32)
    self_terms = image_self_terms(z, beta)
    np.testing.assert_allclose(self_terms.numpy(), [s.self_inner() for s in specs], rtol=1e-12)
    got = image_mmd2_to_bank(q, z, beta, device="cpu", bank_self=self_terms, tile=2)
    want = [q.dist(s) for s in specs]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    np.testing.assert_allclose(image_mmd2_to_bank(q, z, beta).numpy(), want, atol=1e-12)


def test_embedding_correlates_with_mmd_and_rerank_finds_nearest() -> None:
    from scipy.stats import spearmanr

    from lwgpu.index.image_embed import image_features

    specs = _small_specs(25, 4, seed=5)
    q = specs[0]
    z = torch.stack([s.z for s in specs])
    beta = torch.stack([s.beta for s in specs])
    exact = image_mmd2_to_bank(q, z[1:], beta[1:], device="cpu").numpy()
    feats = image_features(specs, width=64, n_nets=4)
    approx = ((feats[1:] - feats[0]) ** 2).sum(1)
    rho = spearmanr(exact, approx).correlation
    assert rho > 0.8, rho
    candidates = np.argsort(approx)[:5]  # index proposes, exact distance re-ranks
    assert candidates[np.argmin(exact[candidates])] == np.argmin(exact)
    # a bank tuple embeds the same as the spec list
    np.testing.assert_allclose(image_features((z, beta), width=64, n_nets=4), feats, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_gpu_matches_cpu() -> None:
    specs = _small_specs(6, 5, seed=6)
    z = torch.stack([s.z for s in specs])
    beta = torch.stack([s.beta for s in specs])
    cpu = image_mmd2_to_bank(specs[0], z, beta, device="cpu")
    gpu = image_mmd2_to_bank(specs[0], z, beta, device="cuda")
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), atol=1e-10)
    X, y = _digits()
    a = ImageRKME.fit(X[y == 2][:16], K=4, steps=2, device="cpu")
    b = ImageRKME.fit(X[y == 2][:16], K=4, steps=2, device="cuda")
    assert b.residual(X[y == 2][:16]) == pytest.approx(a.residual(X[y == 2][:16]), rel=1e-3)
