"""Safe unpacking of submitted packages: zip files and folders, under :class:`PackageLimits`.

A package comes from an untrusted developer. Before one byte is extracted, the zip's central
directory is checked against the limits (entry count, each member's declared size, their total,
the compression ratio of each large member and of the whole archive, members overlapping each other);
then every member is streamed to disk and counted while it is written, so a header that lies about
its size is stopped at the cap (and refused when the bytes differ from the header). Entries must be
plain files or folders with portable relative names: symlinks, device files, fifos, sockets,
absolute paths, drive letters, backslashes, ``.``/``..`` components, NUL bytes and duplicate names
are refused. A folder package is walked without following links (``lstat``): symlinks, hard links
(a file with more than one link could change through its other name), fifos, sockets and devices are
refused, each file is opened with ``O_NOFOLLOW`` and must still be the file that was checked.

Files come out with mode ``0o666 & ~umask`` and folders ``0o777 & ~umask`` (no execute, setuid or
sticky bit carried over from the package). Each refusal is a :class:`PackageRefused` (a
:class:`~lwgpu.market.errors.SubmissionError` of the ``package`` check) whose ``rule`` names the
limit or rule that refused it and whose message says how to fix the package.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from .errors import SubmissionError

__all__ = ["PackageLimits", "PackageRefused", "RULES", "extract_zip", "copy_folder", "check_name"]

#: the rules a :class:`PackageRefused` may name
RULES = ("total_size", "file_size", "file_count", "ratio", "overlap", "size_mismatch", "corrupt", "encrypted",
         "symlink", "hardlink", "special_file", "unsafe_path", "duplicate_path", "yaml")

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


@dataclass(frozen=True)
class PackageLimits:
    """Limits a submitted package must meet (defaults in :mod:`lwgpu.settings`, ``PACKAGE_*``).

    Parameters
    ----------
    max_total_bytes : uncompressed bytes of all files together.
    max_file_bytes : uncompressed bytes of one file.
    max_files : entries (files and folders).
    max_ratio : uncompressed / compressed size allowed for a zip member, and for the whole archive,
        once they are larger than ``ratio_min_bytes`` (smaller ones are never a bomb).
    ratio_min_bytes : see ``max_ratio``.
    max_yaml_bytes : size of ``learnware.yaml``.
    max_yaml_nodes : YAML nodes of ``learnware.yaml`` after alias expansion (a "billion laughs" document
        is small on disk but huge once its aliases are expanded).
    """

    max_total_bytes: int = settings.PACKAGE_MAX_TOTAL_BYTES
    max_file_bytes: int = settings.PACKAGE_MAX_FILE_BYTES
    max_files: int = settings.PACKAGE_MAX_FILES
    max_ratio: float = settings.PACKAGE_MAX_RATIO
    ratio_min_bytes: int = settings.PACKAGE_RATIO_MIN_BYTES
    max_yaml_bytes: int = settings.PACKAGE_MAX_YAML_BYTES
    max_yaml_nodes: int = settings.PACKAGE_MAX_YAML_NODES

    def __post_init__(self) -> None:
        for name in ("max_total_bytes", "max_file_bytes", "max_files", "ratio_min_bytes", "max_yaml_bytes",
                     "max_yaml_nodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PackageLimits.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not float(self.max_ratio) > 1:
            raise ValueError(f"PackageLimits.max_ratio must be > 1, got {self.max_ratio!r}")


class PackageRefused(SubmissionError):
    """A package refused by the ``package`` check: ``rule`` (one of :data:`RULES`) names what refused it."""

    def __init__(self, rule: str, reason: str, fix: str) -> None:
        self.rule = rule
        super().__init__("package", f"[{rule}] {reason}; {fix}")


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_name(name: str, where: str) -> list[str]:
    """The components of a package entry's relative name ``name`` (``/``-separated); refuses
    absolute paths, drive letters, backslashes, NUL, empty, ``.`` and ``..`` components."""
    fix = "use plain relative names inside the package folder (no links, '..', absolute or Windows paths)"
    if "\x00" in name:
        raise PackageRefused("unsafe_path", f"{where} {name!r} contains a NUL byte", fix)
    if "\\" in name:
        raise PackageRefused("unsafe_path", f"{where} {name!r} contains a backslash (a Windows path separator)", fix)
    if name.startswith("/"):
        raise PackageRefused("unsafe_path", f"{where} {name!r} is an absolute path", fix)
    if _DRIVE.match(name):
        raise PackageRefused("unsafe_path", f"{where} {name!r} starts with a drive letter", fix)
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise PackageRefused("unsafe_path", f"{where} {name!r} has an empty, '.' or '..' component", fix)
    return parts


# ---------------------------------------------------------------------- zip files
def _zip_kind(info: zipfile.ZipInfo) -> str:
    """``"dir"`` or ``"file"`` for a zip entry; refuses links and special files (Unix mode bits)."""
    mode = (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0
    fmt = stat.S_IFMT(mode)
    if fmt == stat.S_IFLNK:
        raise PackageRefused("symlink", f"zip member {info.filename!r} is a symbolic link",
                             "replace the link by the file it points to")
    if fmt and fmt not in (stat.S_IFREG, stat.S_IFDIR):
        raise PackageRefused("special_file", f"zip member {info.filename!r} is a device, fifo or socket "
                                             f"(mode {oct(mode)})", "a package holds only regular files and folders")
    return "dir" if fmt == stat.S_IFDIR or info.filename.endswith("/") else "file"


def _check_central_directory(infos: list[zipfile.ZipInfo], archive_bytes: int,
                             limits: PackageLimits) -> list[tuple[zipfile.ZipInfo, list[str], str]]:
    """Everything decidable from the central directory, before extraction; returns (info, parts, kind)."""
    if len(infos) > limits.max_files:
        raise PackageRefused("file_count", f"the zip has {len(infos)} entries (limit {limits.max_files})",
                             "pack fewer files, or raise PackageLimits.max_files")
    plan, seen = [], set()
    total = compressed = 0
    for info in infos:
        name = info.orig_filename if "\x00" in info.orig_filename else info.filename
        kind = _zip_kind(info)
        parts = check_name(name.rstrip("/") if kind == "dir" else name, "zip member")
        key = "/".join(parts)
        if key in seen:
            raise PackageRefused("duplicate_path", f"zip member {key!r} appears twice",
                                 "rebuild the zip so that each path appears once")
        seen.add(key)
        if info.flag_bits & 0x1:
            raise PackageRefused("encrypted", f"zip member {key!r} is encrypted", "submit an unencrypted zip")
        if kind == "file":
            if info.file_size > limits.max_file_bytes:
                raise PackageRefused("file_size", f"zip member {key!r} declares {_mib(info.file_size)} (limit "
                                                  f"{_mib(limits.max_file_bytes)})",
                                     "make the file smaller, or raise PackageLimits.max_file_bytes")
            if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise PackageRefused("ratio", f"zip member {key!r} expands {info.file_size / max(info.compress_size, 1):.0f}"
                                              f"-fold ({_mib(info.file_size)} from {info.compress_size} bytes; limit "
                                              f"{limits.max_ratio:g})", "this looks like a zip bomb; submit the real "
                                                                        "files, or raise PackageLimits.max_ratio")
            total += info.file_size
            compressed += info.compress_size
        plan.append((info, parts, kind))
    if total > limits.max_total_bytes:
        raise PackageRefused("total_size", f"the zip's files declare {_mib(total)} in all (limit "
                                           f"{_mib(limits.max_total_bytes)})",
                             "make the package smaller, or raise PackageLimits.max_total_bytes")
    if compressed > archive_bytes:
        raise PackageRefused("overlap", f"the zip's members claim {compressed} compressed bytes but the file has "
                                        f"{archive_bytes}: members overlap (a zip bomb construction)",
                             "rebuild the zip with a standard tool")
    if total > limits.ratio_min_bytes and total > limits.max_ratio * max(archive_bytes, 1):
        raise PackageRefused("ratio", f"the zip expands {total / max(archive_bytes, 1):.0f}-fold ({_mib(total)} from "
                                      f"{archive_bytes} bytes; limit {limits.max_ratio:g})",
                             "this looks like a zip bomb; submit the real files, or raise PackageLimits.max_ratio")
    return plan


def _open_new(path: Path) -> int:
    """A new file at ``path`` for writing (never an existing one, never through a link), mode 0o666 & ~umask."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o666)


