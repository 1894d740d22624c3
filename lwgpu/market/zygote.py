"""Warm isolated workers: a pristine zygote inside the sandbox forks one fresh worker per package.

Starting Python and importing numpy (0.16-0.28 s) or scikit-learn/scipy (1.5 s more) dominated a
cold check. A zygote, one per isolation kind and sandbox settings (``hidden_paths``, ``tmp_bytes``,
``threads``; the other limits are set per worker), starts on first use *inside* the sandbox
(bubblewrap, or ``unshare -U -r -m -n -p``), imports only trusted code (numpy and lwgpu's model
loader; scikit-learn or torch before the first fork for a package that needs them: see
:func:`lwgpu.market.worker.preload_for`) and never runs package code. Per package it forks:

- *A* (:mod:`lwgpu.market.zygote_child`): PID 1 of new PID, mount, network, IPC and UTS
  namespaces. It mounts fresh tmpfs over ``/tmp``, ``/dev/shm``, the hidden paths and the
  market-private scratch root, binds back only its own scratch folder, makes every other mount
  read-only (``/dev`` included) and mounts a fresh read-only ``/proc``. The folder name comes from
  the parent on the worker's own stdin, never through the zygote, so the zygote's memory (which
  every later fork inherits) holds no other package's name.
- *B*: PID 2, the worker: it drops all capabilities (bounding set, ambient, effective and permitted;
  no-new-privs), sets the rlimits of :class:`WorkerLimits`, chdirs into its folder and answers
  ``load``/``predict`` with the cold worker's protocol, straight to the parent over its own pipes.

Nothing carries from one package to the next: each worker is a fresh fork of the pristine zygote
(module globals, ``sys.modules``; numpy's generator reseeded) with its own ``/tmp``, network, IPC,
PIDs and view of the scratch root. The parent kills a runaway worker by asking the zygote to
SIGKILL its A, which ends the whole PID namespace (what it started included); if the zygote does
not answer it kills the zygote, and with it every worker it forked. A dead zygote is restarted on
the next fork; one that has forked :data:`MAX_FORKS` workers or lived :data:`MAX_AGE_S` seconds is
retired (it exits once its workers have) and replaced. Before a zygote is used, one probe fork
checks that its worker sees only itself and its own folder; where the namespaces are not available
(no user namespaces, a locked ``/proc``), the zygote is refused and workers start cold.

Spare workers: after each warm worker is handed out, the next one is forked in the background (on
the zygote-starting thread) and set up completely (namespaces, mounts, capabilities dropped,
rlimits, a warm-up of trusted request code) before its package is known; the next package takes it
(:func:`take_spare`) if it was forked with the same limits and after the modules it needs were
preloaded, from a zygote not due for replacement. A spare serves one package, like any worker.
``LWGPU_SPARE_WORKERS=0`` turns them off.

Residual risks, compared with a cold worker (one sandbox per package): docs/isolation.md.
"""
from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .sandbox import WorkerLimits, _bubblewrap, _bwrap_command, _env, _needed_paths, _probe, isolation

logger = logging.getLogger(__name__)

MAX_FORKS = 1000  # workers one zygote forks before it is replaced
MAX_AGE_S = 1800.0  # seconds a zygote serves before it is replaced
START_TIMEOUT_S = 60.0  # a zygote's start (and a preload before a fork)
_CHILD = str(Path(__file__).resolve().with_name("zygote_child.py"))


class ZygoteUnavailable(RuntimeError):
    """A zygote could not start or fork here (the caller starts a cold worker instead)."""


# ---------------------------------------------------------------------------- scratch folders
_ROOTS: dict[int, Path] = {}
_ROOT_LOCK = threading.Lock()


def scratch_root() -> Path:
    """This process's private scratch root (0700, removed at exit); zygotes bind it read-write."""
    with _ROOT_LOCK:
        pid = os.getpid()
        if pid not in _ROOTS:
            _ROOTS[pid] = Path(tempfile.mkdtemp(prefix="lwgpu-scratch-")).resolve()
            atexit.register(lambda: os.getpid() == pid and shutil.rmtree(_ROOTS[pid], True))
        return _ROOTS[pid]


def new_scratch() -> Path:
    """A fresh folder (0700, a random 128-bit name) in :func:`scratch_root` for one worker."""
    path = scratch_root() / secrets.token_hex(16)
    path.mkdir(mode=0o700)
    return path


