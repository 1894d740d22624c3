"""Reliability of the market: bad packages and models, concurrent writer processes, killed processes.

Everything goes through the public :class:`lwgpu.market.Market` API, the way a user would meet it:

1. **Bad submissions.** For each class of bad package or model (model code that writes outside its
   folder, loops forever, calls ``os._exit``, allocates too much memory, crashes at import, opens a
   network connection; folder packages with a symlink to a system file or a hard link; zips with a
   bomb, a ``..`` or absolute member name, a symlink member; a ``!!python`` tag or a "billion laughs"
   manifest; a malformed, NaN or wrong-gamma RKME; wrong output shape, NaN output, an invalid semantic
   spec, a duplicate) the script submits ``--reps`` instances and records the outcome (refused by
   which :class:`~lwgpu.market.SubmissionError` check and, for package refusals, which rule; or
   accepted), whether anything escaped (a file written outside the package, a marker of a yaml
   payload, a connection that reached a local listener), and the time to refusal (median, max).
2. **Concurrent writer processes** (spawned) storing into one market on SQLite and on PostgreSQL
   (a throw-away server, ``tests/pg_server.py``), each also submitting learnwares the others submit:
   learnwares expected, stored, lost, stored twice.
3. **Crash points**: a child process is killed (``os._exit`` at set points, or SIGKILL at random
   times), the market reopened and checked: acknowledged learnwares kept or lost, the batch in flight
   absent / whole / torn, folders == rows == bank ids.

Run: ``python -m benchmarks.bench_reliability`` (``--quick``: fewer repeats, smaller runs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import common

log = logging.getLogger("bench_reliability")
D, K = 8, 10
GiB = 1 << 30
CRASH_BATCH, CRASH_N = 3, 24  # the crash child's add_many: learnwares per batch, learnwares in all
TESTS = Path(__file__).resolve().parents[1] / "tests"


# ---------------------------------------------------------------------------------------------- learnwares
def _rkme(seed: int, gamma: float = 0.1):
    from lwgpu.spec.rkme import RKME

    rng = np.random.default_rng(seed)
    return RKME(rng.normal(size=(K, D)), np.full(K, 1.0 / K), gamma=gamma)


def _semantic(name: str) -> dict:
    return {"data_type": "table", "task_type": "classification", "input_dim": D, "output_dim": 2,
            "name": name, "description": "reliability benchmark", "library": "sklearn", "license": "MIT",
            "tags": ["reliability"]}


def _sk_model(seed: int):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, D))
    return LogisticRegression(max_iter=200).fit(X, (X[:, 0] > 0).astype(int))


MODEL = '''
import numpy as np
{prelude}

class Model:
    def predict(self, X):
        X = np.asarray(X)
{body}
        return (X[:, 0] > 0).astype(int)
'''


def _python_pkg(tmp: Path, name: str, prelude: str = "", body: str = "", zip_: bool = False, seed: int = 0) -> Path:
    from lwgpu.market import pack_learnware

    src = tmp / f"src_{name}" / "model.py"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(MODEL.format(prelude=textwrap.dedent(prelude),
                                body=textwrap.indent(textwrap.dedent(body), " " * 8) if body else ""))
    out = tmp / (f"pkg_{name}.zip" if zip_ else f"pkg_{name}")
    return pack_learnware({"module": str(src), "class": "Model"}, _semantic(name), _rkme(seed), out)


def _rezip(folder: Path, out: Path, extra: Callable[[zipfile.ZipFile], None]) -> Path:
    """Zip ``folder`` into ``out`` and let ``extra`` add hostile members."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
        extra(zf)
    return out


def _edit_yaml(folder: Path, fn: Callable[[str], str]) -> Path:
    y = folder / "learnware.yaml"
    y.write_text(fn(y.read_text()))
    return folder


