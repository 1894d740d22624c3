"""Run untrusted model code only in isolated worker processes: submission checks and predictions.

Each package gets its own fresh worker working on its own scratch copy of the package: by default
forked from a warm zygote already inside the sandbox (:mod:`lwgpu.market.zygote`), with
``WorkerLimits(warm=False)`` (or where no zygote works) a fresh interpreter
(:mod:`lwgpu.market.sandbox` describes the isolation and the protocol). No worker ever serves two
packages, so nothing carries over between submitters. A check takes the zygote's *spare* worker
(forked and set up ahead, before its package is known; :func:`lwgpu.market.zygote.take_spare`),
copies the package into its scratch folder, writes ``load`` and ``predict`` in one round trip
(meanwhile this process runs the package's semantic and RKME checks, herds the check rows and hashes
the package) and leaves the worker's end to a background reaper.
Entry points:

- :func:`check_model_isolated` - the ``model_load`` and ``model_predict`` checks, with the semantics
  of :func:`lwgpu.market.checks.check_model` (raises :class:`~lwgpu.market.checks.SubmissionError`);
- :func:`check_many` - those checks for many packages at once, one worker process per package;
- :func:`predict_isolated` - a prediction for a user; ``keep_alive=True`` keeps the package's worker
  (a few per process, least recently used first out) so repeated calls skip the start-up cost;
- :func:`isolation` - ``"bubblewrap"`` or ``"subprocess"``, what is in force.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import SubmissionError, check_output
from .sandbox import WorkerError, WorkerLimits, WorkerProcess, decode_array, isolation, isolation_info
from .zygote import close_zygotes, new_scratch, prespawn, spawn_worker, take_spare

__all__ = ["WorkerLimits", "WorkerError", "IsolatedModel", "ModelCheckJob", "check_model_isolated",
           "check_many", "predict_isolated", "model_info_isolated", "prepare_spare", "close_workers",
           "isolation", "isolation_info"]

logger = logging.getLogger(__name__)

MAX_KEPT_WORKERS = 8  # each holds one package's model (~150 MB for a scikit-learn one)
PRELOAD_SKLEARN = ("joblib", "sklearn.base", "sklearn.utils", "sklearn.linear_model", "sklearn.ensemble",
                   "sklearn.tree", "sklearn.svm", "sklearn.neighbors", "sklearn.preprocessing", "sklearn.pipeline")
PRELOAD_TORCH = ("torch",)


def _rmtree(path: Path) -> None:
    def fix(func: Any, p: str, _exc: Any) -> None:  # the model may leave read-only folders behind
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def preload_for(folder: Path, model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Modules worth importing in the zygote before forking for this package (a hint; never trusted)."""
    kind = model_cfg.get("kind", "python")
    if kind in ("sklearn", "pickle", "torch"):
        return PRELOAD_TORCH if kind == "torch" else PRELOAD_SKLEARN
    module = model_cfg.get("module", model_cfg.get("module_path", "__init__.py"))
    try:
        with open(Path(folder) / str(module), "rb") as fh:
            head = fh.read(1 << 20)
    except (OSError, ValueError):
        return ()
    return (PRELOAD_SKLEARN if b"sklearn" in head else ()) + (PRELOAD_TORCH if b"torch" in head else ())


