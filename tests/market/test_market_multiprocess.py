"""Processes sharing one market folder (and database): two writers and a searcher, on SQLite and PostgreSQL.

Each process opens its own :class:`Market` on the same root. Two writer processes store 10 learnwares
each (one with ``add`` item by item, one with ``add_many`` in batches of 3) plus the same 11th learnware
both: it must be stored once, the other writer told it is a duplicate. A third process searches, lists
and reads learnwares the whole time (refreshing its banks from the database); every id it gets back must
be fully readable (database row, semantic spec, RKME file equal to its bank row). Afterwards the database,
the folders and the rebuilt bank hold exactly the 21 learnwares the writers were told they stored.
"""
from __future__ import annotations

import multiprocessing as mp
import time
import traceback

import numpy as np
import pytest

from market_testutil import check_consistent, user_spec
from lwgpu.market import Market, SubmissionError

N_EACH = 10
SHARED = 20  # the task both writers add


def _writer(root, db_url, items, how, go, stop, out):
    """Store ``items`` [(model, semantic, rkme)]; put ("writer", [id or check name], error) on ``out``."""
    try:
        m = Market(root, db_url=db_url, device="cpu")
        if not go.wait(120):
            raise TimeoutError("the searcher never started")
        got: list = []
        if how == "add":
            for model, sem, rkme in items:
                try:
                    got.append(m.add(model, sem, rkme))
                except SubmissionError as exc:
                    got.append(exc.check)
        else:
            for s in range(0, len(items), 3):
                part = items[s:s + 3]
                res = m.add_many([p[0] for p in part], [p[1] for p in part], [p[2] for p in part], batch=3,
                                 progress=False)
                got += [r.check if isinstance(r, SubmissionError) else int(r) for r in res]
        m.close()
        out.put(("writer", got, None))
    except BaseException:  # noqa: BLE001 - reported to the test
        out.put(("writer", None, traceback.format_exc()))


def _searcher(root, db_url, user, names, go, stop, out):
    """Search/list/get in a loop until ``stop``; put ("searcher", stats, errors) on ``out``."""
    errors: list[str] = []
    stats = {"searches": 0, "gets": 0, "max_seen": 0, "rounds_during_writes": 0}
    try:
        m = Market(root, db_url=db_url, device="cpu")
        go.set()
        while True:
            last = stop.is_set()  # one more round after the writers are done
            stats["rounds_during_writes"] += not last
            m.refresh()
            for semantic in (None, {"data_type": "table", "tags": ["digits"]}):
                res = m.search(user, semantic=semantic, k=30, mixture=False)
                stats["searches"] += 1
                ids = [it.id for it in res.single]
                if len(ids) != len(set(ids)):
                    errors.append(f"duplicate ids in one result: {ids}")
                bank = m.bank(64)
                for i in ids:
                    lw = m.get(i)  # the row, its semantic spec and its RKME file must all be there
                    if lw.semantic_spec["name"] not in names:
                        errors.append(f"learnware {i} has an unknown name {lw.semantic_spec['name']!r}")
                    z, beta = lw.rkme.numpy()
                    p = int(bank.positions([i])[0])
                    if not np.allclose(bank.z[p, :len(beta)].numpy(), z, atol=1e-6):
                        errors.append(f"learnware {i}: RKME file differs from its bank row")
                    stats["gets"] += 1
                stats["max_seen"] = max(stats["max_seen"], len(ids))
                if last and semantic is None:
                    stats["final"] = sorted(ids)
            for lw in m.list({"library": "sklearn"}):
                if lw.rkme.d != 64:
                    errors.append(f"learnware {lw.id}: RKME of dimension {lw.rkme.d}")
            if last:
                break
        m.close()
    except BaseException:  # noqa: BLE001 - reported to the test
        errors.append(traceback.format_exc())
    out.put(("searcher", stats, errors))


def _serve(inbox, go, stop, out):
    """A spawned process that runs ``(function name, args)`` jobs from ``inbox`` until it gets None."""
    while True:
        job = inbox.get()
        if job is None:
            return
        name, args = job
        globals()[name](*args, go, stop, out)


