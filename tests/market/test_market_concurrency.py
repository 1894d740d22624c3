"""Several reader threads search while a writer submits and deletes: every thread finishes, searches really
overlap the writes, no errors, no torn reads (on SQLite and on PostgreSQL)."""
from __future__ import annotations

import threading

import numpy as np

from market_testutil import check_consistent, user_spec
from lwgpu.market import Market


def test_readers_during_writes(packages, tmp_path, digits_data, db_url):
    m = Market(tmp_path / "m", db_url=db_url, device="cpu", autosave_every=2)
    base = [m.submit(p) for p in packages[:4]]
    users = [user_spec(digits_data, [t], seed=10 + t) for t in (0, 5, 6)]
    stop = threading.Event()
    writing = threading.Event()  # set by the writer around each submit/delete call
    running = [threading.Event() for _ in users]  # set by each reader after its first search
    lock = threading.Lock()
    errors: list[BaseException] = []
    seen: list[set[int]] = []
    overlapped = [0]  # searches started while a write call was in progress
    deleted: set[int] = set()

    def reader(u, started):
        try:
            while not stop.is_set():
                during = writing.is_set()
                res = m.search(u.rkme, k=10, max_mixture=3)
                ids = [it.id for it in res.single]
                assert len(ids) == len(set(ids)) and ids
                d = [it.mmd2 for it in res.single]
                assert d == sorted(d) and all(np.isfinite(d))
                assert len(ids) == res.n_candidates or len(ids) == 10
                for i in ids:  # each id is whole (row + spec file) unless the writer has deleted it since
                    with lock:
                        gone = i in deleted
                    try:
                        assert m.get(i).rkme.d == 64
                    except (KeyError, FileNotFoundError):
                        with lock:
                            assert i in deleted or gone, f"learnware {i} returned by a search is not readable"
                with lock:
                    seen.append(set(ids))
                    overlapped[0] += during
                started.set()
                m.list({"data_type": "table"})
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
            started.set()

    threads = [threading.Thread(target=reader, args=(u, ev), daemon=True) for u, ev in zip(users, running)]
    for t in threads:
        t.start()
    try:
        assert all(ev.wait(120) for ev in running), "the readers never searched"
        added = []
        for p in packages[4:8]:
            writing.set()
            added.append(m.submit(p))
            writing.clear()
        for i in (base[1], added[0]):
            writing.set()
            with lock:
                deleted.add(i)
            m.delete(i)
            writing.clear()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not [t.name for t in threads if t.is_alive()], "a reader thread did not finish"
    assert not errors, errors[0]
    assert overlapped[0] >= 1, "no search ran while a write was in progress"
    # every search saw a real snapshot: only ids that existed at some point
    assert set().union(*seen) <= set(base) | set(added)
    final = m.search(users[0].rkme, k=10)
    assert {it.id for it in final.single} == set(m.ids) == (set(base) | set(added)) - deleted
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
