"""The index defaults out of sample: ``SpecIndex(bank)`` on markets it was not tuned on, vs exact search.

The defaults (``lwgpu.settings.INDEX_*``, ``lwgpu.index.layout.auto_layout``: layout, nlist, nprobe,
D, candidates) were measured on one market: ``lwgpu.data.clustered.synthetic_spec_arrays`` with
``seed=0``, K = 32, d = 16 (``benchmarks/bench_index.py``; the index tests use the same generator, seed
0, K = 16, d = 8). This script runs the same defaults, untouched, on:

- ``in-sample``: that market itself (seed 0), the row to compare against;
- ``(a) seed 1``: the same generator with another seed; ``(a) seed 2, K=16 d=8``: another seed and shape;
- ``(b) families``: the same generator with 20 large clusters ("families" of tasks, as in
  ``tests/index/test_index_search.py::_small``), so a query's neighbours crowd one family;
- ``(b) gaussian tasks``: the harness's Gaussian-mixture task market (``lwgpu.data.synthetic.SyntheticMarket``,
  ``configs/market/synthetic.yaml``: d = 8, 3 components, separation 1, spread 0.5, noise 1), K points
  drawn from each task, users from one task;
- ``(c) real: digits / breast_cancer / wine``: tasks carved from the bundled scikit-learn datasets
  (``lwgpu.data.real_sources``: digits by 3-class subsets under an image shift, the tables by covariate
  regions under an offset, scaled to the market's gamma as ``lwgpu.data.real`` does), each task a random
  sample of its rows summarised by ``RKME.fit_many`` (K = 16); users are fresh samples of one task's
  distribution. Few distinct distributions, many specs each: near-ties everywhere.

For each: recall@10 of ``SpecIndex(bank).search`` against ``search_exact`` (``lwgpu.eval.search.recall_at_k``),
single-query latency p50 / p99 of both, and the speedup.

Usage::

    python -m benchmarks.bench_index_oos            # N = 20,000 and 100,000 (synthetic), 20,000 (real)
    python -m benchmarks.bench_index_oos --quick    # N = 5,000 (real 2,000): smoke run, Flat layout only
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks import common

GAMMA = 0.1
log = logging.getLogger("bench_index_oos")


# ------------------------------------------------------------------------------------------- markets
def clustered(n: int, q: int, seed: int, K: int = 32, d: int = 16, **kw) -> tuple[np.ndarray, ...]:
    """(z, beta, qz, qbeta) of ``synthetic_spec_arrays``."""
    from lwgpu.data.clustered import synthetic_spec_arrays

    m = synthetic_spec_arrays(n, q, K=K, d=d, seed=seed, **kw)
    return m["z"], m["beta"], m["qz"], m["qbeta"]


def gaussian_tasks(n: int, q: int, seed: int, K: int = 16) -> tuple[np.ndarray, ...]:
    """Spec-only market of ``SyntheticMarket`` (the harness's generator settings), single-task users."""
    from lwgpu.data.synthetic import SyntheticMarket

    market = SyntheticMarket.generate(n, d=8, components=3, separation=1.0, spread=0.5, noise=1.0, seed=seed)
    z, beta = market.spec_arrays(K)
    users = market.users(q, n_rows=0, max_mix=1)
    qz, qbeta = market.user_spec_arrays(users, K)
    return z, beta, qz, qbeta


def real(dataset: str, n: int, q: int, seed: int, K: int = 16, rows: int = 40) -> tuple[np.ndarray, ...]:
    """A spec market carved from a bundled dataset: ``n`` tasks (class subset or region + shift), each
    summarised from ``rows`` rows of its own by ``RKME.fit_many``; ``q`` users from held-out rows."""
    from lwgpu.data.real_sources import IMAGE_SHIFTS, apply_shift, load_dataset, scale_to_gamma
    from lwgpu.spec.rkme import RKME

    rng = np.random.default_rng(seed)
    X, y, shape = load_dataset(dataset)
    X = X / scale_to_gamma(X, GAMMA, rng)
    test = rng.random(len(X)) < 0.3
    n_classes = int(y.max()) + 1
    n_dist = 64  # distinct task distributions; every spec is a fresh sample of one of them
    dists = []
    for _ in range(n_dist):
        if n_classes > 3:  # digits: 3 classes under an image shift
            classes = rng.choice(n_classes, 3, replace=False)
            member = np.isin(y, classes)
            shift = {"kind": IMAGE_SHIFTS[int(rng.integers(len(IMAGE_SHIFTS)))]}
        else:  # tables: the 40% of rows nearest an anchor row, under an offset (or none)
            anchor = X[int(rng.integers(len(X)))]
            dist = ((X - anchor) ** 2).sum(1)
            member = dist <= np.quantile(dist, 0.4)
            v = rng.normal(size=X.shape[1])
            shift = {"kind": "offset", "vector": v * (0.5 / np.sqrt(GAMMA)) / np.linalg.norm(v)} \
                if rng.random() < 0.5 else {"kind": "none"}
        dists.append((np.flatnonzero(member & ~test), np.flatnonzero(member & test), shift))

    def sample(which: int, pool: int) -> np.ndarray:
        idx = dists[which][pool]
        pick = rng.choice(idx, min(rows, len(idx)), replace=False)
        return apply_shift(X[pick], dists[which][2], shape)

    task_of = rng.integers(n_dist, size=n)
    data = [sample(int(t), 0) for t in task_of]
    users = [sample(int(t), 1) for t in rng.integers(n_dist, size=q)]
    specs = RKME.fit_many(data + users, K=K, gamma=GAMMA, device="cpu", seed=seed, progress=False)
    z = np.stack([s.numpy()[0] for s in specs]).astype(np.float32)
    beta = np.stack([s.numpy()[1] for s in specs]).astype(np.float32)
    return z[:n], beta[:n], z[n:], beta[n:]


def markets(args: argparse.Namespace) -> list[tuple[str, int, Callable[[], tuple[np.ndarray, ...]]]]:
    """(name, N, maker) of every market measured."""
    q = args.queries
    out = []
    for n in args.sizes_list:
        out += [
            ("in-sample: clustered seed 0, K=32 d=16", n, lambda n=n: clustered(n, q, 0)),
            ("(a) clustered seed 1, K=32 d=16", n, lambda n=n: clustered(n, q, 1)),
            ("(a) clustered seed 2, K=16 d=8", n, lambda n=n: clustered(n, q, 2, K=16, d=8)),
            ("(b) families: clustered, 20 clusters, seed 3", n, lambda n=n: clustered(n, q, 3, n_clusters=20)),
            ("(b) gaussian tasks (SyntheticMarket), seed 4, K=16 d=8", n, lambda n=n: gaussian_tasks(n, q, 4)),
        ]
    for ds in ("digits", "breast_cancer", "wine"):
        out.append((f"(c) real: {ds}", args.real_n, lambda ds=ds: real(ds, args.real_n, q, 5)))
    return out


# ------------------------------------------------------------------------------------------- measure
def measure(name: str, n: int, maker, args: argparse.Namespace) -> dict:
    """Recall@10 and single-query latencies of the default index vs exact search on one market."""
    from lwgpu.bank import SpecBank
    from lwgpu.index import SpecIndex, recall_at_k
    from lwgpu.search import search_exact

    t0 = time.perf_counter()
    z, beta, qz, qbeta = maker()
    make_s = time.perf_counter() - t0
    bank = SpecBank.from_arrays(z, beta, GAMMA)
    queries = SpecBank.from_arrays(qz, qbeta, GAMMA)
    del z, beta
    exact = search_exact(bank, queries, k=10)
    t0 = time.perf_counter()
    index = SpecIndex(bank, device="cpu", seed=0)  # the defaults, untouched
    build_s = time.perf_counter() - t0
    approx = index.search(queries, 10)
    nq = min(args.latency_queries, len(queries))
    lat_i, lat_e = [], []
    index.search(queries.rows(0, 1), 10)
    search_exact(bank, queries.rows(0, 1), k=10)  # warm-ups
    for i in range(nq):
        qi = queries.rows(i, i + 1)
        t = time.perf_counter()
        index.search(qi, 10)
        lat_i.append(time.perf_counter() - t)
    for i in range(min(nq, args.exact_queries)):
        qi = queries.rows(i, i + 1)
        t = time.perf_counter()
        search_exact(bank, qi, k=10)
        lat_e.append(time.perf_counter() - t)
    layout = index.layout
    row = {"market": name, "N": n, "Q": len(queries), "K": bank.K, "d": bank.d, "layout": index.built_factory,
           "probe": index.probe if index.probe is not None else (layout.nprobe or layout.ef_search), "D": index.D,
           "candidates": index.candidates, "recall": recall_at_k(approx, exact, 10),
           "index_p50_ms": 1e3 * float(np.median(lat_i)), "index_p99_ms": 1e3 * float(np.percentile(lat_i, 99)),
           "exact_p50_ms": 1e3 * float(np.median(lat_e)), "n_index": len(lat_i), "n_exact": len(lat_e),
           "build_s": build_s, "make_s": make_s, "load": common.load()}
    log.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    del index, bank, queries
    gc.collect()
    return row


def write_report(rows: list[dict], args: argparse.Namespace, out: Path) -> None:
    from lwgpu import settings

    lines = common.run_header("Index defaults out of sample: `SpecIndex(bank)` on markets it was not tuned on",
                              args.command, [
        "- **Tuned on**: `lwgpu.data.clustered.synthetic_spec_arrays(N, Q, K=32, d=16, seed=0)` (the market of "
        "`benchmarks/bench_index.py`; the index tests use seed 0 with K=16, d=8). Defaults used here, untouched: "
        f"embedding `{settings.INDEX_EMBEDDER}` D={settings.INDEX_D}, candidates={settings.INDEX_CANDIDATES}, "
        f"Flat below N={settings.INDEX_FLAT_MAX:,}, else IVF(power of two near {settings.INDEX_LISTS_PER_SQRT_N:g} "
        f"sqrt N) with {settings.INDEX_PROBE_BASE} probes per {settings.INDEX_PROBE_PER:,} specs.",
        "- Markets (see the script's docstring): (a) the same generator, other seeds and shapes; (b) other "
        "generators (20 large task families; the harness's Gaussian-mixture tasks); (c) specs fitted "
        "(`RKME.fit_many`, K=16, 40 rows each) to tasks carved from scikit-learn's digits, breast cancer and wine.",
        f"- recall@10 of the batch search over all Q queries against `search_exact`; latency: single queries one "
        f"at a time (index: {args.latency_queries} queries, p50/p99; exact: the first {args.exact_queries}, p50), "
        f"after a warm-up; speedup = exact p50 / index p50. {args.threads} threads (torch, numba, FAISS).",
    ])
    lines += ["| market | N | K | d | layout | nprobe | recall@10 | index p50 / p99 ms | exact p50 ms | speedup | "
              "build s | load |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['market']} | {r['N']:,} | {r['K']} | {r['d']} | {r['layout']} | "
            f"{r['probe'] if r['probe'] is not None else '-'} | {r['recall']:.4f} | {r['index_p50_ms']:.1f} / "
            f"{r['index_p99_ms']:.1f} | {r['exact_p50_ms']:.1f} | {r['exact_p50_ms'] / r['index_p50_ms']:.1f}x | "
            f"{r['build_s']:.1f} | {r['load']:.1f} |")
    below = [r for r in rows if r["recall"] < 0.99]
    lines += ["", f"Rows below recall@10 = 0.99 (the target at 1M on the tuning market): {len(below)} of {len(rows)}"
              + (": " + "; ".join(f"{r['market']} at N={r['N']:,} ({r['recall']:.3f})" for r in below) if below
                 else ".")]
    common.write_text(out, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 5,000 (real: 2,000; the Flat layout), 50 queries")
    p.add_argument("--sizes", default="20000,100000", help="N of the synthetic markets (',' separated)")
    p.add_argument("--real-n", type=int, default=20_000, help="specs in each real-data market")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--latency-queries", type=int, default=100)
    p.add_argument("--exact-queries", type=int, default=20)
    p.add_argument("--only", default="", help="markets whose name contains one of these (',' separated)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/index_oos.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.quick:
        args.sizes, args.real_n = "5000", 2000
        args.queries, args.latency_queries, args.exact_queries = 50, 50, 10
    args.sizes_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.command = common.command("bench_index_oos", list(sys.argv[1:] if argv is None else argv))
    common.set_compute_threads(args.threads)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    rows = [measure(name, n, maker, args) for name, n, maker in markets(args)
            if not wanted or any(w in name for w in wanted)]
    out = args.out or common.default_out("index_oos", args.quick)
    write_report(rows, args, out)
    print(out.read_text())


if __name__ == "__main__":
    main()
