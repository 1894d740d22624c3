"""The market on each database it supports: SQLite (its own market.db) and a real PostgreSQL server
(started by the tests, see tests/pg_server.py): submit, add_many, duplicates, filtered search against the
float64 brute force, delete, reopen."""
from __future__ import annotations

import numpy as np

from market_testutil import check_consistent, user_spec
from lwgpu.kernels.reference import mmd2 as ref_mmd2
from lwgpu.market import Market, SubmissionError


def _ref(a, b) -> float:
    za, ba = a.numpy()
    zb, bb = b.numpy()
    return float(ref_mmd2(za.astype(np.float64), ba.astype(np.float64), zb.astype(np.float64),
                          bb.astype(np.float64), a.gamma))


def _expected(m: Market, rkme, ids, tag=None, k=10) -> list[int]:
    """The k ids of ``ids`` (those tagged ``tag``) nearest to ``rkme`` by float64 brute force."""
    keep = [i for i in ids if tag is None or tag in m.get(i).semantic_spec["tags"]]
    return sorted(keep, key=lambda i: _ref(rkme, m.get(i).rkme))[:k]


def test_market_on_each_database(packages, digits_data, tmp_path, db_url):
    tasks = digits_data.tasks
    root = tmp_path / "m"
    m = Market(root, db_url=db_url, device="cpu")
    assert (m.store.engine.dialect.name == "postgresql") == (db_url is not None)
    ids = m.submit_many(packages[:5], progress=False)  # package checks in isolated workers
    more = m.add_many([t.model for t in tasks[5:9]], [t.semantic_spec for t in tasks[5:9]],
                      [t.rkme for t in tasks[5:9]], progress=False)
    assert all(isinstance(i, int) for i in ids + more), ids + more
    stored = ids + more
    assert len(set(stored)) == len(m) == 9 and sorted(m.ids) == sorted(stored)
    again = m.add_many([tasks[6].model, tasks[9].model], [tasks[6].semantic_spec, tasks[9].semantic_spec],
                       [tasks[6].rkme, tasks[9].rkme], progress=False)
    assert isinstance(again[0], SubmissionError) and again[0].check == "duplicate"
    assert isinstance(again[1], int)
    stored.append(again[1])

    u = user_spec(digits_data, [2, 7], seed=1)
    tag = "class:%d" % tasks[2].classes[0]
    res = m.search(u.rkme, semantic={"tags": [tag], "library": "sklearn"}, k=10, mixture=False)
    want = _expected(m, u.rkme, stored, tag)
    assert 0 < len(want) < len(stored)
    assert [it.id for it in res.single] == want
    np.testing.assert_allclose([it.mmd2 for it in res.single], [_ref(u.rkme, m.get(i).rkme) for i in want],
                               rtol=1e-4, atol=1e-7)
    assert {lw.id for lw in m.list({"name": tasks[3].semantic_spec["name"].upper()})} == {stored[3]}

    gone = ids[2]
    m.delete(gone)
    stored = [i for i in stored if i != gone]
    assert gone not in m and gone not in m.bank(64).ids
    full = [it.id for it in m.search(u.rkme, k=20, mixture=False).single]
    assert full == _expected(m, u.rkme, stored, k=20)
    check_consistent(m)
    m.close()

    m = Market(root, db_url=db_url, device="cpu")  # reopen: same learnwares, same answers
    try:
        assert sorted(m.ids) == sorted(stored) and sorted(m.bank(64).ids.tolist()) == sorted(stored)
        assert [it.id for it in m.search(u.rkme, k=20, mixture=False).single] == full
        new = m.add(tasks[2].model, tasks[2].semantic_spec, tasks[2].rkme)  # the deleted one comes back
        assert new > max(stored + [gone])  # under a new id: ids are never reused
        check_consistent(m)
    finally:
        m.close()