@pytest.fixture(scope="module")
def procs():
    """Three spawned processes (searcher, writer, writer) serving the tests of this module: started once,
    because starting a Python process that imports torch takes seconds on a loaded machine."""
    ctx = mp.get_context("spawn")
    out, go, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    inboxes = [ctx.Queue() for _ in range(3)]
    ps = [ctx.Process(target=_serve, args=(q, go, stop, out), daemon=True) for q in inboxes]
    for p in ps:
        p.start()
    yield inboxes, out, go, stop, ps
    for q in inboxes:
        q.put(None)
    deadline = time.monotonic() + 5  # a graceful exit is not what is tested: do not wait long for one
    for p in ps:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(timeout=10)


@pytest.mark.slow
def test_two_writer_processes_and_a_searcher(digits_data, tmp_path, db_url, procs):
    root = tmp_path / "m"
    Market(root, db_url=db_url, device="cpu").close()  # create the schema once, before the processes race
    tasks = digits_data.tasks
    item = lambda t: (t.model, t.semantic_spec, t.rkme)  # noqa: E731
    plans = [[item(tasks[i]) for i in range(N_EACH)] + [item(tasks[SHARED])],
             [item(tasks[i]) for i in range(N_EACH, 2 * N_EACH)] + [item(tasks[SHARED])]]
    names = {t.semantic_spec["name"] for t in tasks}
    user = user_spec(digits_data, [3, 12], seed=5).rkme

    inboxes, out, go, stop, ps = procs
    go.clear()
    stop.clear()
    inboxes[0].put(("_searcher", (str(root), db_url, user, names)))
    for w, how in enumerate(("add", "add_many")):
        inboxes[1 + w].put(("_writer", (str(root), db_url, plans[w], how)))
    results = []
    try:
        for _ in range(2):  # the writers (they start once the searcher runs)
            results.append(out.get(timeout=300))
        stop.set()
        results.append(out.get(timeout=300))
    finally:
        stop.set()
    assert all(p.is_alive() for p in ps), [p.exitcode for p in ps]
    got = [r for r in results if r[0] == "writer"]
    assert all(r[2] is None for r in got), [r[2] for r in got if r[2]][0]
    (_, stats, errors), = [r for r in results if r[0] == "searcher"]
    assert not errors, errors[:3]

    # nothing lost, nothing duplicated: 10 + 10 distinct learnwares + the shared one exactly once
    outcomes = [r[1] for r in got]
    stored = [i for o in outcomes for i in o if isinstance(i, int)]
    assert len(stored) == len(set(stored)) == 2 * N_EACH + 1
    assert sorted(o[-1] if isinstance(o[-1], str) else "stored" for o in outcomes) == ["duplicate", "stored"]
    assert all(isinstance(i, int) for o in outcomes for i in o[:-1])
    assert stats["rounds_during_writes"] >= 1  # it did search while the writers wrote
    assert stats["final"] == sorted(stored)  # its last round (after the writers) found every learnware

    m = Market(root, db_url=db_url, device="cpu")
    try:
        assert sorted(m.ids) == sorted(stored)
        want = {tasks[i].semantic_spec["name"] for i in [*range(2 * N_EACH), SHARED]}
        assert {m.get(i).semantic_spec["name"] for i in stored} == want
        check_consistent(m)
        res = m.search(user, k=2 * N_EACH + 1, mixture=False)
        assert sorted(it.id for it in res.single) == sorted(stored)
    finally:
        m.close()


def test_opening_a_market_keeps_staging_in_flight(tmp_path):
    """The repair on open removes crashed submissions' staging folders, never one in use (flock-held)."""
    from lwgpu.market.locks import file_lock, staging_dir

    root = tmp_path / "m"
    Market(root, device="cpu").close()
    crashed = root / ".staging" / "tmpcrashed"
    (crashed / "pkg").mkdir(parents=True)
    with staging_dir(root / ".staging") as busy:
        (busy / "item").write_text("in flight")
        m = Market(root, device="cpu")  # another opener, as from another process (own file descriptions)
        assert (busy / "item").read_text() == "in flight" and not crashed.exists()
        m.close()
    assert not busy.exists() and list((root / ".staging").iterdir()) == []
    # the write lock is exclusive between market objects: a second holder waits for the first
    import threading

    order: list[str] = []
    with file_lock(root / ".write.lock"):
        t = threading.Thread(target=lambda: (Market(root, device="cpu").close(), order.append("opened")))
        t.start()
        t.join(timeout=3)
        order.append("released")
    t.join(timeout=120)
    assert not t.is_alive() and order == ["released", "opened"]
