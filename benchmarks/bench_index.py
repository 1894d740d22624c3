"""Indexed search (SpecIndex with its own defaults) vs exact search, same bank, same process.

For each market size N: a synthetic spec market made directly as arrays
(``lwgpu.data.clustered.synthetic_spec_arrays``: clusters of tasks, one spec per task, users drawn from a
task); one exact pass (every query against every spec, ``backend.mmd2``) gives the ground truth of the
unfiltered search and of each filter (random admitted sets of 1%, 10%, 50% of the ids) and the
exact baseline's rate. Then ``SpecIndex(bank)`` -- ``factory="auto"``: layout and probe count from N --
is built (embedding included in the build time) and measured:

- single queries, one at a time (latency p50/p99), and the Q queries in one batch (queries/s);
- with an id selector admitting each filter's ids (``index.search(q, 10, allowed=ids)``);
- the planner on the same filters (``lwgpu.search.planner.search``: exact rows in place for small
  admitted sets, the index with a selector for large ones), single queries;
- recall@10 of every row against exact search over the admitted specs (``lwgpu.eval.search.recall_at_k``).

``--factories`` adds explicit FAISS layouts for comparison (built on the same embeddings); by default
``IVF{nlist},SQ8`` (8-bit scalar codes, the auto layout's list count) and ``HNSW32`` (up to
``--hnsw-max-n`` specs). Every batch and exact timing is a median of 5 runs (3 at the largest N).

Usage::

    python -m benchmarks.bench_index                      # N = 10,000, 100,000, 1,000,000
    python -m benchmarks.bench_index --quick              # N = 10,000 and 20,000, 50 queries
    python -m benchmarks.bench_index --sizes 1000000 --factories "IVF1024,Flat"

torch, numba and FAISS run with 2 threads.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common

GAMMA = 0.1


def exact_truth(bank, queries, filters: dict, k: int = 10, chunk: int = 10) -> tuple[dict, float]:
    """Exact top-k ids per filter (None = all) from one pass of every query over every spec; seconds taken."""
    from lwgpu.kernels import get_backend

    be = get_backend("auto", "cpu")
    ids = np.asarray(bank.ids, np.int64)
    out = {name: [] for name in filters}
    masks = {name: None if a is None else np.isin(ids, a) for name, a in filters.items()}
    t0 = time.perf_counter()
    for s in range(0, len(queries), chunk):
        d = be.mmd2(queries.rows(s, min(s + chunk, len(queries))), bank).cpu().numpy()
        for name, mask in masks.items():
            dm = d if mask is None else np.where(mask[None, :], d, np.inf)
            part = np.argpartition(dm, k, axis=1)[:, :k]
            order = np.argsort(np.take_along_axis(dm, part, 1), axis=1, kind="stable")
            out[name].append(ids[np.take_along_axis(part, order, 1)])
    return {name: np.concatenate(v) for name, v in out.items()}, time.perf_counter() - t0


def time_single(fn, queries, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fn(query_i)`` one query at a time; (latencies in ms (n,), ids (n, k))."""
    fn(queries.rows(0, 1))  # warm-up
    ts, ids = [], []
    for i in range(n):
        q = queries.rows(i, i + 1)
        t0 = time.perf_counter()
        nb = fn(q)
        ts.append(1e3 * (time.perf_counter() - t0))
        ids.append(nb.ids[0])
    return np.asarray(ts), np.stack(ids)


