"""Results rows, files, plots and loggers."""
import csv

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


def test_loggers(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    res = Results({"seed": 0})
    res.add("x", 1.0, "")
    png = plot_bars(res.rows, tmp_path / "p.png")
    for lg in (NullLogger(), WandbLogger(project="lwgpu-test", dir=str(tmp_path))):
        lg.log_config({"a": 1})
        lg.log_results(res)
        lg.log_images([png])
        lg.finish()
    assert WandbLogger().mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert WandbLogger().mode == "offline"
