"""Reuse error vs the number of user labels on the digits market: ``lwgpu.cli.reuse_tables`` as a results file.

The tables come from ``python -m lwgpu.cli.reuse_tables`` (30 digits tasks of 3 classes under image
shifts, a logistic regression and an RKME per task; single-task and two-task users; every reuser of
``lwgpu.reuse`` against the user's own model on the same labels). This script runs it and writes the
tables with the machine, versions and command to ``benchmarks/results/reuse.md``. There are no
timings here: every number is an error rate (mean ± std over users x repeats), deterministic in the seed.

Usage::

    python -m benchmarks.bench_reuse            # 5 users of each kind x 3 repeats, labels 5-100
    python -m benchmarks.bench_reuse --quick    # 2 users x 2 repeats, labels 5/20/50
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
from pathlib import Path

from benchmarks import common


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 users x 2 repeats, labels 5/20/50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/reuse.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from lwgpu.cli import reuse_tables

    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        reuse_tables.main((["--quick"] if args.quick else []) + ["--seed", str(args.seed)])
    wall = time.perf_counter() - t0
    lines = common.run_header(
        "Reuse error vs number of user labels (digits market)",
        common.command("bench_reuse", list(sys.argv[1:] if argv is None else argv)), [
            f"- Tables by `python -m lwgpu.cli.reuse_tables{' --quick' if args.quick else ''} --seed {args.seed}` "
            f"({wall:.0f} s wall); BLAS limited to one thread inside the small fits.",
            "- Market: `make_digits_market(n_tasks=30, n_mixture_users=10, seed)`: 30 tasks of 3 digit classes each "
            "under a random image shift (none / flip_lr / flip_ud / transpose), a logistic regression per task, "
            "RKMEs by `RKME.fit_many` (K=50, gamma=0.1).",
            "- Learnwares handed to reuse: the members (weight >= 0.1, at most 3) of the simplex-QP mixture of all 30 "
            "specs that best explains the user's rows (`lwgpu.reuse.evaluation.market_candidates`).",
            "- Per user and repeat, `n - 100` rows are held out for evaluation; the first k rows of the rest are the "
            "revealed labels (nested). `own` = the user's own model (logistic regression with C by CV) on those k "
            "labels; `single_best` / `single_mean` = the best / mean error of each market learnware alone. Error "
            "rate, mean ± std over users x repeats.",
        ])
    common.write_text(args.out or common.default_out("reuse", args.quick), "\n".join(lines) + buf.getvalue())
    print(buf.getvalue())


if __name__ == "__main__":
    main()
