"""Streaming RKME fits (lwgpu.spec.stream): quality against RKME.fit, sources, passes, merge/update."""
import numpy as np
import pytest
import torch

from lwgpu.spec import stream
from lwgpu.spec.rkme import RKME


def _clusters(seed, n, d=6, k=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (k, d))
    return (centres[rng.integers(0, k, n)] + rng.normal(0.0, 1.0, (n, d))).astype(np.float32)


def _mmd2_bruteforce(z, beta, X, gamma):
    """float64 numpy MMD^2 between sum beta_i k(z_i,.) and the empirical embedding of X."""
    def k(a, b):
        return np.exp(-gamma * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    X = X.astype(np.float64)
    return float(beta @ k(z, z) @ beta - 2 * (beta @ k(z, X)).mean() + k(X, X).mean())


@pytest.fixture(scope="module")
def data():
    return _clusters(0, 4000)


def test_stream_residual_within_1_1x_of_fit(data):
    full = RKME.fit(data, K=40, device="cpu", dtype="float64")
    streamed = RKME.fit_stream(data, K=40, chunk_rows=500)
    assert streamed.num_points == data.shape[0] and streamed.K == 40
    r_full, r_stream = full.residual(data), streamed.residual(data)
    assert r_stream <= 1.1 * r_full, (r_stream, r_full)
    # the residual method agrees with a float64 brute force on a subsample-free check
    z, b = streamed.numpy()
    sub = data[:700]
    assert streamed.residual(sub) == pytest.approx(_mmd2_bruteforce(z, b, sub, 0.1), rel=1e-5)


def test_every_source_gives_the_same_spec(data, tmp_path):
    pd = pytest.importorskip("pandas")
    X = data[:2400]
    ref = RKME.fit_stream(X, K=20, chunk_rows=400)
    np.save(tmp_path / "x.npy", X)
    pd.DataFrame(X.astype(np.float64), columns=[f"c{i}" for i in range(X.shape[1])]).to_csv(tmp_path / "x.csv",
                                                                                           index=False)
    sources = [tmp_path / "x.npy", str(tmp_path / "x.csv"), np.load(tmp_path / "x.npy", mmap_mode="r"),
               (X[i:i + 150] for i in range(0, len(X), 150)), torch.from_numpy(X)]
    try:
        import pyarrow  # noqa: F401

        pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])]).to_parquet(tmp_path / "x.parquet")
        sources.append(tmp_path / "x.parquet")
    except ImportError:
        pass
    for src in sources:
        got = RKME.fit_stream(src, K=20, chunk_rows=400)
        assert got.num_points == len(X)
        np.testing.assert_allclose(got.numpy()[0], ref.numpy()[0], atol=1e-5, err_msg=type(src).__name__)
        np.testing.assert_allclose(got.numpy()[1], ref.numpy()[1], atol=1e-6, err_msg=type(src).__name__)


def test_rechunk_keeps_every_row_once():
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 3)) for n in (5, 17, 1, 40, 3)]
    out = list(stream.rechunk(iter(parts), 16))
    assert [c.shape[0] for c in out] == [16, 16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate(out), np.concatenate(parts))


def test_two_passes_give_the_exact_beta(data):
    one = RKME.fit_stream(data, K=30, chunk_rows=500, passes=1)
    two = RKME.fit_stream(data, K=30, chunk_rows=500, passes=2)
    np.testing.assert_allclose(one.numpy()[0], two.numpy()[0])  # same z, only beta re-solved
    assert two.residual(data) <= one.residual(data) + 1e-12
    # beta is optimal for the exact mean embedding: KKT on the simplex (gradient equal on the support)
    z, beta = two.numpy()
    k_zz = np.exp(-0.1 * ((z[:, None] - z[None]) ** 2).sum(-1))
    m = np.exp(-0.1 * ((z[:, None] - data[None].astype(np.float64)) ** 2).sum(-1)).mean(1)
    g = k_zz @ beta - m
    supp = beta > 1e-8
    assert np.ptp(g[supp]) < 1e-6 and g[~supp].min(initial=np.inf) >= g[supp].max() - 1e-6


def test_reduction_never_increases_the_objective():
    rng = np.random.default_rng(2)
    T = torch.from_numpy(rng.normal(size=(300, 4)))
    w = torch.from_numpy(rng.random(300))
    w /= w.sum()
    z0 = T[:25].clone()
    b0 = torch.full((25,), 1 / 25, dtype=torch.float64)
    z, beta, _ = stream.reduce_weighted(T, w, z0, b0, gamma=0.3, steps=5)
    def mmd(zz, bb):  # float64 brute force of || sum_j w_j k(T_j,.) - sum_i b_i k(z_i,.) ||^2
        P = np.concatenate([zz, T.numpy()])
        c = np.concatenate([bb, -w.numpy()])
        return float(c @ np.exp(-0.3 * ((P[:, None] - P[None]) ** 2).sum(-1)) @ c)
    assert mmd(z.numpy(), beta.numpy()) < 0.5 * mmd(z0.numpy(), b0.numpy())
    assert beta.min() >= 0 and float(beta.sum()) == pytest.approx(1.0)


def test_merge_and_update_match_a_fit_of_the_union():
    X = _clusters(3, 3000)
    old = RKME.fit(X[:2000], K=30, device="cpu", dtype="float64")
    full = RKME.fit(X, K=30, device="cpu", dtype="float64")
    grown = old.update(X[2000:])
    assert grown.num_points == 3000 and grown.K == 30
    assert grown.residual(X) <= 1.15 * full.residual(X)
    # weights matter: merging with 0 rows of the other spec keeps (almost) the old embedding
    other = RKME.fit(X[2000:] + 4.0, K=30, device="cpu", dtype="float64")
    same = old.merge(other, n_self=2000, n_other=0)
    assert old.dist(same) < 1e-4 < old.dist(old.merge(other, n_self=2000, n_other=1000))


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown suffix"):
        RKME.fit_stream(tmp_path / "x.bin", K=5) if (tmp_path / "x.bin").write_bytes(b"0") else None
    with pytest.raises(ValueError, match="passes=2"):
        RKME.fit_stream((np.zeros((10, 2)) for _ in range(2)), K=5, passes=2)
    with pytest.raises(ValueError, match="d=3"):
        RKME.fit_stream(iter([np.zeros((10, 2)), np.zeros((10, 3))]), K=5, chunk_rows=5)