class IsolatedModel:
    """The model of one package, loaded in its own isolated worker process.

    Parameters
    ----------
    folder : the package folder (copied to the worker's scratch folder; the original is never touched).
    model_cfg : the ``model`` section of its ``learnware.yaml``.
    limits : :class:`WorkerLimits` (defaults when None).

    Methods raise :class:`WorkerError` with ``stage`` ``model_load`` or ``model_predict``; ``raised``
    tells a Python exception of the model's (the worker lives on) from a dead or killed worker.
    """

    def __init__(self, folder: str | os.PathLike, model_cfg: Mapping[str, Any],
                 limits: WorkerLimits | None = None) -> None:
        self.limits = limits or WorkerLimits()
        self.model_cfg = dict(model_cfg)
        self.info: dict[str, Any] | None = None
        self._seq = 0
        warm = self.limits.warm
        preload = preload_for(Path(folder), model_cfg) if warm else ()
        spare = take_spare(self.limits, preload) if warm else None  # forked and set up ahead, never used
        if spare is not None:
            self.scratch, self.proc = spare
        else:
            self.scratch = new_scratch() if warm else Path(tempfile.mkdtemp(prefix="lwgpu-worker-")).resolve()
        try:
            self.folder = self.scratch / "pkg"  # a spare sees it appear in its own (bound) scratch folder
            shutil.copytree(folder, self.folder, symlinks=True)
            if spare is None:
                proc = spawn_worker(self.scratch, self.limits, preload) if warm else None
                self.proc = WorkerProcess(self.scratch, self.limits, proc)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "IsolatedModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def cpu_used(self) -> float:
        """CPU seconds the worker has used (as of its last reply)."""
        return self.proc.cpu_used

    def alive(self) -> bool:
        return self.proc.alive()

    def load(self) -> dict[str, Any]:
        """Load the model in the worker; returns ``{"predict_proba": bool, "classes": list | None}``."""
        hdr, _ = self.proc.request({"op": "load", "folder": str(self.folder), "model": self.model_cfg}, "model_load")
        self._set_info(hdr)
        return self.info

    def load_and_predict(self, X: Any, method: str = "predict", then: Callable[[], None] | None = None
                         ) -> np.ndarray | None:
        """:meth:`load` then :meth:`predict` in one round trip: the ``predict`` request is written right
        after the ``load`` one, without waiting for its reply. ``X`` may be a callable giving the rows
        (or None: load only, returns None); it runs while the worker loads the model. ``then`` runs
        once both requests are written, before the replies are read."""
        written: list[Path] = []

        def second() -> tuple[dict[str, Any], str] | None:
            rows = X() if callable(X) else X
            if rows is None:
                return None
            path, req = self._input(rows, method)
            written.append(path)
            return req, "model_predict"

        try:
            replies = self.proc.request_many(
                [({"op": "load", "folder": str(self.folder), "model": self.model_cfg}, "model_load"), second,
                 *([] if then is None else [then])])  # returns None: nothing more to send
        finally:
            for path in written:
                path.unlink(missing_ok=True)
        self._set_info(replies[0][0])
        return self._decode(replies[1][1]) if len(replies) > 1 else None

    def _set_info(self, hdr: dict[str, Any]) -> None:
        info = hdr.get("info")
        self.info = {"predict_proba": bool(info.get("predict_proba")) if isinstance(info, dict) else False,
                     "classes": info.get("classes") if isinstance(info, dict) else None}

    def _input(self, X: Any, method: str) -> tuple[Path, dict[str, Any]]:
        """Write rows ``X`` into the scratch folder; the file and the ``predict`` request naming it."""
        if method not in ("predict", "predict_proba"):
            raise ValueError(f"method must be 'predict' or 'predict_proba', got {method!r}")
        arr = np.asarray(X.detach().cpu().numpy() if hasattr(X, "detach") else X)
        if arr.dtype.hasobject:
            raise TypeError("X must be an array of numbers (or strings) to cross into the isolated worker")
        self._seq += 1
        path = self.scratch / f"in{self._seq}.npy"
        np.save(path, arr, allow_pickle=False)
        return path, {"op": "predict", "input": str(path), "method": method}

    @staticmethod
    def _decode(payload: bytes) -> np.ndarray:
        try:
            return decode_array(payload)
        except (ValueError, OSError, EOFError) as exc:
            raise WorkerError("model_predict", f"the worker returned an unreadable array: {exc}") from exc

    def predict(self, X: Any, method: str = "predict") -> np.ndarray:
        """``method`` (``predict`` or ``predict_proba``) of the model on rows ``X``, run in the worker."""
        path, req = self._input(X, method)
        try:
            _, payload = self.proc.request(req, "model_predict")
        finally:
            path.unlink(missing_ok=True)
        return self._decode(payload)

    def close(self, wait: bool = True, spare_next: bool = True) -> None:
        """Stop the worker and delete its scratch folder; ``wait=False`` leaves both to a background
        reaper (the worker gets EOF now and is killed if it has not exited within 2 s). ``spare_next``:
        a warm worker's end starts the setting up of the next spare worker (on another thread): after
        this one's work, so the two do not compete for the CPU, and before the caller's next package,
        so its set-up overlaps the caller's own work (a market's commit)."""
        if self.limits.warm and spare_next:
            prespawn(self.limits)
        if not wait:
            _REAPER.put(self)
        else:
            self._stop()

    def _stop(self) -> None:
        """End the worker (EOF, then SIGKILL after 2 s) and delete its scratch folder, waiting for both."""
        proc = getattr(self, "proc", None)
        if proc is not None:
            proc.close()
        _rmtree(self.scratch)


