"""Several reader threads search while a writer submits and deletes: no errors, no torn reads."""
from __future__ import annotations

import threading

import numpy as np

from market_testutil import check_consistent, user_spec
from lwgpu.market import Market


def test_readers_during_writes(packages, tmp_path, digits_data):
    m = Market(tmp_path / "m", device="cpu", autosave_every=2)
    base = [m.submit(p) for p in packages[:4]]
    users = [user_spec(digits_data, [t], seed=10 + t) for t in (0, 5, 6)]
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[set[int]] = []

    def reader(u):
        try:
            while not stop.is_set():
                res = m.search(u.rkme, k=10, max_mixture=3)
                ids = [it.id for it in res.single]
                assert len(ids) == len(set(ids)) and ids
                d = [it.mmd2 for it in res.single]
                assert d == sorted(d) and all(np.isfinite(d))
                assert len(ids) == res.n_candidates or len(ids) == 10
                seen.append(set(ids))
                m.list({"data_type": "table"})
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(u,)) for u in users]
    for t in threads:
        t.start()
    try:
        added = [m.submit(p) for p in packages[4:8]]
        m.delete(base[1])
        m.delete(added[0])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]
    assert seen
    # every search saw a real snapshot: only ids that existed at some point
    assert set().union(*seen) <= set(base) | set(added)
    final = m.search(users[0].rkme, k=10)
    assert {it.id for it in final.single} == set(m.ids)
    check_consistent(m)
    m.close()


def test_index_path_for_large_market(packages, tmp_path, digits_data):
    """Above index_threshold an unfiltered search goes through SpecIndex and is re-ranked exactly."""
    m = Market(tmp_path / "m", device="cpu", index_threshold=6)
    ids = [m.submit(p) for p in packages[:8]]
    u = user_spec(digits_data, [3], seed=7)
    from lwgpu.search import statistical_search

    exact = statistical_search(m.bank(64), u.rkme, k=5, index=None)
    res = m.search(u.rkme, k=5)
    assert res.method == "index" and exact.method == "exact"
    assert m.search(u.rkme, semantic={"data_type": "table"}, k=5).method == "index"  # admits all: unfiltered
    assert [it.id for it in res.single][:3] == [it.id for it in exact.single][:3]
    assert res.single[0].id == ids[3]
    m.submit(packages[9])  # the index follows the bank
    m.close()
    m = Market(tmp_path / "m", device="cpu", index_threshold=6)
    assert m.search(u.rkme, k=5).method == "index"
    m.close()
