"""Input conversion: shapes, NaN policy, K and gamma checks."""
import numpy as np
import pytest
import torch

from lwgpu.spec.validation import as_matrix, check_K, check_gamma


def test_impute_uses_column_means():
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.inf, 8.0]])
    out = as_matrix(x, nan_policy="impute")
    np.testing.assert_allclose(out.numpy(), [[1.0, 6.0], [3.0, 4.0], [2.0, 8.0]])
    with pytest.raises(ValueError, match="NaN/Inf"):
        as_matrix(x)


def test_all_nan_column_refused():
    with pytest.raises(ValueError, match=r"columns \[1\] have no finite value"):
        as_matrix(np.array([[1.0, np.nan], [2.0, np.nan]]), nan_policy="impute")


def test_dtype_device_and_bad_policy():
    assert as_matrix([[1, 2]], dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="nan_policy"):
        as_matrix([[1.0]], nan_policy="drop")


@pytest.mark.parametrize("K", [0, -3, 2.5, True, "10"])
def test_bad_K(K):
    with pytest.raises(ValueError, match="K"):
        check_K(K)


@pytest.mark.parametrize("gamma", [0, -0.1, float("nan"), float("inf"), "x"])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma"):
        check_gamma(gamma)


def test_same_kernel_check_names_both_sides():
    from lwgpu.spec.validation import check_same_kernel, same_gamma

    assert same_gamma(0.1, 0.1 * (1 + 1e-12)) and not same_gamma(0.1, 0.1001)
    check_same_kernel(3, 0.1, 3, 0.1)
    with pytest.raises(ValueError, match="dimension mismatch: the query has d=3 but the bank has d=4"):
        check_same_kernel(3, 0.1, 4, 0.1, "the query", "the bank")
    with pytest.raises(ValueError, match="gamma mismatch: the query has gamma=0.1 but the bank has gamma=0.2"):
        check_same_kernel(3, 0.1, 3, 0.2, "the query", "the bank")
