"""Exact MMD search throughput: lwgpu backends vs the reference package's loop of ``dist`` calls.

For N in {1,000, 10,000, 100,000} bank specs, K = 100 points, d in {16, 64}: queries/s of
``lwgpu.search_exact`` (one query of K = 100 points, top-10) per backend, against the reference
package (``learnware.specification.RKMETableSpecification.dist`` over the same specs, float64, CPU),
measured where it finishes in about a minute and extrapolated with its per-spec cost beyond that.
A microbenchmark measures this CPU's float32 multiply-add rate (2048^3 GEMM) and float32 exp rate
(torch's vectorised exp, and the numba kernel's own exp), giving the bound for the work:
N * Kq * K * (d / fma_rate + 1 / exp_rate). Peak memory of a search (in a fresh process holding
the bank in RAM: RSS high-water mark, reset just before the search) is compared with the bank's size.

Usage::

    python -m benchmarks.bench_exact_search            # the full grid (~10 min on 2 cores)
    python -m benchmarks.bench_exact_search --quick    # N = 1,000 and 10,000, d = 16 only
    python -m benchmarks.bench_exact_search --gpu      # N = 1,000,000 on a CUDA GPU (cupy + torch)

lwgpu runs torch and numba on 2 threads (``--threads``); the reference on its faster torch setting (1 thread
or every core), probed in the same run. Timings are medians of 5 runs on both sides (3 at the largest N).
"""
from __future__ import annotations

import argparse
import gc
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common

GAMMA = 0.1
K = 100
TOPK = 10
log = logging.getLogger("bench_exact_search")


def best_time(fn, repeats: int, budget_s: float = 20.0) -> float:
    """Minimum wall time of ``fn()`` over up to ``repeats`` runs (fewer when a run is slow)."""
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best


# ---------------------------------------------------------------------------------------- the bound
def cpu_rates() -> dict[str, float]:
    """float32 FMA/s (GEMM) and exp/s (torch, numba kernel's exp) on this CPU with the set threads."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    fma = 2048**3 / best_time(lambda: a @ b, 5)
    x = torch.rand(1 << 24).mul_(-20.0)
    y = torch.empty_like(x)
    exp_torch = x.numel() / best_time(lambda: torch.exp(x, out=y), 5)
    rates = {"fma_per_s": fma, "exp_torch_per_s": exp_torch}
    try:
        from numba import njit, prange

        from lwgpu.kernels.numba_mmd import _exp_axpy

        @njit(parallel=True, fastmath=True)
        def exp_loop(reps: int, p: int) -> float:  # the kernel's exp + weighted add, in L1
            tot = 0.0
            for r in prange(reps):
                acc = np.empty(p, np.float32)
                for j in range(p):
                    acc[j] = -np.float32(j % 97) * np.float32(0.3)
                e = np.zeros(p, np.float32)
                pb = np.empty(p, np.float32)
                ib = np.empty(p, np.int32)
                fb = ib.view(np.float32)
                for _ in range(100):
                    _exp_axpy(acc, np.float32(0.01), e, pb, ib, fb, p)
                tot += e.sum()
            return tot

        exp_loop(2, 304)
        reps = 2000
        rates["exp_numba_per_s"] = reps * 100 * 304 / best_time(lambda: exp_loop(reps, 304), 5)
    except ImportError:
        pass
    rates["exp_per_s"] = max(v for k, v in rates.items() if k.startswith("exp_"))
    return rates


def bound_s(n: int, kq: int, k: int, d: int, rates: dict[str, float]) -> float:
    """Seconds for N*Kq*K kernel values at the measured rates: d multiply-adds + one exp each."""
    return n * kq * k * (d / rates["fma_per_s"] + 1.0 / rates["exp_per_s"])


# ---------------------------------------------------------------------------------------- workloads
def make_bank(n: int, d: int, seed: int):
    from lwgpu.bank import SpecBank

    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, K, d), dtype=np.float32)
    z += rng.standard_normal((n, 1, d), dtype=np.float32) * 2.0  # specs at different places
    beta = rng.random((n, K), dtype=np.float32) + 0.05
    beta /= beta.sum(1, keepdims=True)
    return SpecBank.from_arrays(z, beta, GAMMA)


def make_query(d: int, seed: int):
    from lwgpu.spec.rkme import RKME

    rng = np.random.default_rng(seed + 1)
    return RKME(rng.standard_normal((K, d)), np.full(K, 1.0 / K), GAMMA)


def reference_specs(bank, query, n_max: int) -> tuple:
    """The reference's query and its specs for the first ``n_max`` bank rows (float64 torch tensors)."""
    from learnware.specification import RKMETableSpecification

    def ref_spec(z: np.ndarray, beta: np.ndarray) -> RKMETableSpecification:
        s = RKMETableSpecification(gamma=GAMMA, cuda_idx=-1)
        s.z = torch.as_tensor(z, dtype=torch.float64)
        s.beta = torch.as_tensor(beta, dtype=torch.float64)
        return s

    q = ref_spec(query.z.numpy(), query.beta.numpy())
    zs, bs = bank.z.numpy(), bank.beta.numpy()
    return q, [ref_spec(zs[i], bs[i]) for i in range(min(n_max, len(bank)))]


