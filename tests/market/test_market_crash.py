"""Crashes injected mid-submission / mid-deletion (a killed process), then reopen: consistent market."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from market_testutil import check_consistent, user_spec
from lwgpu.market import Market

CRASH = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    from lwgpu.market import Market
    import lwgpu.market.market as mm
    root, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    m = Market(root, device="cpu")
    real_replace = os.replace
    if mode in ("submit", "delete"):
        def replace(src, dst):  # do the rename, then die before the transaction commits
            real_replace(src, dst)
            if Path(dst).parent.name in ("learnwares", ".trash"):
                os._exit(17)
        mm.os.replace = replace
    else:  # "after_commit": die after the commit, before the bank is updated or saved
        def die(*a, **k):
            os._exit(17)
        mm.BankSet.add_many = die
    if mode == "delete":
        m.delete(int(arg))
    else:
        m.submit(arg)
    sys.exit(0)
''')


def _crash(root, mode, arg):
    r = subprocess.run([sys.executable, "-c", CRASH, str(root), mode, str(arg)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 17, r.stderr[-2000:]


def test_crashes_leave_consistent_market(packages, tmp_path, digits_data):
    root = tmp_path / "m"
    with Market(root, device="cpu") as m:
        ids = [m.submit(p) for p in packages[:3]]

    # 1. killed between moving the files into place and committing: nothing was added
    _crash(root, "submit", packages[3])
    m = Market(root, device="cpu")
    assert m.ids == ids
    check_consistent(m)
    new = m.submit(packages[3])  # not a duplicate: the half-done submission left no trace
    ids.append(new)
    m.close()

    # 2. killed between moving the folder to the trash and committing the delete: nothing lost
    _crash(root, "delete", ids[0])
    m = Market(root, device="cpu")
    assert m.ids == ids
    check_consistent(m)
    u = user_spec(digits_data, [0], seed=5)
    assert m.search(u.rkme).single[0].id == ids[0]
    m.close()

    # 3. killed after the commit but before the bank was updated or saved: the bank is repaired
    _crash(root, "after_commit", packages[4])
    m = Market(root, device="cpu")
    assert len(m) == len(ids) + 1
    check_consistent(m)
    last = max(m.ids)
    u = user_spec(digits_data, [4], seed=6)
    assert m.search(u.rkme).single[0].id == last
    m.close()


def test_bank_files_lost_or_stale_are_rebuilt(packages, tmp_path):
    import shutil

    root = tmp_path / "m"
    with Market(root, device="cpu") as m:
        ids = [m.submit(p) for p in packages[:3]]
    stale = tmp_path / "stale_bank"
    shutil.copytree(root / "banks", stale)
    with Market(root, device="cpu") as m:
        m.delete(ids[0])
        ids.append(m.submit(packages[5]))
    shutil.rmtree(root / "banks")
    shutil.copytree(stale, root / "banks")  # a bank saved before the last changes
    with Market(root, device="cpu") as m:
        assert m.ids == ids[1:]
        check_consistent(m)
    (root / "banks" / "d64" / "meta.json").write_text("{broken")
    with Market(root, device="cpu") as m:
        check_consistent(m)


BATCH_CRASH = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    from lwgpu.market import Market
    import lwgpu.market.market as mm
    root, n_ok = sys.argv[1], int(sys.argv[2])
    from lwgpu.data.real import make_digits_market
    data = make_digits_market(12, seed=0, K=8, n_mixture_users=0, fit_user_specs=False, spec_options={"steps": 0})
    m = Market(root, device="cpu")
    real_replace, moved = os.replace, []
    def replace(src, dst):  # the second batch dies half-way through moving its folders, before its commit
        real_replace(src, dst)
        if Path(dst).parent.name == "learnwares":
            moved.append(dst)
            if len(moved) == n_ok + 2:
                os._exit(17)
    mm.os.replace = replace
    t = data.tasks
    m.add_many([x.model for x in t], [x.semantic_spec for x in t], [x.rkme for x in t], batch=n_ok, progress=False)
    sys.exit(0)
''')


def test_crash_mid_batch_keeps_committed_batches_only(tmp_path):
    """add_many commits batch by batch: a kill inside the second batch keeps the first whole, nothing of the rest."""
    root = tmp_path / "m"
    r = subprocess.run([sys.executable, "-c", BATCH_CRASH, str(root), "5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 17, r.stderr[-2000:]
    with Market(root, device="cpu") as m:
        assert m.ids == [1, 2, 3, 4, 5]
        check_consistent(m)
        assert m.bank(64).ids.tolist() == [1, 2, 3, 4, 5]
