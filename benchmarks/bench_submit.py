"""Cost of one ``Market.submit``: per-phase breakdown, next to the reference's ``add_learnware``.

Single-package submissions of the packages of :func:`benchmarks.bench_market.make_learnwares`
(d=16, K=50, a Python linear model), interleaved with the reference ``learnware`` market's
``EasyMarket.add_learnware`` of the same packages (one ours, one theirs, ...), so a loaded machine
slows both sides alike. lwgpu's phases are timed by wrapping the functions ``submit`` calls
(``time.perf_counter``): unpack, the package (manifest) check, the isolated model check (spare worker
taken or forked and the package copied into its scratch folder; then ``load`` + ``predict`` in one
round trip, during which this process runs the semantic and RKME checks and herds the check rows
while the worker loads, and hashes the package while it predicts), and the commit (write lock,
duplicate lookup, insert + folder move, bank append). Each round submits a fresh set of packages;
the table reports the median over rounds of each round's median. With ``--no-spare`` a second
lwgpu run forks each worker on demand (``LWGPU_SPARE_WORKERS`` off) to show what the spare saves.

``--no-reference`` times lwgpu alone, submissions back to back (the next one starts while the
previous worker's end and the next spare's set-up still run in the background).

Run: ``python -m benchmarks.bench_submit [--quick]``; writes ``benchmarks/results/submit.md``.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from benchmarks import common
from benchmarks.bench_market import _add_reference, _reference_market, make_learnwares

#: (label, module path, attribute path) of the functions timed as phases of one submission
PHASES = [
    ("unpack", "lwgpu.market.ingest", "unpack_into"),
    ("package check (manifest)", "lwgpu.market.checks", "check_package"),
    ("isolated model check", "lwgpu.market.worker", "check_many"),
    ("  of which spare taken, package copied in", "lwgpu.market.worker", "IsolatedModel.__init__"),
    ("  of which load+predict round trip", "lwgpu.market.worker", "IsolatedModel.load_and_predict"),
    ("    of which semantic + RKME checks (while it loads)", "lwgpu.market.checks", "check_semantic"),
    ("    of which semantic + RKME checks (while it loads)", "lwgpu.market.checks", "check_rkme"),
    ("    of which herding (while it loads)", "lwgpu.market.samples", "sample_inputs"),
    ("    of which content hash (while it predicts)", "lwgpu.market.checks", "content_hash"),
    ("commit", "lwgpu.market.market", "Market._commit"),
    ("  of which bank append", "lwgpu.market.banks", "BankSet.add_many"),
]


class PhaseTimer:
    """Wraps the :data:`PHASES` functions; ``take()`` returns and clears the seconds per label of one call."""

    def __init__(self) -> None:
        import importlib

        self.now: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[Any, str, Any]] = []
        for label, mod, attr in PHASES:
            owner: Any = importlib.import_module(mod)
            *path, name = attr.split(".")
            for p in path:
                owner = getattr(owner, p)
            self._wrap(owner, name, label)

    def _wrap(self, owner: Any, name: str, label: str) -> None:
        fn = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        now = self.now

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                now[label] += time.perf_counter() - t

        setattr(owner, name, timed)
        self._undo.append((owner, name, fn))

    def take(self) -> dict[str, float]:
        out = dict(self.now)
        self.now.clear()
        return out

    def close(self) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)


def run(rounds: int, per_round: int, workdir: Path, spare: bool = True, reference: bool = True) -> dict[str, Any]:
    """Single submissions, each side alone: every round lwgpu submits its packages back to back, then the
    reference adds the same number back to back on its faster torch thread setting (probed on the warm-up
    adds); per label the median over rounds of each round's median (s)."""
    from lwgpu.market import Market
    from lwgpu.market import zygote

    zygote.SPARE_WORKERS = spare
    n_pkg = rounds * per_round + 2
    paths, _ = make_learnwares(n_pkg, workdir / "pkgs")
    ours = Market(workdir / "ours", device="cpu")
    ref = _reference_market(workdir / "ref", "bench_submit") if reference else None
    for p in paths[:2]:  # warm-up: zygote start, first imports, first database writes
        ours.submit(p)
    threads = 0
    if ref is not None:
        ref_paths, _ = make_learnwares(n_pkg + 6, workdir / "ref_pkgs", seed=1)  # its own copies: no shared caches
        _add_reference(ref, ref_paths[:2])
        probes = iter([(2, 5), (5, 8)])  # three adds per thread setting, their median

        def probe() -> float:
            a, b = next(probes)
            return statistics.median(_add_reference(ref, ref_paths[a:b], offset=a)[1])

        threads = common.pick_reference_threads(probe).threads
        ref_paths = ref_paths[8:]
    timer = PhaseTimer()
    medians: dict[str, list[float]] = defaultdict(list)
    try:
        for r in range(rounds):
            rows: dict[str, list[float]] = defaultdict(list)
            for p in paths[2 + r * per_round: 2 + (r + 1) * per_round]:
                timer.take()
                t = time.perf_counter()
                ours.submit(p)
                rows["lwgpu submit (total)"].append(time.perf_counter() - t)
                for label, sec in timer.take().items():
                    rows[label].append(sec)
            if ref is not None:
                with common.torch_threads(threads):
                    _, ref_t = _add_reference(ref, ref_paths[r * per_round: (r + 1) * per_round], offset=8 + r * per_round)
                rows["reference add_learnware"] = ref_t
            for label, v in rows.items():
                medians[label].append(statistics.median(v))
    finally:
        timer.close()
        ours.close()
        zygote.SPARE_WORKERS = True
    out: dict[str, Any] = {label: statistics.median(v) for label, v in medians.items()}
    out["reference threads"] = threads
    return out


