"""Shared fixtures; GPU tests skip per test when no GPU is present."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_spec_arrays(rng, K, d, scale=1.0):
    """(z (K, d), beta (K,) on the simplex) for a random spec."""
    z = rng.normal(size=(K, d)) * scale
    beta = rng.random(K) + 0.05
    return z, beta / beta.sum()
