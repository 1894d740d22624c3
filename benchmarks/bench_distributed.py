"""Dask-sharded search and fitting (``lwgpu.distributed``) against the same work in one process, and a
capacity plan for 10^8 specs on 8 GPUs computed from the measured per-shard numbers.

1. Search: a spec-only bank of ``--n`` specs (K points, dimension d) is searched for ``--queries`` user
   specs (exact top-``k``) by ``search_exact`` in this process, and by a :class:`ShardedBank` over a
   ``LocalCluster`` of 1 and of 2 worker processes (one thread each). Latency: p50 of the queries sent
   one at a time; throughput: one batched call of every query (median of ``--repeats``). Each row checks
   that the sharded ids equal the single-process ids. Then the statistical (single + mixture) search,
   one query at a time, single process against 2 shards.
2. Fitting: ``--fit-datasets`` datasets of ``--fit-rows`` rows fitted by ``RKME.fit_many`` here and by
   ``lwgpu.distributed.fit_many`` on 1 and 2 workers (median of ``--repeats``), with the largest
   difference of the fitted points from the in-process fit.
3. Per-shard numbers, measured: bytes per spec in a bank, the exact scan's seconds per (query, spec) on
   one thread, the round trip of one actor call, the bytes of a request and of a shard's answer (pickled),
   the client's merge of 8 answers, the mixture step's fetch and QP. The capacity plan combines them
   with the stated assumptions (GPU memory bandwidth and exp rate, network bandwidth), which are
   arguments, not measurements.

Usage::

    python -m benchmarks.bench_distributed            # N = 20,000, K = 32, d = 16
    python -m benchmarks.bench_distributed --quick    # N = 4,000, fewer queries and datasets
"""
from __future__ import annotations

import argparse
import logging
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common

log = logging.getLogger("benchmarks.distributed")


def _threads(n: int) -> None:
    """torch and numba on ``n`` threads in this process."""
    torch.set_num_threads(n)
    try:
        import numba  # noqa: PLC0415

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        pass


def make_bank(n: int, K: int, d: int, n_queries: int, seed: int = 0):
    """A spec-only bank (clustered points, simplex weights) and query RKMEs near random bank specs."""
    from lwgpu.bank import SpecBank  # noqa: PLC0415
    from lwgpu.spec.rkme import RKME  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(64, d))
    z = centres[rng.integers(64, size=n)][:, None, :] + rng.normal(size=(n, K, d))
    beta = rng.dirichlet(np.ones(K), size=n)
    bank = SpecBank.from_arrays(z.astype(np.float32), beta.astype(np.float32), 0.1, ids=rng.permutation(2 * n)[:n])
    pick = rng.choice(n, n_queries, replace=False)
    queries = [RKME(z[i] + rng.normal(scale=0.3, size=(K, d)), beta[i], 0.1) for i in pick]
    return bank, queries


def p50_ms(fn, items) -> tuple[float, list]:
    """p50 of ``fn(item)`` wall milliseconds (one warm-up call first) and the outputs."""
    fn(items[0])
    times, outs = [], []
    for it in items:
        t0 = time.perf_counter()
        outs.append(fn(it))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), outs


def start_cluster(n_workers: int):
    from distributed import Client, LocalCluster  # noqa: PLC0415

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    return cluster, Client(cluster)


