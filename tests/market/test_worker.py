"""Model code from packages runs only in isolated workers: no writes, no network, limits and timeouts."""
from __future__ import annotations

import socket
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from lwgpu.market import SubmissionError, pack_learnware
from lwgpu.market.checks import run_checks, run_checks_many
from lwgpu.market.learnware import Learnware, load_model
from lwgpu.market.package import content_hash, read_manifest, read_yaml, write_yaml
from lwgpu.market.worker import (WorkerError, WorkerLimits, check_many, check_model_isolated, close_workers,
                                 isolation, isolation_info, predict_isolated)
from lwgpu.spec.rkme import RKME

D, GAMMA = 4, 0.1
BWRAP = isolation() == "bubblewrap"
ISOLATIONS = ["auto", "subprocess"]  # "auto" is bubblewrap where it works
SEM = {"data_type": "table", "task_type": "classification", "input_dim": D, "output_dim": 2, "name": "w",
       "library": "scikit-learn", "description": "worker test", "tags": [], "license": "MIT"}

MODEL = '''
import os, sys
import numpy as np

{top}

class Model:
    def __init__(self, **kw):
        self.kw = kw

    def predict(self, X):
{body}
        return np.zeros(len(X), dtype=int)
'''


@pytest.fixture(scope="module", autouse=True, params=["warm", "cold"])
def worker_path(request):
    """Every test runs with workers forked from a warm zygote and with one fresh interpreter each."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LWGPU_WARM_WORKERS", "1" if request.param == "warm" else "0")
        yield request.param
        close_workers()


@pytest.fixture(scope="module")
def rkme():
    rng = np.random.default_rng(0)
    return RKME(rng.normal(size=(6, D)).astype(np.float32), np.full(6, 1 / 6, np.float32), gamma=GAMMA)


def _pkg(tmp: Path, rkme, body: str = "", top: str = "", name: str = "model.py", label: str | None = None) -> Path:
    label = label or uuid.uuid4().hex[:8]
    src_dir = tmp / f"src_{label}"
    src_dir.mkdir()
    src = src_dir / name
    src.write_text(MODEL.format(top=textwrap.dedent(top), body=textwrap.indent(textwrap.dedent(body), " " * 8)))
    return pack_learnware({"module": str(src), "class": "Model"}, dict(SEM, name=label), rkme, tmp / f"pkg_{label}")


def _check(folder: Path, rkme, **limits) -> None:
    check_model_isolated(folder, read_manifest(folder), SEM, rkme, n_samples=5, limits=WorkerLimits(**limits))


def test_isolation_is_reported():
    assert isolation() in ("bubblewrap", "subprocess")
    assert isolation(WorkerLimits(isolation="subprocess")) == "subprocess"
    info = isolation_info()
    assert info["isolation"] == isolation() and info["read_only_fs"] == BWRAP
    with pytest.raises(ValueError):
        WorkerLimits(isolation="docker")


@pytest.mark.skipif(not BWRAP, reason="a read-only file system needs bubblewrap")
def test_write_outside_the_package_fails(tmp_path, rkme):
    import lwgpu

    targets = [Path(lwgpu.__file__).resolve().parents[1] / f".escaped-{uuid.uuid4().hex}",
               tmp_path / "escaped.txt", Path.home() / f".escaped-{uuid.uuid4().hex}"]
    top = "errors = []\n" + "".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError as e:\n    errors.append(e)\n" for t in targets)
    top += "if len(errors) < %d:\n    raise SystemExit('a write outside the package succeeded')\n" % len(targets)
    top += "open('written_in_scratch.txt', 'w').write('ok')\n"  # cwd: the worker's scratch folder
    folder = _pkg(tmp_path, rkme, top=top)
    try:
        _check(folder, rkme)  # the module survives its failed writes and passes
        assert not any(t.exists() for t in targets)
        assert not (folder / "written_in_scratch.txt").exists()  # the original package is untouched
    finally:
        for t in targets:
            t.unlink(missing_ok=True)
    folder2 = _pkg(tmp_path, rkme, top=f"open({str(targets[0])!r}, 'w').write('x')")
    with pytest.raises(SubmissionError) as info:
        _check(folder2, rkme)
    assert info.value.check == "model_load" and "Read-only file system" in info.value.reason
    assert not targets[0].exists()


@pytest.mark.skipif(not BWRAP, reason="hidden paths need bubblewrap")
def test_hidden_paths_are_empty(tmp_path, rkme):
    import shutil
    import tempfile

    secret = Path(tempfile.mkdtemp(dir="/var/tmp" if Path("/var/tmp").is_dir() else None))
    try:
        (secret / "other_learnware.bin").write_text("private")
        body = f"return np.full(len(X), int(os.path.exists({str(secret / 'other_learnware.bin')!r})))"
        folder = _pkg(tmp_path, rkme, body=body)
        cfg = read_manifest(folder).model
        assert predict_isolated(folder, cfg, np.zeros((2, D))).tolist() == [1, 1]
        hidden = WorkerLimits(hidden_paths=(str(secret),))
        assert predict_isolated(folder, cfg, np.zeros((2, D)), hidden).tolist() == [0, 0]
    finally:
        shutil.rmtree(secret)


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_no_process_outlives_its_worker(tmp_path, rkme, iso):
    if not isolation_info(WorkerLimits(isolation=iso))["pid_namespace"]:
        pytest.skip("a process may escape the worker's process group without a PID namespace")
    tag = str(300 + uuid.uuid4().int % 600) + ".25"
    body = f"import subprocess\nsubprocess.Popen(['sleep', '{tag}'], start_new_session=True)"
    _check(_pkg(tmp_path, rkme, body=body), rkme, isolation=iso)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(["sleep", tag]):
        time.sleep(0.1)
    assert not _running(["sleep", tag])


def _running(argv: list[str]) -> bool:
    want = "\0".join(argv).encode() + b"\0"
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "cmdline").read_bytes() == want:
                return True
        except OSError:
            pass
    return False


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_predict_that_never_returns_times_out(tmp_path, rkme, iso):
    folder = _pkg(tmp_path, rkme, body="while True:\n    pass")
    t0 = time.perf_counter()
    with pytest.raises(SubmissionError) as info:
        _check(folder, rkme, timeout_s=3, isolation=iso)
    assert time.perf_counter() - t0 < 10
    assert info.value.check == "model_predict" and "timed out after 3 s" in info.value.reason


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_os_exit_and_signals_are_refusals(tmp_path, rkme, iso):
    folder = _pkg(tmp_path, rkme, body="print('about to leave', flush=True)\nos._exit(3)")
    with pytest.raises(SubmissionError) as info:
        _check(folder, rkme, isolation=iso)
    assert info.value.check == "model_predict"
    assert "exited with code 3" in info.value.reason and "about to leave" in info.value.reason
    at_import = _pkg(tmp_path, rkme, top="import signal\nos.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(SubmissionError) as info:
        _check(at_import, rkme, isolation=iso)
    assert info.value.check == "model_load" and "signal 9" in info.value.reason


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_memory_limit(tmp_path, rkme, iso):
    big = _pkg(tmp_path, rkme, body="a = np.ones(1 << 28)  # 2 GiB")
    with pytest.raises(SubmissionError) as info:
        _check(big, rkme, memory_bytes=1 << 30, isolation=iso)
    assert info.value.check == "model_predict" and "MemoryError" in info.value.reason
    creep = _pkg(tmp_path, rkme, body="keep = []\nwhile True:\n    keep.append(bytearray(64 << 20))")
    with pytest.raises(SubmissionError) as info:
        _check(creep, rkme, memory_bytes=1 << 30, timeout_s=20, isolation=iso)
    assert info.value.check == "model_predict" and "MemoryError" in info.value.reason


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_no_network(tmp_path, rkme, iso):
    if isolation_info(WorkerLimits(isolation=iso))["network"]:
        pytest.skip("no network namespace available for this isolation")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    body = f"""
    import socket
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2)
    except OSError:
        return np.zeros(len(X), dtype=int)
    raise RuntimeError("connected to the host")
    """
    try:
        _check(_pkg(tmp_path, rkme, body=body), rkme, isolation=iso)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_sklearn_model_passes_and_predicts_like_in_process(tmp_path, rkme):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, D))
    est = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    folder = pack_learnware(est, SEM, rkme, tmp_path / "sk")
    checked = run_checks(folder, GAMMA, n_samples=5)
    assert checked.model is None and checked.semantic_spec["name"] == "w"
    assert run_checks(folder, GAMMA, n_samples=5, isolate=False).model is not None
    Xq = rng.normal(size=(17, D)).astype(np.float32)
    cfg = read_manifest(folder).model
    np.testing.assert_array_equal(predict_isolated(folder, cfg, Xq), est.predict(Xq))
    lw = Learnware(1, SEM, folder, cfg)
    with pytest.raises(AttributeError):
        lw.model  # noqa: B018 - an untrusted learnware never loads its model here
    np.testing.assert_array_equal(lw.predict(Xq), est.predict(Xq))
    np.testing.assert_allclose(lw.predict_proba(Xq), est.predict_proba(Xq), rtol=1e-6)
    np.testing.assert_array_equal(lw.classes_, est.classes_)
    trusted = Learnware(1, SEM, folder, cfg, trust=True)
    np.testing.assert_array_equal(trusted.predict(Xq), load_model(folder, cfg).predict(Xq))
    np.testing.assert_array_equal(trusted.classes_, est.classes_)


def test_same_module_name_in_two_packages(tmp_path, rkme):
    top = "import builtins\nSEEN = hasattr(builtins, '_lwgpu_seen')\nbuiltins._lwgpu_seen = True"
    pkgs = [_pkg(tmp_path, rkme, top=top + f"\nVALUE = {v}", body="return np.full(len(X), 5 if SEEN else VALUE)",
                 label=f"same{v}") for v in (1, 0)]
    for keep in (False, True):
        outs = [predict_isolated(p, read_manifest(p).model, np.zeros((3, D)), keep_alive=keep) for p in pkgs]
        assert [o.tolist() for o in outs] == [[1, 1, 1], [0, 0, 0]]
    assert check_many([_job(p, rkme) for p in pkgs], max_workers=2) == [None, None]  # 5 would be refused


def _job(folder: Path, rkme):
    from lwgpu.market.worker import ModelCheckJob

    return ModelCheckJob(folder, read_manifest(folder), SEM, rkme, n_samples=5)


def test_check_many_and_run_checks_many(tmp_path, rkme):
    good = _pkg(tmp_path, rkme, label="good")
    bad = _pkg(tmp_path, rkme, body="raise RuntimeError('model is broken')", label="bad")
    gone = _pkg(tmp_path, rkme, body="os._exit(5)", label="gone")
    res = check_many([_job(good, rkme), _job(bad, rkme), _job(gone, rkme)], max_workers=2)
    assert res[0] is None
    assert res[1].check == "model_predict" and res[1].reason == "predict raised RuntimeError: model is broken"
    assert res[2].check == "model_predict" and "exited with code 5" in res[2].reason
    (tmp_path / "empty").mkdir()
    many = run_checks_many([good, tmp_path / "empty", gone], GAMMA, n_samples=5, max_workers=2)
    assert many[0].semantic_spec["name"] == "good"
    assert [getattr(m, "check", None) for m in many] == [None, "package", "model_predict"]
    assert many[0].digest == content_hash(good)  # computed while the worker predicted


def test_run_checks_many_reports_static_failures_before_the_models(tmp_path, rkme):
    """The worker loads the model while the semantic/rkme checks run here: a package failing both
    is refused for the static check, as when the checks ran one after the other."""
    folder = _pkg(tmp_path, rkme, body="raise RuntimeError('model is broken')", label="both")
    data = read_yaml(folder)
    data["semantic_spec"]["input_dim"] = D + 1  # the RKME has D dimensions
    write_yaml(folder, data)
    bad_load = _pkg(tmp_path, rkme, top="raise ImportError('no such library')", label="badload")
    data = read_yaml(bad_load)
    data["semantic_spec"]["data_type"] = "no-such-type"
    write_yaml(bad_load, data)
    res = run_checks_many([folder, bad_load], GAMMA, n_samples=5, max_workers=1)
    assert [r.check for r in res] == ["rkme", "semantic"]
    assert "declares input_dim=5" in res[0].reason


def test_untrusted_predict_failures_raise_worker_error(tmp_path, rkme):
    folder = _pkg(tmp_path, rkme, body="os._exit(4)")
    lw = Learnware(None, SEM, folder, read_manifest(folder).model, limits=WorkerLimits(timeout_s=20))
    with pytest.raises(WorkerError, match="exited with code 4"):
        lw.predict(np.zeros((2, D)))
    with pytest.raises(TypeError, match="array of numbers"):
        predict_isolated(folder, read_manifest(folder).model, np.array([object()] * 2))


# ---------------------------------------------------------------------------- warm zygote workers
def _zygote(limits: WorkerLimits, worker_path: str):
    """The zygote serving ``limits`` (started by a passing check); skips where none works here."""
    from lwgpu.market.zygote import current_zygote

    if worker_path != "warm":
        pytest.skip("a warm-worker test")
    z = current_zygote(limits)
    if z is None or z.dead:
        pytest.skip("no zygote works here (see the 'warm workers unavailable' warning)")
    return z


WRITER = """
import builtins, socket, types
builtins._lwgpu_leak = True
sys.modules["lwgpu_leak_module"] = types.ModuleType("lwgpu_leak_module")
os.environ["LWGPU_LEAK"] = "1"
for path in ("/tmp/lwgpu-leak-{tag}", "/dev/shm/lwgpu-leak-{tag}"):
    try:
        open(path, "w").write("x")
    except OSError:
        pass
