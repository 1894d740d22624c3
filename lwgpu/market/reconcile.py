"""Reopening a market: make its folders agree with the database (the source of truth) after any crash.

What a crash can leave, and what :func:`reconcile_files` does with it:

- ``.staging/*``: items of a batch that never committed: removed, except the folders another process
  is staging right now (they hold a lock, :func:`~.locks.staging_dir`);
- ``.trash/<id>``: a deletion whose transaction never committed (the row is still there): moved back;
  otherwise (committed) removed;
- ``learnwares/<id>`` without a row: folders renamed in by a batch whose transaction rolled back or was
  killed: removed (SQLite may give the id again; the next commit would replace the folder anyway);
- a row without its folder (files lost by hand): the row is removed, logged as an error.

One listing of ``learnwares/`` and array set differences against the database's ids: a second or two
at a million learnwares, no per-learnware file checks. The market calls it holding its cross-process
write lock, so no other process is between renaming folders in and committing their rows.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ..idsets import setdiff_ids
from .locks import reap_staging
from .store import Store

logger = logging.getLogger(__name__)


def reconcile_files(store: Store, lw_dir: Path, staging: Path, trash: Path) -> tuple[np.ndarray, np.ndarray]:
    """Repair the folders against ``store``; returns the database's ``(ids, input_dims)`` (int64, ascending ids)."""
    reap_staging(staging)  # leftovers of crashed submissions; those in flight in other processes stay
    ids, dims = store.ids_and_dims()
    for p in trash.iterdir():
        if p.name.isdigit() and np.isin(int(p.name), ids) and not (lw_dir / p.name).exists():
            os.replace(p, lw_dir / p.name)
        else:
            shutil.rmtree(p, ignore_errors=True)
    names = os.listdir(lw_dir)
    folders = np.array([int(n) for n in names if n.isdigit()], np.int64)
    for name in (n for n in names if not n.isdigit()):
        logger.warning("removing %s: not a learnware folder", lw_dir / name)
        shutil.rmtree(lw_dir / name, ignore_errors=True)
    for i in setdiff_ids(folders, ids).tolist():
        logger.warning("removing learnwares/%d: no database row (an interrupted submission)", i)
        shutil.rmtree(lw_dir / str(i), ignore_errors=True)
    lost = setdiff_ids(ids, folders)
    if lost.size:
        logger.error("learnwares %s have lost their files; removing their rows", lost[:20].tolist())
        with store.transaction() as s:
            for i in lost.tolist():
                Store.remove(s, i)
        ids, dims = store.ids_and_dims()
    return ids, dims
