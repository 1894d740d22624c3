"""``lwgpu-bench``: run a study from lwgpu's Hydra configs (the repository's ``configs/`` folder).

Where the configs come from (:func:`lwgpu.cli.config_path.config_dir`): a wheel (``pip install .``) carries
a copy of ``configs/`` inside the package (``lwgpu/_configs``); a source checkout or an editable install
(``pip install -e .``, what ``make install`` does) reads the repository's ``configs/`` directly, so edits
show up without reinstalling. Either way the console script works from any working directory.

Your own configs, without editing the package: put them in a folder laid out like ``configs/`` (e.g.
``~/my_configs/experiment/my_study.yaml``) and add that folder to Hydra's search path, by any of

- ``lwgpu-bench --config-dir ~/my_configs experiment=my_study``
- ``lwgpu-bench 'hydra.searchpath=[file:///home/me/my_configs]' experiment=my_study``
- ``export LWGPU_CONFIG_PATH=~/my_configs:/shared/lab_configs`` (``os.pathsep``-separated folders), then
  ``lwgpu-bench experiment=my_study``

The added folders come after the shipped configs: they add new options to a group (a file whose name
is already shipped, e.g. ``experiment/default.yaml``, is not replaced). ``lwgpu-bench --info searchpath``
lists the search path.

Examples
--------
lwgpu-bench                                   # the main job: 1,000 learnwares, every metric
lwgpu-bench debug=default                     # the whole pipeline on a tiny market, in seconds
lwgpu-bench experiment=latency_vs_size        # a study from configs/experiment/
lwgpu-bench -m hydra/launcher=joblib market.n_tasks=100,200   # a sweep
lwgpu-bench logger=wandb                      # also log to wandb (offline unless WANDB_MODE says so)
lwgpu-bench --cfg job                         # print the composed config
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .config_path import config_dir, register_search_path_plugin

logger = logging.getLogger(__name__)

#: The shipped configs (absolute: Hydra reads a relative config_path as a package path when the entry
#: point is imported as a module, as a console script is).
CONFIG_DIR = str(config_dir())


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(cfg: DictConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """The whole job for a composed config, writing into ``out_dir``; returns the paths it wrote.

    Seeds everything, saves ``config_resolved.yaml``, runs the study, writes ``results.jsonl``,
    ``results.csv`` and PNG plots, and hands them to the configured logger.
    """
    import torch

    from .study import make_plots, run_study

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(int(cfg.seed))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    OmegaConf.save(cfg, out / "config_resolved.yaml", resolve=True)
    log_cfg = OmegaConf.to_container(cfg.logger, resolve=True)
    if log_cfg.get("_target_", "").endswith("WandbLogger") and not log_cfg.get("dir"):
        log_cfg["dir"] = str(out)
    tracker = instantiate(log_cfg)
    tracker.log_config(OmegaConf.to_container(cfg, resolve=True))
    try:
        energy_cfg = cfg.get("energy") or {}
        if energy_cfg.get("enabled", True):  # every row carries the run's energy, CO2-eq, CPU and GPU seconds
            from ..device import resolve_device
            from ..eval.energy import EnergyMeter

            meter = EnergyMeter.from_config(OmegaConf.to_container(energy_cfg, resolve=True) if energy_cfg else {},
                                            device=str(resolve_device(cfg.get("device", "auto"))))
            with meter:
                results = run_study(cfg)
            results.attach({**meter.record.columns(), "energy_scope": "run"})
        else:
            results = run_study(cfg)
        jsonl, csv = results.write(out)
        plots = make_plots(cfg, results, out)
        tracker.log_results(results)
        tracker.log_images(plots)
    finally:
        tracker.finish()
    return {"out_dir": out, "jsonl": jsonl, "csv": csv, "plots": plots, "results": results}


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra task: run the composed config into Hydra's output folder and print where it wrote."""
    out = run(cfg, HydraConfig.get().runtime.output_dir)
    print(f"[lwgpu-bench] {cfg.experiment.name}: {len(out['results'].rows)} rows")
    print(f"[lwgpu-bench] results: {out['jsonl']}  {out['csv']}")
    for p in out["plots"]:
        print(f"[lwgpu-bench] plot:    {p}")
    return None


def main() -> None:
    """Console-script entry point (``lwgpu-bench``): adds ``LWGPU_CONFIG_PATH`` to the search path, runs Hydra."""
    register_search_path_plugin()
    _hydra_main()


if __name__ == "__main__":
    main()
