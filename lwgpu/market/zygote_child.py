"""The zygote's own side: run as ``python -I -B zygote_child.py CONFIG_JSON`` (see zygote.py).

A zygote reads requests from its control socket (fd 0, ``SOCK_SEQPACKET``; one JSON object per
message): ``fork`` (with the worker's stdin, reply and stderr fds attached) answered by ``forked``
(``pid`` or ``error``) and, later, ``exited`` (``status``, the worker's raw wait status); ``kill``;
``preload`` (trusted modules to import before later forks); ``retire`` (exit once no worker is left).
It says ``hello`` (``threads``, ``pid``) once ready. Each fork runs as:

- *A*, PID 1 of a new PID namespace, with new mount, network, IPC and UTS namespaces: it reads
  ``{"scratch": ..., "limits": ..., "warm_up": ...}`` from the worker's stdin, covers ``/tmp``,
  ``/dev/shm``, the hidden paths and the scratch root with fresh tmpfs, binds back only its own
  scratch folder (and the interpreter if it lived under a covered path), makes every other mount
  read-only (``/dev`` included; the whole host file system for the subprocess kind), mounts a fresh
  read-only ``/proc``, forks *B*, and reports B's wait status on a pipe to the zygote when B ends
  (which ends the namespace);
- *B*, PID 2: drops every capability (bounding, ambient, effective/permitted, no-new-privs), sets
  its resource limits, (a spare worker, ``"warm_up": true``, forked before its package is known:
  runs trusted request code paths once, :func:`_warm_up`) and serves the requests like a cold
  worker (or, when the setup line says ``"probe": true``, checks that it sees only itself and its
  own folder, which the parent runs once per zygote before trusting it).

Stdlib + numpy (+ the modules the parent asks to preload); the request loop of a worker is
:func:`lwgpu.market.worker_child._serve`, loaded from its file (never ``lwgpu.market``'s ``__init__``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location("_lwgpu_worker_child",
                                               Path(__file__).resolve().with_name("worker_child.py"))
wc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wc)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18, 1 << 21)
_LIBC: Any = None


def _sys(name: str, *args: Any) -> None:
    """Call libc ``name``; raise OSError on a non-zero result."""
    import ctypes

    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    if getattr(_LIBC, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}{args[:2]!r}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda v: v.encode() if v is not None else None)
    _sys("mount", enc(src), enc(target), enc(fstype), flags, enc(data))


def _under(path: str, roots: Any) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _worker_mounts(cfg: dict[str, Any], scratch: str) -> None:
    """A's file-system view (in its new mount namespace): see the module docstring."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    lim = cfg["limits"]
    cover = sorted({p for p in ("/tmp", "/dev/shm", cfg["scratch_root"], *lim["hidden_paths"])
                    if os.path.isdir(p) and not os.path.islink(p)})
    keep = [scratch] + [p for p in cfg["needed"] if _under(p, cover)]
    fds = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in keep]
    for p in cover:  # parents first: the scratch root may lie under /tmp
        os.makedirs(p, exist_ok=True)
        _mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(lim['tmp_bytes'])},mode=1777")
    for p, fd in fds:
        os.makedirs(p, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        os.close(fd)
    try:
        _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    except OSError:
        pass  # ptys stay those of the zygote's sandbox
    with open("/proc/self/mountinfo") as fh:
        subs = list(dict.fromkeys(ln.split()[4].replace("\\040", " ") for ln in fh))
    for m in subs:  # everything else read-only (as bwrap has it but /dev; the whole host without bwrap)
        if m in cover or m in (scratch, "/dev/pts") or _under(m, ("/proc",)):
            continue
        try:
            f = os.statvfs(m).f_flag
            if not f & os.ST_RDONLY:
                _mount(None, m, None, MS_REMOUNT | MS_BIND | MS_RDONLY | (f & (MS_NOSUID | MS_NODEV | MS_NOEXEC))
                       | (MS_RELATIME if f & os.ST_RELATIME else 0))
        except OSError:
            if m == "/dev":  # bwrap's own writable /dev: a worker must not share it
                raise
    for m in sorted((m for m in subs if m.startswith("/proc/")), key=len, reverse=True):
        _sys("umount2", m.encode(), 2)  # MNT_DETACH; fails (and so does the /proc below) when locked
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, struct.pack("16sH14s", b"lo", 0, b"")))[1]
            fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))  # SIOCSIFFLAGS IFF_UP
    except OSError:
        pass