# ---------------------------------------------------------------------------------------------- 1. bad packages
class Probe:
    """What a case may leave behind if the market let it escape: files and connections."""

    def __init__(self, tmp: Path) -> None:
        self.outside = Path(tempfile.gettempdir()) / f"lwgpu_rel_escape_{uuid.uuid4().hex}"
        self.marker = Path(tempfile.gettempdir()) / f"lwgpu_rel_yaml_{uuid.uuid4().hex}"
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

    def escaped(self) -> list[str]:
        what = [str(p) for p in (self.outside, self.marker) if p.exists()]
        try:
            conn, _ = self.listener.accept()
            conn.close()
            what.append(f"connection to 127.0.0.1:{self.port}")
        except (BlockingIOError, OSError):
            pass
        for p in (self.outside, self.marker):
            p.unlink(missing_ok=True)
        return what


def _cases(probe: Probe, market_root: Path) -> list[tuple[str, Callable[[Path, str, int], Any]]]:
    """(class, build(tmp, name, seed) -> path to submit) for every class of bad submission."""
    out_file = str(probe.outside)
    in_market = str(market_root / "learnwares" / "planted.txt")

    def zip_member(member: Callable[[zipfile.ZipFile], None]) -> Callable[[Path, str, int], Path]:
        def build(tmp: Path, name: str, seed: int) -> Path:
            return _rezip(_python_pkg(tmp, name, seed=seed), tmp / f"{name}.zip", member)
        return build

    def symlink_member(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("passwd")
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")

    def bomb(zf: zipfile.ZipFile) -> None:  # 512 MiB of zeros, ~0.5 MiB compressed
        info = zipfile.ZipInfo("weights.bin")
        info.compress_type = zipfile.ZIP_DEFLATED  # a ZipInfo is stored uncompressed unless told
        with zf.open(info, "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(32):
                f.write(chunk)

    def folder_symlink(tmp: Path, name: str, seed: int) -> Path:
        p = _python_pkg(tmp, name, seed=seed)
        os.symlink("/etc/passwd", p / "passwd")
        return p

    def folder_hardlink(tmp: Path, name: str, seed: int) -> Path:
        p = _python_pkg(tmp, name, seed=seed)
        os.link(p / "model.py", p / "model_again.py")
        return p

    def yaml_tag(tmp: Path, name: str, seed: int) -> Path:
        return _edit_yaml(_python_pkg(tmp, name, seed=seed), lambda t: t + f"\nextra: !!python/object/apply:os.system "
                                                                       f"['touch {probe.marker}']\n")

    def yaml_laughs(tmp: Path, name: str, seed: int) -> Path:
        lol = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        lol += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
        return _edit_yaml(_python_pkg(tmp, name, seed=seed), lambda t: t + "\nlaughs:\n" +
                          "\n".join("  " + x for x in lol) + "\n")

    def rkme_edit(fn: Callable[[dict], None], raw: str | None = None) -> Callable[[Path, str, int], Path]:
        def build(tmp: Path, name: str, seed: int) -> Path:
            p = _python_pkg(tmp, name, seed=seed)
            f = next(q for q in p.iterdir() if q.suffix == ".json")
            if raw is not None:
                f.write_text(raw)
            else:
                obj = json.loads(f.read_text())
                fn(obj)
                f.write_text(json.dumps(obj))
            return p
        return build

    def nan_z(o: dict) -> None:
        o["z"][0][0] = float("nan")

    def wrong_gamma(tmp: Path, name: str, seed: int) -> Path:
        from lwgpu.market import pack_learnware

        return pack_learnware(_sk_model(seed), _semantic(name), _rkme(seed, gamma=0.37), tmp / f"pkg_{name}")

    def bad_semantic(tmp: Path, name: str, seed: int) -> Path:
        return _edit_yaml(_python_pkg(tmp, name, seed=seed), lambda t: t.replace("task_type: classification",
                                                                                 "task_type: dance"))

    def py(prelude: str = "", body: str = "") -> Callable[[Path, str, int], Path]:
        return lambda tmp, name, seed: _python_pkg(tmp, name, prelude, body, seed=seed)

    return [
        ("model writes outside its folder at import (/tmp)", py(f"open({out_file!r}, 'w').write('escaped')")),
        ("model writes into the market at import", py(f"open({in_market!r}, 'w').write('planted')")),
        ("model opens a network connection at import",
         py(f"import socket\nsocket.create_connection(('127.0.0.1', {probe.port}), timeout=2).close()")),
        ("model crashes at import", py("raise RuntimeError('crash at import')")),
        ("predict loops forever", py(body="while True:\n    pass")),
        ("predict calls os._exit", py("import os", "os._exit(3)")),
        ("predict allocates too much memory", py(body="hog = [np.ones(1 << 25) for _ in range(64)]")),
        ("predict returns the wrong shape", py(body="return np.zeros((len(X), 3))")),
        ("predict returns NaN", py(body="return np.full((len(X), 2), np.nan)")),
        ("folder package: symlink to a system file", folder_symlink),
        ("folder package: hard link", folder_hardlink),
        ("zip: symlink member", zip_member(symlink_member)),
        ("zip: bomb (512 MiB of zeros)", zip_member(bomb)),
        ("zip: '..' member path", zip_member(lambda zf: zf.writestr("../escape.txt", "x"))),
        ("zip: absolute member path", zip_member(lambda zf: zf.writestr(zipfile.ZipInfo(out_file), "x"))),
        ("yaml: !!python tag (os.system)", yaml_tag),
        ("yaml: billion laughs", yaml_laughs),
        ("RKME JSON malformed", rkme_edit(lambda o: None, raw="{not json")),
        ("RKME with NaN", rkme_edit(nan_z)),
        ("RKME of another gamma", wrong_gamma),
        ("semantic spec invalid", bad_semantic),
    ]


def bad_submissions(tmp: Path, reps: int, limits: Any) -> tuple[list[dict], str, bool]:
    """Submit ``reps`` instances of every case; returns (rows, isolation, market unchanged and consistent)."""
    from lwgpu.market import Market, SubmissionError

    root = tmp / "market"
    root.mkdir(parents=True)
    limits = dataclasses.replace(limits, hidden_paths=("/run", str(root.resolve())))  # as the market's default
    m = Market(root, device="cpu", limits=limits)
    base = [m.submit(_python_pkg(tmp / "base", f"good-{i}", seed=100 + i)) for i in range(3)]
    probe = Probe(tmp)
    rows = []
    for label, build in _cases(probe, root) + [("duplicate of a stored learnware", None)]:
        outcomes: Counter = Counter()
        times, escaped, reason = [], set(), ""
        for r in range(reps):
            case_tmp = tmp / "cases" / f"{len(rows)}_{r}"
            case_tmp.mkdir(parents=True)
            if build is None:
                path = _python_pkg(case_tmp, "good-0", seed=100)  # the same content as base[0]
            else:
                path = build(case_tmp, f"case{len(rows)}-{r}", 1000 * len(rows) + r)
            t0 = time.perf_counter()
            try:
                new = m.submit(path)
                outcomes["accepted"] += 1
                m.delete(new)
            except SubmissionError as exc:
                rule = _cause(exc)
                outcomes[f"{exc.check}" + (f" ({rule})" if rule else "")] += 1
                reason = reason or exc.reason
            except Exception as exc:  # noqa: BLE001 - any other exception is a finding, reported as such
                outcomes[f"crashed: {type(exc).__name__}"] += 1
            times.append(time.perf_counter() - t0)
            escaped.update(probe.escaped())
            planted = root / "learnwares" / "planted.txt"
            if planted.exists():
                escaped.add("file planted in learnwares/")
                planted.unlink()
            shutil.rmtree(case_tmp, ignore_errors=True)
        rows.append({"case": label, "tried": reps, "outcomes": dict(outcomes), "escaped": sorted(escaped),
                     "reason": " ".join(reason.split())[:110],
                     "median_s": statistics.median(times), "max_s": max(times)})
        log.info("%s: %s", label, rows[-1])
    ok = sorted(m.ids) == sorted(base) and _consistent(m)
    isolation = m.isolation
    m.close()
    return rows, isolation, ok


def _cause(exc: Any) -> str | None:
    """A short cause of a refusal: the package rule, or what stopped the model (timeout, memory, exit, exception)."""
    if getattr(exc, "rule", None):
        return exc.rule
    reason = exc.reason or ""
    for key, word in (("timed out", "timeout"), ("MemoryError", "MemoryError"), ("exited", "worker exited")):
        if key in reason:
            return word
    m = re.match(r"^(\w+(?:Error|Exception|Exit)):", reason)
    return m.group(1) if m else None


def _consistent(m: Any) -> bool:
    """Folders == rows == bank ids, nothing left in staging or trash."""
    ids = set(m.ids)
    folders = {int(p.name) for p in (Path(m.root) / "learnwares").iterdir() if p.name.isdigit()}
    extra = [p.name for p in (Path(m.root) / "learnwares").iterdir() if not p.name.isdigit()]
    bank = m.bank(D)
    bank_ids = set(bank.ids.tolist()) if bank is not None else set()
    return (folders == ids == bank_ids and not extra and not list((Path(m.root) / ".staging").iterdir())
            and not list((Path(m.root) / ".trash").iterdir()))


# ---------------------------------------------------------------------------------------------- 2. concurrency
def _writer(root: str, db_url: str | None, seeds: list[int], pkgs: list[str] | None, shared: list[str], go: Any,
            out: Any) -> None:
    """Store its own learnwares (``seeds`` with ``add_many``, or their packages ``pkgs`` with ``submit_many``),
    then the ``shared`` packages, in batches of 4; put (stored ids, duplicate count, error) on ``out``."""
    try:
        from lwgpu.market import Market, SubmissionError

        items = [(_sk_model(s), _semantic(f"lw-{s}"), _rkme(s)) for s in seeds]
        m = Market(root, db_url=db_url, device="cpu")
        out.put(("ready",))
        go.wait(300)
        res: list = []
        for s in range(0, len(items), 4):
            if pkgs is None:
                part = items[s:s + 4]
                res += m.add_many([p[0] for p in part], [p[1] for p in part], [p[2] for p in part], batch=4,
                                  progress=False)
            else:
                res += m.submit_many(pkgs[s:s + 4], batch=4, progress=False)
        for s in range(0, len(shared), 4):
            res += m.submit_many(shared[s:s + 4], batch=4, progress=False)
        ids = [r for r in res if isinstance(r, int)]
        dups = sum(isinstance(r, SubmissionError) and r.check == "duplicate" for r in res)
        other = [f"{r.check}: {r.reason}" for r in res if isinstance(r, SubmissionError) and r.check != "duplicate"]
        if other:
            raise RuntimeError(f"refused: {other[:2]}")
        m.close()
        out.put(("done", ids, dups, None))
    except BaseException as exc:  # noqa: BLE001 - reported in the table
        out.put(("done", [], 0, f"{type(exc).__name__}: {exc}"))


def concurrent_writers(tmp: Path, n_procs: int, n_each: int, n_shared: int) -> list[dict]:
    """``n_procs`` spawned writers, ``n_each`` own learnwares each plus ``n_shared`` all of them submit."""
    from lwgpu.market import Market

    dbs: list[tuple[str, str | None, Any]] = [("sqlite", None, None)]
    sys.path.insert(0, str(TESTS))
    try:
        import pg_server

        srv = pg_server.start()
        dbs.append(("postgresql", srv.new_database(), srv))
    except Exception as exc:  # noqa: BLE001 - the table says PostgreSQL was not measured and why
        log.warning("no PostgreSQL server: %s", exc)
        dbs.append((f"postgresql (not run: {exc})", "", None))
    rows = []
    ctx = mp.get_context("spawn")
    for name, url, srv in dbs:
        if url == "":
            rows.append({"db": name})
            continue
        root = tmp / f"conc_{name}"
        Market(root, db_url=url, device="cpu").close()
        from lwgpu.market import pack_learnware

        pk = tmp / f"pkgs_{name}"
        pack = lambda s: str(pack_learnware(_sk_model(s), _semantic(f"lw-{s}"), _rkme(s), pk / f"{s}.zip"))  # noqa: E731
        shared = [pack(s) for s in range(10_000, 10_000 + n_shared)]
        own = [list(range(w * n_each, (w + 1) * n_each)) for w in range(n_procs)]
        out, go = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_writer, args=(str(root), url, own[w], [pack(s) for s in own[w]] if w % 2 else None,
                                                   shared, go, out)) for w in range(n_procs)]
        for p in procs:
            p.start()
        msgs = [out.get(timeout=900) for _ in procs]  # every writer has opened the market (or failed)
        t0 = time.perf_counter()
        go.set()
        res = [m[1:] for m in msgs if m[0] == "done"]
        res += [out.get(timeout=900)[1:] for _ in range(len(procs) - len(res))]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(timeout=60)
        m = Market(root, db_url=url, device="cpu")
        names = Counter(m.get(i).semantic_spec["name"] for i in m.ids)
        expected = n_procs * n_each + n_shared
        acked = [i for r in res for i in r[0]]
        rows.append({"db": name, "writers": n_procs, "submitted": n_procs * (n_each + n_shared),
                     "expected": expected, "stored": len(m), "acknowledged": len(acked),
                     "acknowledged_lost": len(set(acked) - set(m.ids)),
                     "stored_twice": sum(c - 1 for c in names.values() if c > 1),
                     "duplicates_refused": sum(r[1] for r in res), "errors": [r[2] for r in res if r[2]],
                     "consistent": _consistent(m), "wall_s": wall})
        m.close()
        if srv is not None:
            srv.stop()
    return rows


