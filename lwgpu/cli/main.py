"""``lwgpu``: a small command line for one-off jobs (studies run through ``lwgpu-bench``).

lwgpu info                               what this machine offers (CUDA, CuPy, numba, FAISS)
lwgpu fit data.npy spec.json [--K 100]   fit an RKME to a (n, d) .npy/.csv array, save reference-format JSON
lwgpu search bank_dir query.json [--k]   exact top-k of a saved SpecBank for a saved spec
lwgpu collect multirun_dir [--x KEY --metric NAME ...]   one results table (+ plot) from a sweep's jobs
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import settings


def _load_matrix(path: str) -> np.ndarray:
    p = Path(path)
    if p.suffix == ".npy":
        return np.load(p)
    if p.suffix in (".csv", ".txt"):
        return np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
    raise ValueError(f"{path}: use a .npy or .csv file holding an (n, d) array")


def cmd_info(args: argparse.Namespace) -> int:
    from ..device import available

    print(json.dumps(available(), indent=2))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from ..spec.rkme import RKME

    x = _load_matrix(args.data)
    spec = RKME.fit(x, K=args.K, gamma=args.gamma, steps=args.steps, device=args.device, seed=args.seed)
    spec.save(args.out)
    print(f"fitted {spec!r} to {x.shape[0]} rows; residual {spec.residual(x[:2000]):.6g}; wrote {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..bank import SpecBank
    from ..search import search_exact
    from ..spec.rkme import RKME

    bank = SpecBank.load(args.bank)
    query = RKME.load(args.query)
    dists, ids = search_exact(bank, query, k=args.k, backend=args.backend, device=args.device)
    for rank, (i, dist) in enumerate(zip(ids[0], dists[0]), 1):
        if i < 0:  # fewer than k specs in the bank: empty slots are not printed
            break
        print(f"{rank:3d}  id={int(i):<10d}  mmd2={float(dist):.6g}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from ..tracking import collect_runs, plot_metrics

    results = collect_runs(args.sweep_dir)
    jsonl, csv_path = results.write(args.sweep_dir, stem="results_all")
    print(f"{len(results.rows)} rows from {args.sweep_dir}: {jsonl}  {csv_path}")
    if args.x and args.metric:
        png = plot_metrics(results.rows, args.x, [{"metrics": args.metric, "logx": args.logx}],
                           Path(args.sweep_dir) / "results_all.png")
        print(f"plot: {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lwgpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print what this machine offers").set_defaults(func=cmd_info)
    fit = sub.add_parser("fit", help="fit an RKME spec to an (n, d) array")
    fit.add_argument("data", help=".npy or .csv file with an (n, d) array")
    fit.add_argument("out", help="output JSON (the reference package's format)")
    fit.add_argument("--K", type=int, default=settings.K)
    fit.add_argument("--gamma", type=float, default=settings.GAMMA)
    fit.add_argument("--steps", type=int, default=None)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="auto")
    fit.set_defaults(func=cmd_fit)
    search = sub.add_parser("search", help="exact top-k search of a saved SpecBank")
    search.add_argument("bank", help="directory written by SpecBank.save")
    search.add_argument("query", help="spec JSON written by RKME.save or the reference package")
    search.add_argument("--k", type=int, default=settings.EXACT_K)
    search.add_argument("--backend", default=settings.BACKEND)
    search.add_argument("--device", default="auto")
    search.set_defaults(func=cmd_search)
    collect = sub.add_parser("collect", help="merge the results of a multirun sweep (any launcher)")
    collect.add_argument("sweep_dir", help="the folder a `lwgpu-bench -m ...` run wrote (hydra.sweep.dir)")
    collect.add_argument("--x", help="swept key to plot against, e.g. market.n_tasks")
    collect.add_argument("--metric", action="append", help="metric to plot (repeatable), e.g. latency_p50_ms")
    collect.add_argument("--logx", action="store_true")
    collect.set_defaults(func=cmd_collect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``lwgpu``); errors in the inputs exit with status 2 and a message."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"lwgpu {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