def _drop_privileges(last_cap: int) -> None:
    """B: no capability in any set, none to regain (no-new-privs); verified from /proc/self/status."""
    import ctypes

    for cap in range(last_cap + 1):
        _sys("prctl", 24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    _sys("prctl", 47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    _sys("capset", hdr, (ctypes.c_uint32 * 6)())
    _sys("prctl", 38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    with open("/proc/self/status") as fh:
        caps = {k: int(v, 16) for k, v in (ln.split(":") for ln in fh if ln.startswith("Cap"))}
    if len(caps) < 5 or any(caps.values()):
        raise RuntimeError(f"capabilities left after dropping them: {caps}")


def _warm_up(lw_mod: Any) -> None:
    """A spare worker, before any package is in its folder: run the trusted code paths of a request once
    (JSON, compiling and running a small module, ``.npy`` in and out, ``getrusage``) so their pages are
    copied from the zygote now rather than on the first request. Nothing is written or kept."""
    import io
    import resource

    import numpy as np

    json.loads(json.dumps({"op": "load", "folder": "/", "model": {"kind": "python"}}))
    code = compile("import os\nimport numpy as np\n\nclass Model:\n    def __init__(self, **kw):\n"
                   "        self.w = np.zeros((2, 2))\n\n    def predict(self, X):\n"
                   "        return np.asarray(X) @ self.w\n", "<warm-up>", "exec")
    ns: dict[str, Any] = {"__name__": "_lwgpu_warm_up"}
    exec(code, ns)
    buf = io.BytesIO()
    np.save(buf, ns["Model"]().predict(np.zeros((3, 2), np.float32)), allow_pickle=False)
    np.load(io.BytesIO(buf.getvalue()), allow_pickle=False)
    lw_mod._to_numpy(np.zeros(3))
    resource.getrusage(resource.RUSAGE_SELF)


def _run_b(cfg: dict[str, Any], scratch: str, lw_mod: Any, probe: bool, warm_up: bool = False) -> None:
    wc._set_pdeathsig()
    os.close(3)  # A's status pipe
    os.setsid()
    _drop_privileges(cfg["cap_last"])
    os.environ.update(HOME=scratch, TMPDIR="/tmp")
    os.chdir(scratch)
    import numpy.random

    numpy.random.seed()  # fresh entropy, not the zygote's generator state (imported there)
    if probe:  # the zygote's self-test: the view a worker must have
        seen = {"proc": sorted(p for p in os.listdir("/proc") if p.isdigit()), "root": os.listdir(cfg["scratch_root"])}
        open("probe.txt", "w").write("ok")
        if seen != {"proc": ["1", "2"], "root": [os.path.basename(scratch)]}:
            raise RuntimeError(f"the worker sees too much: {seen}")
        return
    wc._set_limits(cfg["limits"])
    if warm_up:
        _warm_up(lw_mod)
    wc._serve(lw_mod, sys.stdin.buffer, wc._reply_channel())


def _run_a(cfg: dict[str, Any], fds: list[int], status_w: int, lw_mod: Any) -> None:
    import struct

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    wc._set_pdeathsig()
    dups = [os.dup(fd) for fd in (*fds, status_w)]
    for i, fd in enumerate(dups):
        os.dup2(fd, i)
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 3:
            try:
                os.close(int(name))
            except OSError:
                pass
    line = b""
    while not line.endswith(b"\n") and len(line) < 65536:
        chunk = os.read(0, 1)
        if not chunk:
            raise EOFError("no setup line on stdin")
        line += chunk
    init = json.loads(line)
    scratch = os.path.realpath(init["scratch"])
    if os.path.dirname(scratch) != cfg["scratch_root"] or not os.path.isdir(scratch):
        raise ValueError(f"scratch folder {scratch!r} is not in the scratch root")
    _sys("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    _worker_mounts(cfg, scratch)
    _loopback_up()
    pid = os.fork()
    if pid == 0:
        try:
            _run_b(dict(cfg, limits=init["limits"]), scratch, lw_mod, bool(init.get("probe")),
                   bool(init.get("warm_up")))
            os._exit(0)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            os._exit(71)
    for fd in (0, 1, 2):
        os.close(fd)
    while True:  # PID 1 of the namespace: reap orphans until B ends (which ends them all)
        done, status = os.wait()
        if done == pid:
            os.write(3, struct.pack("i", status))
            os._exit(0)


def _fork_worker(cfg: dict[str, Any], fds: list[int], pidns_fd: int, lw_mod: Any) -> tuple[int, int]:
    """Fork A (PID 1 of a new PID namespace) for the worker fds ``[stdin, reply, stderr]``; returns
    ``(pid, status_read_fd)``. Closes ``fds`` here."""
    status_r, status_w = os.pipe()
    try:
        _sys("unshare", CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            _sys("setns", pidns_fd, CLONE_NEWPID)
            raise
        if pid == 0:
            try:
                _run_a(cfg, fds, status_w, lw_mod)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
            os._exit(70)
        _sys("setns", pidns_fd, CLONE_NEWPID)  # later forks start from the zygote's namespace again
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
        for fd in fds:
            os.close(fd)
    return pid, status_r


def _zygote_main(config: str) -> None:
    import gc
    import importlib
    import select
    import socket
    import struct

    cfg = json.loads(config)
    sys.path[:] = [p for p in cfg["sys_path"] if isinstance(p, str)]
    wc._set_pdeathsig()
    wc._become_reaper_if_init()
    ctl = socket.socket(fileno=os.dup(0))  # the control channel; fd 0 becomes /dev/null
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    send = (lambda msg: ctl.send(json.dumps(msg).encode()))
    import ctypes  # noqa: F401 - what every worker needs, imported once here
    import fcntl  # noqa: F401
    import traceback  # noqa: F401

    import numpy.random  # noqa: F401

    lw_mod = wc._import_learnware()
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        cfg["cap_last"] = int(fh.read())
    pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
    _sys("prctl", 4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace or /proc/<pid>/mem of the zygote
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    gc.freeze()
    threads = (lambda: len(os.listdir("/proc/self/task")))
    send({"op": "hello", "ok": True, "threads": threads(), "pid": os.getpid()})
    children: dict[int, tuple[int, int]] = {}  # pid of A -> (request id, status pipe)
    retiring = False
    while not (retiring and not children):
        ready = select.select([ctl, wake_r], [], [], 5.0)[0]
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                rid, status_r = children.pop(pid)
                data = os.read(status_r, 4)
                os.close(status_r)
                send({"op": "exited", "id": rid, "status": struct.unpack("i", data)[0] if len(data) == 4 else status})
        if ctl not in ready:
            continue
        msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 8)
        if not msg:  # the parent is gone: so are the workers
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            break
        req = json.loads(msg)
        if req["op"] == "fork" and len(fds) == 3:
            try:
                pid, status_r = _fork_worker(cfg, fds, pidns_fd, lw_mod)
            except OSError as exc:
                send({"op": "forked", "id": req["id"], "error": f"{type(exc).__name__}: {exc}"})
                continue
            children[pid] = (req["id"], status_r)
            send({"op": "forked", "id": req["id"], "pid": pid})
            continue
        for fd in fds:
            os.close(fd)
        if req["op"] == "kill":
            for pid, (rid, _) in children.items():
                if rid == req["id"]:
                    os.kill(pid, signal.SIGKILL)
        elif req["op"] == "preload":
            for name in req["modules"]:
                try:
                    importlib.import_module(name)
                except Exception as exc:  # noqa: BLE001 - a missing optional library only costs speed
                    sys.stderr.write(f"zygote: cannot preload {name}: {exc!r}\n")
            gc.freeze()
            send({"op": "preloaded", "modules": req["modules"], "threads": threads()})
        elif req["op"] == "retire":
            retiring = True
    os._exit(0)


if __name__ == "__main__":
    _zygote_main(sys.argv[1])