# ---------------------------------------------------------------------------------------------- 3. crash points
CHILD = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from benchmarks.bench_reliability import _rkme, _semantic, _sk_model
    from lwgpu.market import Market
    import lwgpu.market.market as mm
    root, mode, start, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    items = [(_sk_model(s), _semantic(f"lw-{{s}}"), _rkme(s)) for s in range(start, start + n)]
    m = Market(root, device="cpu")
    real_replace = os.replace
    if mode == "rename":  # die after moving a folder into learnwares/, before the transaction commits
        def replace(src, dst):
            real_replace(src, dst)
            if Path(dst).parent.name == "learnwares":
                os._exit(17)
        mm.os.replace = replace
    elif mode == "delete":  # die after moving a folder to .trash, before the delete commits
        def replace(src, dst):
            real_replace(src, dst)
            if Path(dst).parent.name == ".trash":
                os._exit(17)
        mm.os.replace = replace
    elif mode == "commit":  # die after the commit, before the bank append
        mm.BankSet.add_many = lambda *a, **k: os._exit(17)
    print("ready", flush=True)
    if mode == "delete":
        m.delete(min(m.ids))
    for s in range(0, n, batch):
        part = items[s:s + batch]
        ids = m.add_many([p[0] for p in part], [p[1] for p in part], [p[2] for p in part], batch=batch,
                         progress=False)
        print(json.dumps([i if isinstance(i, int) else None for i in ids]), flush=True)
    sys.exit(0)