def plan(meas: dict, args) -> tuple[list[str], dict]:
    """The capacity-plan table for ``args.plan_n`` specs on ``args.plan_gpus`` GPUs from measured numbers."""
    n, g = float(args.plan_n), int(args.plan_gpus)
    per_shard = n / g
    mem = per_shard * meas["bytes_per_spec"]
    # GPU: a scan reads the shard once and evaluates Kq * K exps per spec; the larger bounds the time
    read_s = mem / (args.gpu_gbs * 1e9)
    exp_s = per_shard * args.K * args.K / args.gpu_exp_per_s
    gpu_scan = max(read_s, exp_s)
    cpu_scan = per_shard * meas["scan_s_per_spec"]  # one CPU thread per shard, as measured here
    req = g * meas["request_bytes"]
    resp = g * meas["response_bytes"]
    net_s = (req + resp) * 8 / (args.net_gbps * 1e9)
    fixed = meas["rpc_ms"] / 1e3 + meas["merge8_ms"] / 1e3 + net_s
    mix_bytes = g * meas["pool_bytes"] + meas["fetch_bytes"]
    mix_extra = meas["rpc_ms"] / 1e3 + mix_bytes * 8 / (args.net_gbps * 1e9) + meas["mixture_qp_ms"] / 1e3
    out = {"mem_gb": mem / 1e9, "gpu_ms": 1e3 * (gpu_scan + fixed), "cpu_s": cpu_scan + fixed,
           "mix_ms": 1e3 * (gpu_scan + fixed + mix_extra)}
    lines = [
        f"### Capacity plan: {n:.0e} specs on {g} GPUs (K = {args.K}, d = {args.d}, k = {args.k})", "",
        "| quantity | value | from |", "| --- | ---: | --- |",
        f"| specs per shard | {per_shard:,.0f} | N / GPUs |",
        f"| memory per shard | {mem / 1e9:.1f} GB | specs per shard x {meas['bytes_per_spec']:.0f} B per spec (measured: "
        "bank.nbytes / N) |",
        f"| bank, all shards | {n * meas['bytes_per_spec'] / 1e9:.0f} GB | |",
        f"| bytes per query sent | {req / 1e3:.1f} kB | {g} x {meas['request_bytes']:,} B (pickled query, measured) |",
        f"| bytes per query back | {resp / 1e3:.1f} kB | {g} x {meas['response_bytes']:,} B (pickled top-{args.k}, "
        "measured) |",
        f"| + mixture step | {mix_bytes / 1e3:.1f} kB | {g} pools of {meas['pool_bytes']:,} B + candidate specs "
        f"{meas['fetch_bytes']:,} B (measured) |",
        f"| GPU scan per shard | {1e3 * gpu_scan:.1f} ms | max(read {1e3 * read_s:.1f} ms at {args.gpu_gbs:g} GB/s, "
        f"exps {1e3 * exp_s:.1f} ms at {args.gpu_exp_per_s:.1e}/s) (assumed GPU rates) |",
        f"| fan-out + merge | {1e3 * fixed:.1f} ms | actor round trip {meas['rpc_ms']:.2f} ms + merge of {g} answers "
        f"{meas['merge8_ms']:.2f} ms (measured) + bytes at {args.net_gbps:g} Gb/s (assumed) |",
        f"| **expected latency, single search** | **{out['gpu_ms']:.1f} ms** | GPU scan + fan-out + merge |",
        f"| expected latency with mixture | {out['mix_ms']:.1f} ms | + a second round trip, candidate transfer, "
        f"Gram + QP {meas['mixture_qp_ms']:.1f} ms (measured) |",
        f"| same on CPU workers (1 thread each) | {out['cpu_s']:.1f} s | {meas['scan_s_per_spec'] * 1e6:.2f} us per "
        "(query, spec) (measured) x specs per shard |",
        "",
    ]
    return lines, out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--K", type=int, default=32)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=24)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    p.add_argument("--fit-datasets", type=int, default=48)
    p.add_argument("--fit-rows", type=int, default=400)
    p.add_argument("--repeats", type=int, default=common.REPEATS)
    p.add_argument("--plan-n", type=float, default=1e8)
    p.add_argument("--plan-gpus", type=int, default=8)
    p.add_argument("--gpu-gbs", type=float, default=3000.0, help="assumed GPU memory bandwidth, GB/s (H100 SXM ~3350)")
    p.add_argument("--gpu-exp-per-s", type=float, default=2e12, help="assumed float32 exp rate of one GPU, per s")
    p.add_argument("--net-gbps", type=float, default=25.0, help="assumed network bandwidth between nodes, Gb/s")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        args.n, args.queries, args.fit_datasets, args.repeats = 4_000, 8, 16, 3
    out = Path(args.out) if args.out else common.default_out("distributed", args.quick)

    from lwgpu.distributed import Rows, ShardedBank, fit_many, merge_neighbors  # noqa: PLC0415
    from lwgpu.search import search_exact, statistical_search  # noqa: PLC0415
    from lwgpu.spec.rkme import RKME  # noqa: PLC0415

    cores = common.all_cores()
    bank, queries = make_bank(args.n, args.K, args.d, args.queries)
    k = args.k
    meas: dict = {"bytes_per_spec": bank.nbytes / len(bank)}

    # ---- single process (every core), and the per-shard scan rate on one thread
    single = lambda q: search_exact(bank, q, k=k)  # noqa: E731
    lat1, outs1 = p50_ms(single, queries)
    want_ids = np.stack([o.ids[0] for o in outs1])
    t_batch, _, _ = common.median_time(lambda: search_exact(bank, queries, k=k), args.repeats)
    rows = [("single process", f"{cores} threads", lat1, 1e3 / lat1, len(queries) / t_batch, "reference")]
    _threads(1)
    half = bank.rows(0, len(bank) // 2)
    t_half, _, _ = common.median_time(lambda: search_exact(half, queries, k=k), args.repeats, warmup=1)
    meas["scan_s_per_spec"] = t_half / (len(queries) * len(half))
    _threads(cores)
    mix_opts = {"max_mixture": 3}
    lat_mix1, res_mix1 = p50_ms(lambda q: statistical_search(bank, q, k=k, **mix_opts), queries)

    # ---- sharded on 1 and 2 workers
    lat_mix2 = same_mix = None
    fit_rows = []
    xs = [np.random.default_rng(i).normal(loc=i % 5, size=(args.fit_rows, args.d)).astype(np.float32)
          for i in range(args.fit_datasets)]
    seeds = list(range(args.fit_datasets))
    fit_opts = {"K": args.K, "device": "cpu", "progress": False}
    t_fit1, _, want_fit = common.median_time(lambda: RKME.fit_many(xs, seed=seeds, **fit_opts), args.repeats,
                                             warmup=1)
    fit_rows.append(("RKME.fit_many, single process", "-", t_fit1, len(xs) / t_fit1, 0.0))
    for w in args.workers:
        cluster, client = start_cluster(w)
        try:
            sb = ShardedBank(client, bank, threads=1)
            lat, outs = p50_ms(lambda q: sb.search(q, k), queries)
            got_ids = np.stack([o.ids[0] for o in outs])
            t_b, _, nb = common.median_time(lambda: sb.search(queries, k), args.repeats, warmup=1)
            same = bool(np.array_equal(got_ids, want_ids) and np.array_equal(nb.ids, want_ids))
            rows.append((f"ShardedBank, {w} worker{'s' if w > 1 else ''}", f"{w} x 1 thread", lat, 1e3 / lat,
                         len(queries) / t_b, "same ids" if same else "IDS DIFFER"))
            if w == max(args.workers):
                rpc = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    sb.shards[0].size().result()
                    rpc.append(time.perf_counter() - t0)
                meas["rpc_ms"] = 1e3 * statistics.median(rpc)
                lat_mix2, res_mix2 = p50_ms(lambda q: sb.statistical_search(q, k=k, **mix_opts), queries)
                same_mix = sum(a.ids == b.ids and (a.mixture is None) == (b.mixture is None)
                               and (a.mixture is None or a.mixture.ids == b.mixture.ids)
                               for a, b in zip(res_mix1, res_mix2))
                steps = [r.timings for r in res_mix2 if "fetch" in r.timings]
                meas["fetch_ms"] = 1e3 * statistics.median(t["fetch"] for t in steps)
                meas["mixture_qp_ms"] = 1e3 * statistics.median(t["mixture"] - t["fetch"] for t in steps)
                n_top = max(k, mix_opts["max_mixture"] ** 2)
                pool = sb.pool(queries[0], n_top)
                part = sb.shards[0].pool(queries[0], n_top).result()
                meas["n_top"] = n_top
                meas["pool_bytes"] = len(pickle.dumps(part))
                meas["fetch_bytes"] = len(pickle.dumps(Rows.of(bank, pool.ids[:n_top])))
                meas["request_bytes"] = len(pickle.dumps((queries[0], k)))
                meas["response_bytes"] = len(pickle.dumps(sb.shards[0].search(queries[0], k).result()))
            sb.close()
            t_f, _, got_fit = common.median_time(lambda: fit_many(client, xs, seed=seeds, **fit_opts), args.repeats,
                                                 warmup=1)
            diff = max(float((a.z - b.z).abs().max()) for a, b in zip(got_fit, want_fit))
            fit_rows.append((f"lwgpu.distributed.fit_many, {w} worker{'s' if w > 1 else ''}", f"{w} x 1 thread", t_f,
                             len(xs) / t_f, diff))
        finally:
            client.close()
            cluster.close()

    # ---- client-side costs: merging 8 answers, the mixture QP
    parts = [(np.sort(np.random.default_rng(j).random((1, k)), 1), np.arange(j * k, (j + 1) * k)[None]) for j in range(8)]
    t_merge, _, _ = common.median_time(lambda: merge_neighbors(parts, k), 50)
    meas["merge8_ms"] = 1e3 * t_merge

    lines = common.run_header(
        "Distributed search and fitting (Dask)", common.command("bench_distributed", argv),
        [f"- Bank: {args.n:,} spec-only specs, K = {args.K}, d = {args.d}, gamma = 0.1, float32 "
         f"({bank.nbytes / 1e6:.1f} MB); {args.queries} queries, k = {k}; backend `auto` (numba on a CPU).",
         "- Sharded: `LocalCluster(n_workers=w, threads_per_worker=1, processes=True)` on this machine, one shard per "
         "worker (torch and numba on 1 thread each); single process: every core. Latency: p50 of queries sent one at a "
         f"time; batch: one call with all queries, median of {args.repeats}.",
         "- On one machine, workers share its cores (and the load of other users): the sharded rows measure the "
         "fan-out's overhead and its exactness, not a speed-up; across machines each shard brings its own cores or GPU."])
    lines += ["### Exact search", "",
              "| setup | threads | p50 latency (ms) | queries/s (one at a time) | queries/s (batch) | check |",
              "| --- | --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {a} | {b} | {c:.1f} | {d:.1f} | {e:.1f} | {f} |" for a, b, c, d, e, f in rows]
    if lat_mix2 is not None:
        lines += ["", "### Statistical search (single + mixture, max_mixture = 3), one query at a time", "",
                  "| setup | p50 latency (ms) | same answers as single process |", "| --- | ---: | ---: |",
                  f"| single process | {lat_mix1:.1f} | - |",
                  f"| ShardedBank, {max(args.workers)} workers | {lat_mix2:.1f} | {same_mix}/{len(queries)} |"]
    lines += ["", f"### Fitting {args.fit_datasets} datasets ({args.fit_rows} rows, d = {args.d}, K = {args.K})", "",
              "| setup | threads | seconds (median) | specs/s | max abs diff of z vs single process |",
              "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c:.2f} | {d:.1f} | {e:.1e} |" for a, b, c, d, e in fit_rows]
    lines += ["", "### Measured per-shard numbers", "", "| quantity | value |", "| --- | ---: |",
              f"| bytes per spec in a bank | {meas['bytes_per_spec']:.0f} |",
              f"| exact scan, seconds per (query, spec), 1 thread | {meas['scan_s_per_spec']:.3e} |",
              f"| actor round trip (p50) | {meas.get('rpc_ms', float('nan')):.2f} ms |",
              f"| request (pickled query + k) | {meas.get('request_bytes', 0):,} B |",
              f"| one shard's answer (pickled top-{k}) | {meas.get('response_bytes', 0):,} B |",
              f"| one shard's mixture pool | {meas.get('pool_bytes', 0):,} B |",
              f"| candidate specs for the mixture ({meas.get('n_top', 0)}, pickled Rows) | {meas.get('fetch_bytes', 0):,} B |",
              f"| fetching them from the shards (p50, one round trip) | {meas.get('fetch_ms', float('nan')):.1f} ms |",
              f"| client merge of 8 answers | {meas['merge8_ms']:.3f} ms |",
              f"| mixture Gram + QP on the client (p50) | {meas.get('mixture_qp_ms', float('nan')):.1f} ms |", ""]
    if "rpc_ms" in meas:
        plan_lines, _ = plan(meas, args)
        lines += plan_lines
        lines += ["The GPU rates and the network bandwidth are assumptions (script arguments); every other input is "
                  "measured above. docs/distributed.md explains the plan."]
    common.write_text(out, "\n".join(lines))


if __name__ == "__main__":
    main()
