"""Plain helpers for the distributed tests (importable by name: pytest conftest modules are not)."""
from __future__ import annotations

import numpy as np


def random_bank_arrays(rng: np.random.Generator, n: int, K: int = 6, d: int = 3, clusters: int = 5):
    """z (n, K, d) float32 around a few centres (so neighbours are not all equally far), beta (n, K) on the simplex."""
    centres = rng.normal(scale=2.0, size=(clusters, d))
    z = centres[rng.integers(clusters, size=n)][:, None, :] + rng.normal(size=(n, K, d))
    beta = rng.dirichlet(np.ones(K), size=n)
    return z.astype(np.float32), beta.astype(np.float32)
