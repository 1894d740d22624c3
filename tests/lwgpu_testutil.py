"""Plain helpers shared by tests (importable by name: pytest conftest modules are not)."""
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def random_spec_arrays(rng, K, d, scale=1.0):
    """(z (K, d), beta (K,) on the simplex) for a random spec."""
    z = rng.normal(size=(K, d)) * scale
    beta = rng.random(K) + 0.05
    return z, beta / beta.sum()
