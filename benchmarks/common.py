"""Shared pieces of the benchmark scripts: timing rule, the reference's thread setting, headers, output paths.

The timing rule every script follows (``benchmarks/run_all.py`` runs them all):

- every timing is the **median** of repeated runs, with the **same count on both sides** of a ratio:
  :data:`REPEATS` (5), or :data:`REPEATS_LARGEST` (3) at a script's largest size;
- the reference package (``learnware``) always gets its faster torch thread setting, **measured in the
  same run** by :func:`pick_reference_threads`: one probe run with ``torch.set_num_threads(1)`` and one
  with every core; the faster setting is used for all of its timings and named in the table.

Output: a script named ``bench_<name>.py`` writes ``benchmarks/results/<name>.md`` (``--quick``:
``benchmarks/results_quick/<name>.md``) unless ``--out`` says otherwise. Notes that are not
measurements live in ``benchmarks/notes/<name>.md``; ``run_all --assemble`` puts them after the
results and no benchmark ever writes them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RESULTS_QUICK = HERE / "results_quick"
NOTES = HERE / "notes"

#: Timed repeats per measurement (both sides of every ratio), and at a script's largest size.
REPEATS = 5
REPEATS_LARGEST = 3

log = logging.getLogger("benchmarks")


def default_out(name: str, quick: bool = False) -> Path:
    """``results/<name>.md``, or ``results_quick/<name>.md`` for a ``--quick`` run."""
    return (RESULTS_QUICK if quick else RESULTS) / f"{name}.md"


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (newline-terminated) to ``path``, making folders; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    log.info("wrote %s", p)
    return p


def cpu_name() -> str:
    """The CPU's model name (``lscpu``), or what ``platform`` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def all_cores() -> int:
    """Cores this process may use (the "all cores" thread setting)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load() -> float:
    """1-minute load average."""
    return os.getloadavg()[0]


def versions() -> str:
    """``lwgpu x, torch y, numba z, faiss w, learnware v, numpy u, python t`` (absent packages skipped)."""
    import importlib

    parts = []
    for mod in ("lwgpu", "torch", "numba", "faiss", "learnware", "numpy"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        parts.append(f"{mod} {getattr(m, '__version__', '?')}")
    return ", ".join(parts + [f"python {platform.python_version()}"])


def machine_line() -> str:
    """One markdown bullet naming the machine, its load now, and the versions."""
    return (f"- Machine: {cpu_name()}, {all_cores()} cores (load average {load():.1f} when the table was "
            f"written; the machine may be shared), {versions()}.")


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[float, list[float], Any]:
    """Median wall seconds of ``fn()`` over ``repeats`` runs (after ``warmup`` untimed runs).

    Returns (median, every time, the last result).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def repeats_at(size: int, largest: int, repeats: int = REPEATS) -> int:
    """``repeats`` (>= :data:`REPEATS`), or :data:`REPEATS_LARGEST` at the script's largest size."""
    return REPEATS_LARGEST if size >= largest and largest > 0 else max(REPEATS, repeats)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block, the previous setting after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_compute_threads(n: int) -> None:
    """One thread count for every pool lwgpu's searches use: torch, FAISS (OpenMP) and numba."""
    import faiss
    import torch

    torch.set_num_threads(int(n))
    faiss.omp_set_num_threads(int(n))
    try:
        from lwgpu.kernels.numba_mmd import set_threads
    except ImportError:  # pragma: no cover - numba absent
        return
    set_threads(int(n))


@dataclass
class ThreadChoice:
    """The reference's measured thread setting: ``threads`` (the faster), and the probe seconds per setting."""

    threads: int
    probe_s: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        """E.g. ``"1 thread (probe: 1 thr 0.21 s, 2 thr 0.35 s)"``."""
        probes = ", ".join(f"{k} thr {v:.3g} s" for k, v in sorted(self.probe_s.items()))
        return f"{self.threads} thread{'s' if self.threads > 1 else ''} (probe: {probes})"


def pick_reference_threads(probe: Callable[[], Any], cores: int | None = None) -> ThreadChoice:
    """Time ``probe()`` once with torch on 1 thread and once on every core; the faster setting wins.

    The probe should be one representative reference call (one fit, one search loop), warm
    (imports and first-call costs paid before). A probe that returns a float reports its own cost
    (e.g. seconds per spec of a loop cut short by a budget), used instead of its wall time. With one
    core there is nothing to choose.
    """
    cores = all_cores() if cores is None else int(cores)
    settings = sorted({1, max(1, cores)})
    times: dict[int, float] = {}
    for n in settings:
        with torch_threads(n):
            t0 = time.perf_counter()
            cost = probe()
            times[n] = float(cost) if isinstance(cost, float) else time.perf_counter() - t0
    best = min(times, key=times.get)
    log.info("reference threads: %s", ThreadChoice(best, times).describe())
    return ThreadChoice(best, times)


def run_header(title: str, command: str, bullets: list[str]) -> list[str]:
    """The lines every results file starts with: title, machine and versions, command, then ``bullets``."""
    return [f"## {title}", "", machine_line(), f"- Command: `{command}`", *bullets, ""]


def command(module: str, argv: list[str]) -> str:
    """``python -m benchmarks.<module> <argv>`` without ``--out PATH`` (where run_all put the file)."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if not a.startswith("--out="):
            shown.append(a)
    return " ".join([f"python -m benchmarks.{module}", *shown])
