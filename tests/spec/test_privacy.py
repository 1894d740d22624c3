"""Differentially private RKME specs (lwgpu.spec.privacy): noise scale, calibration, sensitivity, JSON."""
import json
import math

import numpy as np
import pytest
import torch

from lwgpu.spec import privacy as P
from lwgpu.spec.rkme import RKME


def _blob(seed, n, d=3):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, (n, d)) + np.array([2.0, -1.0, 0.5])[:d]


def test_classic_sigma_is_the_textbook_formula():
    n, eps, delta = 500, 0.5, 1e-5
    want = math.sqrt(2 * math.log(1.25 / delta)) * (2 * math.sqrt(2) / n) / eps
    assert P.noise_sigma(eps, delta, n, "classic") == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="epsilon < 1"):
        P.classic_sigma(2.0, delta, 0.01)


def test_analytic_sigma_solves_the_exact_delta_equation():
    def cdf(t):
        return 0.5 * math.erfc(-t / math.sqrt(2))

    for eps, delta in [(0.1, 1e-5), (1.0, 1e-6), (8.0, 1e-5)]:
        s = P.analytic_sigma(eps, delta, 1.0)
        # Balle & Wang (2018), Thm 8, evaluated independently with math.erfc
        exact = cdf(1 / (2 * s) - eps * s) - math.exp(eps) * cdf(-1 / (2 * s) - eps * s)
        assert exact == pytest.approx(delta, rel=1e-6)
        assert P.gaussian_delta(eps, s * 0.99, 1.0) > delta  # the smallest such sigma
        if eps < 1:
            assert s < P.classic_sigma(eps, delta, 1.0)
    # sigma scales linearly with the sensitivity
    assert P.analytic_sigma(1.0, 1e-5, 0.02) == pytest.approx(0.02 * P.analytic_sigma(1.0, 1e-5, 1.0), rel=1e-8)


def test_noise_std_matches_sigma_over_repeats():
    x = torch.from_numpy(_blob(0, 200))
    W, b = P.rff_map(3, 256, 0.1, seed=0)
    sigma = P.noise_sigma(1.0, 1e-5, 200)
    clean = P.noisy_embedding(x, W, b, 0.0, noise_seed=0)
    draws = torch.stack([P.noisy_embedding(x, W, b, sigma, noise_seed=s) for s in range(1, 41)])  # (40, 256)
    noise = (draws - clean).numpy()
    # 40 x 256 = 10,240 draws: the empirical std is within 3% of sigma (s.e. ~0.7%)
    assert noise.std() == pytest.approx(sigma, rel=0.03)
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(noise.size)
    # the clean embedding is the float64 mean of cos features
    brute = (np.sqrt(2 / 256) * np.cos(x.numpy() @ W.numpy().T + b.numpy())).mean(0)
    np.testing.assert_allclose(clean.numpy(), brute, rtol=1e-10, atol=1e-14)


def test_sensitivity_bound_holds_and_features_approximate_the_kernel():
    rng = np.random.default_rng(1)
    n, D = 50, 512
    W, b = P.rff_map(3, D, 0.1, seed=2)
    X = torch.from_numpy(rng.normal(size=(n, 3)) * 5)
    base = P.noisy_embedding(X, W, b, 0.0, noise_seed=0)
    worst = 0.0
    for _ in range(100):
        X2 = X.clone()
        X2[int(rng.integers(n))] = torch.from_numpy(rng.normal(size=3) * 20)
        worst = max(worst, float((P.noisy_embedding(X2, W, b, 0.0, noise_seed=0) - base).norm()))
    assert worst <= P.sensitivity(n) + 1e-12
    assert worst > 0.4 * P.sensitivity(n)  # the bound is not loose by orders of magnitude
    W8, b8 = P.rff_map(3, 16384, 0.1, seed=3)
    a, c = X[:20], X[20:40] / 5
    approx = (np.sqrt(2 / 16384) * np.cos(a.numpy() @ W8.numpy().T + b8.numpy())) @ \
        (np.sqrt(2 / 16384) * np.cos(c.numpy() @ W8.numpy().T + b8.numpy())).T
    exact = np.exp(-0.1 * ((a.numpy()[:, None] - c.numpy()[None]) ** 2).sum(-1))
    assert np.abs(approx - exact).max() < 0.05


@pytest.fixture(scope="module")
def private_specs():
    X = _blob(3, 400)
    opts = dict(K=8, device="cpu", dtype="float64", features=512, noise_seed=7)
    return X, RKME.fit(X, privacy=(0.02, 1e-5), **opts), RKME.fit(X, privacy=(1e4, 1e-5), **opts)


def test_private_fit_records_budget_and_degrades_with_epsilon(private_specs):
    X, tight, loose = private_specs
    assert tight.privacy["epsilon"] == 0.02 and tight.privacy["delta"] == 1e-5
    assert tight.privacy["sigma"] == pytest.approx(P.noise_sigma(0.02, 1e-5, 400))
    assert tight.privacy["sensitivity"] == pytest.approx(2 * math.sqrt(2) / 400)
    assert tight.num_points == 400 and tight.K == 8
    # more noise, worse spec; with almost no noise the spec summarises the data well
    assert loose.residual(X) < 0.05 < tight.residual(X)
    assert loose.residual(X) < 0.2 * tight.residual(X)
    # z is not a copy of data rows
    z = loose.numpy()[0]
    assert np.sqrt(((z[:, None] - X[None]) ** 2).sum(-1)).min() > 1e-6


def test_privacy_json_round_trip_and_reference_compatibility(private_specs, tmp_path):
    _, tight, _ = private_specs
    tight.save(tmp_path / "p.json")
    back = RKME.load(tmp_path / "p.json")
    assert back.privacy == tight.privacy
    np.testing.assert_allclose(back.numpy()[0], tight.numpy()[0], rtol=1e-6)
    plain = RKME.fit(_blob(4, 100), K=5, device="cpu")
    assert plain.privacy is None and "privacy" not in plain.to_dict()
    ref = {"type": "RKMETableSpecification", "z": [[0.0, 1.0]], "beta": [1.0], "gamma": 0.1, "num_points": 3}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    assert RKME.load(tmp_path / "ref.json").privacy is None
    assert tight.to("cpu", "float32").privacy == tight.privacy


def test_market_shows_privacy(private_specs, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from lwgpu.market import Market

    X, tight, _ = private_specs
    model = LogisticRegression().fit(X, (X[:, 0] > 2).astype(int))
    sem = {"data_type": "table", "task_type": "classification", "name": "p", "description": "private",
           "input_dim": 3, "output_dim": 2, "tags": [], "library": "sklearn", "license": "MIT"}
    with Market(tmp_path / "m", device="cpu") as m:
        private_id = m.add(model, sem, tight)
        plain_id = m.add(model, dict(sem, name="q"), RKME.fit(X, K=4, device="cpu"))
        assert m.get(private_id).privacy == tight.privacy
        assert m.get(plain_id).privacy is None


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="epsilon"):
        RKME.fit(_blob(0, 20), K=3, privacy=(0.0, 1e-5))
    with pytest.raises(ValueError, match="delta"):
        RKME.fit(_blob(0, 20), K=3, privacy=(1.0, 1.5))
    with pytest.raises(ValueError, match="pair"):
        RKME.fit(_blob(0, 20), K=3, privacy=1.0)
