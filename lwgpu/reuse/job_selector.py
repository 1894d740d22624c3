"""JobSelector: route each user row to the learnware whose training distribution it came from.

Samples are herded from every learnware's RKME (``RKME.herd``), labelled by learnware, and a
classifier learns to tell them apart; each user row then goes to the learnware the classifier
picks. With ``use_weights=True`` the herd counts follow the mixture weights that best explain the
user's data (the simplex QP ``min_w dist(U, sum_m w_m B_m)`` with U the user's empirical
embedding), so learnwares the user does not need get few samples and few rows.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from ..device import single_torch_thread
from ..kernels.torch_backend import gaussian_kernel
from .base import Reuser, find_rkme, label_scores, known_classes, to_numpy

logger = logging.getLogger(__name__)

SELECTORS = ("logreg", "knn", "gbdt", "kernel")


def simplex_qp(G: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``argmin_w 0.5 w'Gw - c'w`` over the probability simplex; G (M, M), c (M,) -> (M,)."""
    try:
        from ..spec.qp import solve_simplex_qp
    except ImportError:  # the batched solver is not installed: projected gradient here
        return _simplex_pg(G, c)
    w = solve_simplex_qp(torch.as_tensor(G, dtype=torch.float64)[None], torch.as_tensor(c, dtype=torch.float64)[None])
    return w[0].numpy()


def _simplex_pg(G: np.ndarray, c: np.ndarray, iters: int = 3000) -> np.ndarray:
    M = len(c)
    w = np.full(M, 1.0 / M)
    step = 1.0 / max(float(np.linalg.eigvalsh(G).max()), 1e-12)
    for _ in range(iters):
        v = w - step * (G @ w - c)
        u = np.sort(v)[::-1]
        css = np.cumsum(u) - 1.0
        rho = np.nonzero(u - css / np.arange(1, M + 1) > 0)[0][-1]
        w = np.maximum(v - css[rho] / (rho + 1), 0.0)
    return w


