"""File modes of everything lwgpu writes: files ``0o666 & ~umask``, folders ``0o777 & ~umask``.

``open()`` and ``mkdir()`` apply the process umask by themselves; ``tempfile.mkstemp`` (0o600) and
``tempfile.mkdtemp`` (0o700) do not, so a file or folder written through a temporary name and then
renamed into place would otherwise come out private whatever the umask says. Every atomic write in
lwgpu (RKME JSON, bank meta and columns, index folders, market folders) goes through the helpers
here. Beside the layer stack (stdlib only): any layer may import it.

The umask is read from ``/proc/self/status`` (no change to the process state); where there is no
``/proc``, by an ``os.umask`` round trip under a lock (``os.umask`` sets and returns; the lock keeps
two lwgpu threads from seeing each other's temporary value).
"""
from __future__ import annotations

import os
import secrets
import tempfile
import threading
from pathlib import Path

__all__ = ["current_umask", "file_mode", "dir_mode", "apply_file_mode", "make_temp_dir", "write_atomic"]

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where ``/proc`` allows."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file, as ``open()`` would create it: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a new folder, as ``mkdir()`` would create it: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


def apply_file_mode(target: int | str | os.PathLike) -> None:
    """Give a file made by ``mkstemp`` (an open fd or a path) the mode ``open()`` would have given it."""
    if isinstance(target, int):
        os.fchmod(target, file_mode())
    else:
        os.chmod(target, file_mode())


def make_temp_dir(parent: str | os.PathLike, prefix: str = ".tmp.") -> Path:
    """A new uniquely named folder in ``parent`` with the mode ``mkdir()`` would give (not mkdtemp's 0o700)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, dir_mode())
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | memoryview | object, fsync: bool = True,
                 tmp_prefix: str = ".lw.") -> None:
    """Write ``data`` (bytes, or any C-contiguous buffer such as a numpy array, in 64 MiB chunks) to ``path``
    through a temp file beside it (``tmp_prefix`` + name) and ``os.replace``. The file gets mode
    0o666 & ~umask, as ``open`` gives; with ``fsync`` the file and its folder are synced (durable)."""
    path = Path(path)
    tmp = path.parent / f"{tmp_prefix}{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            view = memoryview(data)
            view = view.cast("B") if view.nbytes else view  # (an empty array's view cannot be cast)
            for s in range(0, view.nbytes, 1 << 26):
                f.write(view[s : s + (1 << 26)])
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)