def reference_pass(q, specs, budget_s: float) -> tuple[float, int]:
    """One pass of the reference loop ``q.dist(spec)``: (seconds per spec, specs done within ``budget_s``)."""
    t, done = time.perf_counter(), 0
    for s in specs:
        q.dist(s)
        done += 1
        if time.perf_counter() - t > budget_s:
            break
    return (time.perf_counter() - t) / done, done


def reference_per_spec(q, specs, repeats: int, budget_s: float) -> tuple[float, int]:
    """Median seconds per spec over ``repeats`` passes (each within ``budget_s / repeats``); fewest specs done."""
    runs = [reference_pass(q, specs, budget_s / repeats) for _ in range(repeats)]
    return float(np.median([r[0] for r in runs])), min(r[1] for r in runs)


_MEM_CHILD = r"""
import sys, json, pathlib, numpy as np, psutil, torch
torch.set_num_threads(int(sys.argv[3]))
import numba; numba.set_num_threads(int(sys.argv[3]))
from lwgpu.bank import SpecBank
from lwgpu.search import search_exact
from lwgpu.spec.rkme import RKME
bank = SpecBank.load(sys.argv[1], mmap=False)  # the bank in RAM, as a market holds it
rng = np.random.default_rng(0)
q = RKME(rng.standard_normal((bank.K, bank.d)), np.full(bank.K, 1.0 / bank.K), bank.gamma)
search_exact(bank.rows(0, 8), q, k=5, backend=sys.argv[2], device="cpu")  # load compiled code first
pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
before = psutil.Process().memory_info().rss
search_exact(bank, q, k=10, backend=sys.argv[2], device="cpu")
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"before": before, "peak": hwm, "bank": bank.nbytes}))
"""


def search_peak_memory(bank, backend: str, threads: int) -> float:
    """(bank bytes + RSS growth of one search) / bank bytes, measured in a fresh process.

    A fresh process matters: in this one, memory freed by earlier runs is reused and hides growth.
    """
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bank.save(tmp)
        res = subprocess.run([sys.executable, "-c", _MEM_CHILD, tmp, backend, str(threads)],
                             capture_output=True, text=True, check=False)
    if res.returncode != 0:
        log.warning("memory probe failed: %s", res.stderr[-500:])
        return float("nan")
    m = json.loads(res.stdout.strip().splitlines()[-1])
    return (m["bank"] + max(0, m["peak"] - m["before"])) / m["bank"]