def _mkdirs(dest: Path, parts: list[str]) -> Path:
    """Create the folders ``parts`` under ``dest`` (mode 0o777 & ~umask); refuse a file in the way."""
    cur = dest
    for p in parts:
        cur = cur / p
        try:
            os.mkdir(cur, 0o777)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                raise PackageRefused("duplicate_path", f"{'/'.join(parts)!r} is both a file and a folder",
                                     "rebuild the package so that each path is one thing") from None
    return cur


def extract_zip(src: str | os.PathLike, dest: str | os.PathLike, limits: PackageLimits | None = None) -> None:
    """Extract the zip ``src`` into the existing empty folder ``dest`` under ``limits``.

    Raises
    ------
    PackageRefused
        Naming the rule; ``dest`` may then hold part of the package (the caller discards it).
    zipfile.BadZipFile
        When ``src`` is not a readable zip.
    """
    limits = limits or PackageLimits()
    src, dest = Path(src), Path(dest)
    with open(src, "rb") as fh:
        archive_bytes = os.fstat(fh.fileno()).st_size
        with zipfile.ZipFile(fh) as zf:
            plan = _check_central_directory(zf.infolist(), archive_bytes, limits)
            total = 0
            for info, parts, kind in plan:
                if kind == "dir":
                    _mkdirs(dest, parts)
                    continue
                parent = _mkdirs(dest, parts[:-1])
                key = "/".join(parts)
                try:
                    fd = _open_new(parent / parts[-1])
                except FileExistsError:
                    raise PackageRefused("duplicate_path", f"zip member {key!r} collides with another entry",
                                         "rebuild the zip so that each path appears once") from None
                total += _stream_member(zf, info, key, fd, limits, total)


