"""Study: the energy of finding and reusing a learnware against training one's own model.

Plain script: ``python experiments/energy/run_energy.py [--quick] [--out DIR]``; writes ``results.csv`` /
``results.jsonl``, ``energy.png`` and ``table.md`` into ``experiments/energy/`` (docs/energy.md).

Market: :func:`lwgpu.data.real.make_digits_market` (scikit-learn digits carved into class-subset tasks,
each with a trained model and an RKME); building it is the developers' cost and is not measured. Each
user holds the test rows of one task. Per path, all users are processed inside one
:class:`lwgpu.eval.energy.EnergyMeter` block (codecarbon, offline; TDP fallback without it), repeated
``--repeats`` times; the table reports the median per user.

- ``market``: fit the user's RKME (K as the market's), rank every market spec by exact MMD, predict with
  the top learnware's model (no labels needed).
- ``own:<model>``: train a scikit-learn model on ``--labels`` labelled rows of the user, predict the rest.

Accuracy is measured on the same held-out rows for both paths.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from lwgpu.data.real import make_digits_market
from lwgpu.eval.energy import EnergyMeter, fallback_energy
from lwgpu.spec.rkme import RKME
from lwgpu.tracking import Results, run_context

log = logging.getLogger("experiments.energy")
HERE = Path(__file__).resolve().parent


def own_model(kind: str, seed: int):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    if kind == "logreg":
        return LogisticRegression(max_iter=2000)
    if kind == "random_forest":
        return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    if kind == "svm":
        return SVC(gamma="scale")
    raise ValueError(f"unknown model {kind!r}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=30)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--labels", type=int, default=100, help="labelled rows for the user's own model")
    p.add_argument("--K", type=int, default=50)
    p.add_argument("--models", nargs="*", default=["logreg", "random_forest", "svm"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--country", default="USA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        args.tasks, args.users, args.repeats, args.models = 8, 4, 1, ["logreg"]
    market = make_digits_market(n_tasks=args.tasks, K=args.K, seed=args.seed, n_mixture_users=0,
                                fit_user_specs=False)
    users = [market.make_user([u % args.tasks], seed=u, fit_spec=False) for u in range(args.users)]
    splits = [u.split(args.labels, seed=i) for i, u in enumerate(users)]
    res = Results(run_context(device="cpu", experiment="energy", seed=args.seed))

    def market_path() -> list[float]:
        accs = []
        for u, (_, _, X_rest, y_rest) in zip(users, splits):
            spec = RKME.fit(u.X, K=args.K, gamma=market.gamma, device="cpu", seed=args.seed)
            best = int(np.argmin([spec.dist(t.rkme) for t in market.tasks]))
            accs.append(float((market.tasks[best].predict(X_rest) == y_rest).mean()))
        return accs

    def own_path(kind: str):
        def run() -> list[float]:
            accs = []
            for X_lab, y_lab, X_rest, y_rest in splits:
                model = own_model(kind, args.seed).fit(X_lab, y_lab)
                accs.append(float((model.predict(X_rest) == y_rest).mean()))
            return accs
        return run

    paths = {"market": market_path, **{f"own:{m}": own_path(m) for m in args.models}}
    market_path()  # warm-up: numba compilation of the fit and QP is a one-off, not a per-user cost
    summary = {}
    for name, fn in paths.items():
        recs, accs = [], []
        for rep in range(args.repeats):
            with EnergyMeter(country_iso_code=args.country) as meter:
                accs = fn()
            r = meter.record
            recs.append(r)
            per_user = {"energy_kwh": r.energy_kwh / args.users, "co2_kg": r.co2_kg / args.users,
                        "cpu_s": r.cpu_s / args.users, "wall_s": r.wall_s / args.users}
            for key, unit in (("energy_kwh", "kWh"), ("co2_kg", "kg"), ("cpu_s", "s"), ("wall_s", "s")):
                res.add(f"{key}_per_user", per_user[key], unit, path=name, repeat=rep, energy_source=r.energy_source)
        res.add("accuracy", float(np.mean(accs)), "", path=name)
        med = {k: statistics.median(getattr(r, k) for r in recs) / args.users
               for k in ("energy_kwh", "co2_kg", "cpu_s", "wall_s")}
        summary[name] = {**med, "accuracy": float(np.mean(accs)), "source": recs[0].energy_source}
        log.info("%s: %s", name, summary[name])
    res.write(args.out)
    write_table(summary, Path(args.out), args)
    plot(summary, Path(args.out))


def write_table(summary: dict, out: Path, args: argparse.Namespace) -> None:
    base = summary["market"]["energy_kwh"]
    lines = [f"Per user ({args.users} users, digits market of {args.tasks} learnwares, K = {args.K}, "
             f"{args.labels} labels for the own model; medians of {args.repeats} measured repeats, country "
             f"{args.country}).", "",
             "| path | energy per user (Wh) | CO2-eq per user (mg) | CPU s per user | wall s per user | "
             "energy vs market | TDP estimate from CPU s (Wh) | accuracy | energy source |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, s in summary.items():
        tdp_kwh, _ = fallback_energy(s["cpu_s"])
        lines.append(f"| {name} | {s['energy_kwh'] * 1e3:.4f} | {s['co2_kg'] * 1e6:.3f} | {s['cpu_s']:.3f} | "
                     f"{s['wall_s']:.3f} | {s['energy_kwh'] / base:.2f}x | {tdp_kwh * 1e3:.4f} | {s['accuracy']:.3f} | "
                     f"{s['source']} |")
    lines += ["", "TDP estimate: lwgpu.eval.energy.fallback_energy(cpu_s) (85 W package shared by the cores, CPU only); "
              "codecarbon's number adds RAM power x wall time."]
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    colors = ["tab:blue" if n == "market" else "tab:orange" for n in names]
    axes[0].bar(names, [summary[n]["energy_kwh"] * 1e3 for n in names], color=colors)
    axes[0].set_ylabel("energy per user (Wh, measured)")
    axes[0].set_xlabel("path")
    axes[1].bar(names, [summary[n]["accuracy"] for n in names], color=colors)
    axes[1].set_ylabel("accuracy on the user's held-out rows")
    axes[1].set_xlabel("path")
    axes[1].set_ylim(0, 1.05)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    from matplotlib.patches import Patch

    axes[0].legend(handles=[Patch(color="tab:blue", label="search + reuse a learnware"),
                            Patch(color="tab:orange", label="train own model")], fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "energy.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    log.info("done in %.0f s", time.perf_counter() - t0)
