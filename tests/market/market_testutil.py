"""Plain helpers for the market tests (importable by name: pytest conftest modules are not)."""
from __future__ import annotations

import hashlib
import sqlite3
import textwrap
from pathlib import Path

import numpy as np

from lwgpu.market import Market


def user_spec(digits_data, tasks, seed=0):
    """A user mixing the test rows of ``tasks`` equally, with its RKME fitted like the tasks'."""
    return digits_data.make_user(tasks, seed=seed)


def snapshot(m: Market) -> dict:
    """Everything a refused submission must leave unchanged: db rows, file hashes, bank ids."""
    db = Path(m.root) / "market.db"
    con = sqlite3.connect(db)
    try:
        rows = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("learnwares", "meta")}
    finally:
        con.close()
    files = {}
    for p in sorted(Path(m.root).rglob("*")):
        if p.is_file() and not p.name.startswith("market.db"):
            files[p.relative_to(m.root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    dirs = sorted(p.relative_to(m.root).as_posix() for p in Path(m.root).rglob("*") if p.is_dir())
    banks = {d: m.bank(d).ids.tolist() for d in (64,) if m.bank(d) is not None}
    return {"rows": rows, "files": files, "dirs": dirs, "banks": banks, "len": len(m)}


def check_consistent(m: Market) -> None:
    """Files, db and bank agree: one folder per row, bank ids == row ids, nothing staged."""
    ids = set(m.ids)
    folders = {int(p.name) for p in (Path(m.root) / "learnwares").iterdir()}
    assert folders == ids
    assert not list((Path(m.root) / ".staging").iterdir())
    assert not list((Path(m.root) / ".trash").iterdir())
    bank = m.bank(64)
    assert set(bank.ids.tolist() if bank is not None else []) == ids
    for i in ids:
        z, beta = m.get(i).rkme.numpy()
        p = int(bank.positions([i])[0])
        np.testing.assert_allclose(bank.z[p, : len(beta)].numpy(), z, atol=1e-6)


#: Prologue of a subprocess script run as the market's process: records (and refuses) any import of the
#: reference package, so a test can assert the market never loads ``learnware`` (``hits`` lists them).
BLOCK_REFERENCE_IMPORTS = textwrap.dedent('''
    import json, sys
    import numpy as np

    hits = []

    class Block:  # any import of the reference package in this (the market's) process is recorded
        def find_spec(self, name, path=None, target=None):
            if name == "learnware" or name.startswith("learnware."):
                hits.append(name)
                raise ImportError(f"the market process must not import {name}")
            return None

    sys.meta_path.insert(0, Block())
''')
