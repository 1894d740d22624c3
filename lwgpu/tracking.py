"""Results tracking: measurement rows (JSONL + CSV), PNG plots, and an optional wandb logger.

Every row is one measurement (``name``, ``value``, ``unit``) with the run's context: git commit,
device, library versions, seed and experiment name, plus free-form tags (method, sweep parameter).
Timing measurements carry ``timing=True`` so same-seed runs can be compared on everything else.
wandb runs offline unless ``WANDB_MODE`` says otherwise (no server is needed), and tests set
``WANDB_MODE=disabled``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

#: Units that mark a measurement as a timing (excluded from same-seed comparisons).
TIMING_UNITS = frozenset({"s", "ms", "us", "queries/s", "specs/s", "rows/s"})
#: Context columns, in the order they appear in the CSV after the measurement columns.
CONTEXT_KEYS = ("experiment", "seed", "git_commit", "device", "python", "torch", "numpy", "faiss", "lwgpu")


def git_commit(root: str | os.PathLike | None = None) -> str:
    """Short commit hash of the repository holding ``root`` (this package by default), '+dirty' if modified.

    Returns ``"unknown"`` outside a git checkout.
    """
    cwd = Path(root) if root is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_context(device: str = "auto", experiment: str = "", seed: int = 0) -> dict[str, Any]:
    """The columns every results row carries: experiment, seed, git commit, device and versions."""
    import numpy
    import torch

    from . import __version__
    from .device import describe

    try:
        import faiss

        faiss_version = getattr(faiss, "__version__", "unknown")
    except ImportError:
        faiss_version = "absent"
    return {
        "experiment": experiment,
        "seed": int(seed),
        "git_commit": git_commit(),
        "device": describe(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "faiss": faiss_version,
        "lwgpu": __version__,
    }


class Results:
    """An append-only table of measurements.

    Parameters
    ----------
    context : mapping
        Columns repeated on every row (see :func:`run_context`).
    """

    def __init__(self, context: Mapping[str, Any] | None = None) -> None:
        self.context = dict(context or {})
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, value: float, unit: str = "", timing: bool | None = None, **tags: Any) -> None:
        """Record one measurement; ``timing`` defaults to ``unit in TIMING_UNITS``; tags become columns."""
        if not name:
            raise ValueError("a measurement needs a non-empty name")
        row: dict[str, Any] = {"name": name, "value": float(value), "unit": unit,
                               "timing": bool(unit in TIMING_UNITS if timing is None else timing)}
        row.update({k: _plain(v) for k, v in tags.items()})
        row.update(self.context)
        self.rows.append(row)

    def add_many(self, metrics: Mapping[str, tuple[float, str]], **tags: Any) -> None:
        """Record ``{name: (value, unit)}`` with the same tags."""
        for name, (value, unit) in metrics.items():
            self.add(name, value, unit, **tags)

    def attach(self, columns: Mapping[str, Any]) -> None:
        """Add the same ``columns`` to every row so far (e.g. the run's energy record,
        :data:`lwgpu.eval.energy.ENERGY_COLUMNS`: ``energy_kwh``, ``co2_kg``, ``cpu_s``, ``gpu_s``, ``energy_source``)."""
        for row in self.rows:
            row.update({k: _plain(v) for k, v in columns.items()})

    def extend(self, other: "Results") -> None:
        self.rows.extend(other.rows)

    def value(self, name: str, **tags: Any) -> float:
        """The value of the single row named ``name`` with the given tags (ValueError if not exactly one)."""
        hits = [r for r in self.rows if r["name"] == name and all(r.get(k) == v for k, v in tags.items())]
        if len(hits) != 1:
            raise ValueError(f"expected one row named {name!r} with tags {tags}, found {len(hits)}")
        return hits[0]["value"]

    def columns(self) -> list[str]:
        """Measurement columns, then tags in first-seen order, then the context columns."""
        head = ["name", "value", "unit", "timing"]
        tags: list[str] = []
        for row in self.rows:
            tags += [k for k in row if k not in head and k not in self.context and k not in tags]
        return head + tags + [k for k in self.context if k not in head]

    def write(self, out_dir: str | os.PathLike, stem: str = "results") -> tuple[Path, Path]:
        """Write ``<stem>.jsonl`` and ``<stem>.csv`` into ``out_dir``; returns both paths."""
        import csv

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        jsonl, csv_path = out / f"{stem}.jsonl", out / f"{stem}.csv"
        with open(jsonl, "w", encoding="utf-8") as fh:
            for row in self.rows:
                fh.write(json.dumps(row, sort_keys=False) + "\n")
        cols = self.columns()
        with open(csv_path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        return jsonl, csv_path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``results.jsonl`` file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def collect_runs(sweep_dir: str | os.PathLike) -> Results:
    """All rows of a Hydra multirun folder (``<sweep_dir>/<job>/results.jsonl``) in one table.

    Each row gains a ``job`` column and one column per override of its job
    (``.hydra/overrides.yaml``, e.g. ``market.n_tasks``), so a sweep run through any launcher
    (joblib, submitit_local, submitit_slurm) can be plotted like an in-process study.
    """
    import yaml

    root = Path(sweep_dir)
    files = sorted(root.glob("*/results.jsonl"), key=lambda p: (len(p.parent.name), p.parent.name))
    if not files:
        raise ValueError(f"no <job>/results.jsonl under {root}; pass the folder a multirun wrote (hydra.sweep.dir)")
    out = Results()
    for f in files:
        tags: dict[str, Any] = {"job": f.parent.name}
        over = f.parent / ".hydra" / "overrides.yaml"
        if over.exists():
            for item in yaml.safe_load(over.read_text(encoding="utf-8")) or []:
                key, _, val = str(item).partition("=")
                if "/" in key or key.startswith("hydra"):
                    continue
                tags[key.lstrip("+~")] = yaml.safe_load(val) if val else val
        for row in read_jsonl(f):
            out.rows.append({**row, **{k: _plain(v) for k, v in tags.items()}})
    return out


def _plain(v: Any) -> Any:
    """numpy scalars and other odd types -> JSON-friendly Python values."""
    if hasattr(v, "item") and callable(v.item):
        return v.item()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


# ---------------------------------------------------------------------- plots

def _save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders made as needed), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def plot_metrics(
    rows: Iterable[Mapping[str, Any]],
    x: str,
    panels: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    group: str = "method",
) -> Path:
    """Line plots of metrics against the tag ``x``, one panel per entry, one line per ``group`` value.

    Each panel is ``{"metrics": [names...], "ylabel": str, "logx": bool, "logy": bool}``.
    Written as PNG with the Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    if not panels:
        raise ValueError("plot_metrics needs at least one panel")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        names = list(panel["metrics"])
        lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in rows:
            if r["name"] in names and r.get(x) is not None and math.isfinite(r["value"]):
                lines.setdefault((r["name"], str(r.get(group, ""))), []).append((float(r[x]), r["value"]))
        for (name, grp), pts in sorted(lines.items()):
            pts.sort()
            label = f"{grp} {name}".strip() if len(names) > 1 else (grp or name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel(x)
        ax.set_ylabel(panel.get("ylabel", names[0]))
        if panel.get("logx"):
            ax.set_xscale("log")
        if panel.get("logy"):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_bars(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, title: str = "",
              group: str = "method") -> Path:
    """Bar chart of every non-timing unitless metric (accuracies, recalls: values in [0, 1]), grouped by ``group``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(f"{r.get(group, '')}\n{r['name']}".strip(), r["value"]) for r in rows
           if not r["timing"] and r["unit"] == "" and math.isfinite(r["value"]) and 0.0 <= r["value"] <= 1.0]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(pts)), 3.8))
    ax.bar(range(len(pts)), [p[1] for p in pts], color="tab:blue")
    ax.set_xticks(range(len(pts)), [p[0] for p in pts], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_latency(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, title: str = "",
                 group: str = "method") -> Path | None:
    """Grouped bars of p50/p90/p99 query latency (ms, log scale) per ``group``; None when no latency rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms")
    vals: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["name"] in names and math.isfinite(r["value"]) and r["value"] > 0:
            vals.setdefault(str(r.get(group, "")), {})[r["name"]] = r["value"]
    if not vals:
        return None
    groups = sorted(vals)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(groups)), 3.6))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        ax.bar([i + (j - 1) * width for i in range(len(groups))], [vals[g].get(name, 0.0) for g in groups],
               width, label=name.split("_")[1])
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yscale("log")
    ax.set_ylabel("latency per query (ms)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return _save_figure(fig, path)


# ---------------------------------------------------------------------- loggers
class NullLogger:
    """``logger=none``: records nothing beyond the local results files."""

    def log_config(self, config: Mapping[str, Any]) -> None:  # noqa: D401 - interface method
        """Nothing to do."""

    def log_results(self, results: Results) -> None:
        """Nothing to do."""

    def log_images(self, paths: Sequence[str | os.PathLike]) -> None:
        """Nothing to do."""

    def finish(self) -> None:
        """Nothing to do."""


class WandbLogger(NullLogger):
    """``logger=wandb``: config, metrics (non-timing and timing), the full rows table, and plots.

    ``mode`` defaults to ``$WANDB_MODE`` or ``"offline"``; runs are written under ``dir``.
    """

    def __init__(self, project: str = "lwgpu", entity: str | None = None, mode: str | None = None,
                 dir: str | None = None, name: str | None = None, tags: Sequence[str] = (),
                 group: str | None = None) -> None:
        self.project, self.entity, self.name, self.group = project, entity, name, group
        self.mode = mode or os.environ.get("WANDB_MODE") or "offline"
        self.dir = dir
        self.tags = list(tags)
        self._run: Any = None

    def _start(self, config: Mapping[str, Any]) -> Any:
        import wandb

        if self.dir:
            Path(self.dir).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=self.dir,
                               name=self.name, group=self.group, tags=self.tags, config=dict(config),
                               reinit="finish_previous")
        return self._run

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self._run is None:
            self._start(config)
        else:
            self._run.config.update(dict(config), allow_val_change=True)

    def log_results(self, results: Results) -> None:
        import wandb

        if self._run is None:
            self._start({})
        summary = {}
        for r in results.rows:
            key = "/".join(str(p) for p in (r.get("method"), r["name"]) if p)
            summary[key] = r["value"]
        self._run.log(summary)
        cols = results.columns()
        table = wandb.Table(columns=cols, data=[[_plain(r.get(c)) for c in cols] for r in results.rows])
        self._run.log({"results": table})

    def log_images(self, paths: Sequence[str | os.PathLike]) -> None:
        import wandb

        if self._run is None:
            self._start({})
        self._run.log({Path(p).stem: wandb.Image(str(p)) for p in paths})

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
