"""Multirun sweeps: a two-job grid through the joblib and the submitit_local launchers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lwgpu.cli.bench import CONFIG_DIR
from lwgpu.tracking import read_jsonl

REPO = Path(CONFIG_DIR).parent


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_two_job_sweep(launcher, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "lwgpu.cli.bench", "-m", f"hydra/launcher={launcher}", "debug=default",
           "market=synthetic_spec_only", "market.n_tasks=30,40", "search=single", "index=none", "market.users.n=4", "threads=1",
           f"hydra.sweep.dir={tmp_path}"]
    if launcher == "submitit_local":
        cmd += ["hydra.launcher.timeout_min=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    sizes = set()
    for job in ("0", "1"):
        rows = read_jsonl(tmp_path / job / "results.jsonl")
        assert rows and (tmp_path / job / "summary.png").exists()
        sizes.add(OmegaConf.load(tmp_path / job / "config_resolved.yaml").market.generator.n_tasks)
    assert sizes == {30, 40}
    if launcher == "joblib":  # merging a sweep's jobs into one table and plot
        from lwgpu.cli.main import main

        assert main(["collect", str(tmp_path), "--x", "market.n_tasks", "--metric", "top1_accuracy"]) == 0
        merged = read_jsonl(tmp_path / "results_all.jsonl")
        assert {r["market.n_tasks"] for r in merged} == {30, 40} and {r["job"] for r in merged} == {"0", "1"}
        assert (tmp_path / "results_all.png").read_bytes()[:4] == b"\x89PNG"
