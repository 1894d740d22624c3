"""Fixtures for market tests: a small digits market (scikit-learn models on class subsets/shifts), and the
databases a market can use: SQLite, and a real PostgreSQL server started once per session (:mod:`pg_server`)."""
from __future__ import annotations

import os

import pytest

import pg_server
from lwgpu.market import Market, pack_learnware

N_TASKS = 30


@pytest.fixture(scope="session")
def digits_data():
    """30 digits tasks (3 classes each, image shifts), K=32 specs (k-means + optimal beta)."""
    from lwgpu.data.real import make_digits_market

    return make_digits_market(N_TASKS, seed=0, K=32, n_mixture_users=0, fit_user_specs=False,
                              spec_options={"steps": 0})


@pytest.fixture(scope="session")
def packages(digits_data, tmp_path_factory):
    """One zip package per task (task i -> packages[i])."""
    root = tmp_path_factory.mktemp("packages")
    return [pack_learnware(t.model, t.semantic_spec, t.rkme, root / f"task{t.index}.zip") for t in digits_data.tasks]


@pytest.fixture(scope="session")
def digits_market(packages, tmp_path_factory):
    """A market holding all 30 tasks; returns (market, ids) with ids[i] the id of task i. Read-only use."""
    m = Market(tmp_path_factory.mktemp("market") / "m", device="cpu")
    ids = m.submit_many(packages, progress=False)
    assert all(isinstance(i, int) for i in ids), ids
    yield m, ids
    m.close()


@pytest.fixture(scope="session")
def pg():
    """A PostgreSQL server for the session (``.url``, ``.new_database()``): the one at ``LWGPU_TEST_PG_URL``
    (its user must be allowed to create databases) or one started here; skips saying why when neither works."""
    if os.environ.get("LWGPU_TEST_PG_URL"):
        srv = pg_server.ExternalPg(os.environ["LWGPU_TEST_PG_URL"])
    else:
        try:
            srv = pg_server.start()
        except pg_server.PgUnavailable as exc:
            pytest.skip(f"no PostgreSQL server for the postgresql tests: {exc}")
    yield srv
    srv.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """The database of a new market: ``None`` (its own SQLite ``market.db``) or a new PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg").new_database()