def _stream_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, fd: int, limits: PackageLimits,
                   total: int) -> int:
    """Copy one member into ``fd`` counting bytes (caps: its header size, the file and total limits)."""
    cap = min(info.file_size, limits.max_file_bytes)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as member:
            while True:
                chunk = member.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written > cap or total + written > limits.max_total_bytes:
                    raise PackageRefused("size_mismatch", f"zip member {key!r} decompresses to more than its "
                                                          f"header's {info.file_size} bytes or the limits; "
                                                          "extraction stopped", "rebuild the zip with a standard tool")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise PackageRefused("corrupt", f"zip member {key!r} does not decompress to what its header says ({exc})",
                             "rebuild the zip with a standard tool") from exc
    except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required"
        raise PackageRefused("encrypted", f"zip member {key!r} cannot be read: {exc}",
                             "submit an unencrypted zip") from exc
    if written != info.file_size:
        raise PackageRefused("size_mismatch", f"zip member {key!r} decompressed to {written} bytes but its header "
                                              f"says {info.file_size}", "rebuild the zip with a standard tool")
    return written


# ---------------------------------------------------------------------- folders
def copy_folder(src: str | os.PathLike, dest: str | os.PathLike, limits: PackageLimits | None = None) -> None:
    """Copy the package folder ``src`` into the existing empty folder ``dest``, without following links.

    ``src`` itself may be reached through a link (it is the caller's path); nothing inside it may be
    a link, a hard-linked file or a special file.

    Raises
    ------
    PackageRefused
        Naming the rule; ``dest`` may then hold part of the package (the caller discards it).
    """
    limits = limits or PackageLimits()
    src, dest = Path(src), Path(dest)
    count = total = 0
    stack: list[tuple[Path, Path, str]] = [(src, dest, "")]
    while stack:
        sdir, ddir, rel = stack.pop()
        with os.scandir(sdir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            key = f"{rel}{entry.name}"
            check_name(key, "package entry")
            count += 1
            if count > limits.max_files:
                raise PackageRefused("file_count", f"the package folder has more than {limits.max_files} entries",
                                     "pack fewer files, or raise PackageLimits.max_files")
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise PackageRefused("symlink", f"package entry {key!r} is a symbolic link",
                                     "replace the link by the file it points to")
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(ddir / entry.name, 0o777)
                stack.append((Path(entry.path), ddir / entry.name, key + "/"))
                continue
            if not stat.S_ISREG(st.st_mode):
                raise PackageRefused("special_file", f"package entry {key!r} is a device, fifo or socket "
                                                     f"(mode {oct(st.st_mode)})",
                                     "a package holds only regular files and folders")
            if st.st_nlink > 1:
                raise PackageRefused("hardlink", f"package entry {key!r} has {st.st_nlink} hard links",
                                     "submit a copy of the file (cp, not ln)")
            if st.st_size > limits.max_file_bytes:
                raise PackageRefused("file_size", f"package file {key!r} has {_mib(st.st_size)} (limit "
                                                  f"{_mib(limits.max_file_bytes)})",
                                     "make the file smaller, or raise PackageLimits.max_file_bytes")
            if total + st.st_size > limits.max_total_bytes:
                raise PackageRefused("total_size", f"the package's files exceed {_mib(limits.max_total_bytes)}",
                                     "make the package smaller, or raise PackageLimits.max_total_bytes")
            total += _copy_file(Path(entry.path), ddir / entry.name, key, st)


def _copy_file(src: Path, dst: Path, key: str, st: os.stat_result) -> int:
    """Copy one regular file checked as ``st``: opened without following links, and refused if it is no
    longer that file or changes size while it is copied."""
    try:
        fd = os.open(src, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PackageRefused("symlink", f"package entry {key!r} became a symbolic link",
                                 "do not change the package while it is submitted") from exc
        raise
    with os.fdopen(fd, "rb") as inp:
        now = os.fstat(inp.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode) or now.st_nlink > 1:
            raise PackageRefused("special_file", f"package entry {key!r} changed while it was checked",
                                 "do not change the package while it is submitted")
        written = 0
        with os.fdopen(_open_new(dst), "wb") as out:
            while True:
                chunk = inp.read(min(_CHUNK, st.st_size + 1 - written))
                if not chunk:
                    break
                written += len(chunk)
                if written > st.st_size:
                    raise PackageRefused("size_mismatch", f"package file {key!r} grew while it was copied",
                                         "do not change the package while it is submitted")
                out.write(chunk)
    if written != st.st_size:
        raise PackageRefused("size_mismatch", f"package file {key!r} shrank while it was copied",
                             "do not change the package while it is submitted")
    return written