def _table(res: dict[str, Any], res_nospare: dict[str, Any] | None) -> list[str]:
    order = ["reference add_learnware", "lwgpu submit (total)"] + list(dict.fromkeys(l for l, _, _ in PHASES))
    head = "| phase | lwgpu ms | share of submit |" + (" without spare workers ms |" if res_nospare else "")
    lines = [head, "|---|---|---|" + ("---|" if res_nospare else "")]
    total = res["lwgpu submit (total)"]
    for label in order:
        if label not in res or label == "reference threads":
            continue
        ms = 1e3 * res[label]
        share = "" if label.startswith("reference") else f"{res[label] / total:.0%}"
        row = f"| {label} | {ms:.2f} | {share} |"
        if res_nospare:
            row += f" {1e3 * res_nospare[label]:.2f} |" if label in res_nospare else " |"
        lines.append(row)
    if "reference add_learnware" in res:
        ratio = res["lwgpu submit (total)"] / res["reference add_learnware"]
        lines += ["", f"lwgpu / reference time per submission: {ratio:.2f}x (lower = lwgpu faster; each side alone, "
                      f"rounds alternating; the reference on {res['reference threads']} torch thread(s), its faster "
                      "setting probed in this run)"]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 8 packages")
    ap.add_argument("--rounds", type=int, default=common.REPEATS)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--no-spare", action="store_true", help="also run lwgpu without spare workers")
    ap.add_argument("--no-reference", action="store_true",
                    help="lwgpu alone, submissions back to back (the reference is not run)")
    ap.add_argument("--out", default=None, help="markdown file (default: benchmarks/results/submit.md)")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.basicConfig(level=logging.WARNING)
    rounds, per = (3, 8) if args.quick else (max(args.rounds, common.REPEATS), args.per_round)
    with tempfile.TemporaryDirectory() as tmp:
        ref = not args.no_reference
        res = run(rounds, per, Path(tmp) / "a", reference=ref)
        res_ns = run(rounds, per, Path(tmp) / "b", spare=False, reference=ref) if args.no_spare else None
    lines = common.run_header("Cost of one submission: lwgpu `Market.submit` vs the reference `add_learnware`",
                              common.command("bench_submit", argv), [
        "- one package per call (d=16, K=50, a Python linear model; `make_learnwares` of bench_market), "
        + ("lwgpu alone, back to back; " if args.no_reference else
           "each side alone, back to back, rounds alternating (lwgpu's round, then the reference's on equal "
           "packages); ") + "the reference runs the model check in its "
        "own process, lwgpu in a fresh worker forked from a warm zygote inside bubblewrap (when installed)",
        f"- {rounds} rounds of {per} submissions; each number is the median over rounds of the round's median; "
        "phases are wall time of the functions `submit` calls (sub-phases indented; herding overlaps the "
        "worker's load)",
    ])
    lines += _table(res, res_ns)
    out = common.write_text(args.out or common.default_out("submit", args.quick), "\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
