"""The isolated worker process that runs untrusted model code, and the limits it runs under.

The parent (the market) starts one fresh interpreter per package (``sys.executable -I -B`` on this
file) inside bubblewrap when it works (new network, PID, IPC and UTS namespaces; the whole file
system read-only except the package's scratch folder; fresh ``/dev``, ``/tmp`` and a read-only
``/proc`` (a worker run by root could otherwise write the host's sysctls); no capabilities; killed
with its parent) and as a plain subprocess otherwise (in a new network
namespace when ``unshare -n`` works, else with network). Either way the child sets its resource
limits (:class:`WorkerLimits`) before it imports any model code, and the parent enforces a
wall-clock timeout per request by killing the worker's whole process group.

Protocol: the parent writes one JSON line per request on the child's stdin (inputs as ``.npy``
files in the scratch folder); the child answers on its original stdout with a JSON line and an
optional ``.npy`` payload (its stdout proper is redirected to stderr, so prints cannot corrupt
replies). The parent only ever parses ``json`` and ``np.load(..., allow_pickle=False)`` from the
child, reads at most ``max_output_bytes``, and keeps the last 64 KiB of its stderr for errors.
Replies are read by the requesting thread itself (``poll`` with the request's deadline, no reader
thread in between); :meth:`WorkerProcess.request_many` writes several requests before reading.

The child's side is :mod:`lwgpu.market.worker_child`, run as a script. This is the *cold* path
(``WorkerLimits(warm=False)``); the default *warm* path forks each worker from a pristine zygote
already inside the sandbox (:mod:`lwgpu.market.zygote`) and talks to it with the same protocol
through :class:`WorkerProcess`.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

GiB, MiB = 1 << 30, 1 << 20
ISOLATIONS = ("auto", "bubblewrap", "subprocess")
_OFF = ("0", "false", "no", "off")
_HEADER_MAX = 1 << 20
_TAIL_BYTES = 64 << 10
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class WorkerLimits:
    """Limits of one isolated worker process (one package; ``None`` leaves a limit unset).

    Parameters
    ----------
    timeout_s : wall-clock seconds per request (loading the model, which includes starting Python
        and importing its libraries, or one ``predict``), enforced by the parent: 60.
    cpu_seconds : ``RLIMIT_CPU`` of the worker (SIGXCPU, then SIGKILL 2 s later): 60. A kept-alive
        worker (:meth:`Learnware.predict`) is replaced once it has used half of it.
    memory_bytes : ``RLIMIT_DATA`` (heap and private writable mappings, i.e. what arrays and tensors
        allocate): 4 GiB. Not ``RLIMIT_AS``: torch, OpenBLAS and glibc reserve address space they
        never touch (0.8-0.9 GB after ``import torch, sklearn`` on a 2-core machine, growing with the
        core count; CUDA initialisation reserves tens of GB), so an address-space cap refuses
        healthy models long before they use memory.
    address_space_bytes : optional ``RLIMIT_AS`` on top (off).
    file_size_bytes : ``RLIMIT_FSIZE``, the largest file the worker may write: 64 MiB.
    open_files : ``RLIMIT_NOFILE``: 256.
    processes : ``RLIMIT_NPROC``: 4096. Linux counts every process and thread of the user, so this
        is a fork-bomb backstop, not a count of the worker's own; root with capabilities (the
        subprocess fallback run as root) is exempt.
    threads : BLAS/OpenMP/torch threads of the worker: 1.
    tmp_bytes : size of the worker's private ``/tmp`` (bubblewrap only): 256 MiB.
    max_output_bytes : the largest reply the parent reads: 1 GiB.
    hidden_paths : folders replaced by an empty tmpfs in the worker's view (bubblewrap only), e.g.
        the market root so a model cannot read other learnwares: ``("/run",)`` (sockets of system
        services; a Unix socket stays connectable on a read-only mount).
    isolation : ``"auto"`` (bubblewrap when it works, else subprocess), ``"bubblewrap"`` (error when
        unavailable) or ``"subprocess"``.
    warm : True: fork the worker from a warm zygote (:mod:`lwgpu.market.zygote`; ~10 ms instead of
        starting Python and importing numpy/scikit-learn); False, or where the zygote's per-worker
        namespaces are not available: one fresh interpreter per package. Default: True unless the
        environment sets ``LWGPU_WARM_WORKERS=0``.
    """

    timeout_s: float = 60.0
    cpu_seconds: int | None = 60
    memory_bytes: int | None = 4 * GiB
    address_space_bytes: int | None = None
    file_size_bytes: int | None = 64 * MiB
    open_files: int | None = 256
    processes: int | None = 4096
    threads: int = 1
    tmp_bytes: int = 256 * MiB
    max_output_bytes: int = 1 * GiB
    hidden_paths: tuple[str, ...] = ("/run",)
    isolation: str = "auto"
    warm: bool = field(default_factory=lambda: os.environ.get("LWGPU_WARM_WORKERS", "1").lower() not in _OFF)

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        if not self.timeout_s > 0 or self.threads < 1:
            raise ValueError("timeout_s must be > 0 and threads >= 1")
        object.__setattr__(self, "hidden_paths", tuple(str(p) for p in self.hidden_paths))


class WorkerError(RuntimeError):
    """A failed request to an isolated worker: ``stage`` (``model_load``/``model_predict``) and ``reason``.

    ``raised`` is True when the model raised a Python exception (``reason`` is ``"Type: message"``
    and the worker lives on), False when the worker died, was killed or timed out.
    """

    def __init__(self, stage: str, reason: str, stderr: str = "", raised: bool = False) -> None:
        self.stage, self.reason, self.stderr, self.raised = stage, reason, stderr, raised
        super().__init__(f"{stage}: {reason}")


# ---------------------------------------------------------------------------- isolation probes
@functools.lru_cache(maxsize=None)
def _bwrap_supports_size(bwrap: str) -> bool:
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in out.stdout + out.stderr


@functools.lru_cache(maxsize=None)
def _needed_paths() -> tuple[str, ...]:
    """Folders the worker must see: lwgpu's root and the interpreter's prefixes."""
    paths = {str(Path(__file__).resolve().parents[2]), os.path.realpath(sys.prefix),
             os.path.realpath(sys.base_prefix), os.path.dirname(os.path.realpath(sys.executable))}
    return tuple(sorted(p for p in paths if os.path.isdir(p)))


def _bwrap_command(bwrap: str, scratch: str, limits: WorkerLimits, zygote: bool = False) -> list[str]:
    """The bwrap prefix of a worker (``zygote=False``) or of a zygote: the zygote runs as root of its
    own user namespace with ``CAP_SYS_ADMIN``/``CAP_SETPCAP`` there (to give each forked worker its own
    namespaces, see :mod:`lwgpu.market.zygote`) and a writable ``/proc`` it replaces per worker."""
    cmd = [bwrap, *(["--unshare-user", "--uid", "0", "--gid", "0"] if zygote else []),
           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *([] if zygote else ["--remount-ro", "/proc"])]
    for p in limits.hidden_paths:
        if os.path.isdir(p) and not os.path.islink(p):
            cmd += ["--tmpfs", p]
    if _bwrap_supports_size(bwrap):
        cmd += ["--size", str(int(limits.tmp_bytes))]
    cmd += ["--tmpfs", "/tmp"]
    for p in _needed_paths():  # the interpreter and lwgpu stay visible if they live under /tmp or a hidden path
        if any(p == h or p.startswith(h.rstrip("/") + "/") for h in ("/tmp", *limits.hidden_paths)):
            cmd += ["--ro-bind", p, p]
    caps = ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP"] if zygote else []
    cmd += ["--bind", scratch, scratch, "--chdir", scratch,
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--new-session", "--die-with-parent", "--cap-drop", "ALL", *caps, "--"]
    return cmd


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=None)
def _bubblewrap() -> str | None:
    """The bwrap binary when a sandbox with this module's options starts here, else None."""
    bwrap, true = shutil.which("bwrap"), shutil.which("true")
    if bwrap is None or true is None:
        return None
    scratch = os.path.realpath(os.environ.get("TMPDIR", "/tmp"))
    ok = _probe(_bwrap_command(bwrap, scratch, WorkerLimits()) + [true])
    if not ok:
        logger.warning("bubblewrap is installed but cannot start a sandbox here; using plain subprocesses")
    return bwrap if ok else None


