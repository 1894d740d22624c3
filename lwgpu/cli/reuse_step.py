"""Reuse measurements of ``lwgpu-bench``: search a real-data market, reuse what it finds, vs the user's own model.

For every evaluated user of the market built by ``cfg.reuse.market`` (e.g. digits tasks with trained
models), the market is searched with the user's RKME; the mixture members (or the top ``search_k``
singles) go to :func:`lwgpu.reuse.evaluation.reuse_curve`, which reports each reuser's error and the
user's own model trained on the same few labels. Errors are averaged over users and repeats.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ..eval.reuse import reuse_vs_own
from ..eval.search import mixture_precision_recall
from ..tracking import Results

logger = logging.getLogger(__name__)


def found_learnwares(bank: Any, user_spec: Any, search_k: int, device: str) -> np.ndarray:
    """Market ids the search hands to reuse: the mixture's members, else the ``search_k`` best singles."""
    from ..search import statistical_search

    res = statistical_search(bank, user_spec, k=search_k, mixture=True, device=device)
    if res.mixture is not None:
        return np.asarray(res.mixture.ids, dtype=np.int64)
    return np.asarray(res.ids[:search_k], dtype=np.int64)


def measure_reuse(cfg: DictConfig, results: Results, tags: dict[str, Any]) -> None:
    """Reuse error against the number of user labels; rows tagged ``method`` and ``n_labels``."""
    from ..bank import SpecBank
    from ..reuse.evaluation import reuse_curve

    rc = cfg.reuse
    t0 = time.perf_counter()
    market = instantiate(rc.market)
    results.add("reuse_market_build_time", time.perf_counter() - t0, "s", method="reuse", **tags)
    bank = SpecBank.from_specs(market.specs, ids=np.arange(len(market.tasks)))
    pick = np.unique(np.linspace(0, len(market.users) - 1, min(int(rc.n_users), len(market.users))).round())
    users = [market.users[int(i)] for i in pick]  # spread over single-task and mixture users
    if not users:
        raise ValueError("reuse.market produced no users; raise its n_tasks or n_mixture_users")
    labels = [int(k) for k in rc.labels]
    reusers = list(OmegaConf.to_container(rc.reusers, resolve=True))
    rows: list[dict[str, Any]] = []
    found_all, true_all = [], []
    for u, user in enumerate(tqdm(users, desc="reuse users", disable=not cfg.progress)):
        found = found_learnwares(bank, user.rkme, int(rc.search_k), cfg.device)
        found_all.append(found)
        true_all.append(np.asarray(user.tasks, dtype=np.int64))
        lws = [market.tasks[int(i)] for i in found]
        n_max = min(labels[-1], len(user.y) - int(rc.min_test))
        counts = [k for k in labels if k <= n_max]
        if not counts:
            logger.warning("user %d has %d rows: too few for %s labels; skipped", u, len(user.y), labels)
            continue
        user_rows = reuse_curve(lws, user.X, user.y, label_counts=counts, reusers=reusers,
                                repeats=int(rc.repeats), seed=int(cfg.seed) + u, specs=[t.rkme for t in lws],
                                n_test=len(user.y) - counts[-1])
        rows.extend(user_rows)
    p, r = mixture_precision_recall(found_all, None, true_all)
    results.add("reuse_search_precision", p, "", method="search", **tags)
    results.add("reuse_search_recall", r, "", method="search", **tags)
    for row in reuse_vs_own(rows):
        tag = dict(method=row["method"], n_labels=row["n_labels"], **tags)
        results.add("reuse_error", row["error"], row["metric"], **tag)
        if row["method"] != "own":
            results.add("reuse_error_minus_own", row["gap"], row["metric"], **tag)
    seconds: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        seconds.setdefault((row["method"], int(row["n_labels"])), []).append(float(row["seconds"]))
    for (method, k), secs in sorted(seconds.items()):
        results.add("reuse_seconds", float(np.mean(secs)), "s", method=method, n_labels=k, **tags)
