"""Results rows, files, plots and loggers."""
import csv
import json

import pytest

from lwgpu.tracking import (NullLogger, Results, WandbLogger, plot_bars, plot_latency, plot_metrics, read_jsonl,
                            run_context)


def test_results_rows_files_and_context(tmp_path):
    ctx = run_context("cpu", experiment="t", seed=3)
    assert ctx["device"].startswith("cpu") and ctx["seed"] == 3 and ctx["git_commit"]
    res = Results(ctx)
    res.add("top1_accuracy", 0.5, "", method="exact", n=10)
    res.add("latency_p50_ms", 1.5, "ms", method="exact", n=10)
    res.add("fit_time", 2.0, "s", method="fit")
    assert [r["timing"] for r in res.rows] == [False, True, True]
    assert res.value("top1_accuracy", method="exact") == 0.5
    with pytest.raises(ValueError):
        res.value("missing")
    jsonl, csv_path = res.write(tmp_path)
    rows = read_jsonl(jsonl)
    assert rows == res.rows and rows[0]["git_commit"] == ctx["git_commit"]
    with open(csv_path) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 and table[2]["n"] == "" and table[0]["torch"] == ctx["torch"]
    assert list(table[0])[:4] == ["name", "value", "unit", "timing"]
    assert [(t["name"], float(t["value"]), t["unit"], t["timing"], t["method"]) for t in table] == [
        ("top1_accuracy", 0.5, "", "False", "exact"), ("latency_p50_ms", 1.5, "ms", "True", "exact"),
        ("fit_time", 2.0, "s", "True", "fit")]
    assert [t["n"] for t in table] == ["10", "10", ""] and {t["seed"] for t in table} == {"3"}


def test_plots_write_png(tmp_path):
    res = Results({})
    for n in (10, 20, 40):
        for m in ("exact", "index"):
            res.add("latency_p50_ms", n * (2 if m == "exact" else 1), "ms", method=m, n_tasks=n)
            res.add("recall_at_k", 1.0, "", method=m, n_tasks=n)
    p = plot_metrics(res.rows, "n_tasks", [{"metrics": ["latency_p50_ms"], "logx": True, "logy": True},
                                            {"metrics": ["recall_at_k"], "ylabel": "recall"}], tmp_path / "a.png")
    b = plot_bars(res.rows, tmp_path / "b.png")
    lat = plot_latency(res.rows, tmp_path / "l.png")
    assert plot_latency([r for r in res.rows if r["name"] == "recall_at_k"], tmp_path / "none.png") is None
    for path in (p, b, lat):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_metrics(res.rows, "n_tasks", [], tmp_path / "c.png")


def test_null_logger_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = Results({"seed": 0})
    res.add("x", 1.0, "")
    lg = NullLogger()
    assert [lg.log_config({"a": 1}), lg.log_results(res), lg.log_images([]), lg.finish()] == [None] * 4
    assert list(tmp_path.iterdir()) == []


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    """Config, per-row metrics, the rows table and the images a WandbLogger logs, read back from the offline run."""
    from wandb_offline import offline_run_dir, read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    res = Results({"seed": 7})
    res.add("top1_accuracy", 0.25, "", method="exact", n=10)
    res.add("latency_p50_ms", 1.5, "ms", method="index", n=10)
    res.add("fit_time", 2.0, "s")  # no method: logged under its bare name
    png = plot_bars(res.rows, tmp_path / "bars.png")
    lg = WandbLogger(project="lwgpu-test", dir=str(tmp_path / "wandb_dir"), name="readback")
    assert lg.mode == "offline"
    lg.log_config({"market": {"n_tasks": 12}, "seed": 7})
    lg.log_config({"extra": "yes"})  # a second call updates the running run's config
    lg.log_results(res)
    lg.log_images([png])
    lg.finish()
    run_dir = offline_run_dir(tmp_path / "wandb_dir")
    run = read_run(run_dir)
    assert run["config"] == {"market": {"n_tasks": 12}, "seed": 7, "extra": "yes"}
    metrics = {k: v for k, v in run["history"][0].items() if not k.startswith("_")}
    assert metrics == {"exact/top1_accuracy": 0.25, "index/latency_p50_ms": 1.5, "fit_time": 2.0}
    for key, value in metrics.items():
        assert run["summary"][key] == value
    table_ref = run["summary"]["results"]
    assert table_ref["_type"] == "table-file" and table_ref["nrows"] == 3
    table = json.loads((run_dir / "files" / table_ref["path"]).read_text())
    assert table["columns"] == res.columns()
    assert table["data"] == [[r.get(c) for c in res.columns()] for r in res.rows]
    image_ref = run["summary"]["bars"]
    assert image_ref["_type"] == "image-file"
    assert (run_dir / "files" / image_ref["path"]).read_bytes() == png.read_bytes()


def test_wandb_mode_follows_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger().mode == "disabled"
    assert WandbLogger(mode="offline").mode == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert WandbLogger().mode == "offline"
