"""Learnware zips written by the reference package's own templates (``learnware.tests.templates``, as the
Beimingwu system holds them) are accepted as they are, predict exactly like the original models, and
are found by reference-layout semantic requirements; the market's process never imports ``learnware``.

The reference package is used here only to write the zips and the specs (skipped without it); the
market reads the zips with its own code and runs the model code in isolated workers, which give it
a stand-in ``learnware.model.base.BaseModel`` (:mod:`lwgpu.market.reference_shim`).
"""
from __future__ import annotations

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

templates = pytest.importorskip("learnware.tests.templates", reason="the reference package is not installed")
ref_spec = pytest.importorskip("learnware.specification")

from lwgpu.market import Market, SubmissionError  # noqa: E402
from lwgpu.market.worker import close_workers  # noqa: E402
from lwgpu.spec.rkme import RKME  # noqa: E402
from market_testutil import BLOCK_REFERENCE_IMPORTS  # noqa: E402

D = 5
REPO = Path(__file__).resolve().parents[2]


def _ref_semantic(name, task, scenarios, out_dim, d=D):
    return ref_spec.generate_semantic_spec(
        name=name, description=f"{name}: a reference template learnware", data_type="Table", task_type=task,
        library_type="Scikit-learn", scenarios=scenarios, license="MIT",
        input_description={"Dimension": d, "Description": {str(i): f"feature {i}" for i in range(d)}},
        output_description={"Dimension": out_dim, "Description": {}})


def _template_zip(folder: Path, name: str, model, X: np.ndarray, out_dim: int) -> Path:
    """A learnware zip written by the reference's LearnwareTemplate (pickled model + its RKME JSON)."""
    spec = ref_spec.generate_stat_spec(type="table", X=X)
    spec.save(str(folder / f"{name}.json"))
    with open(folder / f"{name}.pkl", "wb") as fh:
        pickle.dump(model, fh)
    path = folder / f"{name}.zip"
    templates.LearnwareTemplate.generate_learnware_zipfile(
        learnware_zippath=str(path),
        model_template=templates.PickleModelTemplate(
            pickle_filepath=str(folder / f"{name}.pkl"),
            model_kwargs={"input_shape": (X.shape[1],), "output_shape": (out_dim,), "predict_method": "predict"}),
        stat_spec_template=templates.StatSpecTemplate(filepath=str(folder / f"{name}.json"),
                                                      type="RKMETableSpecification"))
    return path