class JobSelector(Reuser):
    """Route each row to one learnware with a classifier trained on samples herded from their RKMEs.

    Parameters
    ----------
    learnwares : sequence
        Objects with ``predict(X)`` and an RKME (``.rkme``), unless ``specs`` is given.
    specs : sequence of RKME, optional
        One per learnware, same gamma and dimension.
    herd_num : int
        Total herded samples, split by the mixture weights (each learnware gets at least
        ``min_per_learnware``).
    use_weights : bool
        Split the herd by the user's mixture weights (True) or evenly (False).
    selector : {"logreg", "knn", "gbdt", "kernel"}
        The router: logistic regression, 5-nearest neighbours, histogram gradient boosting, or
        ``"kernel"`` (no training: the learnware with the largest ``w_m * sum_i beta_mi k(x, z_mi)``).
    candidates_per_sample : int
        Herding candidates per sample (see :meth:`lwgpu.RKME.herd`).
    task : {"classification", "regression"}
    seed : int
    """

    def __init__(
        self,
        learnwares: Sequence[Any],
        specs: Sequence[Any] | None = None,
        herd_num: int = 600,
        use_weights: bool = True,
        selector: str = "knn",
        candidates_per_sample: int = 20,
        min_per_learnware: int = 10,
        max_user_points: int = 2000,
        task: str = "classification",
        seed: int = 0,
    ) -> None:
        super().__init__(learnwares, task)
        if selector not in SELECTORS:
            raise ValueError(f"selector must be one of {list(SELECTORS)}, got {selector!r}")
        specs = list(specs) if specs is not None else [find_rkme(lw) for lw in self.learnwares]
        if len(specs) != len(self.learnwares):
            raise ValueError(f"got {len(specs)} specs for {len(self.learnwares)} learnwares; pass one each")
        missing = [i for i, s in enumerate(specs) if s is None]
        if missing:
            raise ValueError(f"learnwares at positions {missing} have no RKME; give them .rkme or pass specs=")
        dims = {int(s.d) for s in specs}
        gammas = {float(s.gamma) for s in specs}
        if len(dims) > 1 or len(gammas) > 1:
            raise ValueError(f"specs must share one dimension and gamma, got d={sorted(dims)}, gamma={sorted(gammas)}")
        d = dims.pop()
        if self.input_dim is not None and self.input_dim != d:
            raise ValueError(f"specs have d={d} but the learnwares take {self.input_dim} features")
        self.input_dim = d
        if herd_num < 2 or min_per_learnware < 1:
            raise ValueError(f"herd_num must be >= 2 and min_per_learnware >= 1, got {herd_num}, {min_per_learnware}")
        self.specs = specs
        self.gamma = gammas.pop()
        self.herd_num = int(herd_num)
        self.use_weights = use_weights
        self.selector = selector
        self.candidates_per_sample = int(candidates_per_sample)
        self.min_per_learnware = int(min_per_learnware)
        self.max_user_points = int(max_user_points)
        self.seed = int(seed)
        self.weights_: np.ndarray | None = None
        self.router_: Any = None

    # ------------------------------------------------------------------ weights and routing
    def _spec_arrays(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(s.z.detach().cpu().double(), s.beta.detach().cpu().double()) for s in self.specs]

    def mixture_weights(self, X: Any) -> np.ndarray:
        """Weights (M,) on the simplex minimising ``dist(U, sum_m w_m B_m)``, U the empirical embedding of X."""
        X = self._check(X)
        if len(X) > self.max_user_points:
            X = X[np.random.default_rng(self.seed).choice(len(X), self.max_user_points, replace=False)]
        x = torch.as_tensor(X, dtype=torch.float64)
        arrs = self._spec_arrays()
        M = len(arrs)
        G = np.empty((M, M))
        for i in range(M):
            for j in range(i, M):
                G[i, j] = G[j, i] = float(arrs[i][1] @ gaussian_kernel(arrs[i][0], arrs[j][0], self.gamma) @ arrs[j][1])
        c = np.array([float((b @ gaussian_kernel(z, x, self.gamma)).mean()) for z, b in arrs])
        return simplex_qp(G, c)

    def _kernel_scores(self, X: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(X, dtype=torch.float64)
        cols = [(b @ gaussian_kernel(z, x, self.gamma)).numpy() for z, b in self._spec_arrays()]
        return np.stack(cols, 1) * self.weights_[None, :]

    def fit(self, X: Any, y: Any = None) -> "JobSelector":
        """Fit the router for the user's unlabeled rows X (n, d) (labels, if given, are not used)."""
        X = self._check(X)
        M = len(self.learnwares)
        self.weights_ = self.mixture_weights(X) if (self.use_weights and M > 1) else np.full(M, 1.0 / M)
        self.fitted_ = True
        if M == 1 or self.selector == "kernel":
            self.router_ = None
            return self
        counts = np.maximum(self.min_per_learnware, np.floor(self.herd_num * self.weights_).astype(int))
        with single_torch_thread():  # herding is many tiny sequential steps: one thread avoids sync overhead
            parts = [np.asarray(s.herd(int(c), candidates_per_sample=self.candidates_per_sample, seed=self.seed + i))
                     for i, (s, c) in enumerate(zip(self.specs, counts))]
        H = np.concatenate(parts)
        lab = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            self.router_ = self._make_router().fit(H, lab)
        logger.debug("job selector trained on %d herded samples, counts %s", len(H), counts.tolist())
        return self

    def _make_router(self) -> Any:
        if self.selector == "logreg":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=1.0, max_iter=2000)
        if self.selector == "knn":
            from sklearn.neighbors import KNeighborsClassifier

            return KNeighborsClassifier(n_neighbors=5)
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=100, random_state=self.seed)

    def select(self, X: Any) -> np.ndarray:
        """The learnware position (n,) each row is routed to (fits on X first if not fitted)."""
        X = self._check(X)
        if not self.fitted_:
            self.fit(X)
        if len(self.learnwares) == 1:
            return np.zeros(len(X), dtype=np.int64)
        if self.selector == "kernel":
            return self._kernel_scores(X).argmax(1)
        return np.asarray(self.router_.predict(X), dtype=np.int64)

    def predict(self, X: Any) -> np.ndarray:
        """Each row predicted by its routed learnware: (n,) or (n, k), as the learnwares answer."""
        X = self._check(X)
        route = self.select(X)
        out: np.ndarray | None = None
        for m in np.unique(route):
            rows = np.nonzero(route == m)[0]
            pred = to_numpy(self.learnwares[m].predict(X[rows]), "predict")
            if pred.shape[0] != len(rows):
                raise ValueError(f"learnware {m} returned {pred.shape[0]} predictions for {len(rows)} rows")
            if out is None:
                out = np.zeros((len(X),) + pred.shape[1:], dtype=pred.dtype)
            out[rows] = pred
        assert out is not None
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class scores (n, C) of each row's routed learnware, columns in the learnwares' class order."""
        X = self._check(X)
        route = self.select(X)
        cls = known_classes(self.learnwares)
        if cls is None:
            raise ValueError("predict_proba needs learnwares with classes_")
        out = np.zeros((len(X), len(cls)))
        for m in np.unique(route):
            rows = np.nonzero(route == m)[0]
            out[rows] = label_scores(self.learnwares[m], X[rows], cls)
        return out
