"""Feature alignment by column names: reordered/missing columns, spec-mean fill, errors."""
import numpy as np
import pytest

from lwgpu.reuse import Averaging
from lwgpu.reuse.alignment import align_features

from reuse_stubs import Stub

NAMES = [f"pixel {r} {c}" for r in range(8) for c in range(8)]


def test_reordered_and_missing_columns(digits, rng):
    task = digits.tasks[2]
    keep = rng.permutation(64)[:56]  # the user has 56 of the 64 pixels, in another order
    extra = rng.normal(size=(len(task.X_test), 1))  # and one column the learnware does not know
    X_user = np.concatenate([task.X_test[:, keep], extra], 1)
    user_names = [NAMES[i].upper() for i in keep] + ["Temperature"]
    aligned = align_features(task, user_names, learnware_features=NAMES)
    back = aligned.transform(X_user)
    np.testing.assert_array_equal(back[:, keep], task.X_test[:, keep])
    z, beta = (a.astype(np.float64) for a in task.rkme.numpy())
    missing = np.setdiff1d(np.arange(64), keep)
    np.testing.assert_allclose(back[:, missing], np.tile(beta @ z / beta.sum(), (len(X_user), 1))[:, missing])
    acc = (aligned.predict(X_user) == task.y_test).mean()
    assert acc > (task.predict(task.X_test) == task.y_test).mean() - 0.1
    np.testing.assert_allclose(aligned.predict_proba(X_user).sum(1), 1.0)
    assert (Averaging([aligned]).predict(X_user) == aligned.predict(X_user)).all()  # usable by reusers


def test_names_from_semantic_spec_and_errors():
    lw = Stub(labels=lambda X: (X[:, 0] > 0).astype(int))
    lw.semantic_spec = {"feature_descriptions": {0: "a", 1: "b"}}
    aligned = align_features(lw, ["b", "a"], fill="zero")
    np.testing.assert_array_equal(aligned.transform(np.array([[1.0, -2.0]])), [[-2.0, 1.0]])
    assert aligned.predict_proba is None
    with pytest.raises(ValueError, match="no user feature name matches"):
        align_features(lw, ["c"])
    with pytest.raises(ValueError, match="appears twice"):
        align_features(lw, ["a", "A "])
    with pytest.raises(ValueError, match="needs the learnware's RKME"):
        align_features(lw, ["a"])
    with pytest.raises(ValueError, match="fill has 3 values"):
        align_features(lw, ["a"], fill=np.zeros(3))
    with pytest.raises(ValueError, match="no feature_descriptions"):
        align_features(Stub(labels=lambda X: X), ["a"])
    with pytest.raises(ValueError, match="features but the learnwares take 2"):
        aligned.transform(np.zeros((2, 3)))
