"""Learnware zips written by the reference package's own templates, stored as fixtures
(``tests/fixtures/reference_zips``, written by its ``make_fixture.py`` with the reference installed), are
accepted by the market, predict exactly like the original models, and are found by the reference's own
search requirements; the market's process never imports ``learnware``.

The same checks as ``test_reference_templates.py`` without the reference package (which CI does not
install): every file here was written by the reference (zips, semantic specs, user RKMEs, requirements)
or by the original scikit-learn model (predictions), and only lwgpu reads them.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from lwgpu.market import Market, SubmissionError
from lwgpu.market.worker import close_workers
from lwgpu.spec.rkme import RKME
from market_testutil import BLOCK_REFERENCE_IMPORTS

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "reference_zips"
MANIFEST = json.loads((FIX / "manifest.json").read_text())
ITEMS: dict = MANIFEST["learnwares"]
REQUIREMENTS: dict = json.loads((FIX / "requirements.json").read_text())
NAMES = sorted(ITEMS)


def _file(name: str, key: str) -> Path:
    return FIX / ITEMS[name]["files"][key]


def _semantic(name: str) -> dict:
    return json.loads(_file(name, "semantic").read_text())


def _stat_spec(name: str, folder: Path) -> RKME:
    """The RKME inside the zip of ``name`` (the reference's JSON), read by lwgpu."""
    path = folder / f"{name}.stat_spec.json"
    with zipfile.ZipFile(_file(name, "zip")) as zf:
        path.write_bytes(zf.read("stat_spec.json"))
    return RKME.load(path)


def _mmd2(a: RKME, b: RKME) -> float:
    """Float64 brute-force squared MMD of two Gaussian-kernel RKMEs (same gamma)."""
    (za, ba), (zb, bb) = [(np.asarray(s.z, np.float64), np.asarray(s.beta, np.float64)) for s in (a, b)]

    def k(x, y):
        return np.exp(-a.gamma * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))

    return float(ba @ k(za, za) @ ba - 2 * ba @ k(za, zb) @ bb + bb @ k(zb, zb) @ bb)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_files_are_intact_reference_template_zips(name):
    """The files are the ones the generator wrote (sha256), each zip has the template's layout (no
    semantic spec unless the package carries one, a !!python/tuple, a BaseModel subclass), and the
    pickled model still loads with this scikit-learn and reproduces the saved predictions."""
    item = ITEMS[name]
    for key, digest in item["sha256"].items():
        assert hashlib.sha256(_file(name, key).read_bytes()).hexdigest() == digest, (
            f"{_file(name, key)} changed; regenerate with tests/fixtures/reference_zips/make_fixture.py")
    with zipfile.ZipFile(_file(name, "zip")) as zf:
        assert set(zf.namelist()) == {"learnware.yaml", "__init__.py", "model.pkl", "stat_spec.json",
                                      "requirements.txt"}
        text = zf.read("learnware.yaml").decode()
        init = zf.read("__init__.py").decode()
        model = pickle.loads(zf.read("model.pkl"))  # plain scikit-learn objects, no learnware class
    assert f"!!python/tuple\n    - {item['input_dim']}\n" in text
    assert ("semantic_spec" in text) == item["semantic_in_yaml"]
    assert "from learnware.model.base import BaseModel" in init
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(text)  # a plain safe loader refuses the tag: the market's loader must understand it
    X, want = np.load(_file(name, "X")), np.load(_file(name, "pred"))
    assert X.shape == (len(want), item["input_dim"])
    np.testing.assert_array_equal(model.predict(X), want)
    assert np.unique(want).size > 2  # the comparisons below are not trivial


@pytest.fixture(scope="module")
def fixture_market(tmp_path_factory):
    """One batch: iris and diabetes with their semantic spec as the argument, wine without one (its
    learnware.yaml carries it), then iris and diabetes again without (refused: no semantic spec).
    Returns (market, {name: id}, {name: refusal})."""
    m = Market(tmp_path_factory.mktemp("fixture_market") / "m", device="cpu")
    paths = [_file(n, "zip") for n in ("iris_clf", "diabetes_reg", "wine_clf", "iris_clf", "diabetes_reg")]
    sems = [_semantic("iris_clf"), _semantic("diabetes_reg"), None, None, None]
    out = m.submit_many(paths, sems, progress=False)
    assert all(isinstance(i, int) for i in out[:3]), out
    yield m, dict(zip(("iris_clf", "diabetes_reg", "wine_clf"), out[:3])), dict(zip(("iris_clf", "diabetes_reg"),
                                                                                    out[3:]))
    m.close()
    close_workers()


