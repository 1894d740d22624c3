"""``lwgpu-bench``: run a study from the Hydra configs in the repository's ``configs/`` folder.

The configs are found relative to this file (``../../configs``), so the console script works from an
editable install (``pip install -e .``, what ``make install`` does) or a source checkout.

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

logger = logging.getLogger(__name__)

#: The repository's configs/, relative to this file; resolved to an absolute path because Hydra reads a
#: relative config_path as a package path when the entry point is imported as a module (console script).
CONFIG_PATH = "../../configs"
CONFIG_DIR = str((Path(__file__).resolve().parent / CONFIG_PATH).resolve())


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
        results = run_study(cfg)
        jsonl, csv = results.write(out)
        plots = make_plots(cfg, results, out)
        tracker.log_results(results)
        tracker.log_images(plots)
    finally:
        tracker.finish()
    return {"out_dir": out, "jsonl": jsonl, "csv": csv, "plots": plots, "results": results}


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Console-script entry point (``lwgpu-bench``)."""
    out = run(cfg, HydraConfig.get().runtime.output_dir)
    print(f"[lwgpu-bench] {cfg.experiment.name}: {len(out['results'].rows)} rows")
    print(f"[lwgpu-bench] results: {out['jsonl']}  {out['csv']}")
    for p in out["plots"]:
        print(f"[lwgpu-bench] plot:    {p}")
    return None


if __name__ == "__main__":
    main()