class _Reaper:
    """One long-lived thread that stops used workers and deletes their scratch folders off the
    caller's critical path (a worker is never reused: it only waits here for its end)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def put(self, model: "IsolatedModel") -> None:
        proc = getattr(model, "proc", None)
        if proc is not None:
            try:
                proc.proc.stdin.close()  # EOF now: the worker starts exiting at once
            except OSError:
                pass
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, daemon=True, name="lwgpu-reaper")
                self._thread.start()
            self._pending += 1
        self._queue.put(model)

    def _run(self) -> None:
        while True:
            model = self._queue.get()
            try:
                model._stop()
            except Exception:  # noqa: BLE001 - a failed cleanup must not stop the reaper
                logger.exception("cannot stop an isolated worker")
            with self._lock:
                self._pending -= 1
                self._idle.notify_all()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every handed-over worker is stopped; False on timeout."""
        with self._lock:
            if self._pid != os.getpid():
                return True
            return self._idle.wait_for(lambda: self._pending <= 0, timeout)


_REAPER = _Reaper()


# ---------------------------------------------------------------------------- submission checks
def _reason(exc: WorkerError, limits: WorkerLimits, what: str) -> str:
    if not exc.raised:
        return exc.reason
    reason = f"{what} raised {exc.reason}" if what else exc.reason
    if exc.reason.startswith("MemoryError") and limits.memory_bytes is not None:
        reason += f" (the worker's memory limit is {limits.memory_bytes / 2**30:.3g} GiB)"
    return reason


def check_model_isolated(folder: str | os.PathLike, manifest: Any, semantic: Mapping[str, Any] | None, rkme: Any,
                         n_samples: int = 10, seed: int = 0, limits: WorkerLimits | None = None,
                         static: Callable[[], tuple[Mapping[str, Any], Any]] | None = None,
                         meanwhile: Callable[[], Any] | None = None) -> Any:
    """The ``model_load`` and ``model_predict`` checks in an isolated worker.

    Same semantics as :func:`lwgpu.market.checks.check_model` (``manifest.model`` names the model;
    ``predict`` runs on ``n_samples`` rows herded from ``rkme`` and its output shape is validated),
    but the model never runs in this process. Raises :class:`~lwgpu.market.checks.SubmissionError`.

    Two hooks overlap this process's own work with the worker's (one round trip either way):

    static : given instead of ``semantic`` and ``rkme`` (pass None for both), a callable returning
        ``(semantic, rkme)`` (the static checks): it runs while the worker loads the model, and the
        :class:`SubmissionError` it raises wins over the model's (the worker is then stopped unused).
    meanwhile : a callable run while the worker predicts (the content hash); its result is returned.
    """
    from .samples import sample_inputs  # rows herded from a table RKME, image points, probe texts

    limits = limits or WorkerLimits()
    herd_error: list[ValueError] = []
    got: dict[str, Any] = {"semantic": semantic, "rkme": rkme, "meanwhile": None}

    def rows() -> np.ndarray | None:  # the static checks and herding, while the worker loads the model
        if static is not None:
            got["semantic"], got["rkme"] = static()
        try:
            return sample_inputs(got["rkme"], n_samples, seed=seed)
        except ValueError as exc:
            herd_error.append(exc)
            return None

    def during_predict() -> None:  # nothing to send: work of ours while the worker predicts
        if meanwhile is not None:
            got["meanwhile"] = meanwhile()

    model = IsolatedModel(folder, manifest.model, limits)
    try:
        try:
            out = model.load_and_predict(rows, then=during_predict)  # one round trip
        except WorkerError as exc:
            what = "" if exc.stage == "model_load" else "predict"
            raise SubmissionError(exc.stage, _reason(exc, limits, what)) from exc
    finally:
        model.close(wait=False)  # its end and scratch removal off the critical path; the next spare forked
    if herd_error:
        raise SubmissionError("rkme", f"cannot draw samples from the RKME: {herd_error[0]}") from herd_error[0]
    check_output(out, n_samples, dict(got["semantic"]))
    return got["meanwhile"]


@dataclass
class ModelCheckJob:
    """One package for :func:`check_many`: what :func:`check_model_isolated` takes."""

    folder: Path
    manifest: Any
    semantic: Mapping[str, Any] | None
    rkme: Any
    n_samples: int = 10
    seed: int = 0
    static: Callable[[], tuple[Mapping[str, Any], Any]] | None = None
    meanwhile: Callable[[], Any] | None = None