def test_fixture_learnwares_predict_exactly_like_the_original_models(fixture_market):
    m, ids, _ = fixture_market
    for name in NAMES:
        item, ref = ITEMS[name], _semantic(name)
        lw = m.get(ids[name])
        got, want = lw.predict(np.load(_file(name, "X"))), np.load(_file(name, "pred"))
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)  # isolated worker, bit for bit
        sem = lw.semantic_spec
        assert (sem["name"], sem["data_type"], sem["library"], sem["license"]) == (name, "table", "sklearn", "MIT")
        assert sem["task_type"] == item["task"].lower() == ref["Task"]["Values"][0].lower()
        assert sem["tags"] == item["scenarios"] == ref["Scenario"]["Values"]
        assert (sem["input_dim"], sem["output_dim"]) == (item["input_dim"], item["output_dim"])


def test_without_the_semantic_argument(fixture_market):
    """A template zip without a semantic spec is refused by the ``semantic`` check, saying how to give
    it; one whose learnware.yaml carries a reference-layout spec needs no argument."""
    m, ids, refused = fixture_market
    for name, err in refused.items():
        assert isinstance(err, SubmissionError) and err.check == "semantic", (name, err)
        assert "semantic_spec=" in err.reason
    assert m.get(ids["wine_clf"]).semantic_spec["description"] == _semantic("wine_clf")["Description"]["Values"]
    assert len(m.list()) == 3  # the refusals stored nothing


def test_search_with_reference_requirements(fixture_market, tmp_path):
    """The reference's own requirements (``requirements.json``) and user RKMEs find the right learnware;
    its distance is the float64 brute-force MMD between the user spec and the zip's spec."""
    m, ids, _ = fixture_market
    users = {n: RKME.load(_file(n, "user")) for n in NAMES}

    def found(user, req):
        return [it.id for it in m.search(users[user], semantic=REQUIREMENTS[req], k=5, mixture=False).single]

    for name in NAMES:
        req = "regression" if ITEMS[name]["task"] == "Regression" else "classification"
        res = m.search(users[name], semantic=REQUIREMENTS[req], k=5, mixture=False)
        assert [it.id for it in res.single] == [ids[name]], name  # one learnware of each input dimension
        want = _mmd2(users[name], _stat_spec(name, tmp_path))
        assert res.single[0].mmd2 == pytest.approx(want, rel=1e-4, abs=1e-6), name
    assert found("iris_clf", "regression") == []  # the regressor has another input dimension
    assert found("diabetes_reg", "classification") == []
    assert found("iris_clf", "nature") == [ids["iris_clf"]] and found("iris_clf", "health") == []
    assert found("diabetes_reg", "health") == [ids["diabetes_reg"]]
    assert found("wine_clf", "agriculture") == [ids["wine_clf"]]  # the spec from its learnware.yaml
    assert found("wine_clf", "name_wine_clf") == [ids["wine_clf"]] and found("wine_clf", "nature") == []


SUBPROCESS = BLOCK_REFERENCE_IMPORTS + textwrap.dedent('''
    from lwgpu.market import Market
    from lwgpu.spec.rkme import RKME

    fix, root, out = sys.argv[1:]
    lws = json.load(open(f"{fix}/manifest.json"))["learnwares"]
    reqs = json.load(open(f"{fix}/requirements.json"))
    preds = {}
    with Market(root, device="cpu") as m:
        for name, arg in (("iris_clf", True), ("wine_clf", False)):
            f = {k: f"{fix}/{v}" for k, v in lws[name]["files"].items()}
            i = m.submit(f["zip"], semantic_spec=json.load(open(f["semantic"])) if arg else None)
            preds[name] = m.get(i).predict(np.load(f["X"]))
            res = m.search(RKME.load(f["user"]), semantic=reqs["classification"], mixture=False)
            assert [it.id for it in res.single] == [i], (name, res)
    loaded = sorted(k for k in sys.modules if k == "learnware" or k.startswith("learnware."))
    assert not loaded and not hits, (loaded, hits)
    np.savez(out, **preds)
''')


def test_market_process_never_imports_learnware(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, str(FIX), str(tmp_path / "m"), str(tmp_path / "p.npz")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = np.load(tmp_path / "p.npz")
    assert sorted(preds.files) == ["iris_clf", "wine_clf"]
    for name in preds.files:
        np.testing.assert_array_equal(preds[name], np.load(_file(name, "pred")), err_msg=name)
