"""End to end on scikit-learn digits: 30 learnwares, users from one task or a mix of two."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from market_testutil import check_consistent, user_spec
from lwgpu.kernels.reference import mmd2 as ref_mmd2
from lwgpu.market import Market, SubmissionError


def _ref_dist(a, b):
    za, ba = a.numpy()
    zb, bb = b.numpy()
    return ref_mmd2(za.astype(np.float64), ba.astype(np.float64), zb.astype(np.float64), bb.astype(np.float64), a.gamma)


@pytest.mark.parametrize("task", [0, 7, 13, 22, 29])
def test_single_user_finds_its_learnware(digits_market, digits_data, task):
    m, ids = digits_market
    u = user_spec(digits_data, [task], seed=task)
    res = m.search(u.rkme, k=5)
    assert res.single[0].id == ids[task]
    assert res.n_candidates == len(ids)
    mmds = [it.mmd2 for it in res.single]
    assert mmds == sorted(mmds)
    scores = [it.score for it in res.single]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    for it in res.single:  # raw distances are the float64 brute-force values
        assert it.mmd2 == pytest.approx(_ref_dist(u.rkme, m.get(it.id).rkme), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("pair,method", [((3, 17), "greedy"), ((5, 26), "greedy"), ((3, 17), "auto")])
def test_mixed_user_gets_mixture_of_both(digits_market, digits_data, pair, method):
    m, ids = digits_market
    u = user_spec(digits_data, list(pair), seed=1)
    res = m.search(u.rkme, k=5, max_mixture=4, method=method)
    assert res.mixture is not None
    assert {ids[pair[0]], ids[pair[1]]} <= set(res.mixture.ids)
    w = np.asarray(res.mixture.weights)
    assert (w > 0).all() and w.sum() == pytest.approx(1.0)
    assert res.mixture.mmd2 < res.single[0].mmd2
    assert 0.0 <= res.mixture.score <= 1.0
    # the mixture's distance is the float64 value for those weights
    specs = [m.get(i).rkme for i in res.mixture.ids]
    z = np.concatenate([s.numpy()[0] for s in specs]).astype(np.float64)
    beta = np.concatenate([wi * s.numpy()[1] for wi, s in zip(w, specs)]).astype(np.float64)
    zu, bu = u.rkme.numpy()
    assert res.mixture.mmd2 == pytest.approx(ref_mmd2(zu.astype(np.float64), bu.astype(np.float64), z, beta,
                                                      u.rkme.gamma), rel=1e-4, abs=1e-7)


def test_semantic_filter_restricts_search(digits_market, digits_data):
    m, ids = digits_market
    u = user_spec(digits_data, [4], seed=2)
    tag = "class:%d" % digits_data.tasks[4].classes[0]
    res = m.search(u.rkme, semantic={"tags": [tag], "data_type": "table"}, k=30, mixture=False)
    allowed = {lw.id for lw in m.list({"tags": [tag]})}
    assert res.n_candidates == len(allowed) < len(ids)
    assert {it.id for it in res.single} <= allowed and res.single[0].id == ids[4]
    assert m.search(u.rkme, semantic={"data_type": "image"}).single == []
    fuzzy = m.list({"name": "digts-0004"})  # one typo: fuzzy match
    assert ids[4] in {lw.id for lw in fuzzy}


def test_get_predicts_like_the_model(digits_market, digits_data):
    m, ids = digits_market
    t = digits_data.tasks[9]
    lw = m.get(ids[9])
    np.testing.assert_array_equal(lw.predict(t.X_test), t.model.predict(t.X_test))
    assert lw.semantic_spec["name"] == t.semantic_spec["name"]
    assert len(m.list()) == len(ids)
    with pytest.raises(KeyError):
        m.get(10_000)


def test_reopen_restores_bank_without_reading_specs(packages, tmp_path, monkeypatch, digits_data):
    root = tmp_path / "m"
    with Market(root, device="cpu") as m:
        ids = [m.submit(p) for p in packages[:6]]
        u = user_spec(digits_data, [2], seed=3)
        before = m.search(u.rkme, k=3).to_dict()
        before.pop("timings", None)
    from lwgpu.spec import rkme as rkme_mod

    def no_load(*a, **k):
        raise AssertionError("reopen must use the saved bank, not re-read spec files")

    monkeypatch.setattr(rkme_mod.RKME, "load", classmethod(no_load))
    m2 = Market(root, device="cpu")
    assert m2.ids == ids and m2.bank(64).ids.tolist() == ids
    monkeypatch.undo()
    after = m2.search(u.rkme, k=3).to_dict()
    after.pop("timings", None)
    assert after == before
    with pytest.raises(ValueError, match="gamma"):
        Market(root, gamma=0.5)
    m2.close()


def test_delete_and_gamma_refusal(packages, tmp_path, digits_data):
    m = Market(tmp_path / "m", device="cpu")
    ids = [m.submit(p) for p in packages[:4]]
    m.delete(ids[1])
    assert ids[1] not in m and ids[1] not in m.bank(64).ids
    assert not (tmp_path / "m" / "learnwares" / str(ids[1])).exists()
    check_consistent(m)
    with pytest.raises(KeyError):
        m.delete(ids[1])
    new = m.submit(packages[1])  # a deleted package may come back, under a new id
    assert new not in ids
    u = user_spec(digits_data, [1], seed=4)
    assert m.search(u.rkme).single[0].id == new
    other = type(u.rkme)(u.rkme.z, u.rkme.beta, gamma=0.3)
    with pytest.raises(ValueError, match="gamma"):
        m.search(other)
    t = digits_data.tasks[6]
    via_add = m.add(t.model, dict(t.semantic_spec, name="added in memory"), t.rkme)
    np.testing.assert_array_equal(m.get(via_add).predict(t.X_test[:7]), t.model.predict(t.X_test[:7]))
    with pytest.raises(SubmissionError) as info:
        m.add(t.model, dict(t.semantic_spec, task_type="dance"), t.rkme)
    assert info.value.check == "semantic"
    check_consistent(m)
    for i in m.ids:
        m.delete(i)
    assert len(m) == 0 and m.bank(64) is None and m.search(u.rkme).single == []
    m.close()


def test_submission_error_is_value_error():
    err = SubmissionError("rkme", "bad")
    assert isinstance(err, ValueError) and err.check == "rkme" and "rkme" in str(err)
