"""reuse_curve: row layout, nesting of label sets, determinism, and argument errors."""
import numpy as np
import pytest

from lwgpu.reuse import reuse_curve, summarize


def test_curve_rows_and_determinism(digits):
    user = next(u for u in digits.users if len(u.tasks) == 2)
    lws = [digits.tasks[t] for t in user.tasks]
    kw = dict(label_counts=(4, 12), repeats=2, seed=3, market_learnwares=digits.tasks,
              reusers=("job_selector", "averaging", "ensemble_pruning", "feature_augment"),
              reuser_options={"job_selector": {"herd_num": 200}})
    rows = reuse_curve(lws, user.X, user.y, **kw)
    methods = {"job_selector", "averaging", "ensemble_pruning", "feature_augment", "own", "single_mean",
               "single_best"}
    assert {r["method"] for r in rows} == methods
    assert len(rows) == len(methods) * 2 * 2
    for r in rows:
        assert set(r) == {"method", "n_labels", "repeat", "error", "metric", "n_test", "seconds"}
        assert 0.0 <= r["error"] <= 1.0 and r["metric"] == "error_rate" and r["n_test"] == len(user.y) - 12
    by = {(r["method"], r["n_labels"], r["repeat"]): r["error"] for r in rows}
    # unsupervised reusers are the same at every label count; the market's mean single is far worse
    assert by[("job_selector", 4, 0)] == by[("job_selector", 12, 0)]
    assert by[("job_selector", 4, 0)] < by[("single_mean", 4, 0)] - 0.3
    again = reuse_curve(lws, user.X, user.y, **kw)
    assert [(r["method"], r["error"]) for r in again] == [(r["method"], r["error"]) for r in rows]
    table = summarize(rows)
    assert len(table) == len(methods) * 2 and all(t["repeats"] == 2 for t in table)


def test_curve_regression_metric(rng):
    class Lin:
        def __init__(self, w):
            self.w = w

        def predict(self, X):
            return X @ self.w

    X = rng.normal(size=(50, 2))
    y = X @ np.array([1.0, 2.0])
    rows = reuse_curve([Lin(np.array([1.0, 2.0])), Lin(np.array([0.0, 0.0]))], X, y, label_counts=(5,),
                       reusers=("averaging", "ensemble_pruning", "feature_augment"), task="regression", repeats=1)
    by = {r["method"]: r["error"] for r in rows}
    assert rows[0]["metric"] == "mse"
    assert by["ensemble_pruning"] < 1e-12 and by["feature_augment"] < 0.1 < by["averaging"]


def test_curve_errors(digits):
    user = digits.users[0]
    lws = digits.tasks[:2]
    with pytest.raises(ValueError, match="cannot hold"):
        reuse_curve(lws, user.X, user.y, label_counts=(len(user.y),))
    with pytest.raises(ValueError, match="unknown reusers"):
        reuse_curve(lws, user.X, user.y, reusers=("stacking",))
    with pytest.raises(ValueError, match="positive integers"):
        reuse_curve(lws, user.X, user.y, label_counts=(0, 5))
    with pytest.raises(ValueError, match="rows but y has"):
        reuse_curve(lws, user.X, user.y[:-1])
