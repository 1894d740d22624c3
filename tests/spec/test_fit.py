"""RKME fitting: quality against a random subsample (float64 brute force), monotone steps,
batched == one at a time, both engines (fused numba kernel, torch batches) agreeing, k-means
determinism, bad inputs."""
import numpy as np
import pytest
import torch

from lwgpu.kernels.reference import gaussian_gram, residual
from lwgpu.spec.fit import effective_K, fit_arrays
from lwgpu.spec.kmeans import kmeans
from lwgpu.spec.rkme import RKME

fit_many = RKME.fit_many  # the public entry point (lwgpu.spec.fit.fit_arrays returns the arrays)


def mean_gram(x, gamma=0.1):
    """1/n^2 sum_jl k(x_j, x_l) in float64 by the expansion |a|^2 + |b|^2 - 2ab (the n x n x d
    difference tensor of the brute force would not fit for n = 3000, d = 50)."""
    x2 = (x * x).sum(1)
    return float(np.exp(-gamma * np.clip(x2[:, None] + x2[None, :] - 2 * x @ x.T, 0, None)).mean())


def mixture(rng, n, d, k=6, spread=2.0, std=1.0):
    centres = rng.normal(size=(k, d)) * spread
    return centres[rng.integers(0, k, n)] + std * rng.normal(size=(n, d))


def heavy_anisotropic(rng, n, d):
    return rng.standard_t(2.0, size=(n, d)) * np.linspace(0.2, 3.0, d) + 5.0


def random_subsample_residual(rng, x, K, gamma, xx, draws=5):
    vals = []
    for _ in range(draws):
        z = x[rng.choice(len(x), K, replace=False)]
        b = np.full(K, 1.0 / K)
        vals.append(b @ gaussian_gram(z, z, gamma) @ b - 2 * b @ gaussian_gram(z, x, gamma).mean(1) + xx)
    return float(np.mean(vals))


def fast_residual(spec, x, xx):
    z, b = (a.astype(np.float64) for a in spec.numpy())
    g = spec.gamma
    return float(b @ gaussian_gram(z, z, g) @ b - 2 * b @ gaussian_gram(z, x, g).mean(1) + xx)


CASES = [
    ("mix", 500, 2),
    ("mix", 1500, 10),
    ("tight-mix", 3000, 50),
    ("heavy", 1200, 10),
]


ENGINES = ["numba", "torch"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind,n,d", CASES)
def test_fit_beats_random_subsample(kind, n, d, engine):
    rng = np.random.default_rng(n + d)
    if kind == "mix":
        x = mixture(rng, n, d)
    elif kind == "tight-mix":
        x = mixture(rng, n, d, k=10, spread=1.0, std=0.25)
    else:
        x = heavy_anisotropic(rng, n, d)
    spec = RKME.fit(x, K=50, gamma=0.1, device="cpu", seed=0, engine=engine)
    assert isinstance(spec, RKME) and spec.K == 50 and spec.d == d and spec.num_points == n
    assert spec.dtype == torch.float32
    beta = spec.beta.double()
    assert (beta >= 0).all() and abs(float(beta.sum()) - 1.0) < 1e-5
    xx = mean_gram(x)
    ours = fast_residual(spec, x, xx)
    rand = random_subsample_residual(rng, x, 50, 0.1, xx)
    assert ours < rand, (ours, rand)
    # brute-force reference on the same spec agrees with the shortcut above
    if n <= 1500:
        z, b = spec.numpy()
        assert abs(residual(z, b, x, 0.1) - ours) < 1e-9 + 1e-6 * ours


@pytest.mark.parametrize("engine", ENGINES)
def test_residual_decreases_over_steps(engine):
    rng = np.random.default_rng(1)
    x = mixture(rng, 1000, 10)
    xx = mean_gram(x)
    res = [fast_residual(RKME.fit(x, K=40, steps=s, device="cpu", dtype="float64", engine=engine), x, xx)
           for s in (0, 2, 8, 30)]
    assert all(b < a for a, b in zip(res, res[1:])), res
    assert res[-1] < 0.8 * res[0], res


def test_reference_scheme_options_accepted():
    rng = np.random.default_rng(2)
    x = mixture(rng, 600, 5)
    xx = mean_gram(x)
    ref_like = RKME.fit(x, K=30, steps=3, step_size=0.1, device="cpu", dtype="float64")
    init = RKME.fit(x, K=30, steps=0, device="cpu", dtype="float64")
    ours = RKME.fit(x, K=30, device="cpu", dtype="float64")
    assert ref_like.dtype == torch.float64
    assert fast_residual(ours, x, xx) < fast_residual(ref_like, x, xx) <= fast_residual(init, x, xx) + 1e-9


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 2e-4)])
def test_fit_many_equals_one_at_a_time(dtype, tol, engine):
    rng = np.random.default_rng(3)
    # ragged n; two different d (grouped into separate batches); one dataset with n <= K
    data = [mixture(rng, n, d) for n, d in [(300, 4), (700, 4), (450, 4), (20, 4), (500, 7), (260, 7)]]
    many = fit_many(data, K=30, steps=10, device="cpu", seed=5, dtype=dtype, max_points=400, engine=engine)
    for x, spec in zip(data, many):
        one = RKME.fit(x, K=30, steps=10, device="cpu", seed=5, dtype=dtype, max_points=400, engine=engine)
        assert spec.K == one.K == effective_K(30, len(x)) and spec.num_points == len(x)
        np.testing.assert_allclose(spec.z.numpy(), one.z.numpy(), atol=tol * 10)
        np.testing.assert_allclose(spec.beta.numpy(), one.beta.numpy(), atol=tol)