def _with_package_semantic(src: Path, dest: Path, semantic: dict) -> Path:
    """A copy of the template zip ``src`` whose learnware.yaml also carries ``semantic`` (reference layout)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "learnware.yaml":
                data += yaml.safe_dump({"semantic_spec": semantic}).encode()
            zout.writestr(info, data)
    return dest


@pytest.fixture(scope="module")
def ref_learnwares(tmp_path_factory):
    """Template zips: two classifiers (data around +2 and -2; Business / Financial), a regressor, and a
    classifier of another input dimension whose zip carries its own semantic spec."""
    from sklearn.linear_model import LogisticRegression, Ridge

    folder = tmp_path_factory.mktemp("ref_templates")
    rng = np.random.default_rng(0)
    items = {}
    for name, center, task, scen, d in (("clf_pos", 2.0, "Classification", ["Business"], D),
                                        ("clf_neg", -2.0, "Classification", ["Financial"], D),
                                        ("reg_mid", 0.0, "Regression", ["Business"], D),
                                        ("own_sem", 1.0, "Classification", ["Health"], 3)):
        X = rng.normal(center, 1.0, size=(300, d))
        if task == "Classification":
            y = np.digitize(X[:, 0] - center, [-0.5, 0.5])  # labels 0, 1, 2
            model, out_dim = LogisticRegression(max_iter=500).fit(X, y), 3
        else:
            model, out_dim = Ridge().fit(X, X @ np.arange(1, d + 1)), 1
        items[name] = {"zip": _template_zip(folder, name, model, X, out_dim), "model": model, "d": d,
                       "semantic": _ref_semantic(name, task, scen, out_dim, d), "spec": folder / f"{name}.json"}
    own = items["own_sem"]
    own["zip"] = _with_package_semantic(own["zip"], folder / "own_sem_in_yaml.zip", own["semantic"])
    return folder, items


@pytest.fixture(scope="module")
def ref_market(ref_learnwares, tmp_path_factory):
    """One batch: three zips with their semantic spec as the argument, one with it in its learnware.yaml,
    and a template zip with none at all (refused); returns (market, {name: id}, that refusal)."""
    _, items = ref_learnwares
    m = Market(tmp_path_factory.mktemp("ref_market") / "m", device="cpu")
    names = ["clf_pos", "clf_neg", "reg_mid"]
    out = m.submit_many([items[n]["zip"] for n in names] + [items["own_sem"]["zip"], items["clf_pos"]["zip"]],
                        [items[n]["semantic"] for n in names] + [None, None], progress=False)
    assert all(isinstance(i, int) for i in out[:4]), out
    yield m, dict(zip(names + ["own_sem"], out[:4])), out[4]
    m.close()
    close_workers()


def test_template_zip_is_the_reference_layout(ref_learnwares):
    """What the market is given: no semantic spec, a !!python/tuple, a BaseModel subclass in __init__.py."""
    _, items = ref_learnwares
    with zipfile.ZipFile(items["clf_pos"]["zip"]) as zf:
        text = zf.read("learnware.yaml").decode()
        init = zf.read("__init__.py").decode()
        assert set(zf.namelist()) == {"learnware.yaml", "__init__.py", "model.pkl", "stat_spec.json",
                                      "requirements.txt"}
    assert "!!python/tuple" in text and "semantic_spec" not in text
    assert "from learnware.model.base import BaseModel" in init
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(text)  # a plain safe loader refuses it: the market's loader must understand the tag


def test_template_learnwares_predict_like_the_original_models(ref_market, ref_learnwares):
    m, ids, _ = ref_market
    _, items = ref_learnwares
    for name, item in items.items():
        X = np.random.default_rng(5).normal(0.0, 2.5, size=(40, item["d"]))
        lw = m.get(ids[name])
        want = item["model"].predict(X)
        got = lw.predict(X)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)
        sem = lw.semantic_spec
        assert (sem["name"], sem["data_type"], sem["library"], sem["license"]) == (name, "table", "sklearn", "MIT")
        assert sem["tags"] == item["semantic"]["Scenario"]["Values"] and sem["input_dim"] == item["d"]
        assert sem["task_type"] == item["semantic"]["Task"]["Values"][0].lower()
        assert np.unique(got).size > 1  # the comparison is not trivial


def _mmd2(a: RKME, b: RKME) -> float:
    """Float64 brute-force squared MMD of two Gaussian-kernel RKMEs (same gamma)."""
    (za, ba), (zb, bb) = [(np.asarray(s.z, np.float64), np.asarray(s.beta, np.float64)) for s in (a, b)]

    def k(x, y):
        return np.exp(-a.gamma * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))

    return float(ba @ k(za, za) @ ba - 2 * ba @ k(za, zb) @ bb + bb @ k(zb, zb) @ bb)


def test_search_with_reference_layout_requirements(ref_market, ref_learnwares, tmp_path):
    m, ids, _ = ref_market
    _, items = ref_learnwares
    Xu = np.random.default_rng(7).normal(2.0, 1.0, size=(200, D))  # a user whose data is like clf_pos's
    user_file = tmp_path / "user.json"
    ref_spec.generate_stat_spec(type="table", X=Xu).save(str(user_file))
    user = RKME.load(user_file)  # the reference's own user spec, read by lwgpu

    def found(req):
        return [it.id for it in m.search(user, semantic=req, k=5, mixture=False).single]

    clf = ref_spec.generate_semantic_spec(data_type="Table", task_type="Classification")  # Name "", Model Others
    res = m.search(user, semantic=clf, k=5, mixture=False)
    assert [it.id for it in res.single] == [ids["clf_pos"], ids["clf_neg"]]  # regressor filtered; nearest first
    for it in res.single:
        name = next(n for n, i in ids.items() if i == it.id)
        assert it.mmd2 == pytest.approx(_mmd2(user, RKME.load(items[name]["spec"])), rel=1e-4, abs=1e-6)
    assert found(ref_spec.generate_semantic_spec(task_type="Regression")) == [ids["reg_mid"]]
    assert found(ref_spec.generate_semantic_spec(scenarios=["Financial"])) == [ids["clf_neg"]]
    both = ref_spec.generate_semantic_spec(task_type="Classification")
    both["Task"]["Values"] = ["Classification", "Regression"]  # a reference requirement: any of these
    assert sorted(found(both)) == sorted(ids[n] for n in ("clf_pos", "clf_neg", "reg_mid"))  # own_sem: d=3
    named = ref_spec.generate_semantic_spec(name="clf_neg")
    assert found(named) == [ids["clf_neg"]]


def test_semantic_spec_from_the_package_or_missing(ref_market):
    """A template zip whose learnware.yaml carries a reference-layout semantic spec needs no argument;
    one without any is refused by the ``semantic`` check, saying how to give it."""
    m, ids, refused = ref_market
    sem = m.get(ids["own_sem"]).semantic_spec
    assert (sem["name"], sem["tags"], sem["input_dim"], sem["output_dim"]) == ("own_sem", ["Health"], 3, 3)
    assert isinstance(refused, SubmissionError) and refused.check == "semantic"
    assert "semantic_spec=" in refused.reason


SUBPROCESS = BLOCK_REFERENCE_IMPORTS + textwrap.dedent('''
    from lwgpu.market import Market
    from lwgpu.spec.rkme import RKME

    zip_path, sem_file, x_file, spec_file, root, out = sys.argv[1:]
    with Market(root, device="cpu") as m:
        i = m.submit(zip_path, semantic_spec=json.load(open(sem_file)))
        pred = m.get(i).predict(np.load(x_file))
        res = m.search(RKME.load(spec_file), semantic={"Task": {"Type": "Class", "Values": ["Classification"]}})
        assert [it.id for it in res.single] == [i], res
    loaded = sorted(k for k in sys.modules if k == "learnware" or k.startswith("learnware."))
    assert not loaded and not hits, (loaded, hits)
    np.save(out, pred)
''')


def test_market_process_never_imports_learnware(ref_learnwares, tmp_path):
    _, items = ref_learnwares
    item = items["clf_pos"]
    X = np.random.default_rng(9).normal(2, 1.5, size=(25, D))
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "sem.json").write_text(json.dumps(item["semantic"]))
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, str(item["zip"]), str(tmp_path / "sem.json"),
                           str(tmp_path / "X.npy"), str(item["spec"]), str(tmp_path / "m"), str(tmp_path / "p.npy")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), item["model"].predict(X))
