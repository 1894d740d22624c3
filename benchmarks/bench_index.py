"""Indexed search (SpecIndex: FAISS candidates + exact re-ranking) vs exact search, same bank, same process.

For each market size N: a synthetic spec market is made directly as arrays
(``lwgpu.data.clustered.synthetic_spec_arrays``: clusters of tasks, one spec per task, users drawn from a
task), exact top-10 by ``lwgpu.search.search_exact`` is the ground truth and the baseline's time,
and each FAISS layout (Flat, IVF, HNSW) is measured at a few search settings: recall@10 and
queries/s, both paths batched over the same Q queries. The ORF embedding of the bank is computed
once per N and shared by the layouts (its time is reported as ``embed_s``).

Usage::

    python -m benchmarks.bench_index             # N = 10,000, 100,000, 1,000,000
    python -m benchmarks.bench_index --quick     # N = 10,000 only, fewer queries

torch and FAISS both run with 2 threads.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

GAMMA = 0.1
RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def settings_for(factory: str, n: int, ivf_probes: tuple = (64, 16, 128)) -> list[dict]:
    """Search settings measured per layout (first one = the documented defaults)."""
    if factory.startswith("IVF"):
        return [{"candidates": 100, "probe": p} for p in ivf_probes]
    if factory.startswith("HNSW"):
        return [{"candidates": 100, "probe": p} for p in (256, 128, 512)]
    return [{"candidates": c, "probe": None} for c in (100, 50, 200)]


def run_size(n: int, args: argparse.Namespace) -> list[dict]:
    from lwgpu.bank import SpecBank
    from lwgpu.data.clustered import synthetic_spec_arrays
    from lwgpu.index import SpecIndex, make_embedder, recall_at_k
    from lwgpu.search import search_exact

    t0 = time.perf_counter()
    m = synthetic_spec_arrays(n, args.queries, K=args.K, d=args.d, seed=args.seed)
    bank = SpecBank.from_arrays(m.pop("z"), m.pop("beta"), GAMMA)
    queries = SpecBank.from_arrays(m["qz"], m["qbeta"], GAMMA)
    logging.info("N=%d: market made in %.1fs (bank %.2f GB)", n, time.perf_counter() - t0, bank.nbytes / 1e9)

    search_exact(bank, queries.subset(queries.ids[:1]), k=10)  # warm-up
    t0 = time.perf_counter()
    _, exact_ids = search_exact(bank, queries, k=10)
    exact_s = time.perf_counter() - t0
    exact_qps = args.queries / exact_s
    logging.info("N=%d: exact %.2f queries/s", n, exact_qps)

    emb = make_embedder(args.embedder, args.d, args.D, GAMMA, seed=args.seed, bank=bank)
    t0 = time.perf_counter()
    vecs = emb.embed_specs(bank.z, bank.beta, device="cpu")
    embed_s = time.perf_counter() - t0
    rows = []
    for factory in args.factories:
        if factory.startswith("HNSW") and n > args.hnsw_max:
            logging.info("N=%d: skipping %s (graph build over %d vectors is beyond this run's budget)", n, factory, n)
            continue
        t0 = time.perf_counter()
        index = SpecIndex(bank, factory=factory, embedder=emb, embeddings=vecs, seed=args.seed, device="cpu")
        build_s = time.perf_counter() - t0
        for st in settings_for(factory, n, args.ivf_probes):
            index.search(queries.subset(queries.ids[:1]), 10, **st)  # warm-up
            t0 = time.perf_counter()
            _, ids = index.search(queries, 10, **st)
            sec = time.perf_counter() - t0
            row = {
                "N": n, "K": args.K, "d": args.d, "factory": index.built_factory, "embedder": emb.kind, "D": emb.D,
                "candidates": st["candidates"], "probe": st["probe"], "recall@10": recall_at_k(ids, exact_ids),
                "index_qps": args.queries / sec, "exact_qps": exact_qps, "speedup": exact_s / sec,
                "embed_s": embed_s, "build_s": build_s, "queries": args.queries,
            }
            rows.append(row)
            logging.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        del index
        gc.collect()
    return rows


def compare_embedders(args: argparse.Namespace) -> str:
    """How many FAISS candidates (exact L2 over the embeddings) hold the exact top-10, per embedder and D.

    Two markets of 10,000 specs: the benchmark's (spread: 100 clusters of tasks) and a compact one
    (cluster/task/point scales 1, 0.5, 1: all points within a few kernel widths). Quantiles over the
    queries of the rank (in embedding distance) of the worst-ranked exact top-10 spec.
    """
    from lwgpu.bank import SpecBank
    from lwgpu.data.clustered import synthetic_spec_arrays
    from lwgpu.index import make_embedder
    from lwgpu.kernels import mmd2

    lines = ["", "## Embedders: candidates needed to hold the exact top-10 (N = 10,000, Q = 100)", "",
             "| market | embedder | D | median | q90 | q99 | max |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, kw in (("spread", {}), ("compact", {"cluster_scale": 1.0, "task_scale": 0.5, "point_scale": 1.0})):
        m = synthetic_spec_arrays(10_000, 100, K=args.K, d=args.d, seed=args.seed, **kw)
        bank = SpecBank.from_arrays(m["z"], m["beta"], GAMMA)
        queries = SpecBank.from_arrays(m["qz"], m["qbeta"], GAMMA)
        top = torch.argsort(mmd2(queries, bank).double().cpu(), dim=1)[:, :10]
        for kind in ("rff", "orf", "nystroem"):
            for D in (128, 512):
                emb = make_embedder(kind, args.d, D, GAMMA, seed=args.seed, bank=bank)
                e = torch.from_numpy(emb.embed_specs(bank.z, bank.beta, device="cpu"))
                eq = torch.from_numpy(emb.embed_specs(queries.z, queries.beta, device="cpu"))
                rank = torch.cdist(eq, e).argsort(1).argsort(1).gather(1, top).max(1).values.numpy() + 1
                q = np.quantile(rank, [0.5, 0.9, 0.99, 1.0])
                lines.append(f"| {name} | {kind} | {D} | " + " | ".join(f"{v:.0f}" for v in q) + " |")
                logging.info("%s", lines[-1])
    return "\n".join(lines) + "\n"


def write_markdown(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    import faiss

    lines = [
        "# Indexed search (SpecIndex) vs exact search",
        "",
        f"- Machine: {_cpu_name()}, 2-core CPU (shared with other jobs while measured); "
        f"torch {torch.__version__} and FAISS {faiss.__version__}, both with 2 threads.",
        f"- Command: `{args.command}`",
        f"- Market: `synthetic_spec_arrays` (clusters of tasks, one spec per task, users drawn from a task), "
        f"K={args.K} points per spec, d={args.d}, gamma={GAMMA}; Q={args.queries} user specs per size, "
        "batched in one call for both paths.",
        f"- Embedding: {args.embedder.upper()} features, D={args.D}; FAISS candidates re-ranked by the exact "
        "squared MMD; recall@10 against `lwgpu.search.search_exact` on the same bank (exact top-10 ids).",
        "- `probe` is IVF nprobe / HNSW efSearch. Documented defaults: candidates 100, efSearch 256, "
        "nprobe 64 per 125,000 specs (`lwgpu.index.default_nprobe`).",
        "",
        "| N | layout | candidates | probe | recall@10 | index q/s | exact q/s | speedup | embed s | build s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['N']:,} | {r['factory']} | {r['candidates']} | {r['probe'] if r['probe'] is not None else '-'} | "
            f"{r['recall@10']:.4f} | {r['index_qps']:.1f} | {r['exact_qps']:.2f} | {r['speedup']:.1f}x | "
            f"{r['embed_s']:.1f} | {r['build_s']:.1f} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + args.notes)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 10,000 only, 50 queries")
    p.add_argument("--sizes", type=str, default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--K", type=int, default=32)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--D", type=int, default=512)
    p.add_argument("--embedder", default="orf")
    p.add_argument("--factories", type=str, default="Flat;IVF1024,Flat;HNSW32", help="';'-separated factory strings")
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest N for the HNSW graph build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default=str(RESULTS / "index.md"))
    p.add_argument("--ivf-probes", type=str, default="64,16,128", help="IVF nprobe values measured")
    p.add_argument("--embedders", action="store_true", help="also compare rff/orf/nystroem (candidates needed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    import faiss

    faiss.omp_set_num_threads(2)
    if args.quick:
        args.sizes, args.queries = "10000", 50
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.ivf_probes = tuple(int(x) for x in args.ivf_probes.split(","))
    args.factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    args.command = "python -m benchmarks.bench_index " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    args.notes = ""
    rows = []
    for n in sizes:
        rows += run_size(n, args)
        gc.collect()
    if args.embedders:
        args.notes = compare_embedders(args)
    out = Path(args.out)
    write_markdown(rows, args, out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
