"""Synthetic learnware markets with known ground truth.

Every task ``i`` is a Gaussian mixture in ``d`` dimensions: its ``C`` component means are
``c_i + spread * e_ic`` around a task centre ``c_i ~ N(0, separation^2 I)``, rows are a component
mean plus ``noise * N(0, I)``. Overlap between tasks grows as ``separation`` shrinks relative to
``spread`` and ``noise`` (and with the number of tasks). A user task is one market task or a
mixture of a few, with the true ids and weights recorded, so search quality is measurable.

Two ways to get specifications:

- fitted: draw rows per task (:meth:`SyntheticMarket.sample`) and fit them with
  ``RKME.fit_many`` (thousands of tasks);
- spec-only: :meth:`SyntheticMarket.spec_arrays` draws ``K`` points per task from its mixture
  with uniform weights, vectorised and chunked (up to ~1,000,000 tasks), for
  ``SpecBank.from_arrays``.

Randomness is keyed on ``(seed, stream, chunk)`` with a fixed chunk size: task means are nested
(the first tasks of a larger market are the smaller market), and rows of a task do not depend on
which other tasks are asked for.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Tasks per random stream chunk; fixed so results do not depend on how callers chunk their work.
RNG_CHUNK = 4096
_CENTRES, _ROWS, _SPECS, _USERS, _USER_ROWS, _USER_SPECS = 0, 1, 2, 3, 4, 5


def _rng(seed: int, stream: int, chunk: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream), int(chunk)])


def _check_positive(name: str, value: float, integer: bool = False) -> None:
    if integer and (int(value) != value or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not integer and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass
class UserTasks:
    """Users with known answers.

    Attributes
    ----------
    true_ids : list of np.ndarray (m_u,) int64
        Market task ids each user's data was drawn from (sorted by weight, largest first).
    true_weights : list of np.ndarray (m_u,) float64
        Mixing weights of those tasks (sum to 1).
    data : list of np.ndarray (n_u, d) float32
        The users' unlabeled rows (empty (0, d) arrays when only specs were sampled).
    """

    true_ids: list[np.ndarray]
    true_weights: list[np.ndarray]
    data: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.true_ids)

    @property
    def primary(self) -> np.ndarray:
        """(U,) int64: the largest-weight true task of every user (the single-search answer)."""
        return np.array([ids[0] for ids in self.true_ids], dtype=np.int64)

    @property
    def is_mixture(self) -> np.ndarray:
        """(U,) bool: users drawn from more than one task."""
        return np.array([len(ids) > 1 for ids in self.true_ids], dtype=bool)


@dataclass
class SyntheticMarket:
    """A market of ``N`` Gaussian-mixture tasks.

    Attributes
    ----------
    means : np.ndarray (N, C, d) float32
        Component means of every task.
    weights : np.ndarray (N, C) float64
        Component weights of every task (rows sum to 1).
    noise : float
        Standard deviation of the rows around their component mean.
    seed : int
        Seed every sample and spec is derived from.
    """

    means: np.ndarray
    weights: np.ndarray
    noise: float
    seed: int = 0

    @classmethod
    def generate(
        cls,
        n_tasks: int,
        d: int = 8,
        components: int = 3,
        separation: float = 3.0,
        spread: float = 1.0,
        noise: float = 0.5,
        seed: int = 0,
        **_: object,
    ) -> "SyntheticMarket":
        """Draw ``n_tasks`` task mixtures; see the module docstring for the model.

        Extra keyword arguments (other keys of a Hydra market node) are ignored.
        """
        _check_positive("n_tasks", n_tasks, integer=True)
        _check_positive("d", d, integer=True)
        _check_positive("components", components, integer=True)
        _check_positive("noise", noise)
        if separation < 0 or spread < 0:
            raise ValueError(f"separation and spread must be >= 0, got {separation}, {spread}")
        n_tasks, d, components = int(n_tasks), int(d), int(components)
        means = np.empty((n_tasks, components, d), dtype=np.float32)
        weights = np.empty((n_tasks, components), dtype=np.float64)
        for c, lo in enumerate(range(0, n_tasks, RNG_CHUNK)):
            hi = min(lo + RNG_CHUNK, n_tasks)
            rng = _rng(seed, _CENTRES, c)
            centre = rng.normal(scale=separation, size=(RNG_CHUNK, 1, d))[: hi - lo]
            offset = rng.normal(scale=spread, size=(RNG_CHUNK, components, d))[: hi - lo]
            w = rng.dirichlet(np.full(components, 2.0), size=RNG_CHUNK)[: hi - lo]
            means[lo:hi] = centre + offset
            weights[lo:hi] = w
        return cls(means=means, weights=weights, noise=float(noise), seed=int(seed))

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def d(self) -> int:
        return int(self.means.shape[2])

    @property
    def ids(self) -> np.ndarray:
        """(N,) int64 task ids 0..N-1 (also the learnware ids of the market built from them)."""
        return np.arange(len(self), dtype=np.int64)

    # ------------------------------------------------------------------ sampling
    def _draw(self, task_ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """(len(task_ids), n, d) float32 rows, n per task, vectorised over tasks."""
        cum = np.cumsum(self.weights[task_ids], axis=1)  # (T, C)
        u = rng.random((len(task_ids), n, 1))
        comp = np.minimum((u > cum[:, None, :]).sum(-1), cum.shape[1] - 1)  # (T, n)
        mu = np.take_along_axis(self.means[task_ids], comp[..., None], axis=1)  # (T, n, d)
        return (mu + self.noise * rng.standard_normal((len(task_ids), n, self.d))).astype(np.float32)

    def _chunks(self, n_tasks: int) -> Iterator[tuple[int, int, int]]:
        for c, lo in enumerate(range(0, n_tasks, RNG_CHUNK)):
            yield c, lo, min(lo + RNG_CHUNK, n_tasks)

    def sample(self, n_rows: int, tasks: Sequence[int] | None = None) -> list[np.ndarray]:
        """``n_rows`` rows per task: a list of (n_rows, d) float32 arrays (all tasks by default).

        Row draws for task ``i`` depend only on ``(seed, i, n_rows)``, not on which other tasks are asked.
        """
        _check_positive("n_rows", n_rows, integer=True)
        want = self.ids if tasks is None else np.asarray(tasks, dtype=np.int64)
        if want.size and (want.min() < 0 or want.max() >= len(self)):
            raise ValueError(f"task ids must lie in [0, {len(self)}), got range [{want.min()}, {want.max()}]")
        out: dict[int, np.ndarray] = {}
        for c in np.unique(want // RNG_CHUNK):
            lo, hi = int(c) * RNG_CHUNK, min((int(c) + 1) * RNG_CHUNK, len(self))
            rows = self._draw(np.arange(lo, hi), int(n_rows), _rng(self.seed, _ROWS, int(c)))
            for t in want[(want >= lo) & (want < hi)]:
                out[int(t)] = rows[int(t) - lo]
        return [out[int(t)] for t in want]

    def spec_arrays(self, K: int) -> tuple[np.ndarray, np.ndarray]:
        """Spec-only market: ``K`` points drawn from each task's mixture with uniform weights.

        Generated in chunks of :data:`RNG_CHUNK` tasks (about 1 s per 250,000 tasks at K=16, d=8).

        Returns
        -------
        z : np.ndarray (N, K, d) float32
        beta : np.ndarray (N, K) float32, every row ``1/K``
        """
        _check_positive("K", K, integer=True)
        N = len(self)
        z = np.empty((N, int(K), self.d), dtype=np.float32)
        for c, lo, hi in self._chunks(N):
            z[lo:hi] = self._draw(np.arange(lo, hi), int(K), _rng(self.seed, _SPECS, c))
        beta = np.full((N, int(K)), 1.0 / int(K), dtype=np.float32)
        return z, beta

    # ------------------------------------------------------------------ users
    def users(
        self,
        n_users: int,
        n_rows: int = 200,
        max_mix: int = 1,
        mix_fraction: float = 0.0,
        min_weight: float = 0.15,
        seed: int | None = None,
    ) -> UserTasks:
        """Draw users: a fraction ``mix_fraction`` mixes 2..``max_mix`` tasks, the rest use one task.

        Mixture weights are Dirichlet(1) draws with every weight at least ``min_weight`` (so every
        true component is visible in the data). ``n_rows`` rows per user (0: no rows, ids and weights only).
        """
        _check_positive("n_users", n_users, integer=True)
        if max_mix < 1 or max_mix > len(self):
            raise ValueError(f"max_mix must lie in [1, n_tasks={len(self)}], got {max_mix}")
        if not 0.0 <= mix_fraction <= 1.0:
            raise ValueError(f"mix_fraction must lie in [0, 1], got {mix_fraction}")
        if max_mix > 1 and min_weight * max_mix >= 1.0:
            raise ValueError(f"min_weight={min_weight} too large for max_mix={max_mix}: need min_weight * max_mix < 1")
        rng = _rng(self.seed if seed is None else seed, _USERS)
        ids, wts, data = [], [], []
        for _ in range(int(n_users)):
            m = 1 if (max_mix == 1 or rng.random() >= mix_fraction) else int(rng.integers(2, max_mix + 1))
            chosen = rng.choice(len(self), size=m, replace=False).astype(np.int64)
            w = np.ones(1) if m == 1 else min_weight + (1 - m * min_weight) * rng.dirichlet(np.ones(m))
            order = np.argsort(-w, kind="stable")
            ids.append(chosen[order])
            wts.append(w[order])
        if n_rows > 0:
            row_rng = _rng(self.seed if seed is None else seed, _USER_ROWS)
            for t, w in zip(ids, wts):
                counts = row_rng.multinomial(int(n_rows), w)
                parts = [self._draw(np.array([ti]), int(ci), row_rng)[0] for ti, ci in zip(t, counts) if ci > 0]
                x = np.concatenate(parts, axis=0)
                data.append(x[row_rng.permutation(len(x))])
        return UserTasks(true_ids=ids, true_weights=wts, data=data)

    def user_spec_arrays(self, users: UserTasks, K: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Spec-only users: ``K`` points from each user's mixture, uniform weights.

        Returns z (U, K, d) float32 and beta (U, K) float32.
        """
        _check_positive("K", K, integer=True)
        rng = _rng(self.seed if seed is None else seed, _USER_SPECS)
        z = np.empty((len(users), int(K), self.d), dtype=np.float32)
        for u, (t, w) in enumerate(zip(users.true_ids, users.true_weights)):
            counts = rng.multinomial(int(K), w)
            z[u] = np.concatenate(
                [self._draw(np.array([ti]), int(ci), rng)[0] for ti, ci in zip(t, counts) if ci > 0], axis=0
            )
        return z, np.full((len(users), int(K)), 1.0 / int(K), dtype=np.float32)