def run_cpu(args: argparse.Namespace) -> list[dict]:
    from lwgpu.search import search_exact

    rows = []
    sizes = [1000, 10_000] if args.quick else [1000, 10_000, 100_000]
    dims = [16] if args.quick else [16, 64]
    backends = ["numba", "torch"]
    for d in dims:
        query = make_query(d, args.seed)
        choice, per_spec, ref_n = None, None, 0
        for n in sizes:
            reps = common.repeats_at(n, max(sizes))  # the same count on both sides
            t0 = time.perf_counter()
            bank = make_bank(n, d, args.seed)
            build_s = time.perf_counter() - t0
            if per_spec is None or per_spec * n <= args.ref_budget:  # measure the reference at this N
                # specs one pass can reach within its share of the budget (all n when the cost is not known yet)
                reach = n if per_spec is None else min(n, int(2 * args.ref_budget / reps / per_spec) + 100)
                q_ref, specs = reference_specs(bank, query, reach)
                for s in specs[:5]:
                    q_ref.dist(s)  # warm-up
                if choice is None:  # first size: the reference's faster thread setting, measured now
                    probe = specs[: min(len(specs), 500)]
                    # seconds per spec over up to 500 specs (at most 5 s: 2 threads can stall 40x on a busy CPU)
                    choice = common.pick_reference_threads(lambda: reference_pass(q_ref, probe, 5.0)[0])
                with common.torch_threads(choice.threads):
                    per_spec, ref_n = reference_per_spec(q_ref, specs, reps, args.ref_budget)
                del specs
            ref_s = per_spec * n
            row = {"N": n, "d": d, "K": K, "Kq": K, "build_s": build_s, "bank_MB": bank.nbytes / 2**20, "reps": reps,
                   "ref_s": ref_s, "ref_per_spec_ms": per_spec * 1e3, "ref_threads": choice.threads,
                   "ref_probe_ms": {k: 1e3 * v for k, v in choice.probe_s.items()}, "ref_measured_at": ref_n,
                   "ref_extrapolated": ref_n < n, "bound_s": bound_s(n, K, K, d, args.rates)}
            for be in backends:
                if be == "torch" and n > args.torch_max_n:
                    continue
                search_exact(bank, query, k=TOPK, backend=be, device="cpu")  # warm-up / JIT
                t, _, _ = common.median_time(lambda: search_exact(bank, query, k=TOPK, backend=be, device="cpu"), reps)
                row[f"{be}_s"] = t
                row[f"{be}_qps"] = 1.0 / t
                row[f"{be}_x_ref"] = ref_s / t
                row[f"{be}_x_bound"] = t / row["bound_s"]
                if be == "numba" and n <= 10_000:
                    qs = [make_query(d, args.seed + 7 + i) for i in range(8)]
                    tb, _, _ = common.median_time(lambda: search_exact(bank, qs, k=TOPK, backend=be, device="cpu"), reps)
                    row["numba_batch8_qps"] = 8 / tb
                gc.collect()
                if n >= 10_000:
                    row[f"{be}_peak_over_bank"] = search_peak_memory(bank, be, args.threads)
            log.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
            rows.append(row)
            del bank
            gc.collect()
    rows += run_pruned(args)
    return rows


