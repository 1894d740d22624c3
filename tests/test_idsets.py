"""The sort-based id set operations against numpy's own."""
from __future__ import annotations

import numpy as np
import pytest

from lwgpu.idsets import setdiff_ids, sorted_unique, unique_ids


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_unique_and_setdiff_match_numpy(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        a = rng.integers(-50, 200, n)
        b = rng.integers(-50, 200, rng.integers(0, n + 2))
        assert np.array_equal(unique_ids(a), np.unique(a)) and unique_ids(a).dtype == np.int64
        assert np.array_equal(sorted_unique(a), np.unique(a))
        assert np.array_equal(setdiff_ids(a, b), np.setdiff1d(a, b))
    s = np.arange(5, dtype=np.int64)
    assert np.shares_memory(sorted_unique(s), s)  # already sorted and unique: no copy