LISTENER = socket.socket(socket.AF_UNIX)
LISTENER.bind("\\0lwgpu-leak-{tag}")
LISTENER.listen(1)
np.random.seed(1234)
"""

READER = """
import builtins, socket
seen = [name for name, hit in (("builtins", hasattr(builtins, "_lwgpu_leak")),
                               ("sys.modules", "lwgpu_leak_module" in sys.modules),
                               ("environ", "LWGPU_LEAK" in os.environ),
                               ("/tmp", os.path.exists("/tmp/lwgpu-leak-{tag}")),
                               ("/dev/shm", os.path.exists("/dev/shm/lwgpu-leak-{tag}"))) if hit]
try:
    socket.socket(socket.AF_UNIX).connect("\\0lwgpu-leak-{tag}")
    seen.append("abstract socket")
except OSError:
    pass
root, me = os.path.split(os.getcwd())
seen += [f"scratch folder {{n}}" for n in os.listdir(root) if n != me]
seen += [f"process {{p}}" for p in os.listdir("/proc") if p.isdigit() and int(p) > 2]
if seen:
    raise RuntimeError(f"state carried over: {{seen}}")
"""


def test_no_state_carried_between_forks_of_one_zygote(tmp_path, rkme, worker_path):
    from lwgpu.market.worker import IsolatedModel

    tag = uuid.uuid4().hex[:8]
    writer = _pkg(tmp_path, rkme, top=WRITER.format(tag=tag), label="writer")
    reader = _pkg(tmp_path, rkme, body=READER.format(tag=tag), label="reader")
    limits = WorkerLimits(warm=True)
    _check(reader, rkme, warm=True)
    z = _zygote(limits, worker_path)
    X = np.zeros((3, D), dtype=np.float32)
    with IsolatedModel(writer, read_manifest(writer).model, limits) as w:
        w.load()  # the writer's module ran and its worker lives on: concurrent workers see none of it
        with IsolatedModel(reader, read_manifest(reader).model, limits) as r:
            r.load()
            assert r.predict(X).tolist() == [0, 0, 0]
    _check(reader, rkme, warm=True)  # nor does a later one
    assert current_zygote_pid(limits) == z.proc.pid and z.forks >= 4
    assert not Path(f"/tmp/lwgpu-leak-{tag}").exists()
    draw = _pkg(tmp_path, rkme, body="return np.random.randint(0, 2**31, size=len(X))", label="draw")
    cfg = read_manifest(draw).model
    first, second = (predict_isolated(draw, cfg, X, limits) for _ in range(2))
    assert first.tolist() != second.tolist()  # numpy's generator is reseeded per fork


def current_zygote_pid(limits: WorkerLimits) -> int | None:
    from lwgpu.market.zygote import current_zygote

    z = current_zygote(limits)
    return None if z is None else z.proc.pid


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_runaway_worker_is_killed_and_the_zygote_serves_on(tmp_path, rkme, iso, worker_path):
    good = _pkg(tmp_path, rkme, label="good")
    _check(good, rkme, timeout_s=2, isolation=iso, warm=True)
    z = _zygote(WorkerLimits(isolation=iso), worker_path)
    spin = _pkg(tmp_path, rkme, body="while True:\n    pass", label="spin")
    live = set(z._children)  # workers kept alive by other tests
    t0 = time.perf_counter()
    with pytest.raises(SubmissionError, match="timed out after 2 s"):
        _check(spin, rkme, timeout_s=2, isolation=iso, warm=True)
    assert time.perf_counter() - t0 < 10
    assert set(z._children) <= live and z.proc.poll() is None  # the zygote reported the kill and lives on
    _check(good, rkme, timeout_s=2, isolation=iso, warm=True)
    assert current_zygote_pid(WorkerLimits(isolation=iso)) == z.proc.pid


def test_zygote_is_restarted_after_being_killed(tmp_path, rkme, worker_path):
    import os
    import signal
    import threading

    good = _pkg(tmp_path, rkme, label="good")
    _check(good, rkme, warm=True)
    z = _zygote(WorkerLimits(), worker_path)
    slow = _pkg(tmp_path, rkme, body="import time\ntime.sleep(60)", label="slow")
    result = []

    def run() -> None:
        try:
            _check(slow, rkme, warm=True)
        except SubmissionError as exc:
            result.append(exc)

    live = set(z._children)  # workers kept alive by other tests
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while not any(c.pid > 0 for i, c in list(z._children.items()) if i not in live) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the slow package's worker is forked
    time.sleep(0.5)
    os.killpg(z.proc.pid, signal.SIGKILL)
    thread.join(timeout=20)
    assert not thread.is_alive() and result and "signal 9" in result[0].reason  # its worker died with it
    _check(good, rkme, warm=True)
    assert current_zygote_pid(WorkerLimits()) not in (None, z.proc.pid)


def test_zygote_is_recycled_after_max_forks(tmp_path, rkme, worker_path, monkeypatch):
    from lwgpu.market import zygote

    good = _pkg(tmp_path, rkme, label="good")
    limits = WorkerLimits(tmp_bytes=128 << 20, warm=True)  # a zygote of its own
    _check(good, rkme, tmp_bytes=128 << 20, warm=True)
    z = _zygote(limits, worker_path)
    monkeypatch.setattr(zygote, "MAX_FORKS", z.forks + 1)
    _check(good, rkme, tmp_bytes=128 << 20, warm=True)  # the last fork of this zygote
    _check(good, rkme, tmp_bytes=128 << 20, warm=True)  # served by a new one
    assert current_zygote_pid(limits) not in (None, z.proc.pid)
    assert z.proc.wait(timeout=10) is not None  # the retired zygote exits once its workers have


def test_warm_falls_back_to_cold_where_no_zygote_starts(tmp_path, rkme, worker_path, monkeypatch, caplog):
    from lwgpu.market import zygote

    if worker_path != "warm":
        pytest.skip("a warm-worker test")
    monkeypatch.setattr(zygote, "_BROKEN", {})
    monkeypatch.setattr(zygote, "_CHILD", str(tmp_path / "no_such_zygote.py"))
    limits = WorkerLimits(tmp_bytes=96 << 20, warm=True)  # a zygote of its own
    good = _pkg(tmp_path, rkme, label="good")
    _check(good, rkme, tmp_bytes=96 << 20, warm=True)  # served by a cold worker
    assert "warm workers unavailable" in caplog.text and zygote.current_zygote(limits) is None