''')


def _crash_run(root: Path, mode: str, start: int, n: int, batch: int, kill_after: float | None) -> dict:
    """Run the child; return what it acknowledged and the names of the batch in flight."""
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=repo), str(root), mode, str(start), str(n),
                             str(batch)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=repo)
    acked: list[int] = []
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"crash child did not start ({line!r})")
    t0 = time.perf_counter()
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    times = []  # seconds from "ready" to each acknowledgement read
    for line in proc.stdout:
        acked += [i for i in json.loads(line) if i is not None]
        times.append(time.perf_counter() - t0)
    proc.wait()
    return {"acked": acked, "rc": proc.returncode, "ack_times": times}


def crash_points(tmp: Path, reps: int, kill_reps: int) -> list[dict]:
    """Each crash point ``reps`` times (random SIGKILLs ``kill_reps`` times) on a fresh market of 3."""
    from lwgpu.market import Market

    rows = []
    points = [("after folder rename, before commit (os._exit)", "rename", None),
              ("after commit, before bank append (os._exit)", "commit", None),
              ("delete: after move to trash, before commit (os._exit)", "delete", None),
              ("SIGKILL at a random time during add_many (between its first and last batch)", "kill", "random")]
    rng = np.random.default_rng(0)
    batch, n = CRASH_BATCH, CRASH_N
    window = None  # (first, last) acknowledgement of an uninterrupted child: random kills fall between them
    for label, mode, _ in points:
        stats: Counter = Counter()
        reopen = []
        for r in range(kill_reps if mode == "kill" else reps):
            root = tmp / f"crash_{mode}_{r}"
            with Market(root, device="cpu") as m:  # 3 learnwares before the crash
                for s in range(3):
                    m.add(_sk_model(s), _semantic(f"lw-{s}"), _rkme(s))
                before = set(m.ids)
            if mode == "kill" and window is None:  # the first batch also pays one-time costs (JIT, imports)
                calib = tmp / "crash_calibration"
                with Market(calib, device="cpu"):
                    pass
                times = _crash_run(calib, "kill", 100, n, batch, None)["ack_times"]
                window = (times[0], times[-1])
            kill_after = float(rng.uniform(*window)) if mode == "kill" else None
            run = _crash_run(root, mode, 100, n, batch, kill_after)
            t0 = time.perf_counter()
            m = Market(root, device="cpu")
            reopen.append(time.perf_counter() - t0)
            now = set(m.ids)
            names = {m.get(i).semantic_spec["name"] for i in now}
            new = sorted(int(x.split("-")[1]) for x in names if int(x.split("-")[1]) >= 100)
            acked = set(run["acked"])
            stats["runs"] += 1
            stats["kept_before"] += len(before & now)
            stats["lost_before"] += len(before - now)
            stats["acked"] += len(acked)
            stats["acked_lost"] += len(acked - now)
            inflight = [s for s in new if s >= 100 + len(acked)]
            batches = Counter((s - 100) // batch for s in inflight)
            stats["inflight_whole"] += sum(c == batch for c in batches.values())
            stats["inflight_torn"] += sum(c != batch for c in batches.values())
            stats["inflight_absent"] += (mode != "delete") and not batches
            stats["consistent"] += _consistent(m)
            m.close()
        rows.append({"point": label, **stats, "reopen_median_s": statistics.median(reopen)})
        log.info("%s: %s", label, rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------- report
def _fmt_outcomes(o: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(o.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, 2 writers x 6, 1 crash run per point")
    ap.add_argument("--reps", type=int, default=common.REPEATS, help="instances of each bad submission class")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/reliability.md)")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    from lwgpu.market.worker import WorkerLimits

    reps = 2 if args.quick else max(args.reps, common.REPEATS)
    limits = WorkerLimits(timeout_s=10.0, cpu_seconds=10, memory_bytes=1 * GiB)
    with tempfile.TemporaryDirectory(prefix="lwgpu-rel-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        bad, isolation, unchanged = bad_submissions(tmp / "bad", reps, limits)
        t_bad = time.perf_counter() - t0
        conc = concurrent_writers(tmp / "conc", 2 if args.quick else 3, 6 if args.quick else 20,
                                  2 if args.quick else 4)
        crashes = crash_points(tmp / "crash", 1 if args.quick else 3, 2 if args.quick else 8)

    lines = common.run_header("Market reliability: bad submissions, concurrent writers, crashes",
                              common.command("bench_reliability", argv), [
        f"- package code isolation: **{isolation}**; worker limits for this run: {limits.timeout_s:.0f} s per "
        f"request, {limits.cpu_seconds} CPU s, {limits.memory_bytes // GiB} GiB RLIMIT_DATA (the defaults are "
        "60 s / 60 s / 4 GiB; lower here so the loops and hogs are refused quickly)",
        "- every case goes through `Market.submit`; 'refused by' is the `SubmissionError.check` (and for "
        "`package` the `PackageRefused.rule`); 'escaped' lists anything the case managed outside the market's "
        "control (a file written in /tmp or planted in `learnwares/`, the yaml payload's marker file, a "
        "connection to a listener on 127.0.0.1); times are wall seconds from `submit` to the refusal",
        f"- {reps} instances per class (distinct content, so none is refused as a duplicate of another); the "
        f"market held 3 good learnwares, and after all cases held exactly those, consistent: **{unchanged}** "
        f"({t_bad:.0f} s for the whole section); the machine was shared with other jobs (load "
        f"{common.load():.1f}), so times are upper bounds",
    ])
    lines += [
        "| bad submission | tried | outcome (count) | escaped | median s | max s | first reason given (cut) |",
        "| --- | ---: | --- | --- | ---: | ---: | --- |",
    ]
    for r in bad:
        lines.append(f"| {r['case']} | {r['tried']} | {_fmt_outcomes(r['outcomes'])} | "
                     f"{', '.join(r['escaped']) or 'nothing'} | {r['median_s']:.2f} | {r['max_s']:.2f} | "
                     f"{r['reason'].replace('|', '/')} |")
    lines += ["", "Concurrent writer processes (spawned; each opens its own `Market` on the same folder and "
              "database; even-numbered writers store their own learnwares with `add_many`, odd-numbered ones "
              "submit them as zip packages with `submit_many` (checks in isolated workers), in batches of 4; "
              "then every writer submits the same shared packages, which must be stored once):", "",
              "| database | writers | submitted | expected distinct | stored | acknowledged | acknowledged lost | "
              "stored twice | refused as duplicate | consistent | wall s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in conc:
        if "writers" not in r:
            lines.append(f"| {r['db']} | | | | | | | | | | |")
            continue
        err = f" (errors: {'; '.join(r['errors'])})" if r["errors"] else ""
        lines.append(f"| {r['db']} | {r['writers']} | {r['submitted']} | {r['expected']} | {r['stored']} | "
                     f"{r['acknowledged']} | {r['acknowledged_lost']} | {r['stored_twice']} | "
                     f"{r['duplicates_refused']} | {r['consistent']}{err} | {r['wall_s']:.1f} |")
    lines += ["", f"Crash points (a child process adds {CRASH_N} learnwares to a market of 3 with `add_many` in "
              f"batches of {CRASH_BATCH} and dies at the point named; then the market is reopened). 'acknowledged' "
              "= learnwares whose `add_many` call returned before the death; a batch in flight must be absent or "
              "whole, never torn:",
              "", "| crash point | runs | kept / lost (of the 3 before) | acknowledged | acknowledged lost | "
              "in-flight batch absent / whole / torn | consistent after reopen | reopen median s |",
              "| --- | ---: | --- | ---: | ---: | --- | --- | ---: |"]
    for r in crashes:
        lines.append(f"| {r['point']} | {r['runs']} | {r['kept_before']} / {r['lost_before']} | {r['acked']} | "
                     f"{r['acked_lost']} | {r['inflight_absent']} / {r['inflight_whole']} / {r['inflight_torn']} | "
                     f"{r['consistent']} of {r['runs']} | {r['reopen_median_s']:.2f} |")
    out = Path(args.out) if args.out else common.default_out("reliability", args.quick)
    common.write_text(out, "\n".join(lines))


if __name__ == "__main__":
    main()
