"""RKME fit: lwgpu vs the reference ``learnware`` package, side by side on the same data.

For each (n, d) both fit K = 100 points with gamma = 0.1 to the same Gaussian-mixture data (lwgpu with
``torch.set_num_threads(2)``, the reference with its faster thread setting, probed on every row: 1 thread
or every core), every time is the median of 5 runs on both sides (3 at the largest n), lwgpu is also
timed with every row in the z-steps (``max_points=n``) beside the default subsample of 2,048 rows,
and every fit is scored by its exact residual
(squared MMD to the full empirical embedding of X, float64; the X-X term, O(n^2 d), is computed
once per dataset in tiles and shared by every method). A uniform random subsample of K points
(weights 1/K) is the floor a fit must beat.

Usage::

    python -m benchmarks.bench_fit            # n in {1,000, 10,000, 50,000} x d in {10, 100}
    python -m benchmarks.bench_fit --quick    # n in {1,000, 3,000}, d = 10: smoke run

Data: 10 Gaussian components whose covariance is rank 5 (unit variance along a random 5-dim
subspace) plus isotropic noise, means ~ N(0, 10/d I), noise std 0.3 sqrt(10/d): distances between
points, and so the kernel values, look alike at d = 10 and d = 100 (with isotropic unit-variance
components at d = 100 every point is kernel-orthogonal to every other at gamma = 0.1, and no K-point
summary can beat a random subsample).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common

K, GAMMA = 100, 0.1


def gaussian_mixture(n: int, d: int, seed: int, components: int = 10, rank: int = 5) -> np.ndarray:
    """(n, d) float64 rows from a mixture of low-rank-plus-noise Gaussians (see module docstring)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(components, d)) * np.sqrt(10.0 / d)
    bases = [np.linalg.qr(rng.normal(size=(d, min(rank, d))))[0] for _ in range(components)]
    lab = rng.integers(0, components, n)
    x = means[lab] + 0.3 * np.sqrt(10.0 / d) * rng.normal(size=(n, d))
    lat = rng.normal(size=(n, min(rank, d)))
    for k in range(components):
        sel = lab == k
        x[sel] += lat[sel] @ bases[k].T
    return x


def mean_gram(x: np.ndarray, gamma: float, tile: int = 4096) -> float:
    """1/n^2 sum_jl k(x_j, x_l), float64, in tiles over the upper triangle (symmetric)."""
    t = torch.from_numpy(x).double()
    n = t.shape[0]
    sq = (t * t).sum(1)
    total = 0.0
    for i in range(0, n, tile):
        a, a2 = t[i : i + tile], sq[i : i + tile]
        for j in range(i, n, tile):
            b, b2 = t[j : j + tile], sq[j : j + tile]
            d2 = (a2[:, None] + b2[None, :] - 2.0 * a @ b.T).clamp_min_(0.0)
            s = float(torch.exp(d2.mul_(-gamma)).sum())
            total += s if i == j else 2.0 * s
    return total / (n * n)


def residual(z: np.ndarray, beta: np.ndarray, x: np.ndarray, xx: float, gamma: float) -> float:
    """Exact MMD^2 between (z, beta) and the empirical embedding of x, given xx = mean_gram(x)."""
    zt, bt, xt = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (z, beta, x))

    def gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min_(0.0)
        return torch.exp(-gamma * d2)

    zx = sum(float((bt @ gram(zt, xt[i : i + 16384])).sum()) for i in range(0, len(x), 16384)) / len(x)
    return float(bt @ gram(zt, zt) @ bt) - 2.0 * zx + xx


