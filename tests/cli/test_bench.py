"""``lwgpu-bench`` end to end: each experiment's debug variant, same-seed determinism, the console entry."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lwgpu.cli.bench import CONFIG_DIR, run
from lwgpu.tracking import read_jsonl

REPO = Path(CONFIG_DIR).parent
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _stable(rows):
    """Rows without timing measurements, as comparable tuples."""
    from lwgpu.eval.energy import ENERGY_COLUMNS  # the run's measured energy differs between runs

    return [json.dumps({k: v for k, v in r.items() if k not in ENERGY_COLUMNS}, sort_keys=True)
            for r in rows if not r["timing"]]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_debug_variant_end_to_end(experiment, tmp_path):
    cfg = _compose(f"experiment={experiment}", "debug=default")
    out = run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert rows and (tmp_path / "results.csv").exists() and (tmp_path / "config_resolved.yaml").exists()
    assert {r["experiment"] for r in rows} == {cfg.experiment.name}
    assert all(r["git_commit"] and r["device"] and r["torch"] for r in rows)
    assert out["plots"] and all(p.read_bytes()[:4] == b"\x89PNG" for p in out["plots"])
    if cfg.experiment.sweep:  # one measurement set per swept value
        key = cfg.experiment.sweep.param
        assert {r[key] for r in rows if key in r} == set(cfg.experiment.sweep.debug_values)
        assert (tmp_path / f"{cfg.experiment.name}.png").exists()
    quality = [r for r in rows if not r["timing"] and r["unit"] == ""]
    assert quality and all(0.0 <= r["value"] <= 1.0 for r in quality)


def test_same_seed_same_rows(tmp_path):
    common = ("debug=default", "search=single", "market.users.n=6")  # fit, bank, FAISS index, exact + indexed search
    a = run(_compose(*common, "seed=3"), tmp_path / "a")["results"].rows
    b = run(_compose(*common, "seed=3"), tmp_path / "b")["results"].rows
    c = run(_compose(*common, "seed=4"), tmp_path / "c")["results"].rows
    assert _stable(a) == _stable(b)
    assert [r["name"] for r in a] == [r["name"] for r in b]
    assert _stable(a) != _stable(c)


def test_console_entry_point_writes_and_prints(tmp_path):
    cmd = [sys.executable, "-m", "lwgpu.cli.bench", "debug=default", "search=single", "market=synthetic_spec_only",
           "index=none", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"results: {tmp_path / 'results.jsonl'}" in proc.stdout and "summary.png" in proc.stdout
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "results.csv").exists()


def test_cfg_job_prints_composed_config(tmp_path):
    """The installed console script (``make install``) finds configs/ from any folder."""
    script = Path(sys.executable).with_name("lwgpu-bench")
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "lwgpu.cli.bench"]
    proc = subprocess.run(entry + ["--cfg", "job", "market.n_tasks=123"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "n_tasks: 123" in proc.stdout and "experiment:" in proc.stdout


def test_accuracy_tracks_task_overlap(tmp_path):
    """Ground truth is wired through: separated tasks are found, identical tasks cannot be told apart."""
    common = ("debug=default", "search=single", "market=synthetic_spec_only", "market.n_tasks=50", "spec.K=16",
              "market.users.n=10", "market.users.mix_fraction=0.0")
    easy = run(_compose(*common, "market.generator.separation=20", "market.generator.spread=0.3",
                        "market.generator.noise=0.3"), tmp_path / "easy")["results"]
    same = run(_compose(*common, "market.generator.separation=0", "market.generator.spread=0"),
               tmp_path / "same")["results"]
    assert easy.value("top1_accuracy", method="exact") == 1.0
    assert easy.value("recall_at_k", method="index") == 1.0
    assert same.value("topk_accuracy", method="exact") <= 0.5  # k=5 of 50 identical tasks: ~0.1 expected


def test_wandb_logger_end_to_end_reads_back(tmp_path, monkeypatch):
    """``logger=wandb`` offline: what the run logged, read back from wandb's own run file, equals results.jsonl."""
    import math

    from wandb_offline import offline_run_dir, read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    cfg = _compose("debug=default", "search=single", "market=synthetic_spec_only", "index=none", "logger=wandb",
                   "market.n_tasks=40", "market.users.n=4", f"logger.dir={tmp_path / 'wandb'}", "seed=5")
    out = run(cfg, tmp_path / "run")
    rows = read_jsonl(out["jsonl"])
    run_dir = offline_run_dir(tmp_path / "wandb")
    logged = read_run(run_dir)
    assert logged["config"]["seed"] == 5 and logged["config"]["experiment"]["name"] == cfg.experiment.name
    assert logged["config"]["market"]["n_tasks"] == cfg.market.n_tasks
    expected = {}
    for r in rows:  # the logger's key: "<method>/<name>", the last row of a key wins
        expected["/".join(str(p) for p in (r.get("method"), r["name"]) if p)] = r["value"]
    metrics = {k: v for k, v in logged["history"][0].items() if not k.startswith("_")}
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        got = metrics[key]
        assert (math.isnan(value) and math.isnan(got)) or got == value, key
    table = json.loads((run_dir / "files" / logged["summary"]["results"]["path"]).read_text())
    assert table["columns"][:4] == ["name", "value", "unit", "timing"] and len(table["data"]) == len(rows)
    assert [(d[0], d[1]) for d in table["data"]] == [(r["name"], r["value"]) for r in rows]
    for plot in out["plots"]:
        ref = logged["summary"][plot.stem]
        assert ref["_type"] == "image-file" and (run_dir / "files" / ref["path"]).read_bytes() == plot.read_bytes()
