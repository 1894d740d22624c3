"""A study of ``lwgpu-bench``: one pipeline run, or a loop of runs over one config key, plus its plots."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ..tracking import Results, plot_bars, plot_latency, plot_metrics, run_context

logger = logging.getLogger(__name__)


def run_once(cfg: DictConfig, results: Results, tags: dict[str, Any]) -> None:
    """Build the market, measure search, and (when enabled) reuse, recording into ``results``."""
    if cfg.market.kind == "synthetic":
        from .measure import measure_search
        from .steps import build

        built = build(cfg, results, tags)
        measure_search(cfg, built, results, tags)
        if cfg.get("cluster") is not None and cfg.cluster.kind != "none":  # also sharded on Dask
            from ..distributed.bench_step import measure_sharded

            measure_sharded(cfg, built, results, tags)
    elif cfg.market.kind in ("image", "text"):  # a real Market of image / text learnwares with ground truth
        from .typed_step import measure_typed_market

        measure_typed_market(cfg, results, tags)
    if cfg.reuse.enabled:
        from .reuse_step import measure_reuse

        measure_reuse(cfg, results, tags)


def sweep_values(cfg: DictConfig) -> tuple[str, list[Any]] | None:
    """``(config key, values)`` the study loops over, or None for a single run.

    ``experiment.sweep.debug_values`` replace ``values`` when ``debug_mode`` is on.
    """
    sweep = cfg.experiment.get("sweep")
    if not sweep:
        return None
    values = sweep.debug_values if cfg.debug_mode and sweep.get("debug_values") else sweep["values"]
    values = list(OmegaConf.to_container(values, resolve=True))
    if not values:
        raise ValueError(f"experiment.sweep.values for {sweep.param!r} is empty; list at least one value")
    if OmegaConf.select(cfg, sweep.param, default=None) is None:
        raise ValueError(f"experiment.sweep.param={sweep.param!r} names no key of the config")
    return str(sweep.param), values


def run_study(cfg: DictConfig) -> Results:
    """Every measurement of the study described by ``cfg`` (see ``configs/experiment/``)."""
    results = Results(run_context(cfg.device, experiment=cfg.experiment.name, seed=int(cfg.seed)))
    sweep = sweep_values(cfg)
    if sweep is None:
        run_once(cfg, results, {})
        return results
    key, values = sweep
    for value in tqdm(values, desc=f"{cfg.experiment.name}: {key}", disable=not cfg.progress):
        step_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        OmegaConf.update(step_cfg, key, value, merge=False)
        logger.info("study %s: %s=%s", cfg.experiment.name, key, value)
        run_once(step_cfg, results, {key: value})
    return results


def make_plots(cfg: DictConfig, results: Results, out_dir: str | Path) -> list[Path]:
    """PNG plots of the study: its configured panels against the swept key, and a summary bar chart."""
    out = Path(out_dir)
    paths: list[Path] = []
    plots = cfg.experiment.get("plots")
    panels = OmegaConf.to_container(plots, resolve=True) if plots else []
    sweep = sweep_values(cfg)
    x = cfg.experiment.get("x") or (sweep[0] if sweep else None)
    if panels and x:
        title = f"{cfg.experiment.name} ({results.context.get('device', '')})"
        paths.append(plot_metrics(results.rows, x, panels, out / f"{cfg.experiment.name}.png", title=title))
    if sweep is None:
        paths.append(plot_bars(results.rows, out / "summary.png", title=f"{cfg.experiment.name}: quality"))
        lat = plot_latency(results.rows, out / "latency.png", title=f"{cfg.experiment.name}: query latency")
        if lat is not None:
            paths.append(lat)
    return paths
