"""Study: what differential privacy costs a learnware market, and what it buys against attackers.

Plain script (no Hydra): ``python experiments/privacy/run_privacy.py [--quick] [--out DIR]``. It writes
``results.csv`` / ``results.jsonl`` (one row per measurement, with the run context of lwgpu.tracking)
and three PNG plots into ``experiments/privacy/`` (docs/privacy.md shows and explains them).

1. Search accuracy against epsilon (K fixed) and against K (epsilon fixed): a synthetic market
   (:class:`lwgpu.data.synthetic.SyntheticMarket`) whose learnware specs are private RKMEs of each task's
   rows; every user holds fresh rows of one task and searches with a plain RKME; top-1 / top-3 accuracy of
   the exact MMD ranking against the true task. The plain market is the reference line.
2. Attacks on one developer's spec (n_train rows, the same number of held-out rows of the same task):
   membership inference: AUC of telling training rows from held-out rows by the spec's witness
   ``sum_i beta_i k(z_i, x)`` (higher = "member") and by the distance of a row to the nearest z (closer =
   "member"); reconstruction: the fraction of reduced points z whose
   nearest row (of training + held-out) is a training row (0.5 = no leak), and the median distance of z to
   its nearest training row over its nearest held-out row. Repeated over ``--attack-repeats`` tasks.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from lwgpu.data.synthetic import SyntheticMarket
from lwgpu.spec.rkme import RKME
from lwgpu.tracking import Results, plot_metrics, run_context

log = logging.getLogger("experiments.privacy")
HERE = Path(__file__).resolve().parent
GAMMA, DELTA = 0.1, 1e-5


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score of a random positive > score of a random negative), ties count 1/2."""
    allv = np.concatenate([pos, neg])
    ranks = allv.argsort().argsort().astype(np.float64) + 1
    # average ranks of ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fit(X: np.ndarray, K: int, eps: float | None, seed: int, features: int) -> RKME:
    if eps is None:
        return RKME.fit(X, K=K, gamma=GAMMA, device="cpu", dtype="float64", seed=seed)
    return RKME.fit(X, K=K, gamma=GAMMA, device="cpu", dtype="float64", seed=seed, privacy=(eps, DELTA),
                    features=features, noise_seed=10_000 + seed)  # fixed noise seed: reproducible study only