def run_size(n: int, args: argparse.Namespace) -> list[dict]:
    from lwgpu.bank import SpecBank
    from lwgpu.data.clustered import synthetic_spec_arrays
    from lwgpu.index import SpecIndex, recall_at_k
    from lwgpu.index.layout import auto_nlist
    from lwgpu.search.planner import search as planned_search

    t0 = time.perf_counter()
    m = synthetic_spec_arrays(n, args.queries, K=args.K, d=args.d, seed=args.seed)
    bank = SpecBank.from_arrays(m.pop("z"), m.pop("beta"), GAMMA)
    queries = SpecBank.from_arrays(m["qz"], m["qbeta"], GAMMA)
    logging.info("N=%d: market made in %.1fs (bank %.2f GB)", n, time.perf_counter() - t0, bank.nbytes / 1e9)
    rng = np.random.default_rng(args.seed)
    filters = {1.0: None}
    for f in args.filters:
        filters[f] = np.sort(rng.choice(np.asarray(bank.ids), max(1, int(round(f * n))), replace=False))
    truth, _ = exact_truth(bank, queries, filters)
    reps = common.repeats_at(n, max(args.sizes_list))
    nq_exact = min(10, args.queries)
    exact_s, _, _ = common.median_time(lambda: exact_truth(bank, queries.rows(0, nq_exact), {1.0: None}), reps)
    exact_qps = nq_exact / exact_s
    logging.info("N=%d: exact %.2f queries/s (median of %d passes over %d queries)", n, exact_qps, reps, nq_exact)

    t0 = time.perf_counter()
    index = SpecIndex(bank, device="cpu", seed=args.seed)  # the defaults: factory="auto"
    build_s = time.perf_counter() - t0
    logging.info("N=%d: %r built in %.1fs", n, index, build_s)
    indexes = [(index, build_s)]
    factories = [f.format(nlist=auto_nlist(n)) for f in args.factories
                 if not ("HNSW" in f.upper() and n > args.hnsw_max_n)]
    if factories:
        t0 = time.perf_counter()
        vecs = index.embedder.embed_specs(bank.z, bank.beta, device="cpu")
        embed_s = time.perf_counter() - t0
        for factory in factories:
            t0 = time.perf_counter()
            other = SpecIndex(bank, factory=factory, embedder=index.embedder, embeddings=vecs, device="cpu",
                              seed=args.seed)
            indexes.append((other, embed_s + time.perf_counter() - t0))
            logging.info("N=%d: %r built in %.1fs", n, other, indexes[-1][1])
    rows = []
    nq = min(args.latency_queries, args.queries)
    for idx, b_s in indexes:
        base = {"N": n, "K": args.K, "d": args.d, "layout": idx.built_factory, "D": idx.D, "default": idx is index,
                "probe": idx.probe if idx.probe is not None else (idx.layout.nprobe or idx.layout.ef_search),
                "candidates": idx.candidates,
                "build_s": b_s, "exact_qps": exact_qps, "load": os.getloadavg()[0]}
        batch_s, _, batch = common.median_time(lambda: idx.search(queries, 10), reps, warmup=1)
        batch_qps = args.queries / batch_s
        for f, allowed in filters.items():
            lat, got = time_single(lambda q, a=allowed: idx.search(q, 10, allowed=a), queries, nq)
            row = dict(base, filter=f, path="index" if allowed is None else "index-filtered",
                       recall=recall_at_k(got, truth[f][:nq], 10), p50_ms=float(np.median(lat)),
                       p99_ms=float(np.percentile(lat, 99)),
                       batch_qps=batch_qps if allowed is None else float("nan"))
            if allowed is None:
                row["batch_recall"] = recall_at_k(batch.ids, truth[f], 10)
            rows.append(row)
            logging.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
            if allowed is not None and idx is index and not args.no_planner:
                methods = []
                lat, got = time_single(lambda q, a=allowed: _note(planned_search(bank, q, 10, allowed=a, index=idx),
                                                                  methods), queries, nq)
                row = dict(base, filter=f, path="planner:" + "/".join(sorted(set(methods))),
                           recall=recall_at_k(got, truth[f][:nq], 10), p50_ms=float(np.median(lat)),
                           p99_ms=float(np.percentile(lat, 99)), batch_qps=float("nan"))
                rows.append(row)
                logging.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    del indexes, index
    gc.collect()
    return rows


def _note(nb, methods: list):
    methods.append(nb.method)
    return nb


