"""Market at scale: one market grown through 10k, 100k and 1M learnwares with ``Market.add_many``.

At every checkpoint it measures, through the public API:

- ingest: learnwares per second of each ``add_many`` batch (the rate at 1M against the rate at 10k);
- disk and RAM per learnware (folder size; RSS; bank + index bytes), and the reopen time of the
  market in a fresh process;
- search p50/p99 (users drawn from tasks already in the market) with no filter, a tag filter (~2% of the market) and a text filter (~10%), single
  and with the mixture, and which planner path ran;
- recall@10 of those searches against exact search over the admitted learnwares (the planner with
  no index: an exact scan of the admitted rows);
- the reference ``learnware`` market side by side at the sizes it reaches in ``--ref-budget`` seconds.

Learnwares: K = 32, d = 16 specs from :func:`lwgpu.data.clustered.synthetic_spec_arrays`, semantic
specs from :func:`lwgpu.data.semantic_specs.synthetic_semantic_specs`, one small scikit-learn
classifier object per 1,000 learnwares (each still pickled into its own package).

Usage::

    python -m benchmarks.bench_market_scale                       # 10k, 100k, 1M (about an hour)
    python -m benchmarks.bench_market_scale --sizes 10000,100000  # smaller
    python -m benchmarks.bench_market_scale --quick               # 2k, smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
K, D, GAMMA = 32, 16, 0.1
FILTERS = {"none": None, "tag": {"tags": ["tag007"]}, "text": {"description": "genomics"}}


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else 0


def make_models(n: int, seed: int = 0) -> list[Any]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    models = []
    for _ in range(n):
        X = rng.normal(size=(64, D))
        models.append(LogisticRegression(max_iter=50).fit(X, (X @ rng.normal(size=D) > 0).astype(int)))
    return models


def learnwares(start: int, stop: int, arrays: dict, models: list[Any]) -> tuple[list, list, list]:
    from lwgpu import RKME
    from lwgpu.data.semantic_specs import synthetic_semantic_specs

    sems = synthetic_semantic_specs(stop - start, D, seed=0, start=start)
    rkmes = [RKME(arrays["z"][i], arrays["beta"][i], GAMMA, num_points=500) for i in range(start, stop)]
    mods = [models[(i // 1000) % len(models)] for i in range(start, stop)]
    return mods, sems, rkmes


def users_of(arrays: dict, n_tasks: int, n_users: int, seed: int = 1) -> list[Any]:
    """User specs drawn like the generator's queries, from tasks already in the market (ids 1..n_tasks):
    K points around a task's centre (unit noise) with Dirichlet(1) weights."""
    from lwgpu import RKME

    rng = np.random.default_rng([seed, n_tasks])
    tasks = rng.integers(0, n_tasks, size=n_users)
    return [RKME(arrays["centres"][t] + rng.normal(size=(K, D)), rng.dirichlet(np.ones(K)), GAMMA) for t in tasks]


def measure_search(market: Any, users: list[Any], reps_users: int) -> dict[str, Any]:
    """p50/p99 per filter, single and mixture, and recall@10 against the exact scan of the admitted set."""
    from lwgpu.eval import recall_at_k
    from lwgpu.search.planner import plan_search

    out: dict[str, Any] = {}
    bank = market.bank(D)
    for name, sem in FILTERS.items():
        for mix in (False, True):
            times, paths = [], set()
            market.search(users[0], semantic=sem, k=10, mixture=mix)  # warm
            for u in users[:reps_users]:
                t = time.perf_counter()
                res = market.search(u, semantic=sem, k=10, mixture=mix)
                times.append(time.perf_counter() - t)
                paths.add(res.method)
            key = f"{name}_{'mix' if mix else 'single'}"
            out[f"{key}_p50_ms"] = 1e3 * float(np.percentile(times, 50))
            out[f"{key}_p99_ms"] = 1e3 * float(np.percentile(times, 99))
            out[f"{key}_path"] = "/".join(sorted(paths))
        got, want = [], []
        for u in users[:reps_users]:
            res = market.search(u, semantic=sem, k=10, mixture=False)
            q = dict(sem or {}, input_dim=D)
            admitted = market.store.filter_ids(q) if sem else None
            exact = plan_search(bank, u, k=10, allowed=admitted, index=None, backend=market.backend).neighbors
            got.append(np.pad(np.asarray(res.ids[:10]), (0, 10 - len(res.ids[:10])), constant_values=-1))
            want.append(exact.ids[0])
        out[f"{name}_recall10"] = recall_at_k(np.stack(got), np.stack(want), 10)
        out[f"{name}_admitted"] = int(len(bank) if sem is None else market.store.filter_ids(dict(sem, input_dim=D)).size)
    return out


