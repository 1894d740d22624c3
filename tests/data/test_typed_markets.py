"""Image and text market generators: real bundled data, distinct tasks, users held out from every task's
training rows, models that work on their own task, deterministic under a seed."""
from __future__ import annotations

import numpy as np
import pytest

from lwgpu.data.image_markets import ImageTaskModel, load_images, make_image_market
from lwgpu.data.text_markets import load_corpus, make_text_market


def test_pydoc_corpus():
    every = load_corpus(min_paragraphs=1)
    from pydoc_data.topics import topics

    assert set(every) <= set(topics) and len(every) >= 60
    paras = [p for ps in every.values() for p in ps]
    assert len(paras) > 1000 and all(80 <= len(p) <= 400 and "\n" not in p for p in paras)
    rich = load_corpus(min_paragraphs=12)
    assert all(len(v) >= 12 for v in rich.values()) and set(rich) < set(every)


def test_text_market_ground_truth():
    m = make_text_market(n_tasks=6, n_users=6, train_per_topic=5, user_per_topic=3, fit_specs=False, seed=1)
    assert len({t.topics for t in m.tasks}) == 6  # distinct topic subsets
    train = {(c, x) for t in m.tasks for c, x in zip(t.y.tolist(), t.texts)}
    for u in m.users:
        task = m.tasks[u.task]
        assert set(u.y.tolist()) == set(task.topics) and len(u.texts) == 6
        assert not {(c, x) for c, x in zip(u.y.tolist(), u.texts)} & train  # held out from every task
        assert np.mean(task.model.predict(u.texts) == u.y) >= 0.5  # chance is 1/2 among the task's topics
    again = make_text_market(n_tasks=6, n_users=6, train_per_topic=5, user_per_topic=3, fit_specs=False, seed=1)
    assert [t.texts for t in again.tasks] == [t.texts for t in m.tasks]
    assert m.tasks[0].semantic_spec["data_type"] == "text" and m.tasks[0].semantic_spec["output_dim"] == len(
        m.topic_names)
    with pytest.raises(ValueError, match="distinct tasks"):
        make_text_market(n_tasks=10**6, fit_specs=False)


def test_digit_images():
    X, y = load_images("digits")
    assert X.shape == (1797, 1, 32, 32) and X.dtype == np.float32 and y.shape == (1797,)
    assert 0.0 <= X.min() and X.max() <= 1.0 + 1e-6


@pytest.mark.slow
def test_mnist_images():
    Xm, ym = load_images("mnist")
    assert Xm.shape == (5000, 1, 32, 32) and set(np.unique(ym)) == set(range(10))


def test_image_market_ground_truth():
    m = make_image_market(n_tasks=6, n_users=5, train_per_class=20, user_per_class=8, fit_specs=False, seed=2)
    assert len({(t.classes, t.rotation) for t in m.tasks}) == 6
    X, y = load_images("digits")
    flat = {x.tobytes() for x in X}
    for t in m.tasks:  # a task's images are rotated digits of its classes
        back = np.rot90(t.X, k=-t.rotation // 90, axes=(2, 3))
        assert all(np.ascontiguousarray(b).tobytes() in flat for b in back)
        assert set(t.y.tolist()) == set(t.classes)
    train = {np.ascontiguousarray(np.rot90(x, k=-t.rotation // 90, axes=(1, 2))).tobytes()
             for t in m.tasks for x in t.X}
    for u in m.users:
        task = m.tasks[u.task]
        assert set(u.y.tolist()) == set(task.classes)
        back = np.rot90(u.X, k=-task.rotation // 90, axes=(2, 3))
        assert not {np.ascontiguousarray(b).tobytes() for b in back} & train
        assert np.mean(task.model.predict(u.X) == u.y) >= 0.7
    with pytest.raises(ValueError, match="at most"):
        make_image_market(n_tasks=10**5, fit_specs=False)


def test_image_model_full_label_space():
    X, y = load_images("digits")
    model = ImageTaskModel(10).fit(X[y < 3][:60], y[y < 3][:60])
    proba = model.predict_proba(X[:5])
    assert proba.shape == (5, 10) and np.allclose(proba.sum(1), 1) and np.all(proba[:, 3:] == 0)
