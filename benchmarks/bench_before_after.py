"""Before/after: the same workloads on two checkouts of lwgpu, run side by side (alternating processes).

Issue 10 asks that the engine rework leave exact search, indexed search and the market no slower than
the commit before it. Each workload runs in a fresh subprocess with ``PYTHONPATH`` pointing at one
checkout, alternating between the two, ``--reps`` times; the table reports medians and the ratio
``before / after`` (above 1: the rework is faster). Only APIs present in both trees are used.

Usage::

    python -m benchmarks.bench_before_after [--reps 5] [--out FILE]   # before = BEFORE_COMMIT, checked out
    python -m benchmarks.bench_before_after --before /path/to/older/checkout   # any other tree

Without ``--before`` the script checks ``--before-commit`` (default :data:`BEFORE_COMMIT`, the commit
before issue 10's rework) out into a temporary ``git worktree`` and removes it afterwards, so
``make bench`` regenerates this table too (a clone with history is needed: not ``--depth 1``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from benchmarks import common

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent
RESULTS = HERE / "results"
#: The commit before the engine rework of issue 10: what "before" means by default.
BEFORE_COMMIT = "d003b62"

#: One child process per (workload, tree, repeat): it prints one JSON object of timings.
CHILD = r'''
import json, sys, time, tempfile, statistics
import numpy as np, torch
torch.set_num_threads(2)
work, p = sys.argv[1], json.loads(sys.argv[2])
import lwgpu
from lwgpu import SpecBank
from lwgpu.data.clustered import synthetic_spec_arrays


def arrays(n, q):
    a = synthetic_spec_arrays(n, q, K=p["K"], d=p["d"], seed=0)
    bank = SpecBank.from_arrays(a["z"], a["beta"], 0.1)
    users = SpecBank.from_arrays(a["qz"], a["qbeta"], 0.1)
    return bank, users


def per_query(fn, users, n_q):
    fn(users.rows(0, 1))
    ts = []
    for i in range(n_q):
        t = time.perf_counter(); fn(users.rows(i, i + 1)); ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


out = {}
if work == "exact":
    from lwgpu.search import search_exact
    bank, users = arrays(p["N"], p["Q"])
    search_exact(bank, users, k=10)
    t = time.perf_counter(); search_exact(bank, users, k=10); out["batch_ms"] = 1e3 * (time.perf_counter() - t)
    out["single_p50_ms"] = per_query(lambda u: search_exact(bank, u, k=10), users, p["Q"])
elif work == "index":
    from lwgpu.index import SpecIndex
    bank, users = arrays(p["N"], p["Q"])
    t = time.perf_counter(); idx = SpecIndex(bank, factory=p["factory"], D=p["D"], candidates=p["candidates"], device="cpu"); out["build_s"] = time.perf_counter() - t
    out["single_p50_ms"] = per_query(lambda u: idx.search(u, k=10), users, p["Q"])
elif work == "market":
    from sklearn.linear_model import LogisticRegression
    from lwgpu import RKME
    from lwgpu.market import Market
    rng = np.random.default_rng(0)
    d, K, n = p["d"], p["K"], p["N"]
    X = rng.normal(size=(64, d)); y = (X[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    root = tempfile.mkdtemp()
    m = Market(root, device="cpu")
    specs = [RKME(rng.normal(loc=rng.normal(size=d) * 2, size=(K, d)), np.full(K, 1.0 / K), 0.1) for _ in range(n)]
    sem = lambda i: {"data_type": "table", "task_type": "classification", "input_dim": d, "output_dim": 2,
                     "name": f"lw {i}", "description": f"learnware number {i}", "tags": ["tag%d" % (i % 10)],
                     "library": "scikit-learn", "license": "MIT"}
    t = time.perf_counter()
    for i in range(n):
        m.add(model, sem(i), specs[i])
    out["add_per_s"] = n / (time.perf_counter() - t)
    users = SpecBank.from_specs(specs[:p["Q"]])
    q = [specs[i] for i in range(p["Q"])]
    def timed(fn):
        fn(q[0]); ts = []
        for u in q:
            t = time.perf_counter(); fn(u); ts.append(time.perf_counter() - t)
        return 1e3 * statistics.median(ts)
    out["search_single_ms"] = timed(lambda u: m.search(u, k=5, mixture=False))
    out["search_mixture_ms"] = timed(lambda u: m.search(u, k=5))
    out["search_tag_ms"] = timed(lambda u: m.search(u, semantic={"tags": ["tag3"]}, k=5))
    m.close()
print("RESULT " + json.dumps(out))
'''

WORKLOADS = {
    "exact": {"N": 20000, "Q": 20, "K": 32, "d": 16},
    "index": {"N": 100000, "Q": 50, "K": 32, "d": 16, "factory": "IVF1024,Flat",
              "D": 512, "candidates": 100},
    "market": {"N": 300, "Q": 20, "K": 32, "d": 16},
}


def run_child(tree: Path, work: str, params: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), WANDB_MODE="disabled")
    res = subprocess.run([sys.executable, "-c", CHILD, work, json.dumps(params)], env=env, capture_output=True,
                         text=True, cwd=str(tree))
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode or not line:
        raise RuntimeError(f"{work} on {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=None, help="checkout of the commit before the rework "
                    "(default: --before-commit checked out into a temporary git worktree)")
    ap.add_argument("--before-commit", default=BEFORE_COMMIT, help="commit the temporary worktree checks out")
    ap.add_argument("--after", default=str(AFTER), help="checkout to measure (default: this one)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--out", default=str(RESULTS / "before_after.md"))
    args = ap.parse_args(argv)
    if args.before is None:
        with temporary_worktree(args.before_commit) as tree:
            measure(args, tree)
    else:
        measure(args, Path(args.before))


@contextlib.contextmanager
def temporary_worktree(commit: str) -> Iterator[Path]:
    """``commit`` of this repository checked out (detached) into a temporary folder, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="lwgpu-before-"))
    tree = tmp / "tree"
    try:
        subprocess.run(["git", "-C", str(AFTER), "worktree", "add", "--detach", str(tree), commit],
                       check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = getattr(exc, "stderr", "") or str(exc)
        raise SystemExit(f"bench_before_after: cannot check out {commit} from {AFTER} ({detail.strip()}); "
                         "run it in a clone with history, or pass --before <checkout>") from exc
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(AFTER), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, before: Path) -> None:
    """Run the workloads alternately on ``before`` and ``args.after`` and write the table."""
    before, after = before.resolve(), Path(args.after).resolve()
    rows = []
    for work in args.workloads.split(","):
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for r in range(args.reps):
            for side, tree in (("before", before), ("after", after)) if r % 2 == 0 else (("after", after), ("before", before)):
                runs[side].append(run_child(tree, work, WORKLOADS[work]))
                print(work, side, runs[side][-1], flush=True)
        for metric in runs["before"][0]:
            b = statistics.median(x[metric] for x in runs["before"])
            a = statistics.median(x[metric] for x in runs["after"])
            higher_better = metric.endswith("per_s")
            ratio = a / b if higher_better else b / a
            rows.append((work, metric, b, a, ratio))
    lines = [
        "## Before / after the engine rework (issue 10), side by side",
        "",
        common.machine_line(),
        f"- before: `{git_head(before)}`, after: `{git_head(after)}`; each number the median of {args.reps} "
        "fresh processes per side, alternating; torch 2 threads",
        f"- workloads: {json.dumps(WORKLOADS)}",
        f"- command: `python -m benchmarks.bench_before_after --before-commit {git_head(before)} --reps {args.reps}`",
        "- ratio > 1: after is faster (time: before/after; rate: after/before)",
        "",
        "| workload | metric | before | after | ratio |",
        "|---|---|---:|---:|---:|",
    ] + [f"| {w} | {m} | {b:.3g} | {a:.3g} | {r:.2f}x |" for w, m, b, a, r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