def test_fit_arrays_returns_what_fit_many_wraps():
    """lwgpu.spec.fit returns arrays (no RKME: fit.py and rkme.py do not import each other both ways)."""
    x = mixture(np.random.default_rng(2), 60, 3)
    (z, beta, n), = fit_arrays([x], K=7, device="cpu", seed=3, dtype="float64")
    spec = RKME.fit(x, K=7, device="cpu", seed=3, dtype="float64")
    assert n == 60 == spec.num_points and z.shape == (7, 3) and beta.shape == (7,) and z.dtype == torch.float64
    np.testing.assert_array_equal(spec.z.numpy(), z.numpy())
    np.testing.assert_array_equal(spec.beta.numpy(), beta.numpy())


def test_small_n_uses_reference_K_rule_and_seed_list():
    rng = np.random.default_rng(4)
    x = mixture(rng, 12, 3)
    spec = RKME.fit(x, K=100, device="cpu")
    assert spec.K == 8 == effective_K(100, 12)
    assert RKME.fit(x[:1], K=100, device="cpu").K == 1
    specs = fit_many([x, x], K=5, device="cpu", seed=[1, 2])
    assert len(specs) == 2
    with pytest.raises(ValueError, match="one int per dataset"):
        fit_many([x, x], K=5, device="cpu", seed=[1])


def test_fit_is_deterministic_and_centred_data_far_from_origin():
    rng = np.random.default_rng(5)
    x = mixture(rng, 800, 6) + 1e4
    a = RKME.fit(x, K=20, device="cpu", seed=3)
    b = RKME.fit(x, K=20, device="cpu", seed=3)
    assert torch.equal(a.z, b.z) and torch.equal(a.beta, b.beta)
    xx = mean_gram(x - 1e4)
    spec64 = RKME(a.z.double() - 1e4, a.beta.double(), 0.1)
    assert fast_residual(spec64, x - 1e4, xx) < random_subsample_residual(rng, x - 1e4, 20, 0.1, xx)


@pytest.mark.parametrize("engine", ENGINES)
def test_large_n_subsample_then_exact_beta(engine):
    rng = np.random.default_rng(6)
    x = mixture(rng, 6000, 5)
    spec = RKME.fit(x, K=40, device="cpu", max_points=1000, chunk_rows=2500, engine=engine)
    xs = x[rng.choice(6000, 2000, replace=False)]
    xx = mean_gram(xs)
    assert fast_residual(spec, xs, xx) < random_subsample_residual(rng, xs, 40, 0.1, xx)
    assert spec.num_points == 6000


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n,d,options", [(900, 6, {}), (1500, 30, {}), (5000, 4, {"max_points": 1200}),
                                         (700, 8, {"steps": 4, "step_size": 0.2}), (400, 3, {"kmeans_iters": 0})])
def test_engines_agree(n, d, options, dtype):
    """Same algorithm, same random draws: the fused kernel and the torch batches give the same spec
    up to rounding (a rounding-level difference may flip one accept/reject, hence the residual test)."""
    rng = np.random.default_rng(n + d)
    x = mixture(rng, n, d)
    a = RKME.fit(x, K=40, device="cpu", seed=2, dtype=dtype, engine="numba", **options)
    b = RKME.fit(x, K=40, device="cpu", seed=2, dtype=dtype, engine="torch", **options)
    assert a.dtype == b.dtype == getattr(torch, dtype)
    xx = mean_gram(x)
    ra, rb = fast_residual(a, x, xx), fast_residual(b, x, xx)
    assert abs(ra - rb) <= 0.02 * max(ra, rb) + 1e-9, (ra, rb)
    if dtype == "float64":
        np.testing.assert_allclose(a.z.numpy(), b.z.numpy(), atol=1e-6)
        np.testing.assert_allclose(a.beta.numpy(), b.beta.numpy(), atol=1e-5)


