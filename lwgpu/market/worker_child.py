"""The isolated worker's own side: run as ``python -I -B worker_child.py CONFIG_JSON`` (see sandbox.py).

It sets its resource limits first, moves its stdout aside as the reply channel (the model's prints
go to stderr), imports :mod:`lwgpu.market.learnware` without the market package's ``__init__``,
then answers requests (one JSON line each on stdin) until stdin closes:

``{"op": "load", "folder": ..., "model": {...}}``  ->  ``{"ok": true, "info": {"predict_proba", "classes"}}``
``{"op": "predict", "input": "x.npy", "method": "predict"|"predict_proba"}``  ->  ``{"ok": true}`` + ``.npy``

Each reply is a JSON line with ``nbytes`` (payload length) and ``cpu`` (CPU seconds used), then the
payload; a model exception is ``{"ok": false, "error": "Type: message"}``. Stdlib + numpy only here.

The zygote's side (warm workers forked from one interpreter) is :mod:`lwgpu.market.zygote_child`.
"""
from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def _set_limits(lim: dict[str, Any]) -> None:
    import resource

    wanted = [(resource.RLIMIT_CORE, 0, 0)]
    if lim["cpu_seconds"] is not None:
        wanted.append((resource.RLIMIT_CPU, int(lim["cpu_seconds"]), int(lim["cpu_seconds"]) + 2))
    for key, res in (("memory_bytes", resource.RLIMIT_DATA), ("address_space_bytes", resource.RLIMIT_AS),
                     ("file_size_bytes", resource.RLIMIT_FSIZE), ("open_files", resource.RLIMIT_NOFILE),
                     ("processes", resource.RLIMIT_NPROC)):
        if lim[key] is not None:
            wanted.append((res, int(lim[key]), int(lim[key])))
    for res, soft, hard in wanted:
        cur_hard = resource.getrlimit(res)[1]
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))


def _set_pdeathsig() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _become_reaper_if_init() -> None:
    """As PID 1 of a new PID namespace (``unshare -p``), which ignores unhandled signals, fork: the
    worker runs as PID 2 and this process only reaps, exiting with its code (128 + signal if killed)."""
    if os.getpid() != 1:
        return
    worker = os.fork()
    if worker == 0:
        return
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == worker:
            os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _import_learnware() -> Any:
    """``lwgpu.market.learnware`` without running ``lwgpu/market/__init__`` (which imports the whole market)."""
    import importlib
    import types

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parents[1]))
    import lwgpu

    if "lwgpu.market" not in sys.modules:
        stub = types.ModuleType("lwgpu.market", "lwgpu.market loaded without its __init__ (isolated worker)")
        stub.__path__ = [str(here)]
        sys.modules["lwgpu.market"] = stub
        lwgpu.market = stub
    lw_mod = importlib.import_module("lwgpu.market.learnware")
    importlib.import_module("lwgpu.market.reference_shim").install()  # reference packages' BaseModel
    return lw_mod


def _model_info(adapter: Any) -> dict[str, Any]:
    import numpy as np

    proba = adapter.kind != "torch" and callable(getattr(adapter.model, "predict_proba", None))
    classes = getattr(adapter.model, "classes_", None)
    try:
        arr = np.asarray(classes) if classes is not None else None
    except Exception:  # noqa: BLE001 - classes_ is only a hint
        arr = None
    ok = arr is not None and arr.ndim == 1 and arr.dtype.kind in "biufU" and arr.size <= 100_000
    return {"predict_proba": proba, "classes": arr.tolist() if ok else None}


def _reply_channel() -> Any:
    """The original stdout, for replies; the model's prints go to stderr, never into it."""
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)
    return reply


def _serve(lw_mod: Any, inp: Any, reply: Any) -> None:
    """Answer requests (JSON lines on ``inp``) on ``reply`` until ``inp`` closes."""
    import resource
    import traceback

    import numpy as np

    def send(hdr: dict[str, Any], payload: bytes = b"") -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        hdr.update(nbytes=len(payload), cpu=ru.ru_utime + ru.ru_stime)
        reply.write(json.dumps(hdr).encode() + b"\n" + payload)
        reply.flush()

    adapter = None
    for line in inp:
        req = json.loads(line)
        try:
            if req["op"] == "load":
                adapter = lw_mod.load_model(req["folder"], req["model"])
                send({"ok": True, "info": _model_info(adapter)})
            elif req["op"] == "predict":
                if adapter is None:
                    raise RuntimeError("no model loaded")
                X = np.load(req["input"], allow_pickle=False)
                fn = adapter.predict if req.get("method", "predict") == "predict" else adapter.model.predict_proba
                out = lw_mod._to_numpy(fn(X))
                if out.dtype.hasobject:
                    raise TypeError(f"{req.get('method', 'predict')} returned an array of dtype object; "
                                    "return numbers (or strings)")
                buf = io.BytesIO()
                np.save(buf, out, allow_pickle=False)
                send({"ok": True}, buf.getvalue())
            else:
                raise ValueError(f"unknown request {req['op']!r}")
        except BaseException as exc:  # noqa: BLE001 - everything the model raises is its answer
            traceback.print_exc()
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    reply.close()


def _child_main(config: str) -> None:
    cfg = json.loads(config)
    _set_limits(cfg["limits"])
    sys.path[:] = [p for p in cfg["sys_path"] if isinstance(p, str)]  # what the parent can import (-I dropped some)
    _set_pdeathsig()
    _become_reaper_if_init()
    _serve(_import_learnware(), sys.stdin.buffer, _reply_channel())


if __name__ == "__main__":
    _child_main(sys.argv[1])