def fit_lwgpu(x: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
    from lwgpu.spec.rkme import RKME

    spec = RKME.fit(x, K=K, gamma=GAMMA, device="cpu", seed=0, **kw)
    return spec.numpy()


def fit_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from learnware.specification import RKMETableSpecification

    spec = RKMETableSpecification(gamma=GAMMA, cuda_idx=-1)
    spec.generate_stat_spec_from_data(x, K=K)
    return spec.get_z(), spec.get_beta()


def timed(fn, x: np.ndarray, repeats: int, first: tuple[float, float] | None = None, **kw):
    """((median wall time, median process CPU time) over ``repeats`` runs, last result); input copied untimed.

    ``first``: (wall, CPU) of a run already made with the same setting (the thread probe), counted as
    one of the repeats.
    """
    walls, cpus, out = [], [], None
    if first is not None:
        walls.append(first[0])
        cpus.append(first[1])
    while len(walls) < repeats or out is None:
        xc = x.copy()
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn(xc, **kw)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return (float(np.median(walls)), float(np.median(cpus))), out


def reference_timed(x: np.ndarray, repeats: int) -> tuple[tuple[float, float], tuple, common.ThreadChoice]:
    """The reference's fit, timed at its faster thread setting (probed here: 1 thread vs every core).

    The probe run of the winning setting counts as one of the ``repeats``.
    """
    cpu_at: dict[int, float] = {}

    def probe_fit() -> None:
        c0 = time.process_time()
        fit_reference(x.copy())
        cpu_at[torch.get_num_threads()] = time.process_time() - c0

    choice = common.pick_reference_threads(probe_fit)
    with common.torch_threads(choice.threads):
        first = (choice.probe_s[choice.threads], cpu_at[choice.threads])
        t, out = timed(fit_reference, x, repeats, first=first)
    return t, out, choice


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    sizes = [1000, 3000] if args.quick else [1000, 10_000, 50_000]
    dims = [10] if args.quick else [10, 100]
    # warm-up outside the timings: numba JIT (cached on disk after the first run) and torch kernels
    warm = gaussian_mixture(500, 10, 99)
    fit_lwgpu(warm)
    fit_lwgpu(warm, engine="torch")
    fit_lwgpu(warm, max_points=len(warm))
    for threads in sorted({1, common.all_cores()}):
        with common.torch_threads(threads):
            fit_reference(warm.copy())
    rows = []
    for n in sizes:
        for d in dims:
            x = gaussian_mixture(n, d, seed=args.seed + n + d)
            reps = common.repeats_at(n, max(sizes), args.repeats)  # the same count on both sides
            (t_ref, c_ref), (z_ref, b_ref), choice = reference_timed(x, reps)
            (t_lw, c_lw), (z_lw, b_lw) = timed(fit_lwgpu, x, reps)
            (t_all, c_all), (z_all, b_all) = timed(fit_lwgpu, x, reps, max_points=n)  # every row in the z-steps
            (t_lw10, c_lw10), (z_10, b_10) = timed(fit_lwgpu, x, reps, steps=10)
            (t_lw30, _), (z_30, b_30) = timed(fit_lwgpu, x, reps, steps=30)
            (t_torch, _), (z_t, b_t) = timed(fit_lwgpu, x, reps, engine="torch")
            rng = np.random.default_rng(args.seed)
            t0 = time.perf_counter()
            xx = mean_gram(x, GAMMA)
            t_xx = time.perf_counter() - t0
            res = {
                "ref": residual(z_ref, b_ref, x, xx, GAMMA),
                "lwgpu": residual(z_lw, b_lw, x, xx, GAMMA),
                "lwgpu_all": residual(z_all, b_all, x, xx, GAMMA),
                "lwgpu10": residual(z_10, b_10, x, xx, GAMMA),
                "lwgpu30": residual(z_30, b_30, x, xx, GAMMA),
                "torch": residual(z_t, b_t, x, xx, GAMMA),
                "random": float(np.mean([
                    residual(x[rng.choice(n, K, replace=False)], np.full(K, 1.0 / K), x, xx, GAMMA) for _ in range(5)
                ])),
            }
            row = dict(n=n, d=d, reps=reps, t_ref=t_ref, c_ref=c_ref, ref_threads=choice.threads,
                       ref_probe=choice.probe_s, c_lw=c_lw, t_lw10=t_lw10, c_lw10=c_lw10, t_all=t_all, c_all=c_all,
                       t_torch=t_torch, load=os.getloadavg()[0], t_lw=t_lw, t_lw30=t_lw30, t_xx=t_xx,
                       **{f"r_{k}": v for k, v in res.items()})
            rows.append(row)
            logging.info("n=%d d=%d ref %.3fs (%s) lwgpu %.3fs (%.1fx), every row %.3fs | residual ref %.3e "
                         "lwgpu %.3e every row %.3e rand %.3e", n, d, t_ref, choice.describe(), t_lw, t_ref / t_lw,
                         t_all, res["ref"], res["lwgpu"], res["lwgpu_all"], res["random"])
    return rows


MANY_CASES = [(500, 50, 300, 8, 16), (200, 200, 1000, 10, 50), (100, 500, 3000, 30, 100)]


def run_many(args: argparse.Namespace) -> list[dict]:
    """``RKME.fit_many`` throughput, a market's workload: the numba engine (one dataset after another)
    against the torch engine (padded batches) on the same CPU and data."""
    from lwgpu.spec.rkme import RKME

    rows = []
    rng = np.random.default_rng(args.seed)
    for count, lo, hi, d, k in MANY_CASES:
        data = [gaussian_mixture(int(rng.integers(lo, hi)), d, seed=i) for i in range(count)]
        row = dict(count=count, lo=lo, hi=hi, d=d, K=k)
        for engine in ("numba", "torch"):
            RKME.fit_many(data[:3], K=k, gamma=GAMMA, device="cpu", engine=engine, progress=False)  # warm-up
            row[engine], _, _ = common.median_time(
                lambda: RKME.fit_many(data, K=k, gamma=GAMMA, device="cpu", engine=engine, progress=False),
                common.REPEATS)
        logging.info("fit_many %d datasets (n %d-%d, d=%d, K=%d): numba %.2fs torch %.2fs", count, lo, hi, d, k,
                     row["numba"], row["torch"])
        rows.append(row)
    return rows


def write_report(rows: list[dict], args: argparse.Namespace, out: Path, many: list[dict] | None = None) -> None:
    cmd = common.command("bench_fit", args.argv)
    lines = common.run_header("RKME fit: lwgpu vs the reference package", cmd, [
        f"- lwgpu runs with `torch.set_num_threads({args.threads})` (its fused numba engine uses one thread); the "
        "reference runs with its faster torch thread setting, probed on every row (one fit on 1 thread, one on every "
        "core; the column says which won and both probe times; the winner's probe run counts as one repeat).",
        "- K = 100, gamma = 0.1, Gaussian-mixture data (10 rank-5 components plus noise, see "
        "`benchmarks/bench_fit.py`). lwgpu: `RKME.fit(X, K=100, device='cpu')` (float32, the defaults: the fused "
        "numba engine, 3 rounds, z-steps on a uniform subsample of `max_points=2048` rows). Reference: "
        "`RKMETableSpecification(gamma=0.1, cuda_idx=-1).generate_stat_spec_from_data(X, K=100)` (k-means + 3 steps, "
        "float64).",
        f"- Times: median of {max(args.repeats, common.REPEATS)} runs on both sides ({common.REPEATS_LARGEST} at the "
        f"largest n, {max(r['n'] for r in rows):,}), after warm-up fits "
        "(numba JIT, torch). CPU = median process CPU seconds (user + system), which time-slicing by other jobs does "
        "not inflate.",
        "- Residual = exact float64 MMD^2 to the full empirical embedding of X (X-X term over all n^2 pairs, no "
        "subsampling); random = mean over 5 uniform subsamples of K points with weights 1/K. Lower is better. "
        "Target: speedup >= 10x with residual/ref <= 1.",
    ])
    lines += [
        "| n | d | load | ref threads (probe s: 1 thr / all) | ref time (s) | lwgpu time (s) | speedup | CPU ref (s) | "
        "CPU lwgpu (s) | CPU speedup | residual ref | residual lwgpu | residual random | lwgpu/ref | lwgpu/random | "
        "target |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        met = r["t_ref"] / r["t_lw"] >= 10 and r["r_lwgpu"] <= r["r_ref"]
        probe = " / ".join(f"{v:.3f}" for _, v in sorted(r["ref_probe"].items()))
        lines.append(
            f"| {r['n']:,} | {r['d']} | {r['load']:.1f} | {r['ref_threads']} ({probe}) | {r['t_ref']:.3f} | "
            f"{r['t_lw']:.4f} | {r['t_ref'] / r['t_lw']:.1f}x | {r['c_ref']:.3f} | {r['c_lw']:.4f} | "
            f"{r['c_ref'] / r['c_lw']:.1f}x | {r['r_ref']:.4e} | {r['r_lwgpu']:.4e} | {r['r_random']:.4e} | "
            f"{r['r_lwgpu'] / r['r_ref']:.3f} | {r['r_lwgpu'] / r['r_random']:.3f} | {'met' if met else 'MISSED'} |"
        )
    lines += [
        "",
        "What the z-step subsample buys: the default `max_points=2048` against every row in the z-steps "
        "(`max_points=n`; the final weights use every row either way), same data and seed:",
        "",
        "| n | d | max_points=2048 time (s) | speedup vs ref | residual/ref | every row time (s) | speedup vs ref | "
        "residual/ref | time every row / 2048 | residual every row / 2048 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['d']} | {r['t_lw']:.4f} | {r['t_ref'] / r['t_lw']:.1f}x | {r['r_lwgpu'] / r['r_ref']:.3f} | "
            f"{r['t_all']:.4f} | {r['t_ref'] / r['t_all']:.1f}x | {r['r_lwgpu_all'] / r['r_ref']:.3f} | "
            f"{r['t_all'] / r['t_lw']:.2f} | {r['r_lwgpu_all'] / r['r_lwgpu']:.3f} |")
    lines += [
        "",
        "More rounds, and the torch engine (padded batches, the GPU path) on the same CPU, same defaults:",
        "",
        "| n | d | steps=10 time (s) | speedup | residual/ref | steps=30 time (s) | speedup | residual/ref | "
        "torch engine time (s) | speedup | residual/ref |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r[t]:.4f} | {r['t_ref'] / r[t]:.1f}x | {r[res] / r['r_ref']:.3f}"
                 for t, res in [("t_lw10", "r_lwgpu10"), ("t_lw30", "r_lwgpu30"), ("t_torch", "r_torch")]]
        lines.append(f"| {r['n']:,} | {r['d']} | " + " | ".join(cells) + " |")
    if many:
        lines += [
            "",
            "`RKME.fit_many` throughput (a market's workload, default settings, same CPU; median of "
            f"{common.REPEATS} runs): the numba engine (the CPU default, one dataset after another) against the "
            "torch engine (padded batches):",
            "",
            "| datasets | n | d | K | numba (s) | ms / spec | torch batches (s) | ms / spec | numba speedup |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in many:
            lines.append(
                f"| {r['count']} | {r['lo']:,}-{r['hi']:,} | {r['d']} | {r['K']} | {r['numba']:.2f} | "
                f"{1e3 * r['numba'] / r['count']:.1f} | {r['torch']:.2f} | {1e3 * r['torch'] / r['count']:.1f} | "
                f"{r['torch'] / r['numba']:.1f}x |"
            )
    common.write_text(out, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n in {1,000, 3,000}, d = 10: smoke run")
    p.add_argument("--threads", type=int, default=2, help="lwgpu's torch threads")
    p.add_argument("--repeats", type=int, default=common.REPEATS, help="timed runs per side (3 at the largest n)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/fit.md")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    rows = run(args)
    many = run_many(args) if not args.quick else []
    out = args.out or common.default_out("fit", args.quick)
    write_report(rows, args, out, many)
    print(out.read_text())


if __name__ == "__main__":
    main()