def write_markdown(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    lines = common.run_header("Indexed search: `SpecIndex(bank)` with its own defaults vs exact search", args.command, [
        f"- Threads: torch, numba and FAISS with {args.threads}. Wall time of the whole script: {args.wall:.0f} s; "
        "load average per row in the table.",
        f"- Market: `synthetic_spec_arrays(seed={args.seed})` (clusters of tasks, one spec per task, users drawn from "
        f"a task), K={args.K} points per spec, d={args.d}, gamma={GAMMA}; Q={args.queries} user specs. The index "
        "defaults were tuned on this generator and seed: `benchmarks/results/index_oos.md` measures them out of sample.",
        "- `SpecIndex(bank)` (default rows, layout in bold): `factory=\"auto\"` (`lwgpu.index.layout.auto_layout`: "
        "layout and nprobe from N), ORF embedding D=512, candidates re-ranked by the exact squared MMD; build time "
        "includes embedding the bank. Other layouts (`--factories`, default "
        f"`{';'.join(args.factories)}`, HNSW up to N = {args.hnsw_max_n:,}) use the same embeddings, "
        "with their default probes (nprobe from N for IVF, efSearch for HNSW).",
        "- Filters: random admitted sets of the given fraction of the ids, passed as `allowed=` (an id selector; "
        "nprobe and candidates raised as the fraction falls); `planner:` rows go through "
        "`lwgpu.search.planner.search` (exact rows in place up to `PLANNER_EXACT_MAX_ROWS` admitted specs, or below "
        "`PLANNER_INDEX_MIN_FRACTION` of the bank up to `PLANNER_FALLBACK_MAX_ROWS`).",
        f"- Latency: {args.latency_queries} single queries one at a time (p50/p99, ms); batch: all Q in one call, "
        f"median of {common.REPEATS} calls ({common.REPEATS_LARGEST} at the largest N); exact q/s: median of as many "
        "exact passes (every spec, `backend.mmd2`) over 10 queries. recall@10 against exact search over the admitted "
        "specs (`lwgpu.eval.search.recall_at_k`).",
    ])
    lines += [
        "| N | layout | nprobe / efSearch | filter | path | recall@10 | p50 ms | p99 ms | batch q/s | exact q/s | "
        "build s | load |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bq = "-" if r["batch_qps"] != r["batch_qps"] else f"{r['batch_qps']:.1f}"
        layout = f"**{r['layout']}**" if r.get("default") else r["layout"]
        lines.append(
            f"| {r['N']:,} | {layout} | {r['probe'] if r['probe'] is not None else '-'} | {r['filter']:g} | "
            f"{r['path']} | {r['recall']:.4f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {bq} | {r['exact_qps']:.2f} | "
            f"{r['build_s']:.1f} | {r['load']:.1f} |")
    common.write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 10,000 and 20,000, 50 queries")
    p.add_argument("--sizes", type=str, default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--latency-queries", type=int, default=100, help="queries timed one at a time")
    p.add_argument("--K", type=int, default=32)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--filters", type=str, default="0.01,0.1,0.5", help="admitted fractions (',' separated)")
    p.add_argument("--factories", type=str, default="IVF{nlist},SQ8;HNSW32",
                   help="';'-separated FAISS layouts measured beside auto ({nlist}: auto's IVF list count for N); "
                        "'' for none")
    p.add_argument("--hnsw-max-n", type=int, default=100_000,
                   help="largest N an HNSW layout is built for (its construction at 1M takes tens of minutes)")
    p.add_argument("--no-planner", action="store_true", help="skip the planner rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default=None, help="default: benchmarks/results/index.md (+ index.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    common.set_compute_threads(args.threads)
    if args.quick:
        args.sizes, args.queries, args.latency_queries = "10000,20000", 50, 50
    args.sizes_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.filters = [float(x) for x in args.filters.split(",") if x.strip()]
    args.factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    args.command = common.command("bench_index", list(sys.argv[1:] if argv is None else argv))
    t_all = time.perf_counter()
    rows = []
    for n in args.sizes_list:
        rows += run_size(n, args)
        gc.collect()
    args.wall = time.perf_counter() - t_all
    out = Path(args.out) if args.out else common.default_out("index", args.quick)
    write_markdown(rows, args, out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