def test_fused_kernel_exponential_and_gram_match_float64():
    from lwgpu.spec._fit_numba import _FLUSH, _exp_f32_inplace, _gauss_into, _sqnorms

    rng = np.random.default_rng(11)
    a = np.concatenate([-rng.random(200_000) * 100, [0.0, -1e-30, -_FLUSH + 1e-3, -_FLUSH - 1e-3, -500.0]])
    got = a.astype(np.float32)
    _exp_f32_inplace(got, np.empty(len(a), dtype=np.int32))
    want = np.exp(a.astype(np.float32).astype(np.float64))
    keep = a.astype(np.float32) >= -_FLUSH
    assert np.all(np.abs(got[keep] - want[keep]) <= 2e-7 * want[keep])
    assert np.all(got[~keep] == 0.0)
    for dt, tol in [(np.float64, 1e-12), (np.float32, 2e-6)]:
        z = rng.normal(size=(30, 7)).astype(dt)
        x = rng.normal(size=(500, 7)).astype(dt)
        out, m = np.empty((30, 500), dtype=dt), np.empty(30)
        _gauss_into(z, x.T.copy(), _sqnorms(x), dt(0.1), out, m)
        ref = gaussian_gram(z.astype(np.float64), x.astype(np.float64), 0.1)
        np.testing.assert_allclose(out, ref, atol=tol)
        np.testing.assert_allclose(m, ref.mean(1), atol=tol)


@pytest.mark.parametrize("n,m", [(1000, 10), (50, 50), (7, 3), (100, 1)])
def test_fused_kernel_top_m_matches_torch_topk(n, m):
    from lwgpu.spec._fit_numba import _top_m

    keys = np.random.default_rng(n + m).random(n)
    np.testing.assert_array_equal(_top_m(keys, m), torch.tensor(keys).topk(m).indices.numpy())


def test_kmeans_deterministic_per_seed_and_batch_independent():
    rng = np.random.default_rng(7)
    xs = [torch.tensor(mixture(rng, n, 3)) for n in (200, 120)]
    X = torch.zeros(2, 200, 3, dtype=torch.float64)
    mask = torch.zeros(2, 200, dtype=torch.bool)
    for b, x in enumerate(xs):
        X[b, : len(x)] = x
        mask[b, : len(x)] = True
    c1 = kmeans(X, mask, 8, seeds=[11, 12], iters=20)
    c2 = kmeans(X, mask, 8, seeds=[11, 12], iters=20)
    assert torch.equal(c1, c2)
    alone = kmeans(xs[1].unsqueeze(0), None, 8, seeds=[12], iters=20)
    torch.testing.assert_close(alone[0], c1[1])
    other = kmeans(X, mask, 8, seeds=[13, 14], iters=20)
    assert not torch.equal(other, c1)
    # Lloyd optimality: each centre is the mean of the points nearest to it
    x = xs[0]
    a = torch.cdist(x, c1[0]).argmin(1)
    for k in a.unique():
        torch.testing.assert_close(c1[0][k], x[a == k].mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((0, 3)), "empty"),
        (np.zeros(5), "shape"),
        (np.zeros((4, 3, 2)), "shape"),
        (np.array([[1.0, np.nan], [2.0, 3.0]]), "NaN"),
    ],
)
def test_bad_data_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        RKME.fit(bad, device="cpu")


def test_nan_impute_and_parameter_checks():
    rng = np.random.default_rng(8)
    x = mixture(rng, 200, 3)
    x[5, 1] = np.nan
    x[7, 0] = np.inf
    spec = RKME.fit(x, K=10, device="cpu", nan_policy="impute")
    assert torch.isfinite(spec.z).all()
    clean = x.copy()
    for j in range(3):
        col = clean[:, j]
        col[~np.isfinite(col)] = col[np.isfinite(col)].mean()
    same = RKME.fit(clean, K=10, device="cpu")
    torch.testing.assert_close(spec.z, same.z)
    for kw, match in [({"K": 0}, "K"), ({"gamma": 0.0}, "gamma"), ({"gamma": -1}, "gamma"),
                      ({"steps": -1}, "steps"), ({"bogus": 1}, "unknown fit options"),
                      ({"step_size": 0}, "step_size"), ({"engine": "jax"}, "unknown fit engine")]:
        with pytest.raises(ValueError, match=match):
            RKME.fit(clean, device="cpu", **kw)
    with pytest.raises(ValueError, match="no datasets"):
        fit_many([], device="cpu")
    with pytest.raises(ValueError, match="list"):
        fit_many(clean, device="cpu")


@pytest.mark.gpu
def test_gpu_fit_matches_cpu_within_float32_tolerance():
    rng = np.random.default_rng(9)
    data = [mixture(rng, n, 6) for n in (900, 400, 1300)]
    cpu = fit_many(data, K=30, device="cpu", seed=1)
    gpu = fit_many(data, K=30, device="cuda", seed=1)
    for x, a, b in zip(data, cpu, gpu):
        assert b.device.type == "cuda"
        xx = mean_gram(x)
        ra, rb = fast_residual(a, x, xx), fast_residual(b.to("cpu"), x, xx)
        assert abs(ra - rb) <= 0.05 * ra + 1e-7


def test_fit_leaves_torch_thread_count_alone():
    before = torch.get_num_threads()
    RKME.fit(mixture(np.random.default_rng(10), 300, 3), K=10, device="cpu")
    assert torch.get_num_threads() == before