def search_accuracy(market_specs: list[RKME], user_specs: list[RKME], truth: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-3 accuracy of the exact MMD ranking of market specs for every user."""
    hits1 = hits3 = 0
    for u, t in zip(user_specs, truth):
        d = np.array([u.dist(s) for s in market_specs])
        order = np.argsort(d)
        hits1 += int(order[0] == t)
        hits3 += int(t in order[:3])
    return hits1 / len(truth), hits3 / len(truth)


def attack(X_train: np.ndarray, X_out: np.ndarray, spec: RKME) -> dict[str, float]:
    z, beta = spec.numpy()
    z = z.astype(np.float64)

    def witness(X: np.ndarray) -> np.ndarray:
        return np.exp(-GAMMA * ((X[:, None, :] - z[None]) ** 2).sum(-1)) @ beta

    def nearest(A: np.ndarray) -> np.ndarray:
        return np.sqrt(((z[:, None, :] - A[None]) ** 2).sum(-1)).min(1)

    def to_spec(X: np.ndarray) -> np.ndarray:  # distance of each row to its nearest reduced point
        return np.sqrt(((X[:, None, :] - z[None]) ** 2).sum(-1)).min(1)

    d_in, d_out = nearest(X_train), nearest(X_out)
    return {"mi_auc": auc(witness(X_train), witness(X_out)),
            "mi_auc_distance": auc(-to_spec(X_train), -to_spec(X_out)),
            "recon_train_nearest": float(np.mean(d_in < d_out)),
            "recon_distance_ratio": float(np.median(d_in / np.maximum(d_out, 1e-12)))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--separation", type=float, default=2.0, help="spread of task centres (SyntheticMarket)")
    p.add_argument("--rows", type=int, default=400, help="rows per learnware (developer data)")
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--K", type=int, default=16, help="K of the epsilon sweep")
    p.add_argument("--eps-for-K", type=float, default=1.0, help="epsilon of the K sweep")
    p.add_argument("--epsilons", type=float, nargs="*", default=[0.1, 0.3, 1.0, 3.0, 10.0, 100.0])
    p.add_argument("--Ks", type=int, nargs="*", default=[4, 16, 32])
    p.add_argument("--features", type=int, default=1024)
    p.add_argument("--attack-rows", type=int, default=100)
    p.add_argument("--attack-K", type=int, default=32)
    p.add_argument("--attack-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        args.tasks, args.epsilons, args.Ks, args.features, args.attack_repeats = 4, [0.3, 10.0], [4, 8], 256, 1
    t0 = time.perf_counter()
    res = Results(run_context(device="cpu", experiment="privacy", seed=args.seed))
    market = SyntheticMarket.generate(args.tasks, d=args.d, separation=args.separation, seed=args.seed)
    dev_rows = market.sample(args.rows)
    user_rows = [market.sample(args.rows * 2, tasks=[t])[0][args.rows:] for t in range(args.tasks)]  # fresh rows
    truth = np.arange(args.tasks)

    # 1. search accuracy vs epsilon (and K)
    for K in sorted(set(args.Ks) | {args.K}):
        users = [fit(X, K, None, 1000 + i, args.features) for i, X in enumerate(user_rows)]
        eps_list = [None] + (args.epsilons if K == args.K else [args.eps_for_K])
        for eps in eps_list:
            specs = [fit(X, K, eps, i, args.features) for i, X in enumerate(dev_rows)]
            top1, top3 = search_accuracy(specs, users, truth)
            resid = float(np.mean([s.residual(X) for s, X in zip(specs, dev_rows)]))
            tag = {"K": K, "epsilon": float("inf") if eps is None else eps, "spec": "plain" if eps is None else "private"}
            res.add("top1_accuracy", top1, **tag)
            res.add("top3_accuracy", top3, **tag)
            res.add("fit_residual_mean", resid, **tag)
            log.info("K=%d eps=%s top1=%.2f top3=%.2f residual=%.4f", K, eps, top1, top3, resid)

    # 2. attacks: n_train rows of a task in the spec, as many held-out rows of the same task
    for rep in range(args.attack_repeats):
        task = rep % args.tasks
        rows = market.sample(args.attack_rows * 2 + 10 * rep, tasks=[task])[0]
        X_in, X_out = rows[: args.attack_rows], rows[args.attack_rows: 2 * args.attack_rows]
        for eps in [None] + args.epsilons:
            spec = fit(X_in, args.attack_K, eps, 500 + rep, args.features)
            tag = {"K": args.attack_K, "epsilon": float("inf") if eps is None else eps,
                   "spec": "plain" if eps is None else "private", "repeat": rep}
            for name, value in attack(X_in.astype(np.float64), X_out.astype(np.float64), spec).items():
                res.add(name, value, **tag)
    jsonl, csv_path = res.write(args.out)
    make_plots(res.rows, Path(args.out), args)
    log.info("wrote %s, %s and plots in %.0f s", jsonl, csv_path, time.perf_counter() - t0)


def make_plots(rows: list[dict], out: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(name: str, spec: str, key: str, **fix) -> tuple[list[float], list[float]]:
        pts: dict[float, list[float]] = {}
        for r in rows:
            if r["name"] == name and r["spec"] == spec and all(r.get(k) == v for k, v in fix.items()):
                pts.setdefault(r[key], []).append(r["value"])
        xs = sorted(pts)
        return xs, [float(np.mean(pts[x])) for x in xs]

    # accuracy vs epsilon
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, style in (("top1_accuracy", "o-"), ("top3_accuracy", "s--")):
        xs, ys = series(name, "private", "epsilon", K=args.K)
        ax.plot(xs, ys, style, label=f"private, {name.split('_')[0]}")
        _, plain = series(name, "plain", "epsilon", K=args.K)
        ax.axhline(plain[0], color="grey", ls=":" if "1" in name else "-.", label=f"plain, {name.split('_')[0]}")
    ax.set_xscale("log")
    ax.set_xlabel("privacy budget epsilon (delta = 1e-5)")
    ax.set_ylabel("search accuracy (true task found)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{args.tasks} learnwares, {args.rows} rows each, K = {args.K}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_epsilon.png", dpi=120)
    plt.close(fig)
    # accuracy vs K
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for spec, style in (("private", "o-"), ("plain", "s--")):
        xs, ys = series("top1_accuracy", spec, "K", **({"epsilon": args.eps_for_K} if spec == "private" else {}))
        ax.plot(xs, ys, style, label=f"{spec}" + (f" (epsilon = {args.eps_for_K:g})" if spec == "private" else ""))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (points per spec)")
    ax.set_ylabel("top-1 search accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_K.png", dpi=120)
    plt.close(fig)
    # attacks
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, name, label in ((axes[0], "mi_auc", "MI AUC (witness score)"),
                            (axes[1], "mi_auc_distance", "MI AUC (distance-to-z score)"),
                            (axes[2], "recon_train_nearest", "share of z nearest to a training row")):
        xs, ys = series(name, "private", "epsilon")
        ax.plot(xs, ys, "o-", label="private spec")
        _, plain = series(name, "plain", "epsilon")
        ax.axhline(plain[0], color="tab:red", ls="--", label="plain spec")
        ax.axhline(0.5, color="grey", ls=":", label="chance (no leak)")
        ax.set_xscale("log")
        ax.set_xlabel("privacy budget epsilon (delta = 1e-5)")
        ax.set_ylabel(label)
        ax.set_ylim(0.3, 1.02)
        ax.legend(fontsize=8)
    fig.suptitle(f"attacks on one spec: {args.attack_rows} training rows, K = {args.attack_K}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "attacks.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
