"""JSON round trip in the reference format, and every bad input refused with a clear error."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lwgpu import RKME
from lwgpu_testutil import FIXTURES, random_spec_arrays


def test_json_round_trip(tmp_path, rng):
    z, beta = random_spec_arrays(rng, 9, 4)
    spec = RKME(z, beta, 0.25, num_points=123, dtype="float64")
    spec.save(tmp_path / "spec.json")
    obj = json.loads((tmp_path / "spec.json").read_text())
    assert obj["type"] == "RKMETableSpecification"
    assert set(obj) >= {"type", "z", "beta", "gamma", "num_points"}
    back = RKME.load(tmp_path / "spec.json", dtype="float64")
    np.testing.assert_array_equal(back.z.numpy(), z)
    np.testing.assert_array_equal(back.beta.numpy(), beta)
    assert back.gamma == 0.25 and back.num_points == 123
    assert not list(tmp_path.glob("*.tmp"))


def test_loads_reference_fixture():
    spec = RKME.load(FIXTURES / "reference_rkme" / "spec1.json")
    raw = json.loads((FIXTURES / "reference_rkme" / "spec1.json").read_text())
    assert spec.K == len(raw["beta"]) and spec.d == 8 and spec.gamma == raw["gamma"]
    assert spec.dtype == torch.float32


@pytest.mark.parametrize(
    "content,match",
    [("{not json", "not valid JSON"), ('{"z": [[1.0]], "gamma": 0.1}', "lacks keys"),
     ('{"type": "RKMETextSpecification", "z": [[1.0]], "beta": [1.0], "gamma": 0.1}', "only table specs")],
)
def test_bad_json_refused(tmp_path, content, match):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        RKME.load(tmp_path / "bad.json")


def test_accepts_numpy_torch_pandas(rng):
    z, beta = random_spec_arrays(rng, 4, 3)
    a = RKME(z, beta)
    b = RKME(torch.from_numpy(z), torch.from_numpy(beta))
    c = RKME(pd.DataFrame(z), pd.Series(beta))
    assert a.dist(b) == pytest.approx(0.0, abs=1e-6) and a.dist(c) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "z,beta,gamma,match",
    [
        (np.zeros((0, 3)), np.zeros(0), 0.1, "empty"),
        (np.zeros((2, 3, 4)), np.ones(2), 0.1, "rank 3"),
        (np.array([[np.nan, 1.0]]), np.ones(1), 0.1, "NaN"),
        (np.ones((2, 2)), np.ones(3), 0.1, "must match"),
        (np.ones((2, 2)), np.array([1.0, np.inf]), 0.1, "beta contains"),
        (np.ones((2, 2)), np.ones(2), 0.0, "gamma"),
        (np.ones((2, 2)), np.ones(2), -1.0, "gamma"),
        (np.array([["a", "b"]]), np.ones(1), 0.1, "numeric"),
    ],
)
def test_bad_construction_refused(z, beta, gamma, match):
    with pytest.raises(ValueError, match=match):
        RKME(z, beta, gamma)


def test_mismatched_specs_refused(rng):
    a = RKME(*random_spec_arrays(rng, 3, 2), gamma=0.1)
    with pytest.raises(ValueError, match="dimension mismatch"):
        a.dist(RKME(*random_spec_arrays(rng, 3, 4), gamma=0.1))
    with pytest.raises(ValueError, match="gamma mismatch"):
        a.inner(RKME(*random_spec_arrays(rng, 3, 2), gamma=0.2))
    with pytest.raises(ValueError, match="X has d=5"):
        a.residual(np.ones((10, 5)))
