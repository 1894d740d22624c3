"""Run every benchmark one after another, then assemble benchmarks/RESULTS.md.

Usage::

    python -m benchmarks.run_all                     # every bench_*.py at full size, then assemble
    python -m benchmarks.run_all --quick             # smoke sizes, into results_quick/ + RESULTS_quick.md
    python -m benchmarks.run_all --only fit,index    # some scripts only (then assemble everything)
    python -m benchmarks.run_all --assemble          # only rebuild RESULTS.md from results/ and notes/
    python -m benchmarks.run_all --list              # what would run, in order, and what is skipped

Every ``benchmarks/bench_<name>.py`` with a ``main(argv)`` is a benchmark; it writes its own
measurements to ``<results>/<name>.md`` (run_all passes ``--out``). Scripts run in :data:`ORDER`,
then any new ones alphabetically; a name in ORDER without a script is skipped. ``--quick`` runs
only scripts that offer ``--quick`` and writes to ``benchmarks/results_quick/`` and
``benchmarks/RESULTS_quick.md``, so a smoke run never replaces the full tables
(``--results-dir benchmarks/results`` to write over them anyway).

RESULTS.md is, for each name in order: ``<results>/<name>.md`` (measurements, rewritten by every
run) and then ``benchmarks/notes/<name>.md`` (readings and caveats written by hand, which no
benchmark writes). A table of each script's wall time in the last run closes the file. Benchmarks
run serially on purpose: the ratios they report are only meaningful on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Order of the sections in RESULTS.md and of the runs; names without a script are skipped.
ORDER = ["fit", "exact_search", "index", "index_oos", "market", "submit", "market_scale", "before_after", "harness", "reuse",
         "reliability", "image_spec", "stream_fit", "distributed", "gpu"]
#: Scripts run_all does not start, and why (their results files and notes are still assembled).
SKIP: dict[str, str] = {}
RUNTIMES = "runtimes.json"

HEADER = """# Benchmark results

Every number below is measured against a baseline run side by side in the same script (the
reference `learnware` package, or lwgpu's exact path), on the machine each section names. Timings
are medians of repeated runs, the same count on both sides (5, or 3 at a script's largest size); the
reference always runs with its faster torch thread setting, probed in the same run. Regenerate all
of it with `make bench` (equivalently `python -m benchmarks.run_all`), one script with
`python -m benchmarks.run_all --only <name>`. Measurements are written by the scripts into
`benchmarks/results/<name>.md`; readings written by hand live in `benchmarks/notes/<name>.md`.
"""

log = logging.getLogger("run_all")


def discover() -> list[str]:
    """Benchmark names (``bench_<name>.py`` exposing ``def main(``), in :data:`ORDER`, then alphabetically."""
    found = [p.stem[len("bench_"):] for p in sorted(HERE.glob("bench_*.py"))
             if re.search(r"^def main\(", p.read_text(encoding="utf-8"), re.M)]
    return [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)


def _supports(name: str, flag: str) -> bool:
    """Whether ``bench_<name>.py`` declares the command-line ``flag`` (read from its source, not run)."""
    return f'"{flag}"' in (HERE / f"bench_{name}.py").read_text(encoding="utf-8")


def run_one(name: str, quick: bool, results: Path, extra: list[str]) -> tuple[int, float]:
    """Run ``python -m benchmarks.bench_<name> [--quick] --out <results>/<name>.md``; (exit code, seconds)."""
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}"] + (["--quick"] if quick else [])
    if _supports(name, "--out"):
        cmd += ["--out", str(results / f"{name}.md")]
    elif results.resolve() != (HERE / "results").resolve():
        log.warning("bench_%s has no --out: it writes where it always does, not into %s", name, results)
    cmd += extra
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=HERE.parent, env=env).returncode
    return rc, time.perf_counter() - t0


def assemble(results: Path | None = None, out: Path | None = None) -> Path:
    """Concatenate ``<results>/<name>.md`` + ``notes/<name>.md`` per name (ORDER first) into ``out``."""
    results = results or HERE / "results"
    out = out or HERE / "RESULTS.md"
    notes = HERE / "notes"
    names = {p.stem for p in results.glob("*.md")} | {p.stem for p in notes.glob("*.md")}
    ordered = [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)
    parts = []
    for name in ordered:
        for path in (results / f"{name}.md", notes / f"{name}.md"):
            if path.exists():
                parts.append(path.read_text(encoding="utf-8").rstrip())
    text = HEADER + "".join("\n" + p + "\n" for p in parts)
    rt = results / RUNTIMES
    if rt.exists():
        times = json.loads(rt.read_text(encoding="utf-8"))
        text += ("\n## How long each benchmark took\n\n"
                 "Wall time of each script in its last run through `run_all` (the machine and its load are in "
                 "each section).\n\n| script | mode | wall s | finished (UTC) | exit |\n|---|---|---:|---|---:|\n")
        for name in ordered + sorted(set(times) - set(ordered)):
            if name in times:
                t = times[name]
                text += f"| bench_{name} | {t['mode']} | {t['wall_s']:.0f} | {t['finished']} | {t['rc']} |\n"
    out.write_text(text, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke sizes, into results_quick/ and RESULTS_quick.md")
    parser.add_argument("--only", default="", help="comma-separated names (fit,index,...) to run")
    parser.add_argument("--assemble", action="store_true", help="only rebuild RESULTS.md")
    parser.add_argument("--list", action="store_true", help="print what would run and exit")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where the scripts write (default results/, or results_quick/ with --quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = args.results_dir or HERE / ("results_quick" if args.quick else "results")
    out = HERE / ("RESULTS_quick.md" if args.quick and args.results_dir is None else "RESULTS.md")
    names = discover()
    if args.only:
        wanted = [n.strip().removeprefix("bench_") for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"no benchmarks/bench_<name>.py with a main() for {unknown}; known: {names}")
        names = [n for n in names if n in wanted]
    plan = []
    for n in names:
        if n in SKIP and not args.only:
            plan.append((n, f"skipped: {SKIP[n]}"))
        elif args.quick and not _supports(n, "--quick"):
            plan.append((n, "skipped: no --quick"))
        else:
            plan.append((n, "run"))
    if args.list:
        for n, what in plan:
            print(f"bench_{n}: {what}")
        return 0
    failed = []
    if not args.assemble:
        results.mkdir(parents=True, exist_ok=True)
        rt_path = results / RUNTIMES
        times = json.loads(rt_path.read_text(encoding="utf-8")) if rt_path.exists() else {}
        for n, what in plan:
            if what != "run":
                print(f"bench_{n}: {what}", flush=True)
                continue
            rc, wall = run_one(n, args.quick, results, [])
            times[n] = {"mode": "quick" if args.quick else "full", "wall_s": wall, "rc": rc,
                        "finished": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
            rt_path.write_text(json.dumps(times, indent=1), encoding="utf-8")
            print(f"bench_{n}: exit {rc} after {wall:.0f} s", flush=True)
            if rc:
                failed.append(n)
    print(f"wrote {assemble(results, out)}")
    if failed:
        print(f"FAILED: {', '.join('bench_' + n for n in failed)} (their old results, if any, were kept)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
