"""Pipeline steps of ``lwgpu-bench``: build the market, its specs, the bank and the index.

Each step takes the composed Hydra config, records what it measured into a
:class:`lwgpu.tracking.Results`, and returns the objects the next step needs.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..data.synthetic import SyntheticMarket, UserTasks
from ..tracking import Results

logger = logging.getLogger(__name__)


@dataclass
class Built:
    """What the search step needs: the market's bank (+ index) and the users' specs with their answers."""

    market: SyntheticMarket
    users: UserTasks
    bank: Any                  # lwgpu.bank.SpecBank
    queries: list              # list[RKME], one per user
    index: Any = None          # lwgpu.index.SpecIndex or None


def build_market(cfg: DictConfig) -> tuple[SyntheticMarket, UserTasks]:
    """The synthetic market and its users, from ``cfg.market``."""
    if cfg.market.kind != "synthetic":
        raise ValueError(f"market.kind={cfg.market.kind!r}: the search pipeline needs a synthetic market")
    market = instantiate(cfg.market.generator)
    u = cfg.market.users
    rows = int(u.rows) if cfg.market.mode == "fitted" else 0
    users = market.users(int(u.n), n_rows=rows, max_mix=int(u.max_mix), mix_fraction=float(u.mix_fraction),
                         min_weight=float(u.min_weight))
    logger.info("market: %d tasks in d=%d, %d users (%d mixtures)", len(market), market.d, len(users),
                int(users.is_mixture.sum()))
    return market, users


def _fit(cfg: DictConfig, datasets: list[np.ndarray]) -> list:
    """Fit ``datasets`` with ``cfg.spec.fit`` (``RKME.fit_many``: batched, with its own progress bar)."""
    fit = instantiate(cfg.spec.fit)
    return fit(datasets, progress=bool(cfg.progress))


def build_specs(cfg: DictConfig, market: SyntheticMarket, users: UserTasks, results: Results,
                tags: dict[str, Any]) -> tuple[Any, list]:
    """Fitted or spec-only market specs packed into a SpecBank, and the users' query specs.

    Records fit time, fit throughput and (fitted mode) the residual of a sample of specs against a
    random-subsample baseline of the same size.
    """
    from ..bank import SpecBank
    from ..eval.fit import fit_residuals, subsample_residuals
    from ..spec.rkme import RKME

    K, gamma = int(cfg.spec.K), float(cfg.spec.gamma)
    if cfg.market.mode == "spec_only":
        t0 = time.perf_counter()
        z, beta = market.spec_arrays(K)
        bank = SpecBank.from_arrays(z, beta, gamma, ids=market.ids)
        results.add("bank_build_time", time.perf_counter() - t0, "s", method="spec_only", **tags)
        zq, bq = market.user_spec_arrays(users, K)
        queries = [RKME(zq[i], bq[i], gamma) for i in range(len(users))]
        return bank, queries
    if cfg.market.mode != "fitted":
        raise ValueError(f"market.mode={cfg.market.mode!r}: use 'fitted' or 'spec_only'")
    datasets = market.sample(int(cfg.market.rows_per_task))
    t0 = time.perf_counter()
    specs = _fit(cfg, datasets)
    fit_s = time.perf_counter() - t0
    results.add("fit_time", fit_s, "s", method="fit", **tags)
    results.add("fit_throughput", len(specs) / fit_s if fit_s > 0 else math.inf, "specs/s", method="fit", **tags)
    n_res = min(len(specs), int(cfg.spec.residual_sample))
    if n_res > 0:
        res = fit_residuals(specs[:n_res], datasets[:n_res])
        base = subsample_residuals(datasets[:n_res], K, gamma, seed=int(cfg.seed))
        results.add("fit_residual_mean", float(res.mean()), "mmd2", method="fit", **tags)
        results.add("fit_residual_median", float(np.median(res)), "mmd2", method="fit", **tags)
        results.add("subsample_residual_mean", float(base.mean()), "mmd2", method="subsample", **tags)
        results.add("fit_beats_subsample", float((res <= base).mean()), "", method="fit", **tags)
    t0 = time.perf_counter()
    bank = SpecBank.from_specs(specs, ids=market.ids)
    results.add("bank_build_time", time.perf_counter() - t0, "s", method="fit", **tags)
    queries = _fit(cfg, users.data)
    return bank, queries


def build_index(cfg: DictConfig, bank: Any, results: Results, tags: dict[str, Any]) -> Any:
    """The retrieval index over ``bank`` per ``cfg.index`` (None when disabled); records its build time."""
    if not cfg.index.enabled:
        return None
    t0 = time.perf_counter()
    index = instantiate(cfg.index.build, factory=str(cfg.index.factory))(bank)  # "auto": SpecIndex picks by size
    factory = index.built_factory or str(cfg.index.factory)
    results.add("index_build_time", time.perf_counter() - t0, "s", method="index", factory=factory, **tags)
    return index


def build(cfg: DictConfig, results: Results, tags: dict[str, Any]) -> Built:
    """All the steps before search; the bank is moved to ``cfg.device`` (a GPU when ``auto`` finds one)."""
    from ..device import resolve_device

    market, users = build_market(cfg)
    bank, queries = build_specs(cfg, market, users, results, tags)
    device = resolve_device(cfg.device)
    if bank.device != device:
        bank = bank.to(device)
    index = build_index(cfg, bank, results, tags)
    return Built(market=market, users=users, bank=bank, queries=queries, index=index)