@functools.lru_cache(maxsize=None)
def _unshare() -> tuple[tuple[str, ...], bool]:
    """``(prefix, pid_ns)``: an ``unshare`` command prefix giving the fallback worker new network (and,
    when ``pid_ns``, PID) namespaces; ``((), False)`` when none works here."""
    unshare, true = shutil.which("unshare"), shutil.which("true")
    if unshare is None or true is None:
        return (), False
    for pid in (["-p", "-f", "--kill-child"], []):
        for user in ([], ["--map-current-user"], ["-r"]):
            if _probe([unshare, *user, "-n", *pid, true]):
                return (unshare, *user, "-n", *pid), bool(pid)
    return (), False


def isolation(limits: WorkerLimits | None = None) -> str:
    """The isolation in force for ``limits`` (default limits: ``"auto"``): ``"bubblewrap"`` or ``"subprocess"``."""
    want = (limits or WorkerLimits()).isolation
    if want == "subprocess":
        return "subprocess"
    if _bubblewrap() is not None:
        return "bubblewrap"
    if want == "bubblewrap":
        raise RuntimeError("isolation='bubblewrap' requested but bubblewrap is not installed or cannot start "
                           "a sandbox here (apt-get install -y bubblewrap; user namespaces must be allowed)")
    return "subprocess"


