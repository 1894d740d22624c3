"""The research harness's studies (``lwgpu-bench experiment=...``) as results tables.

Runs the main job and each study of ``configs/experiment/`` in this process through
``lwgpu.cli.bench.run`` (the function behind the ``lwgpu-bench`` console script, same configs), each into
its own folder, and pivots the rows it wrote (``results.jsonl``) into one markdown table per study:
one line per (method, metric), one column per value of the study's swept parameter.

- ``latency_vs_size``: exact vs indexed search latency (p50, median of per-query times), batch
  throughput and recall@10 against exact, over the market size;
- ``accuracy_vs_K``: top-1 / top-10 / mixture recall and fit residual (vs a random subsample) over K;
- ``reuse_vs_labels``: the user's error with each reuser vs its own model, over the number of labels.

Usage::

    python -m benchmarks.bench_harness                    # every study at its configured sizes
    python -m benchmarks.bench_harness --quick            # the debug variants (debug=default)
    python -m benchmarks.bench_harness --keep experiments # keep the study folders (plots, CSV) there
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

#: Study -> (metric, method) lines of its table, in order; the x column comes from the study's config.
STUDIES: dict[str, list[tuple[str, str]]] = {
    "main": [("latency_p50_ms", "exact"), ("latency_p50_ms", "index"), ("qps_batch", "exact"),
             ("qps_batch", "index"), ("recall_at_k", "index"), ("top1_accuracy", "exact"),
             ("mixture_recall", "mixture")],
    "latency_vs_size": [("latency_p50_ms", "exact"), ("latency_p50_ms", "index"), ("qps_batch", "exact"),
                        ("qps_batch", "index"), ("recall_at_k", "index"), ("top1_accuracy", "exact")],
    "accuracy_vs_K": [("top1_accuracy", "exact"), ("topk_accuracy", "exact"), ("mixture_recall", "mixture"),
                      ("fit_residual_mean", "fit"), ("subsample_residual_mean", "subsample")],
    "reuse_vs_labels": [("reuse_error", m) for m in ("own", "job_selector", "ensemble_pruning", "feature_augment",
                                                     "averaging", "single_best", "single_mean")],
}


def pivot(rows: list[dict[str, Any]], x: str | None, lines: list[tuple[str, str]]) -> list[str]:
    """Markdown table: one line per (metric, method) in ``lines`` (absent ones skipped), one column per ``x``
    value (the mean where several rows share a cell); a single value column when ``x`` is None."""
    xs = sorted({r[x] for r in rows if x and x in r}, key=lambda v: (isinstance(v, str), v)) if x else [None]
    if not xs:
        xs = [None]
    head = "| metric | method | " + " | ".join("value" if v is None else f"{x}={v:,}" if isinstance(v, int)
                                             else f"{x}={v}" for v in xs) + " |"
    out = [head, "|---|---|" + "---:|" * len(xs)]
    for name, method in lines:
        cells = []
        for v in xs:
            vals = [r["value"] for r in rows if r["name"] == name and r.get("method") == method
                    and (v is None or r.get(x) == v)]
            cells.append("-" if not vals else f"{sum(vals) / len(vals):.4g}")
        if any(c != "-" for c in cells):
            out.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return out


def run_study(study: str, quick: bool, out_dir: Path) -> tuple[list[dict[str, Any]], str | None, float, str]:
    """Run one study (``main``: the default job) into ``out_dir``; (rows, x column, wall s, overrides)."""
    from hydra import compose, initialize_config_dir

    from lwgpu.cli.bench import CONFIG_DIR, run
    from lwgpu.tracking import read_jsonl

    overrides = ([] if study == "main" else [f"experiment={study}"]) + (["debug=default"] if quick else [])
    overrides += ["logger=none"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    t0 = time.perf_counter()
    run(cfg, out_dir)
    wall = time.perf_counter() - t0
    exp = cfg.get("experiment") or {}
    sweep = exp.get("sweep") if hasattr(exp, "get") else None
    x = sweep.param if sweep else (exp.get("x") if hasattr(exp, "get") else None)
    return read_jsonl(out_dir / "results.jsonl"), x, wall, " ".join(o for o in overrides if o != "logger=none")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the debug variants (debug=default)")
    p.add_argument("--studies", default=None,
                   help=f"',' separated, from {list(STUDIES)} (default: all; --quick: all but reuse_vs_labels, "
                        "which bench_reuse covers)")
    p.add_argument("--keep", type=Path, default=None, help="write the study folders under this folder")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/harness.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("WANDB_MODE", "disabled")
    default = [s for s in STUDIES if not (args.quick and s == "reuse_vs_labels")]
    studies = [s.strip() for s in args.studies.split(",") if s.strip()] if args.studies else default
    bad = [s for s in studies if s not in STUDIES]
    if bad:
        p.error(f"unknown studies {bad}; choose from {list(STUDIES)}")
    lines = common.run_header("Research harness (lwgpu-bench studies)",
                              common.command("bench_harness", list(sys.argv[1:] if argv is None else argv)), [
        "- Each study runs through `lwgpu.cli.bench.run` (what `lwgpu-bench` runs) with the overrides shown and "
        "`logger=none`; its rows (results.jsonl, with git commit, device and versions) are pivoted below. "
        "Latencies are the median (p50) of per-query times; throughputs of one batched call; accuracies and "
        "residuals are deterministic in the seed.",
    ])
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for study in studies:
            rows, x, wall, over = run_study(study, args.quick, root / study)
            title = "main job (`make run`)" if study == "main" else f"`{study}`"
            lines += [f"**{title}**: `lwgpu-bench {over}`".replace("`lwgpu-bench `", "`lwgpu-bench`")
                      + f" ({wall:.0f} s wall)", ""]
            lines += pivot(rows, x, STUDIES[study]) + [""]
    common.write_text(args.out or common.default_out("harness", args.quick), "\n".join(lines))
    print((args.out or common.default_out("harness", args.quick)).read_text())


if __name__ == "__main__":
    main()