def check_many(jobs: Sequence[ModelCheckJob], max_workers: int | None = None,
               limits: WorkerLimits | None = None) -> list[Any]:
    """Model checks of many packages in parallel, one fresh worker process per package.

    Returns, in the order of ``jobs``, the :class:`~lwgpu.market.checks.SubmissionError` that refused a
    package, or for one that passed what its ``meanwhile`` returned (None without one). ``max_workers``
    defaults to the number of CPUs (each worker uses ``limits.threads`` threads).
    """
    def one(job: ModelCheckJob) -> Any:
        try:
            return check_model_isolated(job.folder, job.manifest, job.semantic, job.rkme, job.n_samples, job.seed,
                                        limits, static=job.static, meanwhile=job.meanwhile)
        except SubmissionError as exc:
            return exc

    if not jobs:
        return []
    workers = max(1, min(len(jobs), max_workers or os.cpu_count() or 1))
    if workers == 1:  # one package (Market.submit): no thread pool to start
        return [one(j) for j in jobs]
    with ThreadPoolExecutor(workers, thread_name_prefix="lwgpu-check") as ex:
        futures = [ex.submit(one, j) for j in jobs]
        return [f.result() for f in futures]


# ---------------------------------------------------------------------------- predictions
class _KeptWorkers:
    """Workers kept alive per package (key: folder, model section, limits), least recently used out."""

    def __init__(self, max_live: int = MAX_KEPT_WORKERS) -> None:
        self.max_live = max_live
        self._items: OrderedDict[tuple, IsolatedModel] = OrderedDict()
        self._lock = threading.Lock()

    def _take(self, key: tuple, folder: Path, model_cfg: Mapping[str, Any], limits: WorkerLimits) -> IsolatedModel:
        with self._lock:
            model = self._items.pop(key, None)  # exclusive use; a concurrent caller starts its own
        worn = limits.cpu_seconds is not None and model is not None and model.cpu_used > limits.cpu_seconds / 2
        if model is not None and (worn or not model.alive()):
            model.close()
            model = None
        if model is None:
            model = IsolatedModel(folder, model_cfg, limits)
            try:
                model.load()
            except BaseException:
                model.close()
                raise
        return model

    def _give_back(self, key: tuple, model: IsolatedModel) -> None:
        if not model.alive():
            model.close()
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._items[key] = model
            evicted = [old] if old is not None else []
            while len(self._items) > self.max_live:
                evicted.append(self._items.popitem(last=False)[1])
        for m in evicted:
            m.close()

    def run(self, folder: Path, model_cfg: Mapping[str, Any], limits: WorkerLimits, fn: Any) -> Any:
        key = (str(Path(folder).resolve()), json.dumps(dict(model_cfg), sort_keys=True, default=str), limits)
        model = self._take(key, Path(folder), model_cfg, limits)
        try:
            return fn(model)
        finally:
            self._give_back(key, model)

    def close(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        for m in items:
            m.close()


_KEPT = _KeptWorkers()
atexit.register(_KEPT.close)
atexit.register(_REAPER.drain, 10.0)  # runs before the zygotes' own atexit (registered earlier) kills them


def prepare_spare(limits: WorkerLimits | None = None) -> None:
    """Set up a spare worker for ``limits`` in the background unless one is ready or being set up
    (warm workers only); the market calls it after each batch, e.g. for the first warm worker or after
    a check that never started one."""
    limits = limits or WorkerLimits()
    if limits.warm:
        prespawn(limits)


def close_workers() -> None:
    """Stop the workers kept alive by ``predict_isolated(..., keep_alive=True)``, those still ending
    after a check, the spare workers and the zygotes."""
    _KEPT.close()
    _REAPER.drain()
    close_zygotes()


def predict_isolated(folder: str | os.PathLike, model_cfg: Mapping[str, Any], X: Any,
                     limits: WorkerLimits | None = None, method: str = "predict",
                     keep_alive: bool = False) -> np.ndarray:
    """``predict`` (or ``predict_proba``) of a package's model on rows ``X``, run in an isolated worker.

    ``keep_alive=False`` starts and stops a fresh worker; ``True`` reuses this package's worker if one
    is kept (the package's own; it is replaced once it has used half its CPU limit or died). Raises
    :class:`WorkerError` (``stage`` ``model_load`` or ``model_predict``).
    """
    limits = limits or WorkerLimits()
    if keep_alive:
        return _KEPT.run(Path(folder), model_cfg, limits, lambda m: m.predict(X, method))
    with IsolatedModel(folder, model_cfg, limits) as model:
        model.load()
        return model.predict(X, method)


def model_info_isolated(folder: str | os.PathLike, model_cfg: Mapping[str, Any],
                        limits: WorkerLimits | None = None) -> dict[str, Any]:
    """``{"predict_proba": bool, "classes": list | None}`` of a package's model (from a kept worker)."""
    return _KEPT.run(Path(folder), model_cfg, limits or WorkerLimits(), lambda m: dict(m.info or {}))
