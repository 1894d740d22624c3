"""A small digits market shared by the reuse tests (built once per session)."""
import pytest

from lwgpu.data.real import make_digits_market


@pytest.fixture(scope="session")
def digits():
    return make_digits_market(n_tasks=16, n_mixture_users=4, K=30, seed=0)
