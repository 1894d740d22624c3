"""Market benchmark: submissions/s and search latency (single, mixture) vs the reference `learnware` market.

Both markets get the same learnware zips (one package format that both read: a Python model in
``__init__.py``, a ``learnware.yaml`` with the reference's keys plus lwgpu's ``semantic_spec``, and an
RKME JSON in the reference layout), and the same user specs. The reference market is the ``easy``
market of ``learnware`` 0.4 (``instantiate_learnware_market(name="easy", rebuild=True)``) with its
storage root and SQLite database redirected into a temporary folder through ``learnware.config.C``.

Usage::

    python -m benchmarks.bench_market            # N = 100 and 1,000
    python -m benchmarks.bench_market --quick    # N = 30 (smoke run)

lwgpu runs on every core; the reference with its faster torch thread setting (1 thread or every core),
probed in the same run. Every latency is a median of 5 repeats on both sides.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks import common

D, K, N_CLASSES, GAMMA = 16, 50, 4, 0.1

MODEL_SRC = '''
import os
import numpy as np
try:
    from learnware.model import BaseModel
except ImportError:  # lwgpu alone does not need the reference package
    class BaseModel:
        def __init__(self, input_shape, output_shape):
            self.input_shape, self.output_shape = input_shape, output_shape


class Model(BaseModel):
    """A linear scorer over %(d)d features with %(c)d class scores."""

    def __init__(self):
        super().__init__(input_shape=(%(d)d,), output_shape=(%(c)d,))
        self.W = np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights.npy"))

    def predict(self, X):
        return np.asarray(X, dtype=np.float64) @ self.W

    def fit(self, X, y):
        pass

    def finetune(self, X, y):
        pass
''' % {"d": D, "c": N_CLASSES}


def _semantic(i: int) -> dict[str, Any]:
    return {"data_type": "table", "task_type": "classification", "input_dim": D, "output_dim": N_CLASSES,
            "name": f"bench-{i:05d}", "description": f"linear scorer number {i} on a gaussian cluster",
            "tags": ["Computer"], "library": "other", "license": "MIT"}


def make_learnwares(n: int, root: Path, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """``n`` learnware zips (cluster i around ``centers[i]``) and the centers (n, D)."""
    from lwgpu.market.package import write_zip
    from lwgpu.spec.rkme import RKME

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n, D)) * 2.0
    paths = []
    for i in range(n):
        folder = root / f"src{i}"
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(MODEL_SRC)
        np.save(folder / "weights.npy", rng.normal(size=(D, N_CLASSES)))
        z = centers[i] + rng.normal(size=(K, D)) * 0.7
        RKME(z, np.full(K, 1.0 / K), GAMMA, num_points=500).save(folder / "rkme.json")
        manifest = {
            "model": {"class_name": "Model", "kwargs": {}},
            "stat_specifications": [{"module_path": "learnware.specification", "class_name": "RKMETableSpecification",
                                     "file_name": "rkme.json", "kwargs": {}}],
            "semantic_spec": _semantic(i),
        }
        (folder / "learnware.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        path = root / f"lw{i}.zip"
        write_zip(folder, path)
        paths.append(path)
    return paths, centers


def make_users(centers: np.ndarray, q: int, seed: int = 1) -> list[tuple[Any, tuple[int, int]]]:
    """``q`` user specs, each an even mix of two learnwares' clusters: (RKME, (i, j))."""
    from lwgpu.spec.rkme import RKME

    rng = np.random.default_rng(seed)
    users = []
    for _ in range(q):
        i, j = (int(v) for v in rng.choice(len(centers), 2, replace=False))
        z = np.concatenate([centers[i] + rng.normal(size=(K // 2, D)) * 0.7,
                            centers[j] + rng.normal(size=(K // 2, D)) * 0.7])
        users.append((RKME(z, np.full(K, 1.0 / K), GAMMA), (i, j)))
    return users


def _quiet_reference() -> None:
    for name in list(logging.Logger.manager.loggerDict):
        if not name.startswith("lwgpu"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _reference_market(root: Path, market_id: str) -> Any:
    from learnware.config import C

    C.market_root_path = str(root)
    C.database_url = f"sqlite:///{root / 'database.db'}"
    from learnware.market import instantiate_learnware_market

    _quiet_reference()
    return instantiate_learnware_market(market_id=market_id, name="easy", rebuild=True)


def _reference_user(spec: Any) -> Any:
    from learnware.market import BaseUserInfo
    from learnware.specification import RKMETableSpecification

    r = RKMETableSpecification(gamma=GAMMA)
    z, beta = spec.numpy()
    r.z, r.beta = torch.from_numpy(z.astype(np.float64)), torch.from_numpy(beta.astype(np.float64))
    r.num_points = 500
    return BaseUserInfo(semantic_spec={}, stat_info={"RKMETableSpecification": r})


def _timed(fn, reps: int) -> tuple[float, Any]:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up run; (median, last result)."""
    med, _, out = common.median_time(fn, reps, warmup=1)
    return med, out


def _add_reference(ref: Any, paths: list[Path], offset: int = 0) -> tuple[list[str], list[float]]:
    """Add ``paths`` to the reference market one by one: (ids, seconds per add)."""
    from lwgpu.spec.semantic import to_reference

    ids, times = [], []
    for i, p in enumerate(paths, start=offset):
        sem = to_reference(_semantic(i))
        sem["Model"] = {"Values": ["Others"], "Type": "Optional"}
        t = time.perf_counter()
        rid, status = ref.add_learnware(str(p), sem)
        times.append(time.perf_counter() - t)
        if rid is None:
            raise RuntimeError(f"the reference market refused learnware {i} (status {status})")
        ids.append(rid)
    return ids, times


def probe_reference_threads(paths: list[Path], users: list, workdir: Path) -> common.ThreadChoice:
    """The reference's faster torch setting (1 thread or every core) on a small market of the same packages:
    one single and one mixture search of the first user, after a warm-up."""
    ref = _reference_market(workdir / "probe", f"probe{len(paths)}")
    _add_reference(ref, paths[: min(20, len(paths))])
    info = _reference_user(users[0][0])

    def probe() -> None:
        ref.search_learnware(info, max_search_num=5, search_method="none")
        ref.search_learnware(info, max_search_num=5, search_method="greedy")

    probe()  # warm-up
    return common.pick_reference_threads(probe)


def run(n: int, q: int, reps: int, workdir: Path) -> dict[str, Any]:
    from learnware.specification import RKMETableSpecification  # noqa: F401  (import cost outside timing)
    from lwgpu.market import Market

    paths, centers = make_learnwares(n, workdir / "pkgs")
    users = make_users(centers, q)

    choice = probe_reference_threads(paths, users, workdir)
    ours = Market(workdir / "ours", device="cpu")
    our_ids, ours_t = [], []
    for p in paths:
        t = time.perf_counter()
        our_ids.append(ours.submit(p))
        ours_t.append(time.perf_counter() - t)
    ours_sub = 1.0 / statistics.median(ours_t)

    ref = _reference_market(workdir / "ref", f"bench{n}")
    with common.torch_threads(choice.threads):
        ref_ids, ref_t = _add_reference(ref, paths)
    ref_sub = 1.0 / statistics.median(ref_t)
    ref_pos = {rid: i for i, rid in enumerate(ref_ids)}
    our_pos = {oid: i for i, oid in enumerate(our_ids)}

    rows: dict[str, list[float]] = {k: [] for k in ("ours_single", "ref_single", "ours_mix", "ref_mix")}
    agree_top1 = agree_mix = found_pair = 0
    for spec, pair in users:
        info = _reference_user(spec)
        t_os, r_os = _timed(lambda: ours.search(spec, k=5, mixture=False), reps)
        t_om, r_om = _timed(lambda: ours.search(spec, k=5, max_mixture=5, method="greedy"), reps)
        with common.torch_threads(choice.threads):
            t_rs, r_rs = _timed(lambda: ref.search_learnware(info, max_search_num=5, search_method="none"), reps)
            t_rm, r_rm = _timed(lambda: ref.search_learnware(info, max_search_num=5, search_method="greedy"), reps)
        rows["ours_single"].append(t_os)
        rows["ref_single"].append(t_rs)
        rows["ours_mix"].append(t_om)
        rows["ref_mix"].append(t_rm)
        ref_top = ref_pos[r_rs.get_single_results()[0].learnware.id]
        agree_top1 += our_pos[r_os.single[0].id] == ref_top
        ours_mix = {our_pos[i] for i in r_om.mixture.ids} if r_om.mixture else set()
        ref_multi = r_rm.get_multiple_results()
        ref_mix = {ref_pos[lw.id] for lw in ref_multi[0].learnwares} if ref_multi else set()
        agree_mix += ours_mix == ref_mix
        found_pair += set(pair) <= ours_mix
    ours.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "N": n, "users": q, "ours_sub_per_s": ours_sub, "ref_sub_per_s": ref_sub,
        **{f"{k}_ms": 1e3 * v for k, v in med.items()},
        "ref_threads": choice.threads, "ref_probe": choice.describe(),
        "top1_agree": agree_top1 / q, "mixture_agree": agree_mix / q, "pair_found": found_pair / q,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small market (N=30), 3 users")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--users", type=int, default=5)
    ap.add_argument("--reps", type=int, default=common.REPEATS, help="timed repeats per search (both sides)")
    ap.add_argument("--out", default=None, help="markdown file to write (default: benchmarks/results/market.md)")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(common.all_cores())
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.basicConfig(level=logging.WARNING)
    sizes = args.sizes or ([30] if args.quick else [100, 1000])
    q = 3 if args.quick else args.users
    reps = max(args.reps, common.REPEATS)
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(n, q, reps, Path(tmp))
        results.append(r)
        print(r, flush=True)

    lines = common.run_header("Market benchmark: lwgpu vs the reference `learnware` market",
                              common.command("bench_market", argv), [
        f"- lwgpu with `torch.set_num_threads({common.all_cores()})`; the reference (`learnware` `easy` market) with "
        "its faster torch setting, probed per N on a 20-learnware market of the same packages (one single + one "
        "mixture search on 1 thread and on every core; the column names the winner and the probe times)",
        f"- learnwares: d={D}, K={K} specs, a Python linear model each; users: even mixes of two learnwares' "
        f"clusters, K={K}; search k=5, mixture greedy with max 5 (the reference's default)",
        f"- latencies: median over {q} users of the median of {reps} repeats (after a warm-up) on both sides; "
        "submit/s = 1 / the median time of one submission over the N submissions; ratio = reference / lwgpu "
        "(higher = lwgpu faster)",
    ])
    lines += [
        "| N | ref threads | submit/s lwgpu | submit/s ref | ratio | single ms lwgpu | single ms ref | ratio "
        "| mixture ms lwgpu | mixture ms ref | ratio | top-1 agree | mixture agree | pair in mixture |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['N']} | {r['ref_probe']} | {r['ours_sub_per_s']:.1f} | {r['ref_sub_per_s']:.1f} | "
            f"{r['ours_sub_per_s'] / r['ref_sub_per_s']:.2f}x | {r['ours_single_ms']:.1f} | {r['ref_single_ms']:.1f} | "
            f"{r['ref_single_ms'] / r['ours_single_ms']:.1f}x | {r['ours_mix_ms']:.1f} | {r['ref_mix_ms']:.1f} | "
            f"{r['ref_mix_ms'] / r['ours_mix_ms']:.1f}x | {r['top1_agree']:.2f} | {r['mixture_agree']:.2f} | "
            f"{r['pair_found']:.2f} |"
        )
    out = common.write_text(args.out or common.default_out("market", args.quick), "\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
