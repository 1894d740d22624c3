"""Run every benchmark one after another, then assemble benchmarks/RESULTS.md.

Usage::

    python -m benchmarks.run_all            # full sizes (tens of minutes on a 2-core CPU)
    python -m benchmarks.run_all --quick    # smoke sizes
    python -m benchmarks.run_all --assemble # only rebuild RESULTS.md from benchmarks/results/*.md

Each benchmark writes its own table to ``benchmarks/results/<topic>.md`` (machine, versions,
command, numbers); RESULTS.md is those tables in a fixed order under one header. Benchmarks run
serially on purpose: the ratios they report are only meaningful on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["fit", "exact_search", "index", "market", "market_scale", "market_scale_targets", "before_after", "harness", "reuse", "gpu"]
MODULES = ["bench_fit", "bench_exact_search", "bench_index", "bench_market", "bench_market_scale"]

HEADER = """# Benchmark results

Every number below is a measured ratio against a baseline run side by side (the reference
`learnware` package, or lwgpu's exact path), on the machine each section names. Rerun all of them
with `make bench` (equivalently `python -m benchmarks.run_all`), or one with the command its
section gives. Sections are written by the benchmarks into `benchmarks/results/<topic>.md`.
"""


def assemble() -> Path:
    """Concatenate benchmarks/results/*.md (known topics first) into benchmarks/RESULTS.md."""
    parts = sorted((HERE / "results").glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    text = HEADER + "".join("\n" + p.read_text(encoding="utf-8").rstrip() + "\n" for p in parts)
    out = HERE / "RESULTS.md"
    out.write_text(text, encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke sizes, for checking the scripts run")
    parser.add_argument("--assemble", action="store_true", help="only rebuild RESULTS.md")
    args = parser.parse_args()
    if not args.assemble:
        for mod in MODULES:
            cmd = [sys.executable, "-m", f"benchmarks.{mod}"] + (["--quick"] if args.quick else [])
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=HERE.parent)
    print(f"wrote {assemble()}")


if __name__ == "__main__":
    main()
