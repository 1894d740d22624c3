"""The fast path of one submission keeps its guarantees: spare workers are single-use, load and
predict share one round trip but keep their own failure stages, the RKME finiteness bound agrees
with the computed self term, and small bank appends run numba on one thread only for their block."""
from __future__ import annotations

import math
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from lwgpu.market import SubmissionError, pack_learnware
from lwgpu.market.checks import _finite_self_inner, check_rkme
from lwgpu.market.package import read_manifest
from lwgpu.market.worker import WorkerLimits, check_model_isolated, close_workers, prepare_spare
from lwgpu.spec.rkme import RKME

D, GAMMA = 4, 0.1
SEM = {"data_type": "table", "task_type": "classification", "input_dim": D, "output_dim": 2, "name": "f",
       "library": "scikit-learn", "description": "fast path test", "tags": [], "license": "MIT"}
MODEL = '''
import os
import numpy as np
{top}

class Model:
    def predict(self, X):
{body}
        return np.full(len(X), os.getpid() % 2, dtype=int)
'''


@pytest.fixture(scope="module")
def rkme():
    rng = np.random.default_rng(0)
    return RKME(rng.normal(size=(6, D)).astype(np.float32), np.full(6, 1 / 6, np.float32), gamma=GAMMA)


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    close_workers()


def _pkg(tmp: Path, rkme, body: str = "", top: str = "") -> Path:
    label = uuid.uuid4().hex[:8]
    src = tmp / f"src_{label}" / "model.py"
    src.parent.mkdir()
    body = textwrap.indent(textwrap.dedent(body) or "pass", " " * 8)
    src.write_text(MODEL.format(top=textwrap.dedent(top), body=body))
    return pack_learnware({"module": str(src), "class": "Model"}, dict(SEM, name=label), rkme, tmp / f"pkg_{label}")


def _spare(limits: WorkerLimits, timeout: float = 30.0):
    """The spare worker waiting for ``limits`` (polls until the background fork has stored it)."""
    from lwgpu.market import zygote

    key = (__import__("os").getpid(), zygote._key(limits))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = zygote._SPARES.get(key)
        if item is not None:
            return item
        time.sleep(0.02)
    raise AssertionError("no spare worker was forked within 30 s")


def test_spare_worker_serves_exactly_one_package(tmp_path, rkme):
    from lwgpu.market import zygote

    limits = WorkerLimits(tmp_bytes=112 << 20, warm=True)  # a zygote (and spare) of this test's own
    folder = _pkg(tmp_path, rkme)
    man = read_manifest(folder)
    check_model_isolated(folder, man, SEM, rkme, n_samples=4, limits=limits)  # starts the zygote
    z = zygote.current_zygote(limits)
    if z is None:
        pytest.skip("no zygote here (warm workers unavailable)")
    prepare_spare(limits)  # a no-op: the check's end already started the spare
    first = _spare(limits)
    assert first[4] is z and first[3].proc.rid in z._spares and first[3].proc.rid not in z._children
    check_model_isolated(folder, man, SEM, rkme, n_samples=4, limits=limits)  # takes that spare
    assert first[3].proc.rid not in z._spares
    second = _spare(limits)
    assert second[3].proc.rid != first[3].proc.rid  # a fresh fork, never the used worker again
    assert first[3].proc.rid not in z._spares
    deadline = time.monotonic() + 10
    while (first[3].alive() or first[2].exists()) and time.monotonic() < deadline:  # the reaper's work
        time.sleep(0.02)
    assert not first[3].alive() and not first[2].exists()  # and removes its scratch folder
    other = WorkerLimits(tmp_bytes=112 << 20, warm=True, timeout_s=30.0)  # same zygote, other limits
    assert zygote.take_spare(other) is None  # a spare is only used for the limits it was forked with


def test_pipelined_checks_keep_their_stages(tmp_path, rkme):
    limits = WorkerLimits(warm=True)
    broken_load = _pkg(tmp_path, rkme, top="raise ImportError('no such dependency')")
    with pytest.raises(SubmissionError) as exc:
        check_model_isolated(broken_load, read_manifest(broken_load), SEM, rkme, n_samples=4, limits=limits)
    assert exc.value.check == "model_load" and exc.value.reason == "ImportError: no such dependency"
    broken_predict = _pkg(tmp_path, rkme, body="raise ValueError('bad rows')")
    with pytest.raises(SubmissionError) as exc:
        check_model_isolated(broken_predict, read_manifest(broken_predict), SEM, rkme, n_samples=4, limits=limits)
    assert exc.value.check == "model_predict" and exc.value.reason == "predict raised ValueError: bad rows"
    dies = _pkg(tmp_path, rkme, body="os._exit(3)")
    with pytest.raises(SubmissionError) as exc:
        check_model_isolated(dies, read_manifest(dies), SEM, rkme, n_samples=4, limits=limits)
    assert exc.value.check == "model_predict" and "exited with code 3" in exc.value.reason


def test_finiteness_bound_agrees_with_the_self_term(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(5, D))
    for scale, finite in ((1.0, True), (1e150, True), (1e160, False)):
        spec = RKME(z, np.full(5, scale), GAMMA, dtype="float64")
        brute = sum(scale * scale * math.exp(-GAMMA * float(((a - b) ** 2).sum())) for a in z for b in z)
        assert math.isfinite(brute) == finite
        assert _finite_self_inner(spec, spec.beta.numpy()) == finite  # 1e160: the bound overflows, computed
    spec = RKME(z, np.full(5, 0.2), GAMMA)
    spec.save(tmp_path / "s.json")
    assert check_rkme(tmp_path / "s.json", dict(SEM), GAMMA).d == D
    spec = RKME(z, np.full(5, 1e30), GAMMA)  # float32 on load: weights fine, (sum beta)^2 ~ 2.5e61 in float64
    spec.save(tmp_path / "big.json")
    assert check_rkme(tmp_path / "big.json", dict(SEM), GAMMA).d == D


def test_serial_kernels_only_for_small_batches():
    numba = pytest.importorskip("numba")
    from lwgpu.market.ingest import SERIAL_APPEND_MAX, serial_kernels

    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    with serial_kernels(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with serial_kernels(SERIAL_APPEND_MAX + 1):
        assert numba.get_num_threads() == before