def make_clustered(n: int, d: int, seed: int, per_cluster: int = 100, jitter: float = 0.1):
    """A market of tasks: each spec is a jittered copy (points + jitter * N(0, 1)) of its task's points.

    Many near-duplicate learnwares per task is where metric (pivot) bounds bite; with independent,
    spread specs the squared MMDs concentrate and the bounds prune nothing (search then falls back).
    """
    from lwgpu.bank import SpecBank

    rng = np.random.default_rng(seed)
    n_cl = max(1, n // per_cluster)
    base = rng.standard_normal((n_cl, K, d), dtype=np.float32)
    base += rng.standard_normal((n_cl, 1, d), dtype=np.float32) * 2.0
    which = rng.integers(n_cl, size=n)
    z = base[which] + jitter * rng.standard_normal((n, K, d), dtype=np.float32)
    beta = np.full((n, K), 1.0 / K, np.float32)
    return SpecBank.from_arrays(z, beta, GAMMA)


def run_pruned(args: argparse.Namespace) -> list[dict]:
    """Exact pruning with pivots (numba) vs the full numba scan, on a clustered market, d = 16."""
    from lwgpu.search import Pivots, search_exact
    from lwgpu.spec.rkme import RKME

    rows = []
    for n in ([10_000] if args.quick else [10_000, 100_000]):
        bank = make_clustered(n, 16, args.seed, per_cluster=n // 10)
        rng = np.random.default_rng(args.seed + 3)
        qs = []
        for i in rng.integers(n, size=8):  # users whose data resembles some market task
            s = bank.get(int(bank.ids[i]))
            qs.append(RKME(s.z.numpy() + 0.1 * rng.standard_normal(s.z.shape), s.beta.numpy(), GAMMA))
        t = time.perf_counter()
        piv = Pivots(bank, m=16, backend="numba", device="cpu")
        build = time.perf_counter() - t
        search_exact(bank, qs[:1], k=TOPK, backend="numba", device="cpu")
        reps = common.repeats_at(n, 10_000 if args.quick else 100_000)
        full = common.median_time(lambda: search_exact(bank, qs, k=TOPK, backend="numba", device="cpu"),
                                  reps)[0] / len(qs)
        pruned = common.median_time(lambda: search_exact(bank, qs, k=TOPK, backend="numba", device="cpu",
                                                         pivots=piv), reps)[0] / len(qs)
        a = search_exact(bank, qs, k=TOPK, backend="numba", device="cpu")
        b = search_exact(bank, qs, k=TOPK, backend="numba", device="cpu", pivots=piv)
        row = {"pruned": True, "N": n, "d": 16, "pivots": 16, "build_s": build, "full_s": full,
               "pruned_s": pruned, "visited": piv.last_visited, "speedup": full / pruned,
               "same_ids": bool(np.array_equal(a.ids, b.ids)), "bound_s": bound_s(n, K, K, 16, args.rates)}
        log.info("%s", row)
        rows.append(row)
        del bank
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------------- GPU mode
_GPU_RATE_SRC = r"""
extern "C" __global__ void ex2_rate(float* out, int iters) {
    float x = -1e-3f * (threadIdx.x + 1), s = 0.f;
    for (int i = 0; i < iters; ++i) {
        float y; asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); s += y; x -= 1e-7f;
        asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); s += y; x -= 1e-7f;
        asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); s += y; x -= 1e-7f;
        asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); s += y; x -= 1e-7f;
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""


def run_gpu(args: argparse.Namespace) -> list[dict]:
    """N = 1,000,000 on the GPU: time per query vs max(bank read at the measured bandwidth, exp time)."""
    import cupy

    from lwgpu.bank import SpecBank
    from lwgpu.search import search_exact

    dev = torch.device("cuda")
    n = args.gpu_n
    rows = []
    for d in (16, 64):
        g = torch.Generator(device=dev).manual_seed(args.seed)
        z = torch.randn(n, K, d, device=dev, generator=g)
        beta = torch.full((n, K), 1.0 / K, device=dev)
        bank = SpecBank.from_arrays(z, beta, GAMMA, device=dev)
        del z, beta
        query = make_query(d, args.seed)

        def timed(fn, reps=5) -> float:
            fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(reps):
                torch.cuda.synchronize()
                t = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            return float(np.median(times))

        read_s = timed(lambda: bank.z.sum())  # one pass over the bank's points
        bw = bank.z.numel() * 4 / read_s
        sm = torch.cuda.get_device_properties(dev).multi_processor_count
        mod = cupy.RawModule(code=_GPU_RATE_SRC)
        f = mod.get_function("ex2_rate")
        buf = cupy.empty(sm * 8 * 256, cupy.float32)
        iters = 4096
        ex_s = timed(lambda: f((sm * 8,), (256,), (buf, np.int32(iters))))
        exp_rate = sm * 8 * 256 * iters * 4 / ex_s
        exp_s = n * K * K / exp_rate
        row = {"N": n, "d": d, "bank_GB": bank.nbytes / 1e9, "read_s": read_s, "bandwidth_GBps": bw / 1e9,
               "exp_per_s": exp_rate, "exp_s": exp_s, "bound_s": max(read_s, exp_s),
               "device": torch.cuda.get_device_name(dev)}
        for be, opts in (("cuda", {"accumulate": "float32"}), ("cuda", {"accumulate": "float64"}), ("torch", {})):
            name = be + ("_" + opts["accumulate"] if opts else "")
            t = timed(lambda: search_exact(bank, query, k=TOPK, backend=be, device=dev, chunk=1 << 20, **opts), 5)
            row[f"{name}_s"] = t
            row[f"{name}_x_bound"] = t / row["bound_s"]
        log.info("%s", row)
        rows.append(row)
        del bank
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------- report
def write_report(rows: list[dict], args: argparse.Namespace, out: Path) -> None:
    import numba

    import lwgpu

    r = args.rates
    lines = [
        "## Exact search throughput (lwgpu.search_exact vs the reference package's dist loop)",
        "",
        common.machine_line(),
        f"- Threads: lwgpu with {torch.get_num_threads()} torch and {numba.get_num_threads()} numba threads; the "
        "reference with its faster torch setting, probed in this run (a pass over up to 500 specs, at most 5 s, on 1 thread and on every "
        "core; the column names the winner and both probe costs per spec).",
        f"- Command: `{common.command('bench_exact_search', args.argv)}`",
        f"- Work: one query (Kq = {K} points) against N bank specs (K = {K}), top-{TOPK}, gamma = {GAMMA}, "
        "float32 bank, float64 self terms and results",
        f"- Timings: median of {common.REPEATS} runs on both sides ({common.REPEATS_LARGEST} at the largest N); the "
        "reference's cost per spec is the median over as many passes of its loop, each pass over the specs it "
        "finishes in its share of the budget, extrapolated as N x per-spec cost beyond that (marked *)",
        f"- This CPU (microbenchmark, fastest of 5): {r['fma_per_s']:.3g} float32 multiply-adds/s (2048^3 GEMM), "
        f"{r['exp_torch_per_s']:.3g} exp/s (torch.exp, float32)"
        + (f", {r['exp_numba_per_s']:.3g} exp/s (the numba kernel's exp)" if "exp_numba_per_s" in r else ""),
        "- Bound = N * Kq * K * (d / FMA rate + 1 / fastest exp rate); `x bound` = time / bound "
        "(1.0 = at the bound, target <= 2)",
        "",
    ]
    cpu_rows = [x for x in rows if "numba_s" in x or "torch_s" in x]
    pruned_rows = [x for x in rows if x.get("pruned")]
    if cpu_rows:
        lines += ["| d | N | ref s | ref threads (probe ms/spec: 1 thr / all) | ref ms/spec | numba s | numba q/s | numba x ref | numba x bound | "
                  "numba q/s (batch of 8) | torch s | torch x ref | torch x bound | bound s | "
                  "peak mem / bank (numba, torch; fresh process) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in cpu_rows:
            star = "*" if x["ref_extrapolated"] else ""
            tor = (f"{x['torch_s']:.3f} | {x['torch_x_ref']:.1f} | {x['torch_x_bound']:.2f}"
                   if "torch_s" in x else "- | - | -")
            probe = " / ".join(f"{v:.3f}" for _, v in sorted(x["ref_probe_ms"].items()))
            lines.append(
                f"| {x['d']} | {x['N']:,} | {x['ref_s']:.2f}{star} | {x['ref_threads']} ({probe}) | "
                f"{x['ref_per_spec_ms']:.3f} | "
                f"{x['numba_s']:.4f} | {x['numba_qps']:.2f} | {x['numba_x_ref']:.1f} | {x['numba_x_bound']:.2f} | "
                f"{x.get('numba_batch8_qps', float('nan')):.2f} | {tor} | {x['bound_s']:.4f} | "
                f"{x.get('numba_peak_over_bank', float('nan')):.2f}, {x.get('torch_peak_over_bank', float('nan')):.2f} |"
            )
    if pruned_rows:
        lines += ["", "Exact pruning (`Pivots(bank, m=16)`, numba) on a market of 10 tasks (N/10 specs each), each spec a jittered copy "
                  "(sigma 0.1) of its task's points; "
                  "d = 16, 8 queries near market specs, s per query:", "",
                  "| N | pivots build s | full scan s | pruned s | speedup | fraction visited | same top-10 | "
                  "full-scan bound s |", "|---|---|---|---|---|---|---|---|"]
        for x in pruned_rows:
            lines.append(f"| {x['N']:,} | {x['build_s']:.2f} | {x['full_s']:.4f} | {x['pruned_s']:.4f} | "
                         f"{x['speedup']:.1f} | {x['visited']:.3f} | {x['same_ids']} | {x['bound_s']:.4f} |")
    gpu_rows = [x for x in rows if "read_s" in x]
    if gpu_rows:
        lines += ["", f"GPU ({gpu_rows[0]['device']}): N = {gpu_rows[0]['N']:,}", "",
                  "| d | bank GB | read s (GB/s) | exp s | bound s | cuda f32 s (x bound) | cuda f64 s (x bound) | "
                  "torch s (x bound) |", "|---|---|---|---|---|---|---|---|"]
        for x in gpu_rows:
            lines.append(
                f"| {x['d']} | {x['bank_GB']:.2f} | {x['read_s']:.4f} ({x['bandwidth_GBps']:.0f}) | {x['exp_s']:.4f} | "
                f"{x['bound_s']:.4f} | {x['cuda_float32_s']:.4f} ({x['cuda_float32_x_bound']:.2f}) | "
                f"{x['cuda_float64_s']:.4f} ({x['cuda_float64_x_bound']:.2f}) | {x['torch_s']:.4f} "
                f"({x['torch_x_bound']:.2f}) |")
    common.write_text(out, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 1,000 and 10,000 at d = 16 only")
    p.add_argument("--gpu", action="store_true", help="N = 1,000,000 on a CUDA GPU instead of the CPU grid")
    p.add_argument("--gpu-n", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ref-budget", type=float, default=60.0, help="seconds the reference loop may run per size")
    p.add_argument("--torch-max-n", type=int, default=10_000, help="largest N timed on the torch CPU backend")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    try:
        import numba

        numba.set_num_threads(args.threads)
    except ImportError:
        pass
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA GPU")
        args.rates = {}
        rows = run_gpu(args)
        args.rates = cpu_rates()
        out = args.out or common.default_out("exact_search_gpu")
    else:
        args.rates = cpu_rates()
        log.info("rates %s", args.rates)
        if args.quick:
            args.ref_budget = min(args.ref_budget, 15.0)
        rows = run_cpu(args)
        out = args.out or common.default_out("exact_search", args.quick)
    write_report(rows, args, out)
    print(out.read_text())


if __name__ == "__main__":
    main()