REOPEN = r'''
import json, sys, time
t = time.perf_counter()
from lwgpu.market import Market
t_import = time.perf_counter() - t
t = time.perf_counter()
m = Market(sys.argv[1], device="cpu")
t_open = time.perf_counter() - t
with open("/proc/self/status") as fh:
    rss = [int(l.split()[1]) / 1024 for l in fh if l.startswith("VmRSS:")][0]
print(json.dumps({"reopen_s": t_open, "import_s": t_import, "reopen_rss_mb": rss, "n": len(m)}))
m.close()
'''


def reopen_in_fresh_process(root: Path) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", REOPEN, str(root)], capture_output=True, text=True,
                         env=dict(os.environ, WANDB_MODE="disabled"))
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def reference_side(budget_s: float, n_max: int = 3000) -> dict[str, Any]:
    """The reference market: its own packages (benchmarks.bench_market) added one by one for ``budget_s``
    seconds; its add rate and single-search p50 at the size it reached."""
    try:
        from benchmarks.bench_market import _reference_market, _reference_user, make_learnwares, make_users
    except ImportError as exc:  # the reference package is an optional extra
        return {"error": f"reference package unavailable: {exc}"}
    from lwgpu.spec.semantic import to_reference
    from benchmarks.bench_market import _semantic

    tmp = Path(tempfile.mkdtemp(prefix="lwref"))
    try:
        from benchmarks.common import pick_reference_threads, torch_threads

        paths, centers = make_learnwares(n_max, tmp / "pkgs")
        ref = _reference_market(tmp / "ref", "scale")
        n = 0

        def add_one() -> None:
            nonlocal n
            sem = to_reference(_semantic(n))
            sem["Model"] = {"Values": ["Others"], "Type": "Optional"}
            rid, _ = ref.add_learnware(str(paths[n]), sem)
            if rid is None:
                raise RuntimeError(f"the reference market refused package {n}")
            n += 1

        add_one()  # warm
        add_choice = pick_reference_threads(add_one)  # the reference on its faster thread setting
        with torch_threads(add_choice.threads):
            t0, n0 = time.perf_counter(), n
            while n < n_max and time.perf_counter() - t0 < budget_s:
                add_one()
            rate = (n - n0) / (time.perf_counter() - t0)
        users = [_reference_user(spec) for spec, _ in make_users(centers[:n], 11)]
        search = lambda info: ref.search_learnware(info, max_search_num=10, search_method="none")  # noqa: E731
        search_choice = pick_reference_threads(lambda: search(users[0]))
        times = []
        with torch_threads(search_choice.threads):
            for info in users[1:]:
                t = time.perf_counter()
                search(info)
                times.append(time.perf_counter() - t)
        return {"ref_N": n, "ref_add_per_s": round(rate, 1), "ref_search_p50_ms": round(1e3 * statistics.median(times), 1),
                "ref_threads": {"add": add_choice.describe(), "search": search_choice.describe()}}
    except Exception as exc:  # noqa: BLE001 - the side-by-side run must not lose lwgpu's numbers
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--quick", action="store_true", help="one 2,000-learnware checkpoint")
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--ref-budget", type=float, default=120.0, help="seconds of reference ingest")
    ap.add_argument("--root", default=None, help="market folder (default: a temporary one, deleted after)")
    ap.add_argument("--out", default=str(HERE / "results" / "market_scale.md"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    os.environ.setdefault("WANDB_MODE", "disabled")
    from lwgpu import RKME
    from lwgpu.data.clustered import synthetic_spec_arrays
    from lwgpu.market import Market

    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    batch = min(args.batch, sizes[0])
    arrays = synthetic_spec_arrays(max(sizes), 0, K=K, d=D, seed=0, gamma=GAMMA)
    models = make_models(max(1, max(sizes) // 1000))
    root = Path(args.root or tempfile.mkdtemp(prefix="lwscale", dir=os.environ.get("LWGPU_BENCH_DIR")))
    market = Market(root, device="cpu")
    rows, rates, n = [], [], len(market)  # --root of an earlier run: ingest resumes, searches are measured again
    if n:
        print(f"resuming the market at {root} with {n} learnwares", flush=True)
    try:
        for size in sizes:
            while n < size:
                m = min(batch, size - n)
                mods, sems, rkmes = learnwares(n, n + m, arrays, models)
                t = time.perf_counter()
                out = market.add_many(mods, sems, rkmes, batch=batch, progress=False)
                rates.append((n + m, m / (time.perf_counter() - t)))
                bad = [o for o in out if not isinstance(o, int)]
                if bad:
                    raise RuntimeError(f"add_many refused {len(bad)} learnwares, first: {bad[0]}")
                n += m
                print(f"N={n}: {rates[-1][1]:.0f} learnwares/s", flush=True)
            market.flush()
            recent = [r for at, r in rates if at <= n][-max(1, size // batch // 10):]
            row: dict[str, Any] = {"N": n, "ingest_per_s": statistics.median(recent) if recent else float("nan")}
            row["disk_kb_per_lw"] = du_bytes(root) / n / 1024
            bank = market.bank(D)
            row["bank_mb"] = bank.nbytes / 2**20
            row["index_mb"] = du_bytes(root / "indexes") / 2**20  # the saved FAISS index + embedder
            row["rss_mb"] = rss_mb()
            row.update(measure_search(market, users_of(arrays, n, args.users), args.users))
            market.close()
            row.update(reopen_in_fresh_process(root))
            market = Market(root, device="cpu")
            rows.append(row)
            print(json.dumps(row), flush=True)
        ref = reference_side(args.ref_budget) if args.ref_budget > 0 else {}
    finally:
        market.close()
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    write_markdown(rows, rates, ref, args)


def write_markdown(rows: list[dict], rates: list[tuple[int, float]], ref: dict, args: argparse.Namespace) -> None:
    import lwgpu
    import torch

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "## Market at scale (`Market.add_many`, semantic filter in the database, planned search)",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, lwgpu {lwgpu.__version__}",
        f"- learnwares: K={K}, d={D} specs, a scikit-learn model each; batches of {args.batch}; "
        f"{args.users} user queries; k=10; filters: {json.dumps(FILTERS)}",
        f"- command: `python -m benchmarks.bench_market_scale --sizes {args.sizes}`",
        "- recall@10: against an exact scan of the learnwares the filter admits; ingest: median rate of the "
        "last batches before the checkpoint",
        "",
        "| N | ingest/s | disk KB/lw | RSS MB | bank MB | index MB | reopen s | reopen RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['ingest_per_s']:.0f} | {r['disk_kb_per_lw']:.1f} | {r['rss_mb']:.0f} | "
                     f"{r['bank_mb']:.0f} | {r['index_mb']:.0f} | {r['reopen_s']:.2f} | {r['reopen_rss_mb']:.0f} |")
    lines += ["", "| N | filter | admitted | path | single p50 / p99 ms | mixture p50 / p99 ms | recall@10 |",
              "|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        for f in FILTERS:
            lines.append(f"| {r['N']:,} | {f} | {r[f + '_admitted']:,} | {r[f + '_single_path']} | "
                         f"{r[f + '_single_p50_ms']:.1f} / {r[f + '_single_p99_ms']:.1f} | "
                         f"{r[f + '_mix_p50_ms']:.1f} / {r[f + '_mix_p99_ms']:.1f} | {r[f + '_recall10']:.3f} |")
    if rates:
        first, last = rates[0][1], rates[-1][1]
        lines += ["", f"Ingest rate of the first batch {first:.0f}/s, of the last {last:.0f}/s "
                      f"(ratio {first / last:.2f})."]
    if ref:
        lines += ["", "Reference `learnware` 0.4 easy market side by side (its own packages from "
                      "benchmarks/bench_market.py, d=16, K=50, one `add_learnware` each, for "
                      f"{args.ref_budget:.0f} s; then single search, no filter, at the size reached): " + json.dumps(ref)]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