def isolation_info(limits: WorkerLimits | None = None) -> dict[str, Any]:
    """What the worker's isolation gives: kind, no network, read-only file system, and the limits."""
    limits = limits or WorkerLimits()
    kind = isolation(limits)
    prefix, pid_ns = _unshare()
    return {"isolation": kind, "network": not (kind == "bubblewrap" or prefix),
            "pid_namespace": kind == "bubblewrap" or pid_ns, "read_only_fs": kind == "bubblewrap",
            "limits": asdict(limits)}


# ---------------------------------------------------------------------------- parent side
def _env(scratch: str, kind: str, limits: WorkerLimits) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": scratch, "LANG": "C.UTF-8",
           "TMPDIR": "/tmp" if kind == "bubblewrap" else scratch, "CUDA_VISIBLE_DEVICES": ""}
    env.update({v: str(limits.threads) for v in _THREAD_VARS})
    env["JE_ARROW_MALLOC_CONF"] = "background_thread:false"  # pyarrow's allocator thread (via sklearn -> pandas)
    if os.environ.get("LD_LIBRARY_PATH"):  # native libraries (CUDA, conda) some installs need to import
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


class WorkerProcess:
    """One isolated interpreter serving requests for one package folder (see the module docstring).

    Parameters
    ----------
    scratch : the worker's own writable folder (the only writable path under bubblewrap).
    limits : its :class:`WorkerLimits`.
    proc : None: start a fresh interpreter (the cold path); else a forked zygote worker
        (:class:`lwgpu.market.zygote.ZygoteProc`: ``stdin``/``stdout``/``stderr``, ``poll``,
        ``wait`` and ``kill`` like a ``Popen``, its exit status reported exactly).
    """

    def __init__(self, scratch: Path, limits: WorkerLimits, proc: Any = None) -> None:
        self.limits, self.kind = limits, isolation(limits)
        self.scratch = str(Path(scratch).resolve())
        self.cpu_used = 0.0
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self._buf = bytearray()  # reply bytes read from the worker, not yet parsed
        self._eof = False
        self._lock = threading.Lock()
        self.warm = proc is not None
        if proc is None:
            proc = self._start_cold()
        else:
            self.pid_ns = False
        self.proc = proc
        self._poll = select.poll()  # replies are read by the requesting thread itself (no reader-thread hop)
        self._poll.register(self.proc.stdout.fileno(), select.POLLIN)
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_thread.start()

    def _start_cold(self) -> subprocess.Popen:
        if not sys.executable:
            raise RuntimeError("sys.executable is unknown; cannot start an isolated worker")
        limits = self.limits
        child = [sys.executable, "-I", "-B", str(Path(__file__).resolve().with_name("worker_child.py")),
                 json.dumps({"limits": asdict(limits), "sys_path": [p for p in sys.path if os.path.isabs(p)]})]
        if self.kind == "bubblewrap":
            prefix, self.pid_ns = _bwrap_command(_bubblewrap(), self.scratch, limits), True
        else:
            prefix, self.pid_ns = list(_unshare()[0]), _unshare()[1]
        return subprocess.Popen(prefix + child, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=self.scratch, env=_env(self.scratch, self.kind, limits),
                                start_new_session=True, close_fds=True)

    # -- readers
    def _fill(self, deadline: float, want: int = 1 << 16) -> bool:
        """Read what the worker has written (up to ``want`` bytes) into the buffer, waiting until
        ``deadline`` at most; False on timeout. Sets ``_eof`` when the worker closed its end."""
        wait = deadline - time.monotonic()
        if wait <= 0 or not self._poll.poll(wait * 1000.0):
            return False
        try:
            chunk = os.read(self.proc.stdout.fileno(), max(1 << 16, want))
        except OSError:
            chunk = b""
        if chunk:
            self._buf += chunk
        else:
            self._eof = True
        return True

    def _next_reply(self, deadline: float) -> Any:
        """The next reply ``(header, payload)``; ``("bad", why)`` for a malformed one, None once the
        worker has closed its reply channel, ``"timeout"`` past ``deadline``."""
        while True:
            end = self._buf.find(b"\n", 0, _HEADER_MAX)
            if end >= 0:
                break
            if len(self._buf) >= _HEADER_MAX:
                return "bad", f"a malformed or oversized reply ({bytes(self._buf[:80])!r})"
            if self._eof:
                return None
            if not self._fill(deadline):
                return "timeout"
        line = bytes(self._buf[:end + 1])
        try:
            hdr = json.loads(line)
        except ValueError as exc:
            return "bad", f"a malformed reply ({exc})"
        n = hdr.get("nbytes", 0) if isinstance(hdr, dict) else None
        if not isinstance(n, int) or not 0 <= n <= self.limits.max_output_bytes:
            return "bad", f"a malformed or oversized reply ({line[:80]!r})"
        need = end + 1 + n
        while len(self._buf) < need:
            if self._eof:
                return None
            if not self._fill(deadline, need - len(self._buf)):
                return "timeout"
        payload = bytes(self._buf[end + 1:need])
        del self._buf[:need]
        return hdr, payload

    def _read_stderr(self) -> None:
        try:
            for chunk in iter(lambda: self.proc.stderr.read1(1 << 16), b""):
                self._tail.append(chunk)
                self._tail_len += len(chunk)
                while self._tail_len - len(self._tail[0]) >= _TAIL_BYTES:
                    self._tail_len -= len(self._tail.popleft())
        finally:
            self.proc.stderr.close()

    def stderr_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters the worker wrote to stdout/stderr."""
        return b"".join(list(self._tail)).decode("utf-8", "replace")[-n:]

    # -- requests
    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, header: dict[str, Any], stage: str, timeout: float | None = None) -> tuple[dict, bytes]:
        """Send one request; its reply ``(header, payload)``. Raises :class:`WorkerError` on any failure."""
        timeout = self.limits.timeout_s if timeout is None else timeout
        with self._lock:
            deadline = time.monotonic() + timeout
            try:
                self.proc.stdin.write(json.dumps(header).encode() + b"\n")
                self.proc.stdin.flush()
            except OSError:
                pass  # the worker is gone; its exit status tells why below
            return self._reply(stage, deadline, timeout)

    def request_many(self, requests: list[Any], timeout: float | None = None) -> list[tuple[dict, bytes]]:
        """Send several requests without waiting between them (the worker reads them in turn), then
        read their replies in order: one round trip instead of one per request.

        Each item is ``(header, stage)``, or a callable returning one or None (nothing to send) that
        runs after the earlier requests are written, so the caller can prepare a request while the
        worker works on the earlier ones. Each reply is waited for ``timeout`` after its request was
        written (or after the previous reply came, whichever is later). Raises :class:`WorkerError` with
        the ``stage`` of the first request that failed (the later replies are left unread: close the
        worker); an exception of a callable propagates (close the worker too).
        """
        timeout = self.limits.timeout_s if timeout is None else timeout
        with self._lock:
            sent: list[tuple[str, float]] = []
            for item in requests:
                item = item() if callable(item) else item
                if item is None:
                    continue
                header, stage = item
                try:
                    self.proc.stdin.write(json.dumps(header).encode() + b"\n")
                    self.proc.stdin.flush()
                except OSError:
                    pass  # the worker is gone; its exit status tells why below
                sent.append((stage, time.monotonic()))
            out: list[tuple[dict, bytes]] = []
            last = 0.0
            for stage, t_sent in sent:
                out.append(self._reply(stage, max(t_sent, last) + timeout, timeout))
                last = time.monotonic()
            return out

    def _reply(self, stage: str, deadline: float, timeout: float) -> tuple[dict, bytes]:
        """The next reply (see :meth:`request`), waited for until ``deadline``."""
        reply = self._next_reply(deadline)
        if reply == "timeout":
            self.kill()
            raise self._error(stage, f"timed out after {timeout:g} s (wall-clock limit)")
        if reply is None:
            raise self._error(stage, self._exit_reason(deadline, timeout))
        hdr, payload = reply
        if hdr == "bad":
            self.kill()
            raise self._error(stage, f"the worker sent {payload}")
        if isinstance(hdr.get("cpu"), (int, float)):
            self.cpu_used = float(hdr["cpu"])
        if not hdr.get("ok"):
            raise WorkerError(stage, str(hdr.get("error", "unknown error"))[:4000], self.stderr_tail(), raised=True)
        return hdr, payload

    def _error(self, stage: str, reason: str) -> WorkerError:
        self._err_thread.join(timeout=1.0)
        tail = self.stderr_tail()
        return WorkerError(stage, reason + (f"; worker output ends: {tail[-1000:]}" if tail.strip() else ""), tail)

    def _exit_reason(self, deadline: float, timeout: float) -> str:
        try:
            rc = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            return f"timed out after {timeout:g} s (wall-clock limit; the worker closed its reply channel)"
        sig = -rc if rc < 0 else (rc - 128 if self.pid_ns and 128 < rc < 128 + 65 else 0)
        if sig:
            hints = {signal.SIGKILL: "memory or process limit, or killed", signal.SIGXCPU:
                     f"CPU time limit of {self.limits.cpu_seconds} s", signal.SIGXFSZ:
                     f"file size limit of {self.limits.file_size_bytes} bytes", signal.SIGSEGV: "crashed"}
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = "unknown signal"
            hint = hints.get(sig)
            return f"worker killed by signal {sig} ({name}{'; ' + hint if hint else ''})"
        return f"worker exited with code {rc}"

    def kill(self) -> None:
        """Kill the worker and everything it started (no-op when it has exited)."""
        if self.warm:
            self.proc.kill()  # the zygote kills the worker's PID namespace
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            logger.error("isolated worker %d did not die after SIGKILL", self.proc.pid)

    def close(self) -> None:
        """Ask the worker to exit (EOF on stdin), then kill what is left."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()  # the stderr reader thread closes stderr at EOF (closing it here could block)
        with self._lock:  # replies are read only under this lock, so nothing reads stdout now
            try:
                self.proc.stdout.close()
            except OSError:
                pass


def decode_array(payload: bytes) -> np.ndarray:
    """An ``.npy`` payload from the worker as an array, never unpickling (``allow_pickle=False``)."""
    return np.load(io.BytesIO(payload), allow_pickle=False)
