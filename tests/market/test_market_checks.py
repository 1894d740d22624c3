"""Every bad submission is refused with its check named, and the market is left exactly as it was."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from market_testutil import check_consistent, snapshot
from lwgpu.market import Market, SubmissionError, pack_learnware
from lwgpu.spec.rkme import RKME

BAD_MODEL = '''
import numpy as np

class Model:
    def __init__(self, mode="ok", out=10):
        self.mode, self.out = mode, out

    def predict(self, X):
        X = np.asarray(X)
        if self.mode == "raise":
            raise RuntimeError("model is broken")
        if self.mode == "shape":
            return np.zeros((len(X), 3))
        if self.mode == "labels":
            return np.full(len(X), 42)
        if self.mode == "rows":
            return np.zeros(len(X) + 1, dtype=int)
        return np.zeros((len(X), self.out))
'''


@pytest.fixture(scope="module")
def small_market(packages, tmp_path_factory):
    m = Market(tmp_path_factory.mktemp("checks") / "m", device="cpu")
    for p in packages[:3]:
        m.submit(p)
    m.flush()
    yield m
    m.close()


def _python_pkg(tmp: Path, digits_data, mode: str, name: str = "bad", **sem) -> Path:
    src = tmp / f"model_{mode}.py"
    src.write_text(BAD_MODEL)
    spec = dict(digits_data.tasks[0].semantic_spec, name=name, **sem)
    return pack_learnware({"module": str(src), "class": "Model", "kwargs": {"mode": mode}}, spec,
                          digits_data.tasks[0].rkme, tmp / f"pkg_{mode}_{name}")


def _edit_yaml(folder: Path, fn) -> Path:
    y = folder / "learnware.yaml"
    data = yaml.safe_load(y.read_text())
    fn(data)
    y.write_text(yaml.safe_dump(data))
    return folder


def _bad_packages(tmp: Path, digits_data, packages) -> dict[str, tuple[str, Path]]:
    t0 = digits_data.tasks[0]
    good = _python_pkg(tmp, digits_data, "ok", name="good")
    cases: dict[str, tuple[str, Path]] = {}

    broken = shutil.copytree(good, tmp / "broken_yaml")
    (broken / "learnware.yaml").write_text("semantic_spec: {name: [unclosed\nmodel: : :")
    cases["broken yaml"] = ("package", broken)

    no_yaml = shutil.copytree(good, tmp / "no_yaml")
    (no_yaml / "learnware.yaml").unlink()
    cases["missing yaml"] = ("package", no_yaml)

    no_spec = shutil.copytree(good, tmp / "no_spec")
    (no_spec / "rkme.json").unlink()
    cases["missing spec file"] = ("package", no_spec)

    no_model = shutil.copytree(good, tmp / "no_model")
    (no_model / "model_ok.py").unlink()
    cases["missing model file"] = ("package", no_model)

    cases["missing path"] = ("package", tmp / "does_not_exist")
    notzip = tmp / "not_a_zip.zip"
    notzip.write_bytes(b"this is not a zip")
    cases["not a zip"] = ("package", notzip)

    bad_sem = _edit_yaml(shutil.copytree(good, tmp / "bad_sem"), lambda d: d["semantic_spec"].update(task_type="dance"))
    cases["invalid semantic spec"] = ("semantic", bad_sem)
    no_name = _edit_yaml(shutil.copytree(good, tmp / "no_name"), lambda d: d["semantic_spec"].pop("name"))
    cases["semantic spec lacks a field"] = ("semantic", no_name)

    nan = shutil.copytree(good, tmp / "nan_spec")
    obj = json.loads((nan / "rkme.json").read_text())
    obj["z"][0][0] = float("nan")
    (nan / "rkme.json").write_text(json.dumps(obj))
    cases["NaN spec"] = ("rkme", nan)

    dim = _edit_yaml(shutil.copytree(good, tmp / "wrong_dim"), lambda d: d["semantic_spec"].update(input_dim=63))
    cases["wrong dimension"] = ("rkme", dim)

    z, beta = t0.rkme.numpy()
    cases["wrong gamma"] = ("rkme", pack_learnware(t0.model, dict(t0.semantic_spec, name="g"),
                                                   RKME(z, beta, gamma=0.2), tmp / "wrong_gamma"))
    garbage = shutil.copytree(good, tmp / "garbage_spec")
    (garbage / "rkme.json").write_text("{not json")
    cases["unreadable spec"] = ("rkme", garbage)

    cls = _edit_yaml(shutil.copytree(good, tmp / "no_class"), lambda d: d["model"].update({"class": "Nope"}))
    cases["model class missing"] = ("model_load", cls)
    cases["model that raises"] = ("model_predict", _python_pkg(tmp, digits_data, "raise"))
    cases["wrong output shape"] = ("model_predict", _python_pkg(tmp, digits_data, "shape"))
    cases["labels out of range"] = ("model_predict", _python_pkg(tmp, digits_data, "labels"))
    cases["wrong number of rows"] = ("model_predict", _python_pkg(tmp, digits_data, "rows"))
    cases["duplicate (zip)"] = ("duplicate", packages[1])
    unzipped = tmp / "dup_folder"
    with zipfile.ZipFile(packages[2]) as zf:
        zf.extractall(unzipped)
    cases["duplicate (same content as a folder)"] = ("duplicate", unzipped)
    return cases


def test_bad_submissions_refused_market_unchanged(small_market, digits_data, packages, tmp_path):
    m = small_market
    cases = _bad_packages(tmp_path, digits_data, packages)
    before = snapshot(m)
    for label, (check, path) in cases.items():
        with pytest.raises(SubmissionError) as info:
            m.submit(path)
        assert info.value.check == check, f"{label}: refused by {info.value.check!r} ({info.value.reason})"
        assert info.value.reason
        assert snapshot(m) == before, f"{label}: the market changed"
    check_consistent(m)


def test_valid_python_and_torch_models_accepted(small_market, digits_data, tmp_path):
    import torch

    m = small_market
    good = _python_pkg(tmp_path, digits_data, "ok", name="python model")
    i = m.submit(good)
    out = m.get(i).predict(np.zeros((4, 64)))
    assert out.shape == (4, 10)
    net = torch.nn.Sequential(torch.nn.Linear(64, 10))
    spec = dict(digits_data.tasks[0].semantic_spec, name="torch model", library="pytorch")
    j = m.submit(pack_learnware(net, spec, digits_data.tasks[0].rkme, tmp_path / "torch.zip"))
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(m.get(j).predict(x), net(torch.from_numpy(x)).numpy(), rtol=1e-6)
    m.delete(i)
    m.delete(j)
    check_consistent(m)