# ---------------------------------------------------------------------------- one zygote
class ZygoteProc:
    """A worker forked by a zygote, as :class:`~lwgpu.market.sandbox.WorkerProcess` drives it
    (``stdin``/``stdout``/``stderr``, ``poll``, ``wait``, ``kill``, like a ``Popen``)."""

    def __init__(self, zygote: "Zygote", rid: int, stdin: Any, stdout: Any, stderr: Any) -> None:
        self.zygote, self.rid, self.pid = zygote, rid, -1
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None
        self._done = threading.Event()

    def _exited(self, status: int | None) -> None:
        self.returncode = -signal.SIGKILL if status is None else os.waitstatus_to_exitcode(status)
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"zygote worker {self.pid}", timeout)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the worker's PID namespace; the whole zygote if it does not confirm within 5 s."""
        if self._done.is_set():
            return
        try:
            self.zygote.send({"op": "kill", "id": self.rid})
        except ZygoteUnavailable:
            self.zygote.terminate()  # gone already: so are its workers
        if not self._done.wait(5.0):
            logger.error("zygote %d did not kill worker %d; killing the zygote", self.zygote.proc.pid, self.pid)
            self.zygote.terminate()


class Zygote:
    """One zygote process (see the module docstring) for ``kind`` and ``limits``.

    Raises :class:`ZygoteUnavailable` when it cannot start or its probe worker sees too much.
    """

    def __init__(self, kind: str, limits: WorkerLimits) -> None:
        self.kind, self.limits, self.started, self.forks, self.owner = kind, limits, time.monotonic(), 0, os.getpid()
        self.dead, self.preloaded = False, set()  # the modules asked for
        self._ids = itertools.count(1)
        self._pending: dict[int, queue.Queue] = {}
        self._children: dict[int, ZygoteProc] = {}
        self._spares: dict[int, ZygoteProc] = {}  # forked ahead, not yet given a package (see take_spare)
        self._lock = threading.Lock()
        self._tail: deque[str] = deque(maxlen=50)
        root = str(scratch_root())
        if kind == "bubblewrap":
            prefix = _bwrap_command(_bubblewrap(), root, limits, zygote=True)
        else:
            prefix = list(_unshare_zygote())
            if not prefix:
                raise ZygoteUnavailable("no 'unshare -U -r -m -n -p' here for a subprocess zygote")
        cfg = {"limits": asdict(limits), "sys_path": [p for p in sys.path if os.path.isabs(p)],
               "scratch_root": root, "needed": list(_needed_paths())}
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(prefix + [sys.executable, "-I", "-B", _CHILD, json.dumps(cfg)],
                                         stdin=theirs.fileno(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         cwd=root, env=_env(root, kind, limits), start_new_session=True, close_fds=True)
        except OSError as exc:
            self.sock.close()
            raise ZygoteUnavailable(f"cannot start a {kind} zygote: {exc}") from exc
        finally:
            theirs.close()
        self._hello: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="lwgpu-zygote").start()
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True, name="lwgpu-zygote-err")
        self._err_thread.start()
        try:
            hello = self._hello.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            hello = None
        if not hello:
            self.terminate()
            self._err_thread.join(timeout=2.0)
            raise ZygoteUnavailable(f"the {kind} zygote did not start: {self.stderr_tail()}")
        if hello.get("threads", 1) > 1:
            logger.warning("the %s zygote runs %s threads; forking it may deadlock", kind, hello["threads"])
        self._probe()
        logger.info("started a %s zygote (pid %d)", kind, self.proc.pid)

    def _probe(self) -> None:
        scratch = new_scratch()
        try:
            child = self.spawn(scratch, probe=True)
            child.stdin.close()
            rc = child.wait(START_TIMEOUT_S)  # a probe that hangs is killed with the zygote below
            with child.stdout, child.stderr:
                err = child.stderr.read(1 << 16).decode("utf-8", "replace")
        except (ZygoteUnavailable, OSError, subprocess.TimeoutExpired) as exc:
            rc, err = None, str(exc)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if rc != 0:
            self.terminate()
            raise ZygoteUnavailable(f"the {self.kind} zygote's probe worker failed ({rc}): {err[-2000:]}")

    # -- channel
    def send(self, msg: dict[str, Any], fds: Sequence[int] = ()) -> None:
        try:
            socket.send_fds(self.sock, [json.dumps(msg).encode()], list(fds))
        except OSError as exc:
            raise ZygoteUnavailable(f"the zygote is gone ({exc})") from exc

    def _read(self) -> None:
        while True:
            try:
                raw = self.sock.recv(1 << 16)
            except OSError:
                raw = b""
            if not raw:
                self.sock.close()
                break
            msg = json.loads(raw)
            op = msg.get("op")
            if op == "hello":
                self._hello.put(msg)
            elif op == "forked":
                with self._lock:
                    slot = self._pending.pop(msg["id"], None)
                if slot is not None:
                    slot.put(msg)
            elif op == "exited":
                with self._lock:
                    child = self._children.pop(msg["id"], None) or self._spares.pop(msg["id"], None)
                if child is not None:
                    child._exited(msg["status"])
            elif op == "preloaded" and msg.get("threads", 1) > 1:
                logger.warning("the %s zygote runs %s threads after preloading", self.kind, msg["threads"])
        with self._lock:
            self.dead = True
            pending = list(self._pending.values())
            children = [*self._children.values(), *self._spares.values()]
            self._pending.clear()
            self._children.clear()
            self._spares.clear()
        self._hello.put(None)
        for slot in pending:
            slot.put({"error": f"the zygote died: {self.stderr_tail()}"})
        for child in children:
            child._exited(None)

    def _read_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self._tail.append(line.decode("utf-8", "replace"))
        self.proc.stderr.close()

    def stderr_tail(self) -> str:
        return "".join(self._tail)[-2000:]

    # -- workers
    def worn(self) -> bool:
        return (self.dead or self.proc.poll() is not None or self.forks >= MAX_FORKS
                or time.monotonic() - self.started > MAX_AGE_S)

    def adopt(self, child: ZygoteProc) -> None:
        """A spare worker (``spawn(..., spare=True)``) now serves a package: count it among the children."""
        with self._lock:
            if self._spares.pop(child.rid, None) is not None:
                self._children[child.rid] = child

    def spawn(self, scratch: Path, limits: WorkerLimits | None = None, preload: Sequence[str] = (),
              probe: bool = False, spare: bool = False) -> ZygoteProc:
        """Fork a worker for ``scratch`` (a :func:`new_scratch` folder) that sets the rlimits of ``limits``
        (default: the zygote's); ``spare``: kept apart from the children until :meth:`adopt`. Raises
        :class:`ZygoteUnavailable`."""
        (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
        rid, slot = next(self._ids), queue.Queue(1)
        child = ZygoteProc(self, rid, os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"))
        try:
            with self._lock:
                if self.dead:
                    raise ZygoteUnavailable("the zygote is gone")
                todo = [m for m in preload if m not in self.preloaded]
                if todo:
                    self.send({"op": "preload", "modules": todo})
                    self.preloaded.update(todo)
                self._pending[rid] = slot
                (self._spares if spare else self._children)[rid] = child
                self.send({"op": "fork", "id": rid}, [in_r, out_w, err_w])
                self.forks += 1
            init = {"scratch": str(scratch), "limits": asdict(limits or self.limits), "probe": probe,
                    "warm_up": spare}
            child.stdin.write(json.dumps(init).encode() + b"\n")
            child.stdin.flush()
            reply = slot.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            reply = {"error": f"no answer within {START_TIMEOUT_S:g} s"}
        except (ZygoteUnavailable, OSError) as exc:  # OSError: the zygote closed the worker's stdin (it died)
            reply = {"error": str(exc)}
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        if "error" in reply:
            with self._lock:
                self._children.pop(rid, None)
                self._spares.pop(rid, None)
            for f in (child.stdin, child.stdout, child.stderr):
                f.close()
            raise ZygoteUnavailable(f"the zygote could not fork: {reply['error']}")
        child.pid = reply["pid"]
        return child

    def retire(self) -> None:
        """No more forks: the zygote exits once its workers have."""
        try:
            self.send({"op": "retire"})
        except ZygoteUnavailable:
            pass

    def terminate(self) -> None:
        """Kill the zygote and, with its sandbox, every worker it forked."""
        self.dead = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # the reader thread sees the end and closes it
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            logger.error("zygote %d did not die after SIGKILL", self.proc.pid)


# ---------------------------------------------------------------------------- the zygotes of this process
_POOL: dict[tuple, Zygote] = {}
_RETIRED: list[Zygote] = []
_BROKEN: dict[tuple, str] = {}
_LOCKS: dict[tuple, threading.Lock] = {}
_POOL_LOCK = threading.Lock()


def _unshare_zygote() -> tuple[str, ...]:
    """The ``unshare`` prefix of a subprocess-kind zygote (root of a new user namespace, with mount,
    network and PID namespaces), or ``()`` where it does not work here."""
    unshare, true = shutil.which("unshare"), shutil.which("true")
    cmd = (unshare, "-U", "-r", "-m", "-n", "-p", "-f", "--kill-child") if unshare else ()
    return cmd if cmd and true and _probe([*cmd, true]) else ()


#: One long-lived thread starts the zygotes: --die-with-parent (PR_SET_PDEATHSIG) follows the *thread* that
#: forked a zygote, so one started by check_many's pool died with the pool.
_SPAWNER: dict[int, ThreadPoolExecutor] = {}


def _start_zygote(key: tuple) -> Zygote:
    return _spawner().submit(Zygote, *key).result()


def _zygote(key: tuple) -> Zygote:
    pool_key = (os.getpid(), key)  # a forked copy of this process starts zygotes of its own
    with _POOL_LOCK:
        lock = _LOCKS.setdefault(pool_key, threading.Lock())
    with lock:
        z = _POOL.get(pool_key)
        if z is not None and z.worn():
            with _POOL_LOCK:
                _POOL.pop(pool_key, None)
                _RETIRED[:] = [r for r in _RETIRED if not r.dead] + [z]
            z.retire()
            _drop_spares(z)  # the retired zygote exits once its workers have
            z = None
        if z is None:
            z = _start_zygote(key)
            with _POOL_LOCK:
                _POOL[pool_key] = z
        return z


def _key(limits: WorkerLimits) -> tuple[str, WorkerLimits]:
    kind = isolation(limits)  # a zygote serves every limits with the same sandbox and threads
    return kind, WorkerLimits(threads=limits.threads, tmp_bytes=limits.tmp_bytes, hidden_paths=limits.hidden_paths,
                              isolation=kind, warm=True)


def current_zygote(limits: WorkerLimits) -> Zygote | None:
    """The zygote now serving ``limits`` (None before the first warm worker or where none works)."""
    return _POOL.get((os.getpid(), _key(limits)))


def spawn_worker(scratch: Path, limits: WorkerLimits, preload: Sequence[str] = ()) -> ZygoteProc | None:
    """A worker forked from the zygote for ``limits`` (started on first use), or None where no zygote
    works here (then the caller starts a cold worker; the reason is logged once)."""
    key = _key(limits)
    for _ in range(2):  # a zygote that died is replaced once
        if key in _BROKEN:
            return None
        try:
            z = _zygote(key)
        except ZygoteUnavailable as exc:
            _BROKEN[key] = str(exc)
            logger.warning("warm workers unavailable (%s); starting one interpreter per package", exc)
            return None
        try:
            return z.spawn(scratch, limits, preload)
        except ZygoteUnavailable as exc:
            logger.warning("zygote %d failed (%s); replacing it", z.proc.pid, exc)
            z.terminate()
    return None


# ---------------------------------------------------------------------------- spare workers
#: Keep one forked, set-up and never used worker per zygote ready (its namespaces, mounts, dropped
#: capabilities and reader threads done), so a submission does not wait for that set-up. Single-use:
#: a spare serves exactly one package, then the next spare is forked from the pristine zygote.
SPARE_WORKERS = os.environ.get("LWGPU_SPARE_WORKERS", "1").lower() not in ("0", "false", "no", "off")
_SPARES: dict[tuple, tuple[WorkerLimits, frozenset, Path, Any, Zygote]] = {}
_SPARE_LOCK = threading.Lock()
SPARE_WAIT_S = 2.0  # the longest a taker waits for a spare being forked before forking its own
_SPARE_PENDING: dict[tuple, tuple[WorkerLimits, Any]] = {}  # pool key -> (limits, Future) of a spare being forked


def _spawner() -> ThreadPoolExecutor:
    pid = os.getpid()
    with _POOL_LOCK:
        ex = _SPAWNER.get(pid)
        if ex is None:
            ex = _SPAWNER[pid] = ThreadPoolExecutor(1, thread_name_prefix="lwgpu-zygote-spawner")
        return ex


def _drop_spare(item: tuple) -> None:
    _, _, scratch, wp, _ = item
    try:
        wp.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def take_spare(limits: WorkerLimits, preload: Sequence[str] = ()) -> tuple[Path, Any] | None:
    """``(scratch, WorkerProcess)`` of the spare worker for ``limits`` when one is ready, alive, forked
    with the same limits after ``preload`` was imported, and its zygote is not due for replacement;
    else None (an unfit spare is stopped in the background). A spare of these limits still being forked
    is waited for (the zygote forks one worker at a time: a fork of our own would queue behind it)."""
    pool_key = (os.getpid(), _key(limits))
    with _SPARE_LOCK:
        item = _SPARES.pop(pool_key, None)
        pending = _SPARE_PENDING.get(pool_key) if item is None else None
    if pending is not None and pending[0] == limits:
        try:
            pending[1].result(timeout=SPARE_WAIT_S)
        except Exception:  # noqa: BLE001 - no spare then: the caller forks its own worker
            return None
        with _SPARE_LOCK:
            item = _SPARES.pop(pool_key, None)
    if item is None:
        return None
    lim, pre, scratch, wp, z = item
    if lim == limits and set(preload) <= pre and not z.worn() and wp.alive():
        z.adopt(wp.proc)
        return scratch, wp
    _background(_drop_spare, item)
    return None


def _background(fn: Any, *args: Any) -> bool:
    """Run ``fn(*args)`` on the spawner thread; False (nothing run) once the interpreter is shutting down."""
    try:
        _spawner().submit(fn, *args)
        return True
    except RuntimeError:  # cannot schedule new futures after interpreter shutdown
        return False


def prespawn(limits: WorkerLimits) -> None:
    """Fork the next spare worker for ``limits`` in the background (from the current zygote only: a
    missing or worn one is started or replaced on the next :func:`spawn_worker`)."""
    if not SPARE_WORKERS:
        return
    pool_key = (os.getpid(), _key(limits))
    with _SPARE_LOCK:
        if pool_key in _SPARE_PENDING or (pool_key in _SPARES and _SPARES[pool_key][0] == limits):
            return
        try:
            future = _spawner().submit(_make_spare, limits)
        except RuntimeError:  # interpreter shutdown
            return
        _SPARE_PENDING[pool_key] = (limits, future)
    future.add_done_callback(lambda f: _forget_pending(pool_key, f))


def _forget_pending(pool_key: tuple, future: Any) -> None:
    with _SPARE_LOCK:
        if _SPARE_PENDING.get(pool_key, (None, None))[1] is future:
            del _SPARE_PENDING[pool_key]


def _make_spare(limits: WorkerLimits) -> None:
    from .sandbox import WorkerProcess

    key = _key(limits)
    pool_key = (os.getpid(), key)
    with _SPARE_LOCK:
        old = _SPARES.get(pool_key)
        if old is not None and old[0] == limits:
            return
    z = _POOL.get(pool_key)
    if z is None or z.worn() or key in _BROKEN:
        return
    scratch = new_scratch()
    try:
        with z._lock:
            pre = frozenset(z.preloaded)
        wp = WorkerProcess(scratch, limits, z.spawn(scratch, limits, spare=True))
    except (ZygoteUnavailable, OSError) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        logger.debug("no spare worker: %s", exc)
        return
    item = (limits, pre, scratch, wp, z)
    if _POOL.get(pool_key) is not z or z.worn():  # replaced or due for it meanwhile (or by this fork)
        _drop_spare(item)
        return
    with _SPARE_LOCK:
        old = _SPARES.pop(pool_key, None)
        _SPARES[pool_key] = item
    if old is not None:
        _drop_spare(old)


def _drop_spares(zygote: Zygote | None = None) -> None:
    """Stop this process's spare workers (those of ``zygote`` only, when given)."""
    with _SPARE_LOCK:
        keys = [k for k, item in _SPARES.items() if k[0] == os.getpid() and zygote in (None, item[4])]
        items = [_SPARES.pop(k) for k in keys]
    for item in items:
        try:
            _drop_spare(item)
        except Exception:  # noqa: BLE001 - its zygote is killed next anyway
            pass


def close_zygotes() -> None:
    """Stop every zygote of this process (and the workers they forked)."""
    ex = _SPAWNER.get(os.getpid())
    if ex is not None:
        try:
            ex.submit(lambda: None).result(timeout=START_TIMEOUT_S)  # a spare being forked is in the table now
        except (RuntimeError, TimeoutError):
            pass
    _drop_spares()
    with _POOL_LOCK:
        zs = [z for z in (*_POOL.values(), *_RETIRED) if z.owner == os.getpid()]
        _POOL.clear()
        _RETIRED.clear()
    for z in zs:
        z.terminate()


atexit.register(close_zygotes)
