"""``python -m lwgpu.cli.reuse_tables [--quick]``: the reuse-vs-labels tables on the digits market (a command, so it prints)."""
from __future__ import annotations

from typing import Sequence

from ..reuse.evaluation import REUSERS, market_candidates, reuse_curve, summarize


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lwgpu.cli.reuse_tables [--quick]``: reuse error vs labels on the digits market, as markdown tables."""
    import argparse

    from lwgpu.data.real import make_digits_market

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--quick", action="store_true", help="2 users of each kind, 2 repeats, labels 5/20/50")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    labels = (5, 20, 50) if args.quick else (5, 10, 20, 50, 100)
    n_users, repeats = (2, 2) if args.quick else (5, 3)
    market = make_digits_market(n_tasks=30, n_mixture_users=10, seed=args.seed)
    kinds = {"single-task users": market.users[:n_users], "two-task mixture users": market.users[30:30 + n_users]}
    for kind, users in kinds.items():
        rows = []
        for u, user in enumerate(users):
            found = market_candidates(market, user)
            rows += reuse_curve([market.tasks[i] for i in found], user.X, user.y, label_counts=labels,
                                repeats=repeats, seed=args.seed + u, market_learnwares=market.tasks)
        table = summarize(rows)
        print(f"\n{kind} ({len(users)} users x {repeats} repeats; error rate, mean ± std)\n")
        print("| method | " + " | ".join(f"{k} labels" for k in labels) + " |")
        print("|---" * (len(labels) + 1) + "|")
        for method in ("own", *REUSERS, "single_best", "single_mean"):
            cells = [next(t for t in table if t["method"] == method and t["n_labels"] == k) for k in labels]
            print(f"| {method} | " + " | ".join(f"{c['error_mean']:.3f} ± {c['error_std']:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
