"""Averaging against hand-computed cases, and the input errors every reuser shares."""
import numpy as np
import pytest
import torch

from lwgpu.reuse import Averaging, EnsemblePruning, FeatureAugment

from reuse_stubs import Stub

X = np.zeros((3, 2))


def const(arr):
    return lambda X: np.asarray(arr)


def test_mean_mode_hand_case():
    lws = [Stub(values=const([1.0, 2.0, 3.0])), Stub(values=const([3.0, 2.0, 0.0])),
           Stub(values=lambda X: torch.tensor([2.0, 5.0, 6.0]))]
    np.testing.assert_allclose(Averaging(lws, mode="mean").predict(X), [2.0, 3.0, 3.0])
    two_col = [Stub(values=const([[1.0, 0.0]] * 3)), Stub(values=const([[0.0, 4.0]] * 3))]
    np.testing.assert_allclose(Averaging(two_col, mode="mean").predict(X), [[0.5, 2.0]] * 3)


def test_vote_by_label_hand_case_with_tie():
    lws = [Stub(labels=const([0, 1, 2])), Stub(labels=const([0, 2, 1])), Stub(labels=const([1, 2, 3]))]
    # row 0: 0,0,1 -> 0; row 1: 1,2,2 -> 2; row 2: 2,1,3 -> tie of three, smallest label 1
    np.testing.assert_array_equal(Averaging(lws, mode="vote_by_label").predict(X), [0, 2, 1])
    P = Averaging(lws, mode="vote_by_label").predict_proba(X)
    np.testing.assert_allclose(P[1], [0, 1 / 3, 2 / 3, 0])


def test_vote_by_prob_maps_class_subsets():
    # learnware A knows classes {0, 2}, B knows {1, 2}; averaged over the union {0, 1, 2}
    a = Stub(labels=const([0, 2, 2]), proba=const([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]), classes=np.array([0, 2]))
    b = Stub(labels=const([1, 1, 2]), proba=const([[0.7, 0.3], [0.8, 0.2], [0.5, 0.5]]), classes=np.array([1, 2]))
    avg = Averaging([a, b], mode="vote_by_prob")
    expected = np.array([[0.45, 0.35, 0.2], [0.2, 0.4, 0.4], [0.1, 0.25, 0.65]])
    np.testing.assert_allclose(avg.predict_proba(X), expected)
    # row 1 ties classes 1 and 2 at 0.4: argmax takes the first
    np.testing.assert_array_equal(avg.predict(X), [0, 1, 2])


def test_vote_by_prob_without_probabilities_uses_one_hot_labels():
    lws = [Stub(labels=const([3, 5, 5])), Stub(labels=const([3, 3, 5])), Stub(labels=const([5, 3, 7]))]
    avg = Averaging(lws, mode="vote_by_prob")
    np.testing.assert_allclose(avg.predict_proba(X)[2], [0, 2 / 3, 1 / 3])
    np.testing.assert_array_equal(avg.predict(X), [3, 3, 5])


def test_averaging_on_digits_mixture_user(digits):
    user = next(u for u in digits.users if len(u.tasks) == 2)
    pair = [digits.tasks[t] for t in user.tasks]
    acc = (Averaging(pair, mode="vote_by_prob").predict(user.X) == user.y).mean()
    mean_single = np.mean([(t.predict(user.X) == user.y).mean() for t in digits.tasks])
    assert acc > mean_single


@pytest.mark.parametrize("cls", [Averaging, EnsemblePruning, FeatureAugment])
def test_shared_errors(cls):
    with pytest.raises(ValueError, match="at least one learnware"):
        cls([])
    with pytest.raises(ValueError, match="no predict"):
        cls([object()])
    with pytest.raises(ValueError, match="different input dimensions"):
        cls([Stub(labels=const([0]), d=3), Stub(labels=const([0]), d=4)])
    r = cls([Stub(labels=lambda X: np.zeros(len(X), int), d=3)])
    with pytest.raises(ValueError, match="features but the learnwares take 3"):
        r.fit(np.zeros((4, 2)), np.zeros(4)) if r.needs_labels else r.predict(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        r.fit(np.full((4, 3), np.nan), np.zeros(4)) if r.needs_labels else r.predict(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        r.fit(np.zeros(3), np.zeros(3)) if r.needs_labels else r.predict(np.zeros(3))
    if r.needs_labels:
        with pytest.raises(ValueError, match="fitted with labeled rows first"):
            r.predict(np.zeros((2, 3)))
        with pytest.raises(ValueError, match="needs labels"):
            r.fit(np.zeros((4, 3)))
        with pytest.raises(ValueError, match="4 rows but y has 3"):
            r.fit(np.zeros((4, 3)), np.zeros(3))


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        Averaging([Stub(labels=const([0]))], mode="median")
    with pytest.raises(ValueError, match="voting mode"):
        Averaging([Stub(values=const([0.0, 1.0, 2.0]))], mode="mean").predict_proba(X)
