"""One LocalCluster of two worker processes (one thread each) for every test under tests/distributed.

Session-scoped: starting worker processes (each imports torch) is the slow part, so all the tests share
it. The shards compute with the torch backend, which needs no JIT in a fresh worker process.
"""
from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed", reason="lwgpu.distributed needs dask: pip install 'lwgpu[dist]'")


@pytest.fixture(scope="session")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()

