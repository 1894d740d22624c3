"""Streaming RKME fit (``RKME.fit_stream``): throughput and peak memory on a dataset on disk, and
residual against the in-memory ``RKME.fit`` at the same K.

1. Throughput / memory: ``--rows`` float32 rows of d = 16 (a 20-component Gaussian mixture) are written
   in chunks to a ``.npy`` file (``np.lib.format.open_memmap``; pages released as they are written),
   then fitted by ``RKME.fit_stream(path)`` (K = 100, gamma = 0.1, one pass) in a fresh subprocess
   that reports its peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), its resident set
   after importing lwgpu (the floor), wall seconds and rows/s. The file is deleted afterwards.
2. Quality: at n in ``--quality-n`` the same data in memory is fitted by ``RKME.fit`` (default
   options) and by ``RKME.fit_stream`` (one pass and two passes); both are scored by their residual
   (squared MMD to the empirical embedding of all n rows, float64). The spec terms (``<S,S>`` and
   ``<S, mean_x>``) are exact over all n rows; the data's self term ``1/n^2 sum k(x_j, x_l)`` is O(n^2)
   and is estimated once per n from a uniform sample of ``--xx-sample`` rows (shared by every method,
   so differences between methods are exact; its standard error is in the table).

Usage::

    python -m benchmarks.bench_stream_fit                      # 10M rows on disk, quality at 100k and 1M
    python -m benchmarks.bench_stream_fit --rows 100000000     # the 6.4 GB case (check `df -h` first)
    python -m benchmarks.bench_stream_fit --quick              # 1M rows, quality at 20k
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common

K, GAMMA, D = 100, 0.1, 16
log = logging.getLogger("benchmarks.stream_fit")

_CHILD = r"""
import json, resource, sys, time
import lwgpu.spec.rkme as r
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, K, gamma, chunk = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
spec = r.RKME.fit_stream(path, K=K, gamma=gamma, chunk_rows=chunk)
dt = time.perf_counter() - t0
print(json.dumps({"rows": spec.num_points, "seconds": dt, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "import_rss_kb": rss0, "K": spec.K}))
"""


def mixture(n: int, seed: int, start: int = 0) -> np.ndarray:
    """Rows ``start .. start+n`` of a fixed 20-component Gaussian mixture in d = 16, float32 (n, 16)."""
    centres = np.random.default_rng(1234).normal(0.0, 1.5, (20, D))
    rng = np.random.default_rng([seed, start])
    return (centres[rng.integers(0, 20, n)] + rng.normal(0.0, 1.0, (n, D))).astype(np.float32)


def write_npy(path: Path, rows: int, block: int = 1_000_000) -> float:
    """Write ``rows`` mixture rows to ``path`` in blocks; returns the seconds it took."""
    t0 = time.perf_counter()
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, D))
    for s in range(0, rows, block):
        e = min(rows, s + block)
        mm[s:e] = mixture(e - s, 0, s)
        mm.flush()
        from lwgpu.spec.stream import _release_pages  # noqa: PLC0415

        _release_pages(mm, s, e)
    del mm
    return time.perf_counter() - t0


def fit_in_child(path: Path, chunk: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(K), str(GAMMA), str(chunk)],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def xx_estimate(x: np.ndarray, m: int, seed: int = 0) -> tuple[float, float]:
    """Estimate of ``1/n^2 sum_jl k(x_j, x_l)`` from m sampled rows, and its standard error (over 4 splits)."""
    from lwgpu.kernels.torch_backend import gaussian_kernel  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    idx = rng.choice(x.shape[0], size=min(m, x.shape[0]), replace=False)
    t = torch.from_numpy(x[idx]).double()
    parts = []
    q = t.shape[0] // 4
    for i in range(4):  # four disjoint quarter-samples: mean over pairs (i != j), V-stat diagonal removed
        a = t[i * q:(i + 1) * q]
        s = 0.0
        for j in range(0, q, 4096):
            s += float(gaussian_kernel(a[j:j + 4096], a, GAMMA).sum())
        parts.append((s - q) / (q * (q - 1)))
    # the V-statistic's diagonal is 1/n (k(x,x) = 1): add it back for the full-data quantity
    n = x.shape[0]
    est = float(np.mean(parts)) * (1 - 1 / n) + 1 / n
    return est, float(np.std(parts, ddof=1) / 2)


def spec_terms(spec, x: np.ndarray) -> float:
    """``<S,S> - 2 <S, mean_x>`` over all rows of x, float64."""
    from lwgpu.kernels.torch_backend import gaussian_kernel  # noqa: PLC0415

    z, beta = spec.z.double(), spec.beta.double()
    zx = 0.0
    for s in range(0, x.shape[0], 65536):
        zx += float((beta @ gaussian_kernel(z, torch.from_numpy(x[s:s + 65536]).double(), GAMMA)).sum())
    return spec.self_inner - 2.0 * zx / x.shape[0]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--chunk-rows", type=int, default=65536)
    p.add_argument("--quality-n", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--xx-sample", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=3, help="timing repeats of the quality fits (median)")
    p.add_argument("--dir", default=os.environ.get("LWGPU_SCRATCH", "/work/scratch"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-disk", action="store_true", help="only the quality table")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        args.rows, args.quality_n, args.repeats = 1_000_000, [20_000], 1
    out = Path(args.out) if args.out else common.default_out("stream_fit", args.quick)
    from lwgpu.spec.rkme import RKME  # noqa: PLC0415

    lines = common.run_header(
        "Streaming RKME fit", common.command("bench_stream_fit", argv),
        [f"- K = {K}, gamma = {GAMMA}, d = {D}, float32 rows of a 20-component Gaussian mixture; "
         f"`chunk_rows={args.chunk_rows}`, one pass unless stated.",
         "- Peak RSS: `ru_maxrss` of a fresh subprocess that imports lwgpu and runs `RKME.fit_stream(path)` "
         "on the `.npy` file (the import alone is the floor shown beside it)."])
    if not args.skip_disk:
        scratch = Path(args.dir)
        scratch.mkdir(parents=True, exist_ok=True)
        free = os.statvfs(scratch).f_bavail * os.statvfs(scratch).f_frsize
        need = args.rows * D * 4
        if need > 0.8 * free:
            raise SystemExit(f"{scratch} has {free / 2**30:.1f} GiB free, the data needs {need / 2**30:.1f} GiB; "
                             "pass --dir or fewer --rows")
        path = scratch / f"stream_fit_{args.rows}.npy"
        try:
            log.info("writing %d rows (%.2f GB) to %s", args.rows, need / 1e9, path)
            wsec = write_npy(path, args.rows)
            log.info("written in %.1f s; fitting in a subprocess", wsec)
            res = fit_in_child(path, args.chunk_rows)
        finally:
            if path.exists():
                path.unlink()
        lines += ["### Throughput and memory (data on disk)", "",
                  "| rows | file size | fit seconds | rows/s | peak RSS | RSS after import | projected 100M rows |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                  f"| {res['rows']:,} | {need / 1e9:.2f} GB | {res['seconds']:.1f} | {res['rows'] / res['seconds']:,.0f} | "
                  f"{res['maxrss_kb'] / 1024:.0f} MiB | {res['import_rss_kb'] / 1024:.0f} MiB | "
                  f"{1e8 / (res['rows'] / res['seconds']) / 60:.1f} min |", "",
                  f"One run (a {need / 1e9:.1f} GB fit is not repeated); writing the file took {wsec:.0f} s. "
                  "Memory does not depend on the row count: one chunk, the spec and a K x chunk kernel block.", ""]
        log.info("disk fit: %s", res)
    lines += ["### Residual against RKME.fit (data in memory)", "",
              "| n | xx term (sample, s.e.) | fit residual | stream residual (1 pass) | ratio | stream (2 passes) | "
              "ratio | fit s | stream s (1 pass) |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n in args.quality_n:
        x = mixture(n, 7)
        xx, se = xx_estimate(x, args.xx_sample)
        t_fit, _, full = common.median_time(lambda: RKME.fit(x, K=K, gamma=GAMMA, device="cpu"), args.repeats)
        t_st, _, st = common.median_time(lambda: RKME.fit_stream(x, K=K, gamma=GAMMA,
                                                                 chunk_rows=args.chunk_rows), args.repeats)
        st2 = RKME.fit_stream(x, K=K, gamma=GAMMA, chunk_rows=args.chunk_rows, passes=2)
        r_fit, r_st, r_st2 = (spec_terms(s, x) + xx for s in (full, st, st2))
        log.info("n=%d fit %.3g (%.1fs) stream %.3g (%.1fs) stream2 %.3g", n, r_fit, t_fit, r_st, t_st, r_st2)
        lines.append(f"| {n:,} | {xx:.5f} ({se:.1e}) | {r_fit:.3e} | {r_st:.3e} | {r_st / r_fit:.2f} | {r_st2:.3e} | "
                     f"{r_st2 / r_fit:.2f} | {t_fit:.2f} | {t_st:.2f} |")
    lines += ["", f"Times: medians of {args.repeats} runs. The residual's data term is estimated from "
              f"{args.xx_sample:,} sampled rows (the same value for every method at an n, so the ratio's "
              "numerator and denominator share its error; their difference is exact)."]
    common.write_text(out, "\n".join(lines))


if __name__ == "__main__":
    main()
